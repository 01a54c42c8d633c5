"""Where relative paths point: the directory the command was started in, never Hydra's job dir."""

from __future__ import annotations

import os
from pathlib import Path


def start_dir() -> Path:
    """The directory the user started the command in (Hydra may have changed directory since)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except (ImportError, ValueError):
        pass
    return Path(os.getcwd())


def resolve(path: str | os.PathLike, base: Path | None = None) -> Path:
    """`path` made absolute against `base` (default: the start directory); `~` expanded."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (base or start_dir()) / p
