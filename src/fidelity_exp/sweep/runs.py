"""The sweep in MLflow: one parent run per study, one child run per trial.

The sweeper creates each child (status SCHEDULED, tags `mlflow.parentRunId`, `sweep.trial`)
before it launches the trial, and passes its id to the job as `tracking.run_id`; the job logs
into it. So every trial has exactly one run, whichever launcher or machine runs it, and a trial
whose job dies without a word still ends FAILED (or KILLED when the sweep was interrupted).
The parent's id is kept in the Optuna study (`mlflow_parent_run_id`): a resumed sweep finds it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import pandas as pd

from fidelity_exp.metrics.registry import register_other
from fidelity_exp.paths import PathSettings
from fidelity_exp.tracking.mlflow_run import (
    MAX_PARAM_LENGTH,
    TrackedRun,
    TrackingSettings,
    get_or_create_experiment,
    git_state,
    open_client,
    tracking_uri,
)

PARENT_ATTR = "mlflow_parent_run_id"
register_other("best/value")   # the sweep's parent run: its best objective so far, at the trial's step
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def masked(url: str) -> str:
    """A storage URL without its password, fit for a tag."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class SweepRuns:
    def __init__(self, tracking: TrackingSettings, paths: PathSettings, study_name: str):
        self.uri = tracking_uri(tracking, paths)
        self.client = open_client(self.uri)
        self.experiment_id = get_or_create_experiment(self.client, tracking.experiment, tracking.artifact_root,
                                                      self.uri)
        self.study_name = study_name
        self.parent_id: str | None = None

    # -- the parent -------------------------------------------------------------------------
    def open_parent(self, study, params: Mapping[str, str], tags: Mapping[str, str], config_yaml: str) -> str:
        """The study's parent run, created on the first start and reopened on a resume."""
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id and not self._exists(run_id):
            run_id = None
        run_id = run_id or self._first_parent()
        created = False
        if run_id is None:
            mine = self.client.create_run(self.experiment_id, run_name=f"sweep {self.study_name}", tags={
                "sweep.study": self.study_name, "sweep.role": "parent", **git_state()}).info.run_id
            # Processes that start the same new sweep at once each create one: the earliest stays.
            run_id = self._first_parent()
            created = run_id == mine
            if not created:
                self.client.delete_run(mine)
        if created:
            parent = TrackedRun(self.client, run_id)
            parent.log_params(params)                 # what identifies the sweep; never changes
            parent.log_text(config_yaml, "config/config.yaml")
            study.set_user_attr(PARENT_ATTR, run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
            if "error" in self.client.get_run(run_id).data.tags:  # from an earlier, interrupted start
                self.client.delete_tag(run_id, "error")
        TrackedRun(self.client, run_id).set_tags(tags)  # what may change between starts (n_trials, ...)
        self.parent_id = run_id
        return run_id

    def _first_parent(self) -> str | None:
        found = self.client.search_runs([self.experiment_id], max_results=100,
                                        filter_string=f"tags.`sweep.study` = '{self.study_name}' and "
                                                      "tags.`sweep.role` = 'parent'")
        first = min(found, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
        return first.info.run_id if first else None

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    def record_best(self, study, params: list[str]) -> None:
        """The best complete trial so far (search samplers only: a grid is a design, not a search)."""
        from optuna.trial import TrialState

        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            return
        best = study.best_trial
        tags = {"sweep.best_trial": best.number, "sweep.best_value": best.value,
                "sweep.best_params": json.dumps(best.params), "sweep.best_run_id": best.user_attrs.get("mlflow_run_id")}
        parent = TrackedRun(self.client, self.parent_id)
        parent.set_tags({k: v for k, v in tags.items() if v is not None})
        parent.log_metrics({"best/value": best.value}, step=best.number)

    def finish_parent(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if self.parent_id:
            if reason:
                self.client.set_tag(self.parent_id, "error", reason[:MAX_PARAM_LENGTH])
            self.client.set_terminated(self.parent_id, status=status)

    # -- the children -----------------------------------------------------------------------
    def create_child(self, trial_number: int, params: Mapping[str, Any]) -> str:
        label = " ".join(f"{k}={v}" for k, v in params.items())
        run = self.client.create_run(self.experiment_id, run_name=f"t{trial_number} {label}"[:250], tags={
            "mlflow.parentRunId": self.parent_id, "sweep.study": self.study_name, "sweep.role": "trial",
            "sweep.trial": str(trial_number)})
        self.client.update_run(run.info.run_id, status="SCHEDULED")
        return run.info.run_id

    def settle_child(self, run_id: str | None, reason: str | None, status: str = "FAILED") -> None:
        """A trial's run that its job left unfinished: mark it with the reason."""
        if not run_id or not self._exists(run_id):
            return
        run = self.client.get_run(run_id)
        if run.info.status in TERMINAL:
            return
        if reason:
            self.client.set_tag(run_id, "error", reason[:MAX_PARAM_LENGTH])
        self.client.set_terminated(run_id, status=status)

    def unfinished_children(self, trial_number: int) -> list[str]:
        """Run ids of a trial's children not yet FINISHED/FAILED/KILLED (found by tag, so a run created just
        before a kill, whose id never reached the trial's user attrs, is found too)."""
        runs = self.client.search_runs([self.experiment_id], max_results=100,
                                       filter_string=f"tags.`sweep.study` = '{self.study_name}' and "
                                                     f"tags.`sweep.trial` = '{trial_number}'")
        return [r.info.run_id for r in runs if r.info.status not in TERMINAL]

    def trial_runs(self) -> pd.DataFrame:
        """One row per child run: trial number, status, run id, and every metric."""
        runs = self.client.search_runs([self.experiment_id], max_results=50_000,
                                       filter_string=f"tags.`sweep.study` = '{self.study_name}' and "
                                                     "tags.`sweep.role` = 'trial'")
        rows = [{"trial": int(r.data.tags["sweep.trial"]), "run_status": r.info.status, "run_id": r.info.run_id,
                 **r.data.metrics} for r in runs]
        return pd.DataFrame(rows)
