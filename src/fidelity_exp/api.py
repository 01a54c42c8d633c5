"""The Python API: score synthetic respondents against humans from a notebook or another pipeline,
with the same metrics, options and report as the command line (whose scoring goes through here).

    import fidelity_exp as fx

    study = fx.load_study("conf/data/anes96.yaml")      # a spec file (or a dict) with its human data
    scores = fx.score(study, "twins.csv", bootstrap=200)  # a frame, a file, or {arm: frame or file}
    scores.metrics["synthetic/divergence/js/mean"]        # flat keys, as in metrics.json
    scores.table()                                       # one row per arm and key (pandas)
    scores.write_report("report/")                       # report.md, report.html, plots/
    scores.log_to_mlflow(experiment="anes96")            # a new MLflow run with all of it

Inputs are checked as the command line checks them (SURVEY_SPEC.md's file format); a problem is
a `fidelity_exp.errors.UserError` whose message names the file or frame, the column and the value.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from fidelity_exp.metrics import Options, evaluate_arm, human_reference, registry
from fidelity_exp.metrics.suite import compare_arms
from fidelity_exp.paths import resolve, write_json_atomic
from fidelity_exp.study import Study, StudySpec, canonical_frame, load_spec_file, parse_spec, spec_from_config
from fidelity_exp.study import load_study as checked_study
from fidelity_exp.study import study_from_file
from fidelity_exp.study.loading import config_file
from fidelity_exp.study.spec import check_spec
from fidelity_exp.study.synthetic_file import (as_file_frame, check_given_columns, check_synthetic, humans_own_answers,
                                               read_table)

__all__ = ["Scores", "evaluate", "load_spec", "load_study", "score"]

log = logging.getLogger(__name__)
DEFAULT_ARM = "synthetic"   # the arm name of a single synthetic set (the CLI's evaluate.arm default)


def load_spec(source: str | os.PathLike | Mapping[str, Any]) -> StudySpec:
    """A checked study spec (SURVEY_SPEC.md) from a YAML file, a dict, or a composed Hydra `data`
    node (another Hydra app composing `data=anes96`); its data is not read.

    >>> spec = load_spec({"name": "tiny", "version": 1, "source": {"kind": "csv", "path": "t.csv"},
    ...                   "questions": [{"column": "q", "text": "Q?", "type": "binary",
    ...                                  "options": {0: "no", 1: "yes"}}]})
    >>> spec.question_columns
    ['q']
    """
    from omegaconf import DictConfig

    if isinstance(source, DictConfig):
        return spec_from_config(source, origin=_config_origin(source), raw_file=_config_file(source))
    if isinstance(source, Mapping):
        return parse_spec(dict(source), origin="<dict>")
    return load_spec_file(resolve(source))


def load_study(source: str | os.PathLike | Mapping[str, Any]) -> Study:
    """A study spec and its human data (the spec's `source`), both checked; one error lists every
    problem of both. `source` as for `load_spec`."""
    from omegaconf import DictConfig

    if isinstance(source, DictConfig):
        return study_from_config(source)
    if isinstance(source, Mapping):
        spec, problems = check_spec(dict(source), origin="<dict>")
        return checked_study(spec, problems, origin="<dict>")
    return study_from_file(resolve(source))


def study_from_config(data_cfg: Any, choice: str | None = None) -> Study:
    """The study of a composed `data` node (what the command line runs on). `choice` is the
    option Hydra composed it from (default: the running app's `data` choice), for messages and
    for reading the file's yes/no words as words."""
    path = _config_file(data_cfg, choice)
    spec, problems = spec_from_config(data_cfg, origin=_config_origin(data_cfg, choice), strict=False, raw_file=path)
    return checked_study(spec, problems, origin=_config_origin(data_cfg, choice))


def _data_choice(choice: str | None) -> str | None:
    if choice is not None:
        return choice
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    except Exception:  # pragma: no cover - outside a Hydra app
        return None


def _config_file(data_cfg: Any, choice: str | None = None) -> str | None:
    choice = _data_choice(choice)
    return config_file("data", choice) if choice else None


def _config_origin(data_cfg: Any, choice: str | None = None) -> str:
    return _config_file(data_cfg, choice) or f"data={_data_choice(choice) or data_cfg.get('name')}"


def score(study: Study | StudySpec, synthetic: Any, *, human: Any = None,
          families: tuple[str, ...] | None = Options.families, min_group_size: int = Options.min_group_size,
          alpha: float = Options.alpha, bootstrap: int = Options.bootstrap,
          reference_splits: int = Options.reference_splits, seed: int = Options.seed,
          score_components: tuple[str, ...] | None = Options.score_components, interval: str = Options.interval,
          permutations: int = Options.permutations, fdr: float = Options.fdr, compare=None) -> "Scores":
    """Score synthetic respondents against humans on every fidelity metric (METRICS.md).

    study: a `Study` (its data are the humans unless `human` is given) or a `StudySpec` (then
        `human` is required).
    synthetic: a frame or a CSV/parquet path in SURVEY_SPEC.md's format (one arm, named
        "synthetic"), or a mapping {arm name: frame or path}. A `twin_of` column pairs each
        synthetic respondent with a human id.
    human: a frame (with the spec's id column, or its ids as the index) or a file of humans.
    Keyword options are those of `conf/metrics/default.yaml` with the same defaults: `families`
    and `score_components` None mean every registered family and the default components;
    `bootstrap` (B) replicates for the 95% intervals (method `interval`: "bias_aware", "percentile", "basic" or "bc"),
    `reference_splits` human halves, `permutations` (R) swaps for the tests against the humans
    (0: none), `fdr` their false discovery rate; `compare` pairs of arms, e.g.
    [("finetuned", "base")] or ["finetuned__vs__base"] (None: no comparisons).

    Returns `Scores`: `.metrics` is the flat `{key: value or None}` of metrics.json.
    """
    spec = study.spec if isinstance(study, Study) else study
    if human is None:
        if not isinstance(study, Study):
            raise TypeError("score(spec, ...) needs human=...: a frame or a file of human respondents")
        human_frame = study.frame
    else:
        _frame_or_file(human, "human")
        human_frame = read_humans(spec, human)
    frames = _arm_frames(synthetic)
    checked = {str(arm): read_synthetic(spec, data, humans=human_frame, name=f"arm {arm}")
               for arm, data in frames.items()}
    options = Options(families=families, min_group_size=min_group_size, alpha=alpha, bootstrap=bootstrap,
                      reference_splits=reference_splits, seed=seed, score_components=score_components,
                      interval=interval, permutations=permutations, fdr=fdr,
                      compare=None if compare is None else tuple(compare))
    return evaluate(spec, human_frame, checked, options)


def _arm_frames(synthetic: Any) -> Mapping[str, Any]:
    """{arm: frame or path}, each arm named by the command line's rules (they prefix metric keys)
    and each value a frame or a file: anything else is refused here, by name."""
    from fidelity_exp.arms import check_arm_names

    frames = synthetic if isinstance(synthetic, Mapping) else {DEFAULT_ARM: synthetic}
    if not frames:
        raise TypeError("score(): synthetic is an empty mapping; expected {arm name: frame or file}, at least one arm")
    for arm, data in frames.items():
        _frame_or_file(data, f"synthetic[{arm!r}]" if frames is synthetic else "synthetic")
    check_arm_names([str(arm) for arm in frames], "score(synthetic=...) arm names")
    return frames


def _frame_or_file(data: Any, what: str) -> None:
    """score()'s data are frames or files: anything else (records, arrays) is a TypeError naming it."""
    if not isinstance(data, (pd.DataFrame, str, os.PathLike)):
        raise TypeError(f"score(): {what} is a {type(data).__name__}; expected a pandas DataFrame or the path of a CSV "
                        "or parquet file (records: pd.DataFrame(records))")


def read_humans(spec: StudySpec, data: Any, *, what: str = "human file") -> pd.DataFrame:
    """Humans from a frame or a file, checked against the spec, as a canonical frame (index = id).
    A frame without the spec's id column brings its ids as the index."""
    if isinstance(data, pd.DataFrame):
        raw, origin, name = data, "the human frame", "the human frame"
        if spec.id and spec.id not in raw.columns:
            raw = raw.rename_axis(spec.id).reset_index()
    else:
        origin = str(resolve(data))
        raw, name = read_table(origin, what, spec.text_columns), f"file {origin!r}"
    return canonical_frame(spec, raw, origin=origin, data_name=name, use_id=True)


def read_synthetic(spec: StudySpec, data: Any, *, humans: pd.DataFrame, name: str) -> pd.DataFrame:
    """Synthetic respondents from a frame or a file, checked like the CLI checks a user's file:
    against the spec, and paired twins against their humans (`twin_of` among the humans' ids, the
    given columns the humans' own)."""
    if not isinstance(data, pd.DataFrame):
        path = str(resolve(data))
        data, name = read_table(path, name, ("twin_of", *spec.text_columns)), path
    frame = check_synthetic(spec, data, name=name, human_ids=humans.index)
    check_given_columns(spec, frame, humans, name=name)
    return frame


def evaluate(spec: StudySpec, human: pd.DataFrame, synthetic: Mapping[str, pd.DataFrame], options: Options
             ) -> "Scores":
    """Every arm's metrics (arm-prefixed) and the human split-half reference, from canonical frames."""
    metrics: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    results = {}
    options.check_compare(synthetic)
    options.check_memory(len(human), max(len(frame) for frame in synthetic.values()))
    options.warn_if_few_replicates()
    for arm, frame in synthetic.items():
        if humans_own_answers(spec, frame, human):
            notes[f"{arm}/warning"] = warning = (
                f"arm {arm!r}: these 'twins' are the evaluation humans' own answers (every one of the {len(human)} "
                "answers as a human did): its metrics measure nothing but the humans against themselves. Was the "
                "human file passed as the synthetic one?")
            log.warning("%s", warning)
        results[arm] = result = evaluate_arm(spec, human, frame, options)
        metrics.update(registry.prefixed(arm, result.values))
        notes.update(registry.prefixed(arm, result.notes))
    for pair in options.compare or ():
        compared, why = compare_arms(results, pair, options)
        metrics.update(compared)
        notes.update(why)
    metrics.update(human_reference(spec, human, options))
    return Scores(spec=spec, human=human, synthetic=dict(synthetic), options=options, metrics=metrics, notes=notes)


@dataclass
class Scores:
    """The result of scoring: flat metrics (metrics.json's keys), notes (run tags such as why a
    regression could not be fitted), and what they were computed from."""

    spec: StudySpec
    human: pd.DataFrame
    synthetic: dict[str, pd.DataFrame]
    options: Options
    metrics: dict[str, float | None]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        return list(self.synthetic)

    def add(self, metrics: Mapping[str, float | None], notes: Mapping[str, str] = ()) -> None:
        """Add keys computed elsewhere from the same run (the rectified estimates)."""
        self.metrics.update(metrics)
        self.notes.update(dict(notes))

    def table(self) -> pd.DataFrame:
        """One row per arm and metric key: value, 95% interval, the swap tests against the humans
        (null_median, p_value, q_value), the human split-half reference, the better direction and
        the key's role: aggregate (intervals, reference, tests) or item (one question, level, pair
        or term). Undefined values are NaN."""
        rows = []
        for arm in self.arms:
            head = f"{arm}/"
            for full, value in self.metrics.items():
                if not full.startswith(head) or registry.bare_key(full) != full:
                    continue
                key = full[len(head):]
                low, high = (self.metrics.get(k) for k in registry.interval_keys(full))
                tests = {w: self.metrics.get(registry.perm_key(full, w)) for w in registry.PERM}
                rows.append({"arm": arm, "key": key, "value": value, "ci_low": low, "ci_high": high, **tests,
                             "human_split": self.metrics.get(registry.reference_key(key)),
                             "better": registry.direction_words(key) or None,
                             "role": "aggregate" if registry.is_aggregate(key) else "item"})
        numbers = ["value", "ci_low", "ci_high", *registry.PERM, "human_split"]
        frame = pd.DataFrame(rows, columns=["arm", "key", *numbers, "better", "role"])
        for c in numbers:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
        return frame

    def write_json(self, path: str | os.PathLike) -> Path:
        """metrics.json: one flat object, undefined values as null, written atomically."""
        path = Path(path)
        write_json_atomic(path, self.metrics)
        return path

    def write_report(self, folder: str | os.PathLike, *, title: str | None = None) -> list[Path]:
        """report.md, report.html (plots embedded) and plots/*.png; returns their paths."""
        from fidelity_exp.report import write_report

        return write_report(Path(folder), self.spec, self.human, self.synthetic, self.metrics,
                            title=title or f"fidelity_exp report: {self.spec.name}", fdr=self.options.fdr,
                            components=self.options.score_components)

    def log_to(self, tracked: Any, *, metrics_json: Path | None = None, datasets: bool = True,
               human_context: str = "evaluation", report_dir: Path | None = None) -> None:
        """Into an open run (`tracking.TrackedRun`): metrics, notes as tags, metrics.json, the
        synthetic sets (`synthetic/<arm>.csv`), the report (`report/`; also kept in `report_dir`),
        the verdict as the run's description, and (`datasets`) the humans and each arm's twins as
        MLflow dataset inputs."""
        from fidelity_exp.report import run_description
        from fidelity_exp.study.sources import describe
        from fidelity_exp.tracking.notebook import NOTE, log_datasets, verdict_note

        tracked.log_metrics(self.metrics)
        if self.notes:
            tracked.set_tags(self.notes)
        files = {arm: as_file_frame(self.spec, frame) for arm, frame in self.synthetic.items()}
        with tempfile.TemporaryDirectory() as tmp:
            tracked.log_file(metrics_json or self.write_json(Path(tmp) / "metrics.json"))
            for arm, frame in files.items():
                tracked.log_frame(frame, f"synthetic/{arm}.csv")
            report = Path(report_dir) if report_dir is not None else Path(tmp) / "report"
            self.write_report(report)
            tracked.log_dir(report, "report")
        note = run_description(self.metrics, self.arms, fdr=self.options.fdr, components=self.options.score_components)
        tracked.set_tags({NOTE: verdict_note(note, {"report": "report/report.html", "metrics": "metrics.json"})})
        if datasets:
            sets = [(f"{self.spec.name}-{human_context}", self.human, human_context)]
            sets += [(f"{self.spec.name}-synthetic-{arm}", frame, f"synthetic:{arm}") for arm, frame in files.items()]
            log_datasets(tracked, sets, source=describe(self.spec.source))

    def log_to_mlflow(self, *, experiment: str | None = None, run_name: str | None = None,
                      tracking_uri: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """A new MLflow run (experiment: the study's name by default) holding everything `log_to`
        logs; the store is `tracking_uri`, else $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db as
        for the command line. Returns the run id."""
        from fidelity_exp import tracking
        from fidelity_exp.paths import PathSettings

        where = tracking.TrackingSettings(uri=tracking_uri, experiment=experiment or self.spec.name,
                                          artifact_root="mlruns/artifacts")
        all_tags = {"study.name": self.spec.name, "study.version": self.spec.version, "mode": "api",
                    "arms": ",".join(self.arms), **dict(tags or {})}
        with tracking.start_run(where, PathSettings(mlruns="mlruns"), run_name=run_name or f"{self.spec.name}-api",
                                tags=all_tags) as tracked:
            tracked.log_params({"metrics." + k: str(v) for k, v in vars(self.options).items()})
            self.log_to(tracked)
            return tracked.run_id

