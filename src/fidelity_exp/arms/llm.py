"""The LLM arms: `base` (the pretrained model) and `finetuned` (with a LoRA adapter trained on
the pilot, or a registered one), interviewed as twins of the same evaluation humans with the
same random stream.

    setup: load the model once -> render one example interview (logged)
    base:      simulate with the pretrained weights
    finetuned: fine-tune LoRA on the pilot interviews (loss per step, adapter logged and
               registered) or load `finetune.uri` -> simulate

With rectification folds (`Split.folds`), the finetuned arm fine-tunes one model per fold on
the pilot without that fold, and each model answers as twins of its fold's humans (labelled:
their real answers are known) and of the evaluation personas (unlabelled). The first model's
evaluation twins are the arm's twins for the fidelity metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from fidelity_exp.arms import twin_base
from fidelity_exp.errors import ConfigError
from fidelity_exp.inference.regressions import TwinSets
from fidelity_exp.llm.engine import SimulationResult, simulate, uniforms_for
from fidelity_exp.llm.interview import Renderer, messages
from fidelity_exp.llm.models import LoadedModel, load_model
from fidelity_exp.study.data import Study
from fidelity_exp.study.split import Split
from fidelity_exp.study.synthetic_file import PROB_SEP

log = logging.getLogger(__name__)
LLM_ARMS = ("base", "finetuned")
FINETUNE_METHODS = ("none", "lora", "registered")


def records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Rows as dicts of plain values (missing as None)."""
    sub = frame[columns].astype(object)
    return sub.where(sub.notna(), None).to_dict("records")


def answers_of(study: Study, ids: pd.Index) -> list[list[Any]]:
    sub = study.frame.loc[ids, study.spec.question_columns].astype(object)
    return sub.where(sub.notna(), None).values.tolist()


def synthetic_frame(study: Study, split: Split, result: SimulationResult) -> pd.DataFrame:
    spec = study.spec
    out = twin_base(study, split)
    for j, q in enumerate(spec.questions):
        out[q.column] = [a[j] for a in result.answers]
    for j, q in enumerate(spec.questions):
        for k, code in enumerate(q.codes):
            out[f"{q.column}{PROB_SEP}{code}"] = result.probabilities[j][:, k]
    return out


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="twin", leave=True)


def run_llm_arms(names: list[str], study: Study, split: Split, cfg: DictConfig, tracked: Any,
                 tracking_uri: str | None) -> tuple[dict[str, pd.DataFrame], TwinSets | None]:
    loaded = load_model(cfg.model)
    renderer = Renderer(study.spec, loaded.tokenizer, show_persona=bool(cfg.simulate.show_persona))
    pilot_given = records(study.frame.loc[split.pilot], study.spec.given_columns)
    pilot_answers = answers_of(study, split.pilot)
    if tracked is not None:
        example = renderer.text(messages(study.spec, pilot_given[0], pilot_answers[0],
                                         show_persona=renderer.show_persona), False)
        tracked.log_text(example, "prompts/example_interview.txt")
        tracked.log_params({"model.n_parameters": str(loaded.n_parameters), "model.runtime_dtype": str(loaded.dtype),
                            "model.runtime_device": str(loaded.device)})

    twins = records(study.frame.loc[split.evaluation], study.spec.given_columns)
    uniforms = uniforms_for(len(twins), len(study.spec.questions), int(cfg.simulate.seed))
    out: dict[str, pd.DataFrame] = {}

    def interview(what: str, model: Any, who: Split, given=twins, stream=uniforms, arm: str | None = None
                  ) -> pd.DataFrame:
        """Twins of `who.evaluation` answer; an arm's own interview (`arm`) logs its speed."""
        with _progress(len(given), f"simulating {what}") as bar:
            result = simulate(model, renderer, given, stream, temperature=float(cfg.simulate.temperature),
                              batch_size=int(cfg.simulate.batch_size), progress=bar.update)
        rq = len(given) * len(study.spec.questions) / result.seconds
        log.info("%s: %d twins x %d questions in %.1f s: %.2f respondent-questions/s, %.0f tokens/s", what,
                 len(given), len(study.spec.questions), result.seconds, rq, result.tokens / result.seconds)
        if tracked is not None and arm is not None:
            tracked.log_metrics({f"perf/{arm}/respondent_questions_per_s": rq,
                                 f"perf/{arm}/simulate_tokens_per_s": result.tokens / result.seconds,
                                 f"perf/{arm}/simulate_seconds": result.seconds})
        return synthetic_frame(study, who, result)

    if "base" in names:
        out["base"] = interview("arm base", loaded.model, split, arm="base")
    if "finetuned" not in names:
        return out, None
    if not split.folds:
        model = _finetuned_model(loaded, renderer, pilot_given, pilot_answers, study, cfg, tracked, tracking_uri)
        out["finetuned"] = interview("arm finetuned", model, split, arm="finetuned")
        return out, None
    if cfg.finetune.method != "lora":
        raise ConfigError("finetune.method", cfg.finetune.method, "rectified estimates (pilot.finetune_fraction < 1 "
                          "or pilot.crossfit_folds >= 2) fine-tune on part of the pilot: expected lora")
    labelled, unlabelled = [], []
    for k, fold in enumerate(split.folds):
        train = split.finetune_ids(k)
        log.info("rectification fold %d/%d: fine-tuning on %d pilot humans, rectifying with %d", k + 1,
                 len(split.folds), len(train), len(fold))
        model = _finetuned_model(loaded, renderer, records(study.frame.loc[train], study.spec.given_columns),
                                 answers_of(study, train), study, cfg, tracked if k == 0 else None, tracking_uri)
        unlabelled.append(interview("arm finetuned" if k == 0 else f"fold {k}/evaluation personas", model, split,
                                    arm="finetuned" if k == 0 else None))
        fold_split = Split(pilot=train, evaluation=fold)
        fold_given = records(study.frame.loc[fold], study.spec.given_columns)
        fold_stream = uniforms_for(len(fold_given), len(study.spec.questions), int(cfg.simulate.seed) + 7919 * (k + 1))
        labelled.append(interview(f"fold {k}/rectification humans", model, fold_split, fold_given, fold_stream))
        loaded.model = model.unload()   # the bare base model again, for the next fold
    out["finetuned"] = unlabelled[0]
    return out, TwinSets(labelled=pd.concat(labelled, ignore_index=True), unlabelled=unlabelled)


def _finetuned_model(loaded: LoadedModel, renderer: Renderer, pilot_given, pilot_answers, study: Study,
                     cfg: DictConfig, tracked: Any, tracking_uri: str | None) -> Any:
    from fidelity_exp.llm import adapters
    from fidelity_exp.llm.finetune import finetune

    if cfg.finetune.method == "registered":
        log.info("finetuned arm: loading the adapter %s", cfg.finetune.uri)
        return adapters.fetch_adapter(loaded.model, str(cfg.finetune.uri), tracking_uri)
    on_step = (lambda step, loss: tracked.log_metrics({"train/loss": loss}, step=step)) if tracked else None
    result = finetune(loaded, renderer, pilot_given, pilot_answers, cfg.finetune, on_step=on_step)
    if tracked is not None:
        tracked.log_metrics({"perf/finetune_tokens_per_s": result.tokens_per_s, "perf/finetune_seconds": result.seconds,
                             "train/loss_first": result.losses[0], "train/loss_last": result.losses[-1],
                             "train/examples": result.examples, "train/tokens": result.tokens})
        adapters.log_and_register(tracked, result.model, adapters.registered_name(study.spec.name, loaded.name))
    return result.model

