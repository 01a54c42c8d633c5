"""Four processes at once on one sqlite MLflow store and one Optuna study (the same sweep command
started four times, as four terminals or four cluster jobs would): no run and no trial is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ..sweep.test_sweep import LORA, _study

PROCESSES = 4
TRIALS = 12


@pytest.mark.slow
def test_four_processes_one_store_one_study_lose_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FIDELITY_DEBUG")}
    command = [sys.executable, "-m", "fidelity_exp", *LORA, f"hydra.sweeper.n_trials={TRIALS}"]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(PROCESSES)]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]

    study = _study(tmp_path)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert all(s == optuna.trial.TrialState.COMPLETE for s in states), [(t.state, t.user_attrs.get("error")) for t in trials]
    # each process stops asking once n_trials are finished or running; racing asks may add a few
    assert TRIALS <= len(trials) <= TRIALS + PROCESSES - 1

    client = MlflowClient(f"sqlite:///{Path(tmp_path) / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("anes96").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1, [p.info.run_id for p in parents]   # one study, one parent, whoever started first
    assert len(children) == len(trials) and len(runs) == len(trials) + 1
    by_trial = {int(c.data.tags["sweep.trial"]): c for c in children}
    assert sorted(by_trial) == [t.number for t in trials]          # exactly one run per trial
    for t in trials:
        run = by_trial[t.number]
        assert run.info.status == "FINISHED" and run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.metrics["finetuned/fidelity_score"] == pytest.approx(t.value)
    print(f"{PROCESSES} processes: {len(trials)} trials, {len(children)} child runs, none lost")
