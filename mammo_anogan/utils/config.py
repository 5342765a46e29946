"""OmegaConf resolvers shared by all entry points and tests.

``${project_root:}`` resolves to the repository root (the folder holding ``conf/``), so default data
and output paths do not depend on the directory a command is started from. ``${join_views:...}``
turns a view list into a folder-name tag (``[CC, MLO]`` -> ``cc-mlo``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def _join_views(views: object) -> str:
    return "-".join(str(v).lower() for v in views)  # type: ignore[union-attr]


def register_resolvers() -> None:
    """Register the project's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("join_views"):
        OmegaConf.register_new_resolver("join_views", _join_views)


register_resolvers()
