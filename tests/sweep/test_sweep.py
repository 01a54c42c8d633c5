"""Sweeps end to end through the command line: Optuna study + MLflow parent/child runs, parallel
launchers, resume after a kill, failed trials, and the sweep report (bad sweep input:
tests/sweep/test_sweep_input.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..command import cli

TINY = ["model=tiny_random", "finetune.max_steps=2", "eval.n=60", "validation.n=40", "metrics.bootstrap=10",
        "metrics.reference_splits=2"]
LORA = ["-m", "+experiment=quickstart", "+sweep=lora", *TINY, "hydra.sweeper.n_trials=3"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
pytestmark = pytest.mark.slow


def _study(root: Path) -> optuna.Study:
    storage = f"sqlite:///{root / 'mlruns' / 'optuna.db'}"
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return optuna.load_study(study_name=name, storage=storage)


def _runs(root: Path, experiment: str = "anes96") -> tuple[MlflowClient, list, list]:
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) + len(children) == len(runs)
    return client, parents, children


def _states(study: optuna.Study) -> dict[str, int]:
    return pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()


def _optuna_warnings(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    return [f"{a}\n{b}" for a, b in zip(lines, lines[1:] + [""])
            if "Warning" in a and ("optuna" in a.lower() or "optuna" in b.lower())]


def test_joblib_sweep_parent_children_study_and_idempotent_rerun(tmp_path):
    # every deprecation/future/experimental warning shown, so one from Optuna would be seen
    done = cli(*LORA, *JOBLIB, cwd=tmp_path, env={"PYTHONWARNINGS": "always"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert _optuna_warnings(done.stderr) == []
    study = _study(tmp_path)
    assert _states(study) == {"COMPLETE": 3}
    client, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.study_name"] == study.study_name
    assert int(parent.data.tags["sweep.best_trial"]) == study.best_trial.number
    note = parent.data.tags["mlflow.note.content"]            # the parent's description: the sweep summary
    assert note.startswith("# Sweep report") and study.study_name in note and "![" not in note
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        trial = study.trials[int(child.data.tags["sweep.trial"])]
        assert child.data.metrics["finetuned/fidelity_score"] == pytest.approx(trial.value)
        assert trial.user_attrs["mlflow_run_id"] == child.info.run_id
        assert child.data.params["score_on"] == "validation"
        assert child.data.params["finetune.lora.rank"] == str(trial.params["finetune.lora.rank"])
    # the objective came from validation humans, never from evaluation humans
    ids = {name: set(pd.read_csv(client.download_artifacts(children[0].info.run_id, f"split/{name}_ids.csv",
                                                            str(tmp_path / name))).id)
           for name in ("pilot", "validation")}
    assert len(ids["validation"]) == 40 and not ids["validation"] & ids["pilot"]
    report = client.list_artifacts(parent.info.run_id, "sweep_report")
    assert {"sweep_report/report.html", "sweep_report/report.md", "sweep_report/trials.csv"} <= {a.path for a in report}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep_report/plots")}
    assert "sweep_report/plots/optimization_history.png" in plots

    again = cli(*LORA, *JOBLIB, cwd=tmp_path)   # the same command: the study is done, nothing runs again
    assert again.returncode == 0, again.stderr[-3000:]
    assert _states(_study(tmp_path)) == {"COMPLETE": 3}
    _, parents2, children2 = _runs(tmp_path)
    assert [p.info.run_id for p in parents2] == [parent.info.run_id]
    assert sorted(c.info.run_id for c in children2) == sorted(c.info.run_id for c in children)


def test_killed_sweep_resumes_without_duplicates(tmp_path):
    """SIGKILL of the sweep and its workers mid-trial: the trial's heartbeat goes stale; the same
    command fails it with the reason (Optuna's heartbeat) and runs it again, once."""
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FIDELITY_DEBUG")}
    proc = subprocess.Popen([sys.executable, "-m", "fidelity_exp", *LORA, *JOBLIB, *beat], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:   # kill it once trial 2 is running
            try:
                states = _states(_study(tmp_path))
            except Exception:
                states = {}
            if states.get("COMPLETE", 0) >= 2 and states.get("RUNNING", 0) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)   # the sweeper and its joblib workers, mid-trial
    finally:
        proc.wait()
    before = {t.number: t.state.name for t in _study(tmp_path).trials}
    assert list(before.values()).count("COMPLETE") == 2 and list(before.values()).count("RUNNING") == 1, before

    done = cli(*LORA, *JOBLIB, *beat, cwd=tmp_path)   # at once: it waits for the trial to go stale
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study(tmp_path)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3, ({t.number: (t.state.name, t.user_attrs) for t in study.trials}, done.stderr[-2000:])
    for number, state in before.items():   # finished trials were not run again
        if state == "COMPLETE":
            assert study.trials[number].state.name == "COMPLETE"
    (interrupted,) = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert interrupted.state.name == "FAIL" and before[interrupted.number] == "RUNNING"
    assert interrupted.user_attrs["error"].startswith("interrupted: no heartbeat from its sweep process")
    with warnings.catch_warnings():   # Optuna calls its own record of retries experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        (rerun,) = [t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == interrupted.number]
    assert rerun.params == interrupted.params and "error" not in rerun.user_attrs
    _, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(int(c.data.tags["sweep.trial"]) for c in finished) == sorted(t.number for t in complete)
    # The interrupted trial's run is KILLED with the reason; it has no run at all when the kill
    # came between Optuna's ask and the run's creation.
    unfinished = [c for c in children if c.info.status != "FINISHED"]
    assert len(unfinished) <= 1
    for killed in unfinished:
        assert killed.info.status == "KILLED" and int(killed.data.tags["sweep.trial"]) == interrupted.number
        assert killed.data.tags["error"].startswith("interrupted")


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A config mistake is refused before any trial (below); what only shows while a trial runs
    (here: its model's tokenizer file is not there) fails that trial, and the sweep goes on."""
    good, missing = "SmolLM2-135M-Instruct.Q4_1.gguf", "missing.gguf"
    done = cli("-m", "+experiment=quickstart", "+sweep=lora", *TINY, "hydra.sweeper.sampler=grid",
               f"model.tokenizer.file=choice('{good}','{missing}')", "finetune.lora.rank=choice(4)",
               "simulate.temperature=choice(1.0)", "finetune.learning_rate=choice(0.001)", "finetune.epochs=choice(1)",
               "simulate.option_order=choice(averaged)", "finetune.option_order=choice(random)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study(tmp_path)
    by_file = {t.params["model.tokenizer.file"]: t for t in study.trials}
    assert by_file[good].state.name == "COMPLETE" and by_file[missing].state.name == "FAIL"
    assert by_file[good].params["simulate.option_order"] == "averaged"     # order modes are plain sweep values
    assert "missing.gguf" in by_file[missing].user_attrs["error"]
    _, parents, children = _runs(tmp_path)
    status = {int(c.data.tags["sweep.trial"]): c for c in children}
    assert status[by_file[missing].number].info.status == "FAILED" and "error" in status[by_file[missing].number].data.tags
    assert status[by_file[good].number].info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    ran = status[by_file[good].number].data
    assert ran.params["simulate.option_order"] == "averaged" and ran.params["finetune.option_order"] == "random"
    assert "finetuned/position/primacy/mean" in ran.metrics


def test_pilot_size_grid_on_submitit_local_draws_the_curve(tmp_path):
    done = cli("-m", "+experiment=quickstart", "+sweep=pilot_size", *TINY, "validation.n=0",
               "pilot.n=choice(30,60)", "seed=choice(0,1)", "arms=[base,finetuned,pilot_resample]",
               "hydra/launcher=submitit_local", "hydra.sweeper.batch_size=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study(tmp_path)
    assert _states(study) == {"COMPLETE": 4}
    assert sorted((t.params["pilot.n"], t.params["seed"]) for t in study.trials) == [(30, 0), (30, 1), (60, 0), (60, 1)]
    client, parents, children = _runs(tmp_path)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert "sweep.best_trial" not in parents[0].data.tags    # a grid is a design, not a search
    # every trial was scored on the same evaluation humans
    evaluation = [set(pd.read_csv(client.download_artifacts(c.info.run_id, "split/evaluation_ids.csv",
                                                           str(tmp_path / c.info.run_id))).id) for c in children]
    assert all(e == evaluation[0] for e in evaluation) and len(evaluation[0]) == 60
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep_report/plots")}
    assert "sweep_report/plots/pilot_size.png" in plots
    trials = pd.read_csv(client.download_artifacts(parents[0].info.run_id, "sweep_report/trials.csv", str(tmp_path)))
    assert {"base/fidelity_score", "finetuned/fidelity_score", "pilot_resample/fidelity_score",
            "reference/human_split/fidelity_score", "overhead_share"} <= set(trials.columns)


def test_slurm_launcher_config_composes(tmp_path):
    shown = cli("+experiment=quickstart", "+sweep=lora", "hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    launcher = yaml.safe_load(shown.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["gpus_per_node"] == 1


def test_budget_sweep_reports_width_by_share_and_coverage(tmp_path):
    done = cli("-m", "+experiment=ppi_coverage", "+sweep=ppi_budget", "model=tiny_random", "finetune.max_steps=2",
               "eval.n=100", "metrics.bootstrap=10", "pilot.finetune_fraction=choice(0.4,0.6)", "pilot.n=choice(80)",
               "seed=range(0,2)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study = _study(tmp_path)
    assert _states(study) == {"COMPLETE": 4} and study.direction.name == "MINIMIZE"
    client, parents, children = _runs(tmp_path, "disclosure")
    assert len(children) == 4
    for child in children:   # the objective is the rectified width, logged beside the other estimators
        trial = study.trials[int(child.data.tags["sweep.trial"])]
        assert child.data.metrics["ppi/regression/disclosure/width/mean"] == pytest.approx(trial.value)
        assert "pilot_only/regression/disclosure/width/mean" in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep_report")}
    assert "sweep_report/coverage.csv" in artifacts
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep_report/plots")}
    assert "sweep_report/plots/budget.png" in plots
    coverage = pd.read_csv(client.download_artifacts(parents[0].info.run_id, "sweep_report/coverage.csv",
                                                     str(tmp_path)))
    assert set(coverage["param:pilot.finetune_fraction"]) == {0.4, 0.6}
    assert set(coverage.estimator) == {"ppi", "pilot_only", "synthetic_only"} and coverage.trials.max() == 2
