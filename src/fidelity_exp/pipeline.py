"""The recipe: load study -> draw pilot -> build arms -> simulate -> score -> log.

Each `setup_*` step takes its own part of the config and returns one plain object. Everything
a user can get wrong (spec, data, config values, files) is checked before an MLflow run is
created, so bad input never leaves a half-made run behind; a failure after that marks the run
FAILED with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from fidelity_exp import arms as arm_registry
from fidelity_exp import tracking
from fidelity_exp.errors import ConfigError
from fidelity_exp.inference.regressions import PREDICTIONS, TwinSets, rectified_regressions
from fidelity_exp.metrics import Options, evaluate_arm, human_reference, prefixed
from fidelity_exp.paths import resolve
from fidelity_exp.report import write_report
from fidelity_exp.study import Split, Study, canonical_frame, draw_split, load_study, spec_from_config
from fidelity_exp.study.loading import config_file
from fidelity_exp.study.synthetic_file import as_file_frame, check_synthetic, read_table

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What the metrics compare: the evaluation humans and one synthetic frame per arm."""

    human: pd.DataFrame                 # canonical frame, index = respondent id
    synthetic: dict[str, pd.DataFrame]  # arm -> canonical synthetic frame (with twin_of)
    split: Split | None                 # None for evaluate-only runs


def setup_study(data_cfg: DictConfig, choice: str | None) -> Study:
    """The study spec from the `data` group, checked, with its human data checked against it."""
    path = config_file("data", choice) if choice else None
    origin = path or f"data={choice or data_cfg.get('name')}"
    spec, problems = spec_from_config(data_cfg, origin=origin, strict=False, raw_file=path)
    return load_study(spec, problems, origin=origin)


def setup_split(cfg: DictConfig, study: Study) -> Split:
    """Pilot, validation and evaluation humans; the run scores the set `score_on` names."""
    pilot = cfg.pilot
    split = draw_split(study, method=pilot.method, n=pilot.n, seed=pilot.seed, by=pilot.get("by"),
                       eval_n=cfg.eval.get("n"), eval_seed=cfg.eval.get("seed"),
                       validation_n=(cfg.get("validation") or {}).get("n") or 0)
    split = split.with_folds(finetune_fraction=pilot.get("finetune_fraction", 1.0),
                             crossfit_folds=pilot.get("crossfit_folds", 1), seed=pilot.seed)
    return split.scored_on(str(cfg.get("score_on") or "evaluation"))


def active_arms(cfg: DictConfig) -> list[str]:
    """The configured arms that run (`finetune=none` runs the base model alone)."""
    from fidelity_exp.arms.llm import FINETUNE_METHODS

    names = arm_registry.check_arms(cfg.arms)
    if cfg.finetune.method not in FINETUNE_METHODS:
        raise ConfigError("finetune.method", cfg.finetune.method, f"expected one of {', '.join(FINETUNE_METHODS)}")
    rectified = cfg.pilot.get("finetune_fraction", 1.0) != 1 or cfg.pilot.get("crossfit_folds", 1) != 1
    if rectified and (cfg.finetune.method != "lora" or "finetuned" not in names):
        raise ConfigError("pilot.finetune_fraction" if cfg.pilot.get("finetune_fraction", 1.0) != 1
                          else "pilot.crossfit_folds", cfg.pilot.get("finetune_fraction"),
                          "rectified estimates need the finetuned arm (in `arms`) with finetune=lora")
    predictions = (cfg.get("ppi") or {}).get("predictions", "expected")
    if predictions not in PREDICTIONS:
        raise ConfigError("ppi.predictions", predictions, f"expected one of {', '.join(PREDICTIONS)}")
    if cfg.finetune.method == "registered" and "finetuned" in names:
        _check_local_adapter(cfg.finetune)
    if cfg.finetune.method == "none" and "finetuned" in names:
        log.info("finetune=none: the finetuned arm is not run")
        names.remove("finetuned")
    return names


def _check_local_adapter(finetune_cfg: DictConfig) -> None:
    """A local adapter folder is checked before any run starts (an MLflow URI is fetched in the run)."""
    from fidelity_exp.llm import adapters

    if OmegaConf.is_missing(finetune_cfg, "uri") or not finetune_cfg.get("uri"):
        raise ConfigError("finetune.uri", None, "expected models:/<name>/<version>, runs:/<run id>/adapter or a "
                          "local adapter folder")
    uri = str(finetune_cfg.uri)
    folder = adapters.local_folder(uri)
    if folder is None:
        return
    if not folder.is_dir():
        raise ConfigError("finetune.uri", uri, f"expected an adapter folder, MLflow models:/ or runs:/ URI; "
                          f"{str(folder)!r} is not a folder")
    adapters.check_folder(folder)


def setup_metrics(metrics_cfg: DictConfig) -> Options:
    return Options.from_config(metrics_cfg)


def setup_evaluate(evaluate_cfg: DictConfig, study: Study) -> Evaluation:
    """Evaluate-only: a synthetic file against the spec's humans (all of them) or a given file."""
    if OmegaConf.is_missing(evaluate_cfg, "synthetic") or not evaluate_cfg.get("synthetic"):
        raise ConfigError("evaluate.synthetic", None, "expected the path of a CSV or parquet file of synthetic "
                          "respondents (format: SURVEY_SPEC.md), e.g. evaluate.synthetic=twins.csv")
    human = study.frame
    if evaluate_cfg.get("human"):
        path = str(resolve(evaluate_cfg.human))
        human = canonical_frame(study.spec, read_table(path, "evaluate.human"), origin=path,
                                data_name=f"file {path!r}", use_id=True)
    path = str(resolve(evaluate_cfg.synthetic))
    synthetic = check_synthetic(study.spec, read_table(path, "evaluate.synthetic"), name=path, human_ids=human.index)
    arm = str(evaluate_cfg.get("arm") or "synthetic")
    return Evaluation(human=human, synthetic={arm: synthetic}, split=None)


def simulate_arms(names: list[str], study: Study, split: Split, cfg: DictConfig,
                  tracked: tracking.TrackedRun | None) -> tuple[dict[str, pd.DataFrame], TwinSets | None]:
    """Each arm's synthetic twins of the evaluation humans, checked like a user's file; and, when
    the pilot has rectification folds, the twin sets the rectified estimates need."""
    from fidelity_exp.arms.llm import run_llm_arms

    raw: dict[str, pd.DataFrame] = {}
    twin_sets = None
    llm = [n for n in names if n in arm_registry.LLM_ARMS]
    if llm:
        frames, twin_sets = run_llm_arms(llm, study, split, cfg, tracked, tracking.tracking_uri(cfg))
        raw.update(frames)
    for name in names:
        if name not in llm:
            log.info("arm %s: simulating %d twins", name, len(split.evaluation))
            options = (cfg.get("baselines") or {}).get(name) or {}
            raw[name] = arm_registry.ARMS[name](study, split, options, int(cfg.simulate.seed))
    return {name: check_synthetic(study.spec, raw[name], name=f"arm {name}", human_ids=split.evaluation)
            for name in names}, twin_sets


def score(evaluation: Evaluation, study: Study, opts: Options) -> tuple[dict[str, float | None], dict[str, str]]:
    """Every arm's metrics (arm-prefixed) and the human split-half reference, in one flat dict."""
    metrics: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for arm, synthetic in evaluation.synthetic.items():
        result = evaluate_arm(study.spec, evaluation.human, synthetic, opts)
        metrics.update(prefixed(arm, result.values))
        notes.update({f"{arm}/{k}": v for k, v in result.notes.items()})
    metrics.update(human_reference(study.spec, evaluation.human, opts))
    return metrics, notes


def check(cfg: DictConfig, choices: dict[str, str] | None = None,
          study: Study | None = None) -> tuple[Study, list[str]]:
    """What `run` checks before any MLflow run exists (a sweep checks its trials' configs up front
    with it); returns the study and the names of the arms that would run."""
    choices = choices or {}
    study = study or setup_study(cfg.data, choices.get("data"))
    setup_metrics(cfg.metrics)
    if cfg.get("evaluate") is not None:
        return study, list(setup_evaluate(cfg.evaluate, study).synthetic)
    setup_split(cfg, study)
    return study, active_arms(cfg)


def run(cfg: DictConfig, *, choices: dict[str, str] | None = None, overrides: Sequence[str] = (),
        output_dir: str | os.PathLike | None = None) -> dict[str, float | None]:
    """Run one experiment; returns the flat metrics (also written to `<output_dir>/metrics.json`)."""
    started = time.perf_counter()
    choices = choices or {}
    study = setup_study(cfg.data, choices.get("data"))
    opts = setup_metrics(cfg.metrics)
    evaluate_only = cfg.get("evaluate") is not None
    if evaluate_only:
        evaluation = setup_evaluate(cfg.evaluate, study)
        arm_names = list(evaluation.synthetic)
    else:
        split = setup_split(cfg, study)
        arm_names = active_arms(cfg)
        evaluation = Evaluation(human=study.frame.loc[split.evaluation], synthetic={}, split=split)
        log.info("study %s v%s: %d respondents; pilot %d (%s), scored on %d %s humans; arms: %s", study.spec.name,
                 study.spec.version, len(study), len(split.pilot), cfg.pilot.method, len(split.evaluation),
                 cfg.get("score_on") or "evaluation", ", ".join(arm_names) or "none")
    output = Path(output_dir) if output_dir else resolve(cfg.paths.outputs) / "latest"

    if not cfg.tracking.enabled:
        return _compute(cfg, study, evaluation, opts, arm_names, output, tracked=None)
    run_name = cfg.tracking.run_name or (
        f"{study.spec.name}-evaluate-{arm_names[0]}" if evaluate_only
        else f"{study.spec.name}-{cfg.pilot.method}-n{cfg.pilot.n}-seed{cfg.seed}")
    tags = {
        "study.name": study.spec.name, "study.version": study.spec.version, "study.spec_file": study.spec.origin,
        "hydra.overrides": json.dumps(list(overrides)), "arms": ",".join(arm_names) or "none",
        "mode": "evaluate" if evaluate_only else "experiment", **dict(cfg.tracking.get("tags") or {}),
        "score_on": "evaluate.human" if evaluate_only else str(cfg.get("score_on") or "evaluation"),
    }
    with tracking.start_run(cfg, run_name=run_name, tags=tags) as tracked:
        log_setup(tracked, cfg, study, evaluation)
        metrics = _compute(cfg, study, evaluation, opts, arm_names, output, tracked)
        # What a sweep's overhead is measured against (the sweep report shows it per trial).
        tracked.log_metrics({"timing/run_s": time.perf_counter() - started, "timing/tracking_s": tracked.seconds})
        return metrics


def _compute(cfg, study, evaluation, opts, arm_names, output: Path, tracked) -> dict[str, float | None]:
    twin_sets = None
    if evaluation.split is not None:
        evaluation.synthetic, twin_sets = simulate_arms(arm_names, study, evaluation.split, cfg, tracked)
    metrics, notes = score(evaluation, study, opts)
    if twin_sets is not None:
        split = evaluation.split
        rectify = split.pilot[split.pilot.isin(pd.Index(twin_sets.labelled.twin_of))]
        ppi_metrics, ppi_notes = rectified_regressions(
            study.spec, study.frame, study.frame.loc[split.pilot], study.frame.loc[rectify], twin_sets,
            alpha=opts.alpha, predictions=str((cfg.get("ppi") or {}).get("predictions", "expected")))
        metrics.update(ppi_metrics)
        notes.update(ppi_notes)
    write_json_atomic(output / "metrics.json", metrics)
    log.info("metrics: %s", ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                       if k.endswith("fidelity_score") and v is not None))
    if tracked is not None:
        log_results(tracked, cfg, study, evaluation, metrics, notes, output)
    return metrics


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary name beside the target, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
    os.replace(tmp, path)


def log_setup(tracked: tracking.TrackedRun, cfg: DictConfig, study: Study, evaluation: Evaluation) -> None:
    """What a reviewer needs to reproduce the run: config, spec, split sizes and ids."""
    params: dict[str, Any] = tracking.config_params(cfg)
    params["study.n_respondents"] = str(len(study))
    params["split.n_evaluation"] = str(len(evaluation.human))
    tracked.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
    tracked.log_text(OmegaConf.to_yaml(cfg.data, resolve=True), "config/study_spec.yaml")
    if evaluation.split is not None:
        params["split.n_pilot"] = str(len(evaluation.split.pilot))
        ids = evaluation.split.ids_frame()
        tracked.log_frame(ids[ids.set == "pilot"][["id", "fold"] if evaluation.split.folds else ["id"]],
                          "split/pilot_ids.csv")
        # With score_on=validation the scored humans are validation humans: the file says so.
        scored = str(cfg.get("score_on") or "evaluation")
        tracked.log_frame(ids[ids.set == "evaluation"][["id"]], f"split/{scored}_ids.csv")
    tracked.log_params(params)


def log_results(tracked: tracking.TrackedRun, cfg: DictConfig, study: Study, evaluation: Evaluation,
                metrics: dict, notes: dict, output: Path) -> None:
    tracked.log_metrics(metrics)
    if notes:
        tracked.set_tags(notes)
    tracked.log_file(output / "metrics.json")
    for arm, frame in evaluation.synthetic.items():
        tracked.log_frame(as_file_frame(study.spec, frame), f"synthetic/{arm}.csv")
    title = f"fidelity_exp report: {study.spec.name}"
    with tempfile.TemporaryDirectory() as tmp:
        write_report(Path(tmp), study.spec, evaluation.human, evaluation.synthetic, metrics, title=title)
        tracked.log_dir(tmp, "report")
