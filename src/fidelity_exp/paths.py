"""Where relative paths point: the directory the command was started in, never Hydra's job dir;
and how run files are written (atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name beside the target, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
    os.replace(tmp, path)
