"""The command line as tests drive it: `cli` starts a real `python -m fidelity_exp` process;
`main` calls the same entry point (`fidelity_exp.__main__.main`) in this process, with its own
argv, working directory, environment and captured output: what a refusal needs, at a fraction of
a process start (the catalogue of bad input runs this way; a handful of its cases also run as real
processes, tests/reliability/test_bad_input.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

# Variables a user's shell may hold that change what a command does; every command starts without them.
CLEARED = ("MLFLOW_TRACKING_URI", "FIDELITY_DEBUG", "HYDRA_FULL_ERROR")


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m fidelity_exp ARGS` in `cwd`, as a user runs it."""
    environment = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "fidelity_exp", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def main(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`fidelity_exp.__main__.main()` with argv ARGS in `cwd`: exit status, stdout and stderr as a
    process would give them (an exception that escapes is printed with its traceback, status 1).
    Everything it changes in this process (environment, directory, argv, logging, Hydra's and
    MLflow's globals) is put back."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from fidelity_exp.__main__ import main as entry

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    root = logging.getLogger()
    saved_logging = root.handlers[:], root.level
    saved_hydra_config = HydraConfig.instance().cfg   # a test's composed config: a process starts without one
    status = 0
    try:
        for key in CLEARED:
            os.environ.pop(key, None)
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv = ["fidelity_exp", *args]
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry()
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = saved_hydra_config
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:], root.level = saved_logging[0], saved_logging[1]
        left_open = _reset_mlflow()
    assert not left_open, f"fidelity_exp {' '.join(args)} left MLflow run {left_open} active"
    return subprocess.CompletedProcess(["fidelity_exp", *args], status, out.getvalue(), err.getvalue())


def _reset_mlflow() -> str | None:
    """No active run and no tracking URI left behind by the command (the next one starts clean);
    returns the id of a run the command left active (a defect: a process would end it FINISHED)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    from mlflow.tracking import _tracking_service

    _tracking_service.utils._tracking_uri = None
    active = mlflow.active_run()
    left_open = active.info.run_id if active else None
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    return left_open
