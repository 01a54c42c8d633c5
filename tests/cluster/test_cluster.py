"""Sweeps on a real cluster: SLURM (with accounting), an Optuna study in PostgreSQL and an MLflow
tracking server on PostgreSQL with proxied artifacts, all started by deploy/local_cluster.sh.

Each test uses its own study name and MLflow experiment, so the cluster's state can outlive a run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ..tracking.races import RACES, race_two_trials

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local_cluster.sh"
PG_BIN = "/usr/lib/postgresql/15/bin"   # local_cluster.sh's PG_BIN
pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# 4 tiny_random trials; no traces and no system metrics: trials are short and mostly computing
TRIAL = ["model=tiny_random", "finetune.max_steps=2", "eval.n=40", "validation.n=0", "metrics.bootstrap=10",
         "metrics.reference_splits=2", "arms=[finetuned]", "tracking.traces_per_arm=0",
         "tracking.system_metrics=false"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=main", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=20"]


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The cluster's environment (SLURM_CONF, MLFLOW_TRACKING_URI, FIDELITY_OPTUNA_STORAGE), brought up
    if it is not (CI brings it up first: `make test`)."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("deploy/local_cluster.sh needs root (CI runs these tests as root)")
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    lines = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in lines.splitlines() if line.startswith("export "))
    return env


def _env(cluster: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FIDELITY_DEBUG" and not k.startswith("SLURM_")}
    return {**env, **cluster}


def _command(cluster: dict[str, str], name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fidelity_exp", "-m", "+experiment=quickstart", "+sweep=pilot_size", *TRIAL,
            "pilot.n=choice(30,60)", "seed=choice(0,1)", *SLURM, f"hydra.sweeper.storage={cluster['FIDELITY_OPTUNA_STORAGE']}",
            f"hydra.sweeper.study_name={name}", f"tracking.experiment={name}", *extra]


def _slurm(cluster, *args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, env=_env(cluster), timeout=60)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def _postgres(tool: str, *args: str) -> None:
    """One of PostgreSQL's programs, as the postgres user (how local_cluster.sh runs them)."""
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/{tool}", *args], check=True, capture_output=True)


def _study(cluster, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=cluster["FIDELITY_OPTUNA_STORAGE"])


def _runs(client: MlflowClient, name: str) -> tuple[list, list]:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return ([r for r in runs if r.data.tags.get("sweep.role") == "parent"],
            [r for r in runs if r.data.tags.get("sweep.role") == "trial"])


def _points(study: optuna.Study, state: str) -> list[tuple]:
    return sorted((t.params["pilot.n"], t.params["seed"]) for t in study.trials if t.state.name == state)


def _job_state(cluster, job: str) -> str:
    out = _slurm(cluster, "sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job)
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return states.get(job, "UNKNOWN").split()[0]


def test_pilot_size_sweep_runs_as_a_slurm_job_array_into_postgresql_and_the_tracking_server(cluster, tmp_path):
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    done = subprocess.run(_command(cluster, name), cwd=tmp_path, env=_env(cluster), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"4-trial sweep on the cluster: {time.monotonic() - started:.1f} s")

    # one job array of 4 tasks, all COMPLETED in SLURM's accounting
    (array,) = {line.split(": ", 1)[0].rsplit(" ", 1)[-1] for line in (done.stdout + done.stderr).splitlines()
                if "SLURM job array" in line}
    out = _slurm(cluster, "sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array)
    tasks = dict(line.split("|", 1) for line in out.splitlines())
    assert sorted(tasks) == [f"{array}_{i}" for i in range(4)] and set(tasks.values()) == {"COMPLETED"}, tasks

    # the study in PostgreSQL
    study = _study(cluster, name)
    assert _points(study, "COMPLETE") == [(30, 0), (30, 1), (60, 0), (60, 1)] and len(study.trials) == 4

    # the runs, metrics, artifacts and registered adapters on the tracking server
    client = MlflowClient(cluster["MLFLOW_TRACKING_URI"])
    parents, children = _runs(client, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        trial = study.trials[int(child.data.tags["sweep.trial"])]
        assert child.data.metrics["finetuned/fidelity_score"] == pytest.approx(trial.value)
        assert child.data.tags["slurm.job_id"] in tasks
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")   # proxied by the server
        ids = pd.read_csv(client.download_artifacts(child.info.run_id, "split/evaluation_ids.csv", str(tmp_path)))
        assert len(ids) == 40
        versions = client.search_model_versions(f"run_id = '{child.info.run_id}'")
        assert len(versions) == 1 and versions[0].source.startswith("mlflow-artifacts:"), versions
    report = client.download_artifacts(parents[0].info.run_id, "sweep_report/trials.csv", str(tmp_path))
    assert len(pd.read_csv(report)) == 4
    artifacts = Path(cluster["FIDELITY_CLUSTER_DIR"]) / "mlflow-artifacts"
    assert any(artifacts.rglob("evaluation_ids.csv"))   # they live with the server, not in the client's folder
    assert not (tmp_path / "mlruns" / "artifacts").exists()


def test_cancelled_and_killed_trials_and_a_cancelled_sweep_lose_nothing(cluster, tmp_path):
    """scancel of an array task, SIGKILL of a trial's process, scancel of the sweep's own job: each
    killed attempt ends FAIL/KILLED with its reason; the same command, as a new SLURM job, finishes
    the study with every point COMPLETE exactly once."""
    name = f"fault-{uuid.uuid4().hex[:8]}"
    # trials of ~45 s: a job's SIGTERM is bypassed by submitit, so a scancel'd job only dies at SIGKILL,
    # KillWait (10 s) later; shorter trials could finish in between and rightly count as done
    command = shlex.join([a.replace("max_steps=2", "max_steps=200") for a in
                          _command(cluster, name, "hydra.sweeper.batch_size=1")])
    client = MlflowClient(cluster["MLFLOW_TRACKING_URI"])

    def submit(label: str) -> str:
        return _slurm(cluster, "sbatch", "--parsable", "--job-name", f"sweep-{label}", "--cpus-per-task=1",
                      "--mem=2G", f"--chdir={tmp_path}", f"--output={tmp_path}/{label}.log",
                      "--wrap", command).strip()

    def running_trial(but: set[str]):
        """A trial's run that its job has started (RUNNING), other than those in `but`."""
        found = [c for c in _runs(client, name)[1] if c.info.status == "RUNNING" and c.info.run_id not in but]
        return found[0] if found else None

    def trial_state(run) -> str:
        return _study(cluster, name).trials[int(run.data.tags["sweep.trial"])].state.name

    sweep = submit("first")
    hit: dict[str, object] = {}
    cancelled = _wait(lambda: running_trial(set()), 300, "a trial to run")
    _slurm(cluster, "scancel", cancelled.data.tags["slurm.job_id"])          # 1. one array task
    _wait(lambda: trial_state(cancelled) == "FAIL", 120, "the cancelled trial to be failed")
    hit["cancelled"] = cancelled

    killed = _wait(lambda: running_trial({cancelled.info.run_id}), 300, "another trial to run")
    os.kill(int(killed.data.tags["fidelity.pid"]), signal.SIGKILL)            # 2. a trial's process
    _wait(lambda: trial_state(killed) == "FAIL", 120, "the killed trial to be failed")
    hit["killed"] = killed

    stopped = _wait(lambda: running_trial({cancelled.info.run_id, killed.info.run_id}), 300, "a third trial to run")
    _slurm(cluster, "scancel", sweep)                                          # 3. the sweep's own job
    _wait(lambda: _job_state(cluster, sweep) not in ("RUNNING", "PENDING", "UNKNOWN"), 120, "the sweep job to end")
    assert _job_state(cluster, sweep) == "CANCELLED"
    hit["stopped"] = stopped
    log = (tmp_path / "first.log").read_text()
    assert "cancelled SLURM jobs" in log, log[-3000:]
    _wait(lambda: not _slurm(cluster, "squeue", "-h").strip(), 120, "no job left in the queue")   # trials cancelled too

    again = submit("again")                                                   # the same command, a new job
    _wait(lambda: _job_state(cluster, again) not in ("RUNNING", "PENDING", "UNKNOWN"), 900, "the second sweep job")
    assert _job_state(cluster, again) == "COMPLETED", (tmp_path / "again.log").read_text()[-4000:]

    study = _study(cluster, name)
    assert _points(study, "COMPLETE") == [(30, 0), (30, 1), (60, 0), (60, 1)], [(t.number, t.state.name, t.params)
                                                                                for t in study.trials]
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    failed = {t.number: t for t in study.trials if t.state.name == "FAIL"}
    parents, children = _runs(client, name)
    by_trial = {int(c.data.tags["sweep.trial"]): c for c in children}
    assert len(by_trial) == len(children)   # one run per trial
    reasons = {"cancelled": "CANCELLED", "killed": "FAILED", "stopped": "stopped (signal SIGTERM)"}
    for what, run in hit.items():
        trial = failed.pop(int(run.data.tags["sweep.trial"]))
        assert trial.user_attrs["interrupted"] and reasons[what] in trial.user_attrs["error"], (what, trial.user_attrs)
        child = by_trial[trial.number]
        assert child.info.status == "KILLED" and reasons[what] in child.data.tags["error"], (what, child.data.tags)
    assert not failed, {n: t.user_attrs for n, t in failed.items()}   # nothing else failed
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(int(c.data.tags["sweep.trial"]) for c in finished) == sorted(
        t.number for t in study.trials if t.state.name == "COMPLETE")
    assert len(children) == 7 and len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_the_sweep_goes_on_through_a_postgresql_restart(cluster, tmp_path):
    name = f"restart-{uuid.uuid4().hex[:8]}"
    state = Path(cluster["FIDELITY_CLUSTER_DIR"])
    client = MlflowClient(cluster["MLFLOW_TRACKING_URI"])
    proc = subprocess.Popen(_command(cluster, name, "hydra.sweeper.batch_size=2"), cwd=tmp_path, env=_env(cluster),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # while the first two trials compute (fine-tuning: nothing to write), PostgreSQL goes away and comes back
        _wait(lambda: sum(c.info.status == "RUNNING" for c in _runs(client, name)[1]) == 2, 300, "two running trials")
        _postgres("pg_ctl", "-D", str(state / "postgres"), "-m", "fast", "-w", "stop")
        time.sleep(5)
        subprocess.run(["bash", str(SCRIPT), "up"], check=True, capture_output=True)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    study = _study(cluster, name)
    assert _points(study, "COMPLETE") == [(30, 0), (30, 1), (60, 0), (60, 1)] and len(study.trials) == 4, out[-3000:]
    parents, children = _runs(client, name)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")   # MLflow's pandas calls, in threads
@pytest.mark.parametrize("table", sorted(RACES))
def test_two_trials_writing_one_row_at_once_both_succeed_on_postgresql(cluster, table, tmp_path):
    """The race of tests/tracking (MLflow's look-up-then-insert of a dataset or the experiment's
    description) on the cluster's PostgreSQL, whose error differs from sqlite's ("duplicate key
    value violates unique constraint"): in a scratch database, dropped afterwards."""
    port = cluster["FIDELITY_OPTUNA_STORAGE"].rsplit(":", 1)[1].split("/", 1)[0]
    psql = ("psql", "-h", str(Path(cluster["FIDELITY_CLUSTER_DIR"]) / "run"), "-p", port, "-U", "postgres", "-qAt", "-c")
    database = f"race_{uuid.uuid4().hex[:8]}"
    _postgres(*psql, f"CREATE DATABASE {database} OWNER fidelity")
    try:
        uri = cluster["FIDELITY_OPTUNA_STORAGE"].rsplit("/", 1)[0] + f"/{database}"
        race_two_trials(uri, table, tmp_path)
    finally:   # FORCE: MLflow's engine in this process still holds connections to it
        _postgres(*psql, f"DROP DATABASE {database} WITH (FORCE)")
