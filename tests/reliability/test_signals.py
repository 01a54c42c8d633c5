"""SIGTERM (what `timeout`, `kill`, `docker stop` and batch time limits send) in the middle of a
run: the process stops like Ctrl-C, with one line and exit status 143, and its MLflow run is
KILLED with the signal as its reason instead of being left RUNNING. (SIGKILL, which no process
can catch: tests/reliability/test_crash.py; a sweep stopped by SIGTERM: tests/sweep and tests/cluster.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .store import query, run_rows


def test_sigterm_mid_simulation_ends_the_run_killed_with_the_reason(tmp_path):
    args = ("+experiment=quickstart", "model=tiny_random", "finetune=none", "arms=[base]", "eval.n=300",
            "simulate.batch_size=1", "metrics.bootstrap=5", "metrics.reference_splits=2")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FIDELITY_DEBUG")}
    proc = subprocess.Popen([sys.executable, "-m", "fidelity_exp", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "mlruns" / "mlflow.db"
    deadline = time.monotonic() + 240
    while not (db.exists() and query(db, "select 1 from params where key = 'model.n_parameters'")):  # simulating
        assert proc.poll() is None, f"the command ended before the signal:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run never reached its simulation"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)     # to the process alone, as `timeout` and `kill` do
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr, stderr[-3000:]
    [(run_id, status, error)] = run_rows(db)
    assert status == "KILLED" and "SIGTERM" in error, (status, error)
    assert not query(db, "select 1 from latest_metrics where run_uuid = ? and key like 'perf/base/%'", run_id)
