"""The per-file rejection of ``prepare``: one exception, raised at any stage of the pipeline."""

from __future__ import annotations


class RejectedInput(Exception):
    """An input that cannot or must not be prepared; the message is the one-line reason.

    Raised anywhere in the per-file pipeline and turned into a ``rejected.csv`` row by the caller,
    so a bad file never stops the run and is never dropped silently. Messages must not contain
    paths or header values that could identify a patient.
    """
