"""A real SIGKILL in the middle of fine-tuning and in the middle of simulation: the store still
opens, the killed run is marked FAILED with the reason on the next start, and re-running the same
command completes. (A sweep killed mid-trial: tests/sweep/test_sweep.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .store import query, run_rows

SMALL = ("model=tiny_random", "metrics.bootstrap=5", "metrics.reference_splits=2")


def _start(args: tuple[str, ...], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FIDELITY_DEBUG")}
    return subprocess.Popen([sys.executable, "-m", "fidelity_exp", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, db: Path, sql: str, timeout: float = 240) -> None:
    """SIGKILL the command's whole process group as soon as `sql` finds a row in the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the command ended before the kill point:\n{proc.stderr.read()[-3000:]}"
        if db.exists() and query(db, sql):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the kill point was never reached")


def _metric_keys(db: Path, run_id: str) -> set[str]:
    return {k for (k,) in query(db, "select key from latest_metrics where run_uuid = ?", run_id)}


def _rerun_and_check(args, tmp_path: Path, db: Path, killed: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fidelity_exp", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert query(db, "pragma integrity_check") == [("ok",)]
    runs = run_rows(db)
    assert len(runs) == 2, runs
    (first, status, error), (second, status2, _) = runs
    assert first == killed and status == "FAILED" and error.startswith("interrupted: process"), runs[0]
    assert status2 == "FINISHED"
    assert "finetuned/fidelity_score" in _metric_keys(db, second) or "base/fidelity_score" in _metric_keys(db, second)


@pytest.mark.slow
def test_sigkill_during_finetuning(tmp_path):
    args = ("+experiment=quickstart", *SMALL, "finetune.max_steps=60", "eval.n=40", "arms=[finetuned]")
    db = tmp_path / "mlruns" / "mlflow.db"
    proc = _start(args, tmp_path)
    _kill_when(proc, db, "select 1 from metrics where key = 'train/loss'")
    runs = run_rows(db)
    assert [r[1] for r in runs] == ["RUNNING"]           # SIGKILL gives the process no chance to mark its run
    steps = query(db, "select max(step) from metrics where key = 'train/loss'")[0][0]
    assert 1 <= steps < 60                               # killed in the middle of fine-tuning
    assert "perf/finetune_tokens_per_s" not in _metric_keys(db, runs[0][0])
    _rerun_and_check(args, tmp_path, db, killed=runs[0][0])


@pytest.mark.slow
def test_sigkill_during_simulation(tmp_path):
    # 400 evaluation humans, one twin at a time: a simulation of several seconds
    args = ("+experiment=quickstart", *SMALL, "finetune=none", "arms=[base]", "eval.n=400", "simulate.batch_size=1")
    db = tmp_path / "mlruns" / "mlflow.db"
    proc = _start(args, tmp_path)
    _kill_when(proc, db, "select 1 from params where key = 'model.n_parameters'")   # logged just before simulating
    runs = run_rows(db)
    assert [r[1] for r in runs] == ["RUNNING"]
    assert not {k for k in _metric_keys(db, runs[0][0]) if k.startswith("perf/base/")}   # the arm had not finished
    _rerun_and_check(args, tmp_path, db, killed=runs[0][0])
