"""A sweep: an Optuna study driven through Optuna's ask-and-tell API and a Hydra launcher.

    python -m fidelity_exp -m +experiment=quickstart +sweep=lora

1. The search space comes from `hydra.sweeper.params` and sweep syntax on the command line;
   the other overrides go to every trial. Every trial config a grid can produce (or, for a
   search, the fixed config) is checked before anything is written: bad input costs nothing.
2. The study lives in `hydra.sweeper.storage` (sqlite at `<paths.mlruns>/optuna.db` by default,
   any SQLAlchemy URL) under a name derived from the command, so the same command resumes it:
   finished trials are not run again.
3. Trials are asked in batches of the launcher's width, launched, and told: the objective is
   read from the metrics each run returns; a trial that raises, or whose objective is
   undefined, is told FAIL and the sweep goes on.
4. Liveness is Optuna's own trial heartbeat (every RDB storage, sqlite included): the sweeper
   beats for the trials it has launched until it tells them. A trial whose sweeper died (killed,
   its node gone) goes stale after `grace_period`; any sweep process of the study, on any host,
   then marks it FAIL with the reason and Optuna's RetryHeartbeatStaleTrialCallback queues it
   again. A trial whose job ended without a result (scancel, SIGKILL, a failed node) or that was
   stopped with the sweep (Ctrl-C, SIGTERM) is failed with the reason and queued again the same
   way, at most `max_retry` times. A sweep ends when no trial of the study is waiting or running.
5. MLflow (runs.py): a parent run per study, a child per trial; the sweep report (report.py)
   goes to the parent at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from fidelity_exp import pipeline
from fidelity_exp.errors import ConfigError, raise_terminated
from fidelity_exp.inference.regressions import ESTIMATORS, rectified_key
from fidelity_exp.metrics import key_info
from fidelity_exp.metrics.score import SCORE
from fidelity_exp.paths import PathSettings, resolve
from fidelity_exp.settings import Checked, option, typed
from fidelity_exp.study import SplitSettings, Study
from fidelity_exp.sweep.runs import SweepRuns, masked
from fidelity_exp.sweep.space import SearchSpace, parse
from fidelity_exp.tracking.mlflow_run import first_use_lock

log = logging.getLogger("fidelity_exp.sweep")
SAMPLERS = ("tpe", "random", "grid")
INTERRUPTED = "interrupted"   # user attr of a trial failed because its job or its sweeper ended without a result
REMOTE_LAUNCHERS = ("SlurmLauncher", "RayAWSLauncher")   # trials run on other machines (hydra.launcher._target_)


@dataclass
class SweeperSettings(Checked):
    """`hydra.sweeper` (conf/hydra/sweeper/fidelity_optuna.yaml documents each key)."""

    objective: str = f"finetuned/{SCORE}"   # a metric key the runs produce
    direction: Optional[str] = option(None, one_of=("minimize", "maximize"), nullable=True,
                                      what="minimize, maximize or null")
    sampler: str = option("tpe", one_of=SAMPLERS)
    sampler_kwargs: Dict[str, Any] = option({})
    seed: Optional[int] = None
    n_trials: int = 20
    batch_size: Optional[int] = option(None, ge=1, nullable=True, what="a positive integer or null")
    storage: Optional[str] = None
    heartbeat_interval: int = option(10, ge=1, what="a positive number of seconds")
    grace_period: int = option(60, ge=1, what="a positive number of seconds")
    max_retry: Optional[int] = option(3, ge=0, nullable=True, what="a number of retries >= 0, or null (no limit)")
    study_name: Optional[str] = None
    params: Dict[str, Any] = option({})

    def check(self) -> None:
        if self.sampler != "grid" and self.n_trials < 1:
            raise ConfigError("n_trials", self.n_trials, "expected a positive integer")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError("grace_period", self.grace_period, "expected more than hydra.sweeper.heartbeat_interval "
                              f"({self.heartbeat_interval}): a live trial would look stale between two heartbeats")


def default_storage(paths: PathSettings) -> str:
    path = resolve(paths.mlruns) / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"



def trials_run_here(launcher: Any) -> bool:
    """Whether `hydra.launcher` runs trials on this machine: then what depends on the device
    (qlora's CUDA, the memory check) is checked before any trial; with a cluster launcher each
    trial checks it on its own node, in its own run."""
    return str(launcher.get("_target_", "")).rsplit(".", 1)[-1] not in REMOTE_LAUNCHERS

class JobEnded(RuntimeError):
    """A trial's job that ended without a result (scancel, SIGKILL, a failed node): what a launcher
    returns for that trial (hydra_plugins/fidelity_exp_sweeper/slurm.py)."""


def cancel_slurm_job(job_id: str) -> None:
    """scancel a trial's job (`<array>_<task>`), where this host has SLURM's commands."""
    if shutil.which("scancel") is None:
        log.warning("SLURM job %s may still run: no scancel on this host", job_id)
        return
    done = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=60)
    log.warning("cancelled SLURM job %s%s", job_id, f" ({done.stderr.strip()})" if done.returncode else "")


class OptunaSweep:
    def __init__(self, settings: Mapping[str, Any], config: DictConfig, hydra_context, launcher):
        raw = OmegaConf.to_container(OmegaConf.create(dict(settings)), resolve=True)
        self.s = typed(SweeperSettings, raw, "hydra.sweeper", "the sweeper's settings")
        self.config, self.hydra_context, self.launcher = config, hydra_context, launcher
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.batch_size = self._batch_size()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=self.s.max_retry)
        self.beating: dict[int, int] = {}   # trial number -> trial id: the trials this process heartbeats

    # -- set-up -----------------------------------------------------------------------------
    def _batch_size(self) -> int:
        if self.s.batch_size is not None:
            return self.s.batch_size
        launcher = self.config.hydra.launcher   # the launcher's width: its own config, not ours
        size = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
        size = os.cpu_count() or 1 if size == -1 else size
        if not isinstance(size, int) or size < 1:
            raise ConfigError("hydra.sweeper.batch_size", size, "expected a positive integer or null")
        return int(size)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def check(self, space: SearchSpace) -> tuple[DictConfig, pipeline.Plan, str]:
        """Check the configs trials will run (all of a grid's; each param's values one at a time
        for the other samplers) and the objective; returns the fixed config, its plan and the
        study direction."""
        base = self.compose(space.fixed)
        here = trials_run_here(self.config.hydra.launcher)
        fixed = pipeline.plan(base, dict(base.hydra.runtime.choices), device_checks=here)
        points = space.grid() if self.s.sampler == "grid" else space.one_at_a_time()
        for point in points:
            cfg = self.compose(space.overrides(point))
            same_data = OmegaConf.to_yaml(cfg.data) == OmegaConf.to_yaml(base.data)
            pipeline.plan(cfg, dict(cfg.hydra.runtime.choices), fixed.study if same_data else None,
                          device_checks=here)
        arms = fixed.arm_names
        objective = self.s.objective
        prefix = objective.split("/", 1)[0]
        direction = self.s.direction
        rectified = fixed.rectified or bool(set(SplitSettings.RECTIFY_KEYS) & set(space.distributions))
        if prefix in ESTIMATORS and rectified:   # e.g. ppi/regression/<r>/width/mean
            if direction is None:
                raise ConfigError("hydra.sweeper.direction", None, f"{objective} is not a fidelity metric: set "
                                  "minimize or maximize (an interval width: minimize)")
        else:
            info = key_info(objective)
            if info is None or prefix not in arms:
                raise ConfigError("hydra.sweeper.objective", objective,
                                  f"expected <arm>/<metric key> with an arm this sweep runs ({', '.join(arms)}), "
                                  f"e.g. finetuned/{SCORE} (keys: METRICS.md), or a rectified estimate's key "
                                  f"({rectified_key('ppi', 'R', 'width', 'mean')}) when pilot.finetune_fraction < 1")
            if direction is None:
                if info.higher_is_better is None:
                    raise ConfigError("hydra.sweeper.direction", None, f"{objective} has no better direction in the "
                                      "metric registry: set minimize or maximize")
                direction = "maximize" if info.higher_is_better else "minimize"
        return base, fixed, direction

    def study_name(self, space: SearchSpace, base: DictConfig, identity: dict[str, str]) -> str:
        """hydra.sweeper.study_name, else <sweep>-<study>-<hash of the space, the objective, the
        composed config and the data>: the same command resumes its study, and a sweep whose
        experiment file or data changed starts a new one."""
        if self.s.study_name:
            return self.s.study_name
        sweep = dict(base.hydra.runtime.choices).get("sweep") or "sweep"
        digest = hashlib.sha1((space.signature() + str(self.s.objective) + json.dumps(identity, sort_keys=True)
                               ).encode()).hexdigest()[:8]
        return f"{sweep}-{base.data.name}-{digest}"

    def sampler(self, n_existing: int):
        seed = None if self.s.seed is None else int(self.s.seed) + n_existing
        kwargs = dict(self.s.sampler_kwargs)
        if self.s.sampler == "tpe":
            kwargs.setdefault("constant_liar", self.batch_size > 1)
            return optuna.samplers.TPESampler(seed=seed, **kwargs)
        return optuna.samplers.RandomSampler(seed=seed, **kwargs)  # grid: only enqueued points run

    # -- the sweep --------------------------------------------------------------------------
    def run(self, arguments: list[str]) -> list[dict]:
        space = parse(dict(self.s.params), arguments)
        if not space.distributions:
            raise ConfigError("hydra.sweeper.params", {}, "expected at least one swept param, e.g. "
                              "finetune.lora.rank: choice(4,8,16)")
        base, fixed, direction = self.check(space)
        task_cfg = self._task_config(base)
        identity = study_identity(task_cfg, fixed.study)
        name = self.study_name(space, base, identity)
        url = self.s.storage or default_storage(fixed.settings.paths)
        with first_use_lock(url), warnings.catch_warnings():   # several processes may start on one new sqlite file
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # the heartbeat, on purpose
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=int(self.s.heartbeat_interval), grace_period=int(self.s.grace_period),
                heartbeat_stale_trial_callback=self.stale,
                # a database server restarted under a running sweep: stale pooled connections are replaced
                engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True})
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True)
        check_identity(study, identity, masked(url))
        if study.direction.name.lower() != direction:
            raise ConfigError("hydra.sweeper.direction", direction, f"study {name!r} in {masked(url)} already "
                              f"optimises in direction {study.direction.name.lower()}")
        study.sampler = self.sampler(len(study.trials))
        log.info("study %s in %s (%s, objective %s, %s): %d trials so far", name, masked(url), self.s.sampler,
                 self.s.objective, direction, len(study.trials))
        self.study, self.storage, self.space = study, storage, space
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        where = fixed.settings
        self.runs = SweepRuns(where.tracking, where.paths, name) if where.tracking.enabled else None
        if self.runs:
            self.runs.open_parent(study, params=self._identity(space, direction, url, name), tags={
                "sweep.n_trials": self.s.n_trials, "sweep.batch_size": self.batch_size,
                "sweep.launcher": self.config.hydra.launcher._target_.rsplit(".", 1)[-1]},
                config_yaml=OmegaConf.to_yaml(task_cfg, resolve=True))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not t.user_attrs.get("heartbeat"):   # left by a version without heartbeats: one beat makes it
                storage.record_heartbeat(t._trial_id)   # stale after grace_period unless its sweep tells it
        if self.s.sampler == "grid":
            for point in space.grid():
                study.enqueue_trial(point, skip_if_exists=True)

        results: list[dict] = []
        job_idx = 0
        beats = threading.Thread(target=self._heartbeats, name="optuna-heartbeats", daemon=True)
        self._stopped = threading.Event()
        previous = signal.signal(signal.SIGTERM, raise_terminated) if threading.current_thread() is threading.main_thread() \
            else None   # scancel of the sweep's job, a cluster's preemption: the same as Ctrl-C
        beats.start()
        try:
            while True:
                self.recover()
                if batch := self.ask():
                    results += self.launch(batch, job_idx)
                    job_idx += len(batch)
                    if self.runs and self.s.sampler != "grid":
                        self.runs.record_best(study, list(space.distributions))
                    continue
                elsewhere = self.running_elsewhere()
                if not elsewhere:
                    break
                log.info("waiting for trials %s, running in other processes (or stale: then they are retried after "
                         "hydra.sweeper.grace_period=%ss)", ", ".join(map(str, elsewhere)), self.s.grace_period)
                time.sleep(float(self.s.heartbeat_interval))
        except BaseException as e:
            if self.runs:  # the parent is reopened when the same command runs again
                self.runs.finish_parent("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                                        reason=f"{type(e).__name__}: {e}")
            raise
        finally:
            self._stopped.set()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self.finish(sweep_dir)
        return results

    def _task_config(self, base: DictConfig) -> DictConfig:
        cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
        with open_dict(cfg):
            cfg.pop("hydra", None)
        return cfg

    def _identity(self, space: SearchSpace, direction: str, url: str, name: str) -> dict[str, str]:
        params = {"sweep.study_name": name, "sweep.objective": str(self.s.objective), "sweep.direction": direction,
                  "sweep.sampler": self.s.sampler, "sweep.storage": masked(url), "sweep.fixed": " ".join(space.fixed)}
        params.update({f"sweep.space.{k}": v for k, v in space.described().items()})
        return params

    # -- liveness ---------------------------------------------------------------------------
    def _heartbeats(self) -> None:
        """Beat for every trial this process launched and has not told yet (Optuna's heartbeat)."""
        while not self._stopped.wait(float(self.s.heartbeat_interval)):
            for trial_id in list(self.beating.values()):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:   # the database briefly away: the next beat tries again
                    log.debug("heartbeat of trial %s not written: %s", trial_id, e)

    def recover(self) -> None:
        """Trials whose sweeper stopped beating (killed, its node gone): failed with the reason and
        retried. Optuna's fail_stale_trials fails them and calls self.stale; the reason is written
        first, while they can still be updated (a finished trial's attributes are frozen)."""
        stale_ids = getattr(self.storage, "_get_stale_trial_ids", None)   # fail_stale_trials' own rule
        for trial_id in stale_ids(self.study._study_id) if stale_ids else ():
            trial = self.storage.get_trial(trial_id)
            reason = (f"interrupted: no heartbeat from its sweep process ({trial.user_attrs.get('sweeper_host')}, pid "
                      f"{trial.user_attrs.get('sweeper_pid')}) for over {self.s.grace_period} s: it was killed or "
                      "its node died")
            try:
                self.storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
                self.storage.set_trial_user_attr(trial_id, "error", reason)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass   # told or failed by another process meanwhile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def stale(self, study, trial: FrozenTrial) -> None:
        """Optuna's heartbeat_stale_trial_callback: a trial nobody has beaten for in grace_period."""
        reason = trial.user_attrs.get("error") or f"interrupted: no heartbeat for over {self.s.grace_period} s"
        log.warning("trial %d is stale (%s): running it again", trial.number, reason)
        self.give_up(trial, reason, already_failed=True)

    def give_up(self, trial: FrozenTrial, reason: str, already_failed: bool = False) -> None:
        """A trial that ended without a result through no fault of its own (its job or its sweeper
        died, the sweep was stopped): FAIL with the reason, its run KILLED, queued again (max_retry)."""
        fresh = copy.deepcopy(trial)   # the copy Optuna's RetryHeartbeatStaleTrialCallback queues: without the reason
        fresh.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (INTERRUPTED, "error")}
        self.retry(self.study, fresh)
        self.beating.pop(trial.number, None)
        if not already_failed:
            self.storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            self.storage.set_trial_user_attr(trial._trial_id, "error", reason[:1000])
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if self.runs:
            for child in self.runs.unfinished_children(trial.number):   # by tag: also a run whose id never reached
                job = self.runs.client.get_run(child).data.tags.get("slurm.job_id")   # the trial's attrs
                if already_failed and job:   # its sweeper died, its job may still run: no trial runs unowned
                    cancel_slurm_job(job)
                self.runs.settle_child(child, reason, status="KILLED")

    def running_elsewhere(self) -> list[int]:
        return [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number not in self.beating]

    def ask(self) -> list:
        trials = self.study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if self.s.sampler == "grid":
            k = min(self.batch_size, waiting)
        else:   # a FAIL that was queued again counts through its retry
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}   # the callback's record
            finished = sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in retried)
                           for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            k = min(self.batch_size, self.s.n_trials - finished - running)   # waiting retries are asked first
        batch = []
        for _ in range(max(k, 0)):
            with warnings.catch_warnings():   # "heartbeat is supposed to be used with Study.optimize": this
                warnings.filterwarnings("ignore", "Heartbeat of storage")   # process beats itself (_heartbeats)
                trial = self.study.ask(self.space.distributions)
            self.beating[trial.number] = trial._trial_id
            self.storage.record_heartbeat(trial._trial_id)   # stale-able from now on, even before the first beat
            trial.set_user_attr("heartbeat", True)
            trial.set_user_attr("sweeper_host", self.host)
            trial.set_user_attr("sweeper_pid", self.pid)
            if self.runs:
                trial.set_user_attr("mlflow_run_id", self.runs.create_child(trial.number, trial.params))
            batch.append(trial)
        return batch

    def launch(self, batch: list, job_idx: int) -> list[dict]:
        overrides = []
        for trial in batch:
            extra = [f"tracking.run_id={trial.user_attrs['mlflow_run_id']}"] if self.runs else []
            overrides.append(self.space.overrides(trial.params) + extra)
        log.info("launching trials %s", ", ".join(str(t.number) for t in batch))
        try:
            returns: list = list(self.launcher.launch(overrides, initial_job_idx=job_idx))
        except KeyboardInterrupt as e:
            for trial in batch:
                self.give_up(self.storage.get_trial(trial._trial_id),
                             f"interrupted: the sweep was stopped ({e or 'Ctrl-C'}) while this trial ran")
            raise
        except Exception as e:  # the launcher itself failed (a worker died, a cluster refused the job)
            returns = [e] * len(batch)
        results = []
        for trial, ret in zip(batch, returns):
            value, error = self.outcome(ret)
            if isinstance(ret, JobEnded):   # not the trial's fault: failed with the reason, queued again
                log.warning("trial %d: %s", trial.number, ret)
                self.give_up(self.storage.get_trial(trial._trial_id), f"interrupted: {ret}")
                results.append({"trial": trial.number, "params": trial.params, "value": None, "error": str(ret)})
                continue
            self.beating.pop(trial.number, None)
            if error is None:
                self.study.tell(trial, value)
                log.info("trial %d: %s = %.6g", trial.number, self.s.objective, value)
            else:
                trial.set_user_attr("error", error[:1000])
                self.study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed: %s", trial.number, error)
            if self.runs:
                self.runs.settle_child(trial.user_attrs.get("mlflow_run_id"), error)
            results.append({"trial": trial.number, "params": trial.params, "value": value, "error": error})
        return results

    def outcome(self, ret: Any) -> tuple[float | None, str | None]:
        if isinstance(ret, BaseException):
            return None, f"launcher: {type(ret).__name__}: {ret}"
        try:
            metrics = ret.return_value
        except Exception as e:  # the job raised: Hydra re-raises it here
            return None, f"{type(e).__name__}: {e}"
        value = metrics.get(str(self.s.objective)) if isinstance(metrics, dict) else None
        if value is None or not math.isfinite(float(value)):
            return None, f"objective {self.s.objective} is undefined in this trial"
        return float(value), None

    def finish(self, sweep_dir: Path) -> None:
        from fidelity_exp.sweep.report import write_sweep_report

        trials = self.runs.trial_runs() if self.runs else None
        folder = sweep_dir / "sweep_report"
        started = time.perf_counter()
        write_sweep_report(folder, self.study, trials, objective=str(self.s.objective),
                           grid=self.s.sampler == "grid")
        log.info("sweep report: %s (%.1f s)", folder, time.perf_counter() - started)
        if self.runs:
            from fidelity_exp.tracking import TrackedRun

            from fidelity_exp.tracking.notebook import NOTE, verdict_note

            parent = TrackedRun(self.runs.client, self.runs.parent_id)
            parent.log_dir(folder, "sweep_report")
            summary = "\n".join(line for line in (folder / "report.md").read_text().splitlines()
                                if not line.startswith("!["))   # the run page shows the summary, the artifact the plots
            parent.set_tags({NOTE: verdict_note(summary, {"report": "sweep_report/report.html"})})
            self.runs.finish_parent("FINISHED")


# -- what a study's trials were run with ---------------------------------------------------------------
IDENTITY_ATTR = "fidelity_exp.identity"
NOT_IDENTITY = ("paths", "tracking")   # where outputs and runs go: a resume may move them


def study_identity(task_cfg: DictConfig, study: Study) -> dict[str, str]:
    """What the trials' results depend on besides their params: the composed task config (without
    the output and tracking places), one line per key, and the study's spec and data (a digest of
    the checked human frame: an edited data file is another study)."""
    from pandas.util import hash_pandas_object

    cfg = {k: v for k, v in OmegaConf.to_container(task_cfg, resolve=True).items() if k not in NOT_IDENTITY}
    lines = {key: json.dumps(value, sort_keys=True, default=str) for key, value in _flat(cfg)}
    frame_digest = hashlib.sha1(hash_pandas_object(study.frame, index=True).to_numpy().tobytes()).hexdigest()[:12]
    lines["<data>"] = f"{study.spec.name} v{study.spec.version}, {len(study.frame)} respondents, digest {frame_digest}"
    return lines


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [item for k, v in value.items() for item in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def check_identity(study: optuna.Study, identity: dict[str, str], where: str) -> None:
    """A study keeps the identity of its first sweep; resuming it with another config or data would
    rank trials run under different settings together: refused, naming what changed."""
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        study.set_user_attr(IDENTITY_ATTR, identity)
        return
    changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
    if changed:
        shown = "; ".join(f"{k}: {stored.get(k, '(absent)')} -> {identity.get(k, '(absent)')}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ConfigError("hydra.sweeper.study_name", study.study_name,
                          f"study {study.study_name!r} in {where} ran its {len(study.trials)} trials with another "
                          f"configuration or data ({shown}{more}); resuming it would rank trials run under different "
                          "settings together. Put the settings back, or start a new study: another "
                          "hydra.sweeper.study_name, or leave it null (the name then follows the configuration)")
