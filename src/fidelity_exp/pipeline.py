"""The recipe: plan -> draw pilot -> arms simulate twins -> score -> rectify -> log.

`plan(cfg)` is the only reader of the composed config: it reads every group once into its typed
settings (`settings.check_config`) and checks everything a user can get wrong (spec, data,
config values, files) before an MLflow run is created, so bad input never leaves a half-made run
behind; everything after it reads the plan's typed objects; the sweeper builds the plan of every trial config up front with
the same function. `run(cfg)` then carries the plan out; a failure after the run exists marks
it FAILED with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from fidelity_exp import api, tracking
from fidelity_exp.arms import Arm, ArmContext, build_arms, check_arm_names
from fidelity_exp.arms.llm import BaseModel, Finetuned, LLMSession, LLMSettings, check_memory
from fidelity_exp.errors import ArmFailed, ConfigError, UserError
from fidelity_exp.inference.regressions import TwinSets, rectified_regressions
from fidelity_exp.llm.finetune import TRAINED, FinetuneSettings, check_quantization
from fidelity_exp.llm.interview import interview_orders
from fidelity_exp.llm.models import resolve_device
from fidelity_exp.metrics import Options, prefixed
from fidelity_exp.metrics.position import OrderScorings, position_metrics
from fidelity_exp.metrics.registry import register_other
from fidelity_exp.metrics.score import SCORE
from fidelity_exp.paths import resolve
from fidelity_exp.settings import Checked, Settings, check_config, group
from fidelity_exp.study import Split, SplitSettings, Study
from fidelity_exp.study.loading import config_file
from fidelity_exp.study.sources import describe
from fidelity_exp.study.synthetic_file import check_synthetic
from fidelity_exp.tracking import notebook

log = logging.getLogger(__name__)
register_other("timing/run_s", "timing/tracking_s", "timing/traces_s")   # wall time: the run, its tracking, its traces


@dataclass
class Plan:
    """Everything a run does, decided and checked before it starts."""

    study: Study
    settings: Settings                     # every config group, typed (settings.check_config)
    options: Options                       # the metrics (with the run's default comparisons)
    arms: dict[str, Arm]                   # name -> arm, in config order (empty for evaluate-only)
    split: Split | None                    # None: evaluate-only
    scored_on: str                         # evaluation | validation | evaluate.human
    rectified: bool = False                # the pilot is split into fine-tuning and rectification humans
    llm: LLMSettings | None = None         # what the LLM arms read (None when none runs)
    files: dict[str, pd.DataFrame] = field(default_factory=dict)   # evaluate-only: arm -> checked file
    human: pd.DataFrame | None = None      # the scored humans (canonical frame)
    tracking_uri: str | None = None
    cfg: DictConfig | None = None          # the config the run follows (what log_setup logs)

    @property
    def tracking(self):
        """The `tracking` group (TrackingSettings)."""
        return self.settings.tracking

    @property
    def seed(self) -> int:
        """The random stream every arm shares (simulate.seed)."""
        return self.settings.simulate.seed

    @property
    def evaluate_only(self) -> bool:
        return self.split is None

    @property
    def arm_names(self) -> list[str]:
        return list(self.files) if self.evaluate_only else list(self.arms)


def setup_study(data_cfg: DictConfig, choice: str | None) -> Study:
    """The study spec from the `data` group, checked, with its human data checked against it."""
    return api.study_from_config(data_cfg, choice)


def split_settings(settings: Settings) -> SplitSettings:
    """Pilot, validation and evaluation humans as the config says; the run scores the set `score_on` names."""
    return SplitSettings.of(settings.pilot, settings.eval, settings.validation, settings.run.score_on)


def setup_arms(arms_cfg: Any, finetune: FinetuneSettings, settings: SplitSettings) -> dict[str, Arm]:
    """The configured arms that run, built from their config nodes (`finetune=none` runs the
    base model alone), each checked."""
    arms = build_arms(arms_cfg)
    method = finetune.method
    finetuned = [name for name, arm in arms.items() if isinstance(arm, Finetuned)]
    if settings.rectified and (method not in TRAINED or not finetuned):
        value = settings.finetune_fraction if settings.finetune_fraction != 1 else settings.crossfit_folds
        raise ConfigError(settings.rectify_key, value,
                          "rectified estimates need the finetuned arm (in `arms`) with finetune=lora or qlora")
    if method == "none" and finetuned:
        log.info("finetune=none: the finetuned arm is not run")
        arms = {name: arm for name, arm in arms.items() if name not in finetuned}
    for arm in arms.values():
        arm.check(finetune=finetune)
    return arms


@group("evaluate")
@dataclass
class EvaluateSettings(Checked):
    """`evaluate` (conf/experiment/evaluate.yaml): score a file of synthetic respondents."""

    synthetic: Optional[str] = None
    human: Optional[str] = None
    arm: str = api.DEFAULT_ARM


def setup_evaluate(settings: EvaluateSettings, study: Study) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Evaluate-only: a synthetic file against the spec's humans (all of them) or a given file."""
    if not settings.synthetic:
        raise ConfigError("evaluate.synthetic", None, "expected the path of a CSV or parquet file of synthetic "
                          "respondents (format: SURVEY_SPEC.md), e.g. evaluate.synthetic=twins.csv")
    check_arm_names([settings.arm], "evaluate.arm")
    human = study.frame
    if settings.human:
        human = api.read_humans(study.spec, settings.human, what="evaluate.human")
    return human, {settings.arm: api.read_synthetic(study.spec, settings.synthetic, humans=human,
                                                    name="evaluate.synthetic")}


def default_comparisons(arms: dict[str, Arm]) -> tuple[tuple[str, str], ...]:
    """METRICS.md section 11's default: every LLM arm against the base model and against each
    no-LLM baseline."""
    llm = [name for name, arm in arms.items() if arm.simulated_by_llm]
    bases = [name for name, arm in arms.items() if isinstance(arm, BaseModel)]
    baselines = [name for name, arm in arms.items() if not arm.simulated_by_llm]
    return tuple((a, b) for a in llm for b in [*bases, *baselines] if a != b)


def _check_experiment_header(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    """An experiment file without `# @package _global_` puts all its values under `experiment.`,
    where nothing reads them: refused, naming the file and the fix."""
    if "experiment" not in cfg:
        return
    name = choices.get("experiment", "?")
    found = config_file("experiment", name) or f"experiment/{name}.yaml"
    raise UserError(f"{found}: +experiment={name} has no `# @package _global_` line at its top, so Hydra put all its "
                    f"values under `experiment.` ({', '.join(map(str, cfg.experiment))}) and none of them would apply; "
                    "add `# @package _global_` as the file's first line (conf/experiment/quickstart.yaml shows the form)")


def _without_replaced_values(cfg: DictConfig, choices: Mapping[str, str]) -> DictConfig:
    """An experiment's values for a group option the user replaced do not trip the run: `pilot.by`
    from an experiment with `pilot: stratified`, when the command line says `pilot=random`
    (the user's own `pilot.by=...` with pilot=random is still refused: PilotSettings)."""
    pilot = cfg.get("pilot")
    if choices.get("pilot") != "random" or pilot is None or pilot.get("by") is None:
        return cfg
    from hydra.core.hydra_config import HydraConfig

    typed_by_user = not HydraConfig.initialized() or any(
        o.split("=", 1)[0].lstrip("+~") == "pilot.by" for o in HydraConfig.get().overrides.task)
    if typed_by_user:
        return cfg
    log.info("pilot=random: the experiment's pilot.by=%r (for a stratified pilot) is not used", pilot.by)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pilot.by = None
    return cfg


def plan(cfg: DictConfig, choices: dict[str, str] | None = None, study: Study | None = None, *,
         device_checks: bool = True) -> Plan:
    """The run `cfg` describes, every part read from its own config group and checked.
    `device_checks=False` leaves out what depends on the machine the run will use (qlora's CUDA,
    the memory check): a sweep checks its trials' configs where it sweeps, and each trial checks
    its device where it runs (a SLURM node, say)."""
    choices = choices or {}
    _check_experiment_header(cfg, choices)
    cfg = _without_replaced_values(cfg, choices)
    settings = check_config(cfg)           # every group's types and ranges, before the spec is read
    study = study or setup_study(cfg.data, choices.get("data"))
    options = settings.metrics
    where = settings.tracking, settings.paths
    uri = tracking.check_store(*where) if settings.tracking.enabled else tracking.tracking_uri(*where)
    if cfg.get("evaluate") is not None:   # evaluate-only (conf/experiment/evaluate.yaml)
        human, files = setup_evaluate(settings.evaluate, study)
        options.check_compare(files)
        options.check_memory(len(human), max(len(frame) for frame in files.values()))
        return Plan(study=study, settings=settings, options=options, arms={}, split=None,
                    scored_on="evaluate.human", files=files, human=human, tracking_uri=uri, cfg=cfg)
    who = split_settings(settings)
    split = who.draw(study)
    arms = setup_arms(cfg.get("arms"), settings.finetune, who)
    if options.compare is None:
        options = dataclasses.replace(options, compare=default_comparisons(arms))
    options.check_compare(arms)
    options.check_memory(len(split.evaluation), len(split.evaluation))   # one twin per scored human
    if device_checks:   # what the run's machine reaches: a served arm's budget and server
        for arm in arms.values():
            arm.check_run(study, split, settings)
    llm = None
    if any(arm.uses_llm for arm in arms.values()):
        llm = LLMSettings.of(settings, tracking_uri=uri)
        if device_checks:   # before any weights are looked up: qlora's device, then whether the run fits in memory
            check_quantization(llm.finetune, resolve_device(llm.model.device))
            check_memory(llm, study, split, finetunes=any(isinstance(arm, Finetuned) for arm in arms.values()))
    return Plan(study=study, settings=settings, options=options, arms=arms, split=split, scored_on=who.score_on,
                rectified=who.rectified, llm=llm, human=study.frame.loc[split.evaluation], tracking_uri=uri, cfg=cfg)


def run(cfg: DictConfig, *, choices: dict[str, str] | None = None, overrides: Sequence[str] = (),
        output_dir: str | os.PathLike | None = None) -> dict[str, float | None]:
    """Run one experiment; returns the flat metrics (also written to `<output_dir>/metrics.json`)."""
    started = time.perf_counter()
    p = plan(cfg, choices)
    cfg, s = p.cfg, p.settings
    if not p.evaluate_only:
        log.info("study %s v%s: %d respondents; pilot %d (%s), scored on %d %s humans; arms: %s", p.study.spec.name,
                 p.study.spec.version, len(p.study), len(p.split.pilot), s.pilot.method, len(p.split.evaluation),
                 p.scored_on, ", ".join(p.arm_names) or "none")
    output = Path(output_dir) if output_dir else resolve(s.paths.outputs) / "latest"

    if not s.tracking.enabled:
        return carry_out(p, output, tracked=None)
    run_name = s.tracking.run_name or (
        f"{p.study.spec.name}-evaluate-{p.arm_names[0]}" if p.evaluate_only
        else f"{p.study.spec.name}-{s.pilot.method}-n{s.pilot.n}-seed{s.run.seed}")
    tags = {
        "study.name": p.study.spec.name, "study.version": p.study.spec.version, "study.spec_file": p.study.spec.origin,
        "hydra.overrides": json.dumps(list(overrides)), "arms": ",".join(p.arm_names) or "none",
        "mode": "evaluate" if p.evaluate_only else "experiment", **s.tracking.tags,
        "score_on": p.scored_on,
    }
    with tracking.start_run(s.tracking, s.paths, run_name=run_name, tags=tags) as tracked:
        experiment_id = tracked.experiment_id
        notebook.describe_experiment(tracked.client, experiment_id, p.study.spec)
        with notebook.system_metrics(tracked.run_id, p.tracking_uri, p.tracking.system_metrics):
            log_setup(tracked, cfg, p)
            metrics = carry_out(p, output, tracked)
        # What a sweep's overhead is measured against (the sweep report shows it per trial).
        tracked.log_metrics({"timing/run_s": time.perf_counter() - started, "timing/tracking_s": tracked.seconds})
    where_to_look(p, experiment_id, tracked.run_id, output)
    return metrics


def where_to_look(p: Plan, experiment_id: str, run_id: str, output: Path) -> None:
    """The run's page in the MLflow UI (the view that lists runs), its report and metrics.json."""
    base = notebook.ui_base(p.tracking_uri, p.tracking.ui_url)
    served = "" if p.tracking_uri.startswith("http") else " (start it with `make ui`)"
    log.info("MLflow run: %s%s", notebook.run_address(base, experiment_id, run_id), served)
    log.info("report: %s", output / "report" / "report.html")
    log.info("metrics: %s", output / "metrics.json")


def carry_out(p: Plan, output: Path, tracked) -> dict[str, float | None]:
    twin_sets, positions = None, {}
    synthetic = p.files
    if not p.evaluate_only:
        synthetic, twin_sets, positions = simulate_arms(p, tracked)
    scores = api.evaluate(p.study.spec, p.human, synthetic, p.options)
    for arm, scorings in positions.items():
        scores.add(prefixed(arm, position_metrics(p.study.spec, scorings, p.options)))
    if twin_sets is not None:
        scores.add(*rectify(p, twin_sets))
    scores.write_json(output / "metrics.json")
    log.info("metrics: %s", ", ".join(f"{k}={v:.3f}" for k, v in scores.metrics.items()
                                       if k.endswith(SCORE) and v is not None))
    if tracked is not None:
        context = "validation" if p.scored_on == "validation" else "evaluation"
        scores.log_to(tracked, metrics_json=output / "metrics.json", datasets=p.tracking.datasets,
                      human_context=context, report_dir=output / "report")
        log_traces(p, tracked, synthetic)
    return scores.metrics


def log_traces(p: Plan, tracked, synthetic: dict[str, pd.DataFrame]) -> None:
    """A sample of each LLM arm's twins as MLflow traces (tracking.traces_per_arm)."""
    n = p.tracking.traces_per_arm
    llm_arms = [name for name, arm in p.arms.items() if arm.simulated_by_llm and name in synthetic]
    if not n or not llm_arms:
        return
    shown = p.settings.simulate.shown_order
    count = min(n, len(p.human))
    orders = [interview_orders(p.study.spec, shown, seed=p.seed, who=i) for i in range(count)]
    seconds = sum(notebook.log_twin_traces(tracked, p.tracking_uri, tracked.experiment_id, p.study.spec, arm,
                                           synthetic[arm], p.human, count, orders) for arm in llm_arms)
    tracked.log_metrics({"timing/traces_s": seconds})
    log.info("traces: %d twins of each of %s (%.1f s)", count, ", ".join(llm_arms), seconds)


def simulate_arms(p: Plan, tracked: tracking.TrackedRun | None
                  ) -> tuple[dict[str, pd.DataFrame], TwinSets | None, dict[str, OrderScorings]]:
    """Each arm's synthetic twins of the scored humans, checked like a user's file; when the
    pilot has rectification folds, the twin sets the rectified estimates need; and the LLM
    arms' forward and reversed scorings (position metrics)."""
    ctx = ArmContext(p.study, p.split, seed=p.seed, tracked=tracked, settings=p.settings,
                     make_llm=(lambda c: LLMSession(p.llm, c)) if p.llm is not None else None)
    frames: dict[str, pd.DataFrame] = {}
    positions: dict[str, OrderScorings] = {}
    twin_sets = None
    for name, arm in p.arms.items():
        if not arm.uses_llm:
            log.info("arm %s: simulating %d twins", name, len(p.split.evaluation))
        twins = arm.simulate(ctx)
        frames[name] = check_synthetic(p.study.spec, twins.frame, name=f"arm {name}", human_ids=p.split.evaluation)
        check_answered(p.study, frames[name], name, p.split.evaluation)
        twin_sets = twins.rectification or twin_sets
        if twins.position is not None:
            positions[name] = twins.position
    return frames, twin_sets, positions


def check_answered(study: Study, frame: pd.DataFrame, arm: str, humans: pd.Index) -> None:
    """An arm's twins are the scored humans, one each, and answered every question their human
    answered; otherwise the arm cannot be scored and the run stops with the reason."""
    if "twin_of" not in frame.columns or sorted(frame["twin_of"].astype(str)) != sorted(humans.astype(str)):
        raise ArmFailed(f"arm {arm}: expected one twin for each of the {len(humans)} scored humans, got {len(frame)} "
                        "rows; its metrics would describe other respondents")
    human = study.frame.loc[frame["twin_of"].to_numpy()]
    for q in study.spec.question_columns:
        unanswered = frame[q].isna().to_numpy() & human[q].notna().to_numpy()
        if unanswered.any():
            raise ArmFailed(f"arm {arm}: {int(unanswered.sum())} twins gave no answer to {q!r} although their humans "
                            f"answered it (twins of {list(frame['twin_of'][unanswered][:5])}); it cannot be scored")


def rectify(p: Plan, twin_sets: TwinSets) -> tuple[dict[str, float], dict[str, str]]:
    """The rectified (PPI++) regression estimates from the rectification humans and the twins."""
    split, frame = p.split, p.study.frame
    rectifiers = split.pilot[split.pilot.isin(pd.Index(twin_sets.labelled.twin_of))]
    return rectified_regressions(p.study.spec, frame, frame.loc[split.pilot], frame.loc[rectifiers], twin_sets,
                                 alpha=p.options.alpha, predictions=p.settings.ppi.predictions)


def log_setup(tracked: tracking.TrackedRun, cfg: DictConfig, p: Plan) -> None:
    """What a reviewer needs to reproduce the run: config, spec, split sizes and ids."""
    params: dict[str, Any] = tracking.config_params(cfg)
    params["study.n_respondents"] = str(len(p.study))
    params["split.n_evaluation"] = str(len(p.human))
    tracked.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
    tracked.log_text(OmegaConf.to_yaml(cfg.data, resolve=True), "config/study_spec.yaml")
    if p.split is not None:
        params["split.n_pilot"] = str(len(p.split.pilot))
        if p.tracking.datasets:
            notebook.log_datasets(tracked, [(f"{p.study.spec.name}-pilot", p.study.frame.loc[p.split.pilot], "pilot")],
                                  source=describe(p.study.spec.source))
        ids = p.split.ids_frame()
        tracked.log_frame(ids[ids.set == "pilot"][["id", "fold"] if p.split.folds else ["id"]], "split/pilot_ids.csv")
        # With score_on=validation the scored humans are validation humans: the file says so.
        tracked.log_frame(ids[ids.set == "evaluation"][["id"]], f"split/{p.scored_on}_ids.csv")
    tracked.log_params(params)
