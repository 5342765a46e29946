"""Counting what a piece of PyTorch code launches: aten operators, dtype casts and host-sync points.

GPU speed for small-batch GAN training is dominated by per-operator overhead and by host-device
synchronisations (each one drains the GPU's queue), and both can be counted on a CPU: every aten
operator that reaches the dispatcher becomes (at least) one kernel launch on a GPU, and a handful of
operators force the host to wait for the device. :class:`OpCounter` is a ``TorchDispatchMode`` that
records them, so the overhead benchmark (``bench/train_overhead.py``) and tests can assert budgets
without a GPU.

Sync points counted (each blocks the host on CUDA):

* ``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``.tolist()``;
* ``aten.nonzero``, ``aten.masked_select``, ``aten.unique*`` and ``aten.repeat_interleave`` without an
  output size: outputs whose shape depends on the data;
* ``aten.lift_fresh`` / ``aten.lift_fresh_copy``: a tensor made from host data (``torch.tensor([...])``),
  which becomes a synchronous host-to-device copy when the target is a GPU.

Views and metadata-only operators are reported separately (``views``): they dispatch but launch no
kernel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "lift_fresh",
    "lift_fresh_copy",
    "item",
    "is_nonzero",
    "equal",
}
_VIEW_OPS = {
    "view",
    "_unsafe_view",
    "reshape",
    "expand",
    "as_strided",
    "permute",
    "transpose",
    "t",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "narrow",
    "unbind",
    "split",
    "split_with_sizes",
    "alias",
    "detach",
    "view_as",
    "chunk",
    "diagonal",
    "unfold",
}


def _short_name(func: Any) -> str:
    """``aten.add.Tensor`` -> ``add`` (the overload packet's name without namespace)."""
    packet = getattr(func, "overloadpacket", func)
    return str(getattr(packet, "__name__", packet)).split(".")[-1]


class OpCounter(TorchDispatchMode):
    """Count aten operators dispatched inside the ``with`` block.

    Attributes after the block: ``ops`` (Counter of operator names), ``total`` (all operators),
    ``kernels`` (operators that launch work: total minus views), ``casts`` (``_to_copy`` calls that
    change the dtype, i.e. autocast or ``.to(dtype)``), ``syncs`` (Counter of sync-point operators),
    ``kernels_by_phase`` / ``syncs_by_phase`` (by the innermost :func:`phase` label, "other" outside).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.casts = 0
        self.kernels_by_phase: Counter[str] = Counter()
        self.syncs_by_phase: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = _short_name(func)
        self.ops[name] += 1
        label = current_phase()
        if name not in _VIEW_OPS:
            self.kernels_by_phase[label] += 1
        if name in _SYNC_OPS:
            self.syncs[name] += 1
            self.syncs_by_phase[label] += 1
        if name == "_to_copy" and "dtype" in kwargs and args and isinstance(args[0], torch.Tensor):
            if kwargs["dtype"] is not None and kwargs["dtype"] != args[0].dtype:
                self.casts += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def views(self) -> int:
        return sum(count for name, count in self.ops.items() if name in _VIEW_OPS)

    @property
    def kernels(self) -> int:
        return self.total - self.views

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())

    def summary(self, top: int = 10) -> dict[str, Any]:
        """Plain-dict summary: totals plus the ``top`` most frequent operators."""
        return {
            "ops": self.total,
            "kernels": self.kernels,
            "casts": self.casts,
            "syncs": self.sync_count,
            "sync_ops": dict(self.syncs),
            "top_ops": dict(self.ops.most_common(top)),
        }


# ------------------------------------------------------------------------------------------ phases
_PHASE_STACK: list[str] = []
_EVENT_TIMING = {"enabled": False}
_PHASE_EVENTS: list[tuple[str, Any, Any]] = []


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Label a stretch of work (e.g. ``"G_main"``) for :class:`OpCounter`, ``torch.profiler`` and,
    when :func:`enable_phase_timing` is on, CUDA-event timing. Costs ~2 us when nothing listens."""
    _PHASE_STACK.append(name)
    timed = _EVENT_TIMING["enabled"] and torch.cuda.is_available() and torch.cuda.is_initialized()
    start = end = None
    if timed:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if timed:
            end.record()
            _PHASE_EVENTS.append((name, start, end))
        _PHASE_STACK.pop()


def current_phase() -> str:
    return _PHASE_STACK[-1] if _PHASE_STACK else "other"


def enable_phase_timing(enabled: bool = True) -> None:
    """Record CUDA events around every :func:`phase` (benchmarks only: reading them syncs)."""
    _EVENT_TIMING["enabled"] = bool(enabled)
    _PHASE_EVENTS.clear()


def phase_times_ms(reset: bool = True) -> dict[str, tuple[float, int]]:
    """``{phase: (total GPU milliseconds, count)}`` of the recorded phases (synchronises the device)."""
    if _PHASE_EVENTS:
        torch.cuda.synchronize()
    totals: dict[str, tuple[float, int]] = {}
    for name, start, end in _PHASE_EVENTS:
        ms, count = totals.get(name, (0.0, 0))
        totals[name] = (ms + start.elapsed_time(end), count + 1)
    if reset:
        _PHASE_EVENTS.clear()
    return totals
