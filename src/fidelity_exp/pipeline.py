"""The recipe: load study -> draw pilot -> build arms -> simulate -> score -> log.

Each `setup_*` step takes its own part of the config and returns one plain object; user
mistakes surface as `UserError`s before an MLflow run is created, so a bad input never leaves
a half-made run behind.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from fidelity_exp import arms as arm_registry
from fidelity_exp import tracking
from fidelity_exp.study import Split, Study, draw_split, load_study, spec_from_config
from fidelity_exp.study.loading import config_file

log = logging.getLogger(__name__)


def setup_study(data_cfg: DictConfig, choice: str | None) -> Study:
    """The study spec from the `data` group, checked, with its human data checked against it."""
    path = config_file("data", choice) if choice else None
    origin = path or f"data={choice or data_cfg.get('name')}"
    spec, problems = spec_from_config(data_cfg, origin=origin, strict=False,
                                      raw_file=path)
    return load_study(spec, problems, origin=origin)


def setup_split(pilot_cfg: DictConfig, eval_cfg: DictConfig, study: Study) -> Split:
    return draw_split(study, method=pilot_cfg.method, n=pilot_cfg.n, seed=pilot_cfg.seed, by=pilot_cfg.get("by"),
                      eval_n=eval_cfg.get("n"))


def run(cfg: DictConfig, *, choices: dict[str, str] | None = None, overrides: Sequence[str] = ()) -> float | None:
    """Run one experiment; returns the sweep objective when the run computes one, else None."""
    choices = choices or {}
    study = setup_study(cfg.data, choices.get("data"))
    split = setup_split(cfg.pilot, cfg.eval, study)
    arm_names = arm_registry.check_arms(cfg.arms)
    log.info("study %s v%s: %d respondents; pilot %d (%s), evaluation %d; arms: %s", study.spec.name,
             study.spec.version, len(study), len(split.pilot), cfg.pilot.method, len(split.evaluation),
             ", ".join(arm_names) or "none")

    if not cfg.tracking.enabled:
        return None
    run_name = cfg.tracking.run_name or f"{study.spec.name}-{cfg.pilot.method}-n{cfg.pilot.n}-seed{cfg.seed}"
    tags = {
        "study.name": study.spec.name, "study.version": study.spec.version, "study.spec_file": study.spec.origin,
        "hydra.overrides": json.dumps(list(overrides)), "arms": ",".join(arm_names) or "none",
        **dict(cfg.tracking.get("tags") or {}),
    }
    with tracking.start_run(cfg, run_name=run_name, tags=tags) as tracked:
        log_setup(tracked, cfg, study, split)
    return None


def log_setup(tracked: tracking.TrackedRun, cfg: DictConfig, study: Study, split: Split) -> None:
    """What a reviewer needs to reproduce the run: config, spec, split sizes and ids."""
    params: dict[str, Any] = tracking.config_params(cfg)
    params.update({"study.n_respondents": str(len(study)), "split.n_pilot": str(len(split.pilot)),
                   "split.n_evaluation": str(len(split.evaluation))})
    tracked.log_params(params)
    tracked.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
    tracked.log_text(OmegaConf.to_yaml(cfg.data, resolve=True), "config/study_spec.yaml")
    ids = split.ids_frame()
    tracked.log_frame(ids[ids.set == "pilot"][["id"]], "split/pilot_ids.csv")
    tracked.log_frame(ids[ids.set == "evaluation"][["id"]], "split/evaluation_ids.csv")
