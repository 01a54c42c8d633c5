"""Where relative paths point: the directory the command was started in, never Hydra's job dir;
and how run files are written (atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fidelity_exp.errors import ConfigError
from fidelity_exp.settings import Checked, group, option

PATH = r"[^\x00]+"


@group("paths")
@dataclass
class PathSettings(Checked):
    """The `paths` group: where runs and stores go (conf/paths/default.yaml)."""

    root: str = option(".", pattern=PATH, what="a path")
    mlruns: str = option("mlruns", pattern=PATH, what="a path")
    outputs: str = option("mlruns/outputs", pattern=PATH, what="a path")


def writable_folder(path: str | os.PathLike, key: str) -> Path:
    """`path` resolved and created if need be; a `ConfigError` naming `key` when it cannot be a
    folder this process writes to (checked before a run starts, so nothing is half-written)."""
    target = resolve(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as e:
        raise ConfigError(key, str(path), f"expected a folder this process can create and write to "
                          f"({e.strerror}: {e.filename or target})") from None
    return target


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
