"""`python -m fidelity_exp +experiment=NAME [overrides]`: compose the config, run the recipe."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fidelity_exp.errors import Terminated, UserError, raise_terminated
from fidelity_exp.study.loading import AliasBomb, bound_omegaconf_yaml
from fidelity_exp.sweep.configs import register_sweeps

bound_omegaconf_yaml()  # a YAML alias bomb is refused in milliseconds, not expanded
register_sweeps()  # the `sweep` group: sweeps/*.yaml (python -m fidelity_exp -m ... +sweep=lora)

# A source checkout keeps the configs at the repository root; a wheel carries them inside the package.
# Absolute, so that the configs are found however main() is reached (`python -m`, the console script, a test).
_HERE = Path(__file__).resolve().parent
CONFIG_PATH = str(_HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parents[1] / "conf")
log = logging.getLogger("fidelity_exp")


def _debug() -> bool:
    return os.environ.get("FIDELITY_DEBUG", "").lower() in ("1", "true", "yes")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def app(cfg: DictConfig) -> dict[str, float | None]:
    """One run; returns its metrics (a sweep reads its objective from them)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fidelity_exp import pipeline

    hc = HydraConfig.get()
    try:
        return pipeline.run(cfg, choices=dict(hc.runtime.choices), overrides=list(hc.overrides.task),
                            output_dir=hc.runtime.output_dir)
    except UserError as e:
        # In a sweep the error goes back to the sweeper, which records the trial as failed.
        if _debug() or hc.mode == RunMode.MULTIRUN:
            raise
        # One message, no traceback: the user can act on it. Exit 2 like other CLI usage errors.
        print(f"fidelity_exp: error: {e}", file=sys.stderr)
        sys.exit(2)


def _user_mistake(e: BaseException) -> str | None:
    """The message for an error in what the user typed or wrote (an unknown config option, a
    malformed YAML file, a missing mandatory value); None for anything else (a bug)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, AliasBomb):
        return f"refused YAML: {str(e).strip()}"
    if isinstance(e, ValueError) and str(e).startswith("Only one of --run, --multirun"):   # Hydra's own flags
        return (f"{e} (a sweep's config: drop -m and give one value per swept key, e.g. "
                "`python -m fidelity_exp +experiment=quickstart pilot.n=50 --cfg job`)")
    if isinstance(e, yaml.YAMLError):   # its text names the file, line and column
        return f"malformed YAML: {e}"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        cause = e.__cause__
        extra = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) and str(cause) not in str(e) else ""
        return _explained(f"{e}{extra}")
    if isinstance(e, OSError) and e.filename and not _inside_app(e):   # Hydra's own run directory, config snapshot or log
        return (f"cannot write the run directory ({e.strerror}: {e.filename}); choose a folder you can write to "
                "with hydra.run.dir=... (hydra.sweep.dir=... for -m) or paths.outputs=...")
    return None


def _inside_app(e: BaseException) -> bool:
    """Whether `e` was raised while the run itself ran (then an OSError is a bug to show), rather
    than while Hydra prepared it."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is app.__wrapped__.__code__:
            return True
        tb = tb.tb_next
    return False


def _explained(message: str) -> str:
    """Hydra's message, with what the user can do about the common cases."""
    unknown = re.search(r"Could not override '([\w.]+)'", message)
    if unknown and "is not in struct" in message:   # a typo in a key: Hydra would advise `+key=...`
        key = unknown.group(1)
        value = re.search(rf"use \+{re.escape(key)}=(.*)", message)
        close = _close_keys(key)
        if close:   # else Hydra's own message (`+key=...` adds a key, e.g. to a spec under data.)
            return (f"unknown key {key!r}: did you mean {close[0]}? ({close[0]}={value.group(1) if value else '...'}; "
                    "the keys of each group: conf/<group>/*.yaml, or --cfg job)")
    missing = re.search(r"Could not (?:load|find) '([\w/]+)/([^'/]+)'", message)
    if missing:
        group, name = missing.groups()
        known = _group_options(group, re.findall(r"path=(\S+)", message))
        what = "arm" if group == "arms" else f"{group} option"
        return f"unknown {what} {name!r} (config group {group}/); known: {', '.join(known) or 'none found'}"
    if "Cannot merge DictConfig with ListConfig" in message:
        message += ("\n(`arms` is a config group: choose arms with `arms=[base,tabular]` on the command line, or in "
                    "an experiment file with `- override /arms: [base, tabular]` under `defaults:`)")
    if "Key 'baselines' is not in struct" in message:
        message += "\n(the baselines' options are now under arms: e.g. arms.tabular.l2=2)"
    return message


def _close_keys(key: str) -> list[str]:
    """The declared keys closest to a mistyped one (every typed group's fields, LoRA's, the arms')."""
    import dataclasses
    import difflib

    from fidelity_exp import pipeline  # noqa: F401  (its imports register every group)
    from fidelity_exp.arms import ARMS
    from fidelity_exp.llm.finetune import LoraSettings
    from fidelity_exp.settings import GROUPS, RunSettings

    known = [f.name for f in dataclasses.fields(RunSettings)]
    known += [f"{g}.{f.name}" for g, cls in GROUPS.items() for f in dataclasses.fields(cls)]
    known += [f"finetune.lora.{f.name}" for f in dataclasses.fields(LoraSettings)]
    known += [f"arms.{a}.{f.name}" for a in ARMS for f in dataclasses.fields(ARMS[a]) if f.name != "name"]
    return difflib.get_close_matches(key, known, n=1, cutoff=0.75)


def _group_options(group: str, search_path: list[str]) -> list[str]:
    """The options of a config group along Hydra's search path (file:// and pkg:// entries)."""
    import importlib.resources as resources

    names: set[str] = set()
    for entry in search_path:
        if entry.startswith("file://"):
            folder = Path(entry.removeprefix("file://")) / group
            names.update(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else None
        elif entry.startswith("pkg://"):
            try:
                folder = resources.files(entry.removeprefix("pkg://")).joinpath(group)
                names.update(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
            except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
                continue
    return sorted(names)


def main() -> None:
    """The command line: Hydra's own error printing is replaced by one message and exit 2 for the
    user's mistakes; a bug keeps its traceback (so does everything with FIDELITY_DEBUG=1 or
    HYDRA_FULL_ERROR=1 set by the user)."""
    wants_traceback = _debug() or os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"   # Hydra re-raises instead of printing a partial traceback
    # SIGTERM stops a run like Ctrl-C (KILLED, with the reason) instead of leaving it RUNNING
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None
    try:
        app()
    except KeyboardInterrupt as e:
        if wants_traceback:
            raise
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        print(f"fidelity_exp: stopped by {how}; a run in progress is marked KILLED with the reason", file=sys.stderr)
        sys.exit(128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT))
    except Exception as e:
        message = None if wants_traceback else _user_mistake(e)
        if message is None:
            raise
        print(f"fidelity_exp: error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
