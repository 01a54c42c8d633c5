"""The LLM arms: `base` (the pretrained model) and `finetuned` (with a LoRA adapter trained on
the pilot, or a registered one), interviewed as twins of the same evaluation humans with the
same random stream.

    session (once per run, on the first LLM arm): load the model -> render one example interview (logged)
    base:      simulate with the pretrained weights
    finetuned: fine-tune LoRA on the pilot interviews (loss per step, adapter logged and
               registered) or load `finetune.uri` -> simulate -> take the adapter off again

With rectification folds (`Split.folds`), the finetuned arm fine-tunes one model per fold on
the pilot without that fold, and each model answers as twins of its fold's humans (labelled:
their real answers are known) and of the evaluation personas (unlabelled). The first model's
evaluation twins are the arm's twins for the fidelity metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from fidelity_exp.arms import ARMS, Arm, ArmContext, Twins, twin_base
from fidelity_exp.errors import ConfigError, UserError
from fidelity_exp.inference.regressions import TwinSets
from fidelity_exp.llm.finetune import TRAINED, FinetuneSettings, quantization_config
from fidelity_exp.llm.interview import ORDER_MODES, Renderer, interview_orders, messages, shown_mode
from fidelity_exp.llm.models import (ModelSettings, architecture_config, cached_config, load_model, load_tokenizer,
                                     resolve_device, resolve_dtype)
from fidelity_exp.metrics.position import OrderScorings
from fidelity_exp.metrics.registry import register_other
from fidelity_exp.settings import Checked, group, option, seed_option
from fidelity_exp.study.data import Study
from fidelity_exp.study.split import Split
from fidelity_exp.study.synthetic_file import PROB_SEP

POSITION_STREAM = 6   # seed offset of the position metrics' subsample of twins (uniforms use 2, orders 3)

# What the LLM arms log about themselves (throughput, training), beside the fidelity metrics.
register_other("perf/*/respondent_questions_per_s", "perf/*/simulate_tokens_per_s", "perf/*/simulate_seconds",
               "perf/finetune_tokens_per_s", "perf/finetune_seconds", "train/loss", "train/loss_first",
               "train/loss_last", "train/examples", "train/tokens")

if TYPE_CHECKING:   # torch is imported when a model is loaded, not when a run is planned
    from fidelity_exp.llm.engine import SimulationResult

log = logging.getLogger(__name__)
FOLD_SEED_STEP = 7919   # a fold's rectification twins get the stream seed + this x (k + 1): a prime, no overlap


@group("simulate")
@dataclass
class SimulateSettings(Checked):
    """The `simulate` group (conf/simulate/default.yaml documents each key)."""

    temperature: float = option(1.0, ge=0, what="a temperature >= 0 (0: the most probable option)")
    show_persona: bool = True
    batch_size: int = option(16, ge=1, what="a number of twins >= 1")
    seed: int = seed_option()
    option_order: str = option("fixed", one_of=ORDER_MODES)
    position_metrics: bool = True
    position_twins: Any = 50          # twins scored forward and reversed (a seeded subsample), or "all"

    def check(self) -> None:
        n = self.position_twins
        if n != "all" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError("position_twins", n, "expected a number of twins >= 1, or all (every twin)")

    def position_rows(self, n_twins: int) -> list[int] | None:
        """The twins (indices into the evaluation twins) whose questions the position metrics score
        both ways: `position_twins` of them drawn with the seed, the same for every arm; None for all."""
        if self.position_twins == "all" or self.position_twins >= n_twins:
            return None
        rng = np.random.default_rng([self.seed, POSITION_STREAM])
        return sorted(int(i) for i in rng.choice(n_twins, size=self.position_twins, replace=False))

    @property
    def shown_order(self) -> str:
        """The order twins are shown the options in (`averaged` shows spec order)."""
        return shown_mode(self.option_order)


@dataclass(frozen=True)
class LLMSettings:
    """The run-level groups the LLM arms read: which model, how twins answer, how to fine-tune."""

    model: ModelSettings
    simulate: SimulateSettings
    finetune: FinetuneSettings
    tracking_uri: str | None = None

    @classmethod
    def of(cls, settings: Any, tracking_uri: str | None = None) -> "LLMSettings":
        """The LLM arms' part of a run's typed `Settings` (settings.check_config)."""
        return cls(model=settings.model, simulate=settings.simulate, finetune=settings.finetune,
                   tracking_uri=tracking_uri)


def records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Rows as dicts of plain values (missing as None)."""
    sub = frame[columns].astype(object)
    return sub.where(sub.notna(), None).to_dict("records")


def answers_of(study: Study, ids: pd.Index) -> list[list[Any]]:
    sub = study.frame.loc[ids, study.spec.question_columns].astype(object)
    return sub.where(sub.notna(), None).values.tolist()


def synthetic_frame(study: Study, split: Split, result: "SimulationResult") -> pd.DataFrame:
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


class LLMSession:
    """The model every LLM arm of one run shares, loaded once, with the interview renderer and the
    twins' random stream (the same uniforms for every LLM arm: they differ only by the model)."""

    def __init__(self, settings: LLMSettings, ctx: ArmContext):
        from fidelity_exp.llm.engine import uniforms_for

        self.settings, self.study, self.split, self.tracked = settings, ctx.study, ctx.split, ctx.tracked
        spec = self.study.spec
        self.loaded = load_model(settings.model, quantization=quantization_config(settings.finetune))
        self.renderer = Renderer(spec, self.loaded.tokenizer, show_persona=settings.simulate.show_persona)
        self.pilot_given = records(self.study.frame.loc[self.split.pilot], spec.given_columns)
        self.pilot_answers = answers_of(self.study, self.split.pilot)
        self.twins = records(self.study.frame.loc[self.split.evaluation], spec.given_columns)
        self.uniforms = uniforms_for(len(self.twins), len(spec.questions), ctx.seed)
        self.seed = ctx.seed
        if self.tracked is not None:   # one pilot interview, its options as this run shows them
            sim = settings.simulate
            shown = sim.shown_order
            example = self.renderer.text(messages(spec, self.pilot_given[0], self.pilot_answers[0],
                                                  show_persona=self.renderer.show_persona,
                                                  orders=interview_orders(spec, shown, seed=self.seed)), False)
            self.tracked.log_text(f"# simulate.option_order={sim.option_order}"
                                  + (" (shown in spec order, scored forward and reversed)\n" if shown != sim.option_order
                                     else "\n") + example, "prompts/example_interview.txt")
            self.tracked.log_params({"model.n_parameters": str(self.loaded.n_parameters),
                                     "model.runtime_dtype": str(self.loaded.dtype),
                                     "model.runtime_device": str(self.loaded.device)})

    def interview(self, what: str, model: Any, who: Split, given=None, stream=None, arm: str | None = None,
                  seed: int | None = None) -> tuple[pd.DataFrame, OrderScorings | None]:
        """Twins of `who.evaluation` answer (options in `simulate.option_order`, random orders
        seeded by `seed`, the stream's); an arm's own interview (`arm`) logs its speed and, with
        `simulate.position_metrics`, scores every question forward and reversed too."""
        from fidelity_exp.llm.engine import simulate

        given = self.twins if given is None else given
        stream = self.uniforms if stream is None else stream
        sim = self.settings.simulate
        n_questions = len(self.study.spec.questions)
        with _progress(len(given), f"simulating {what}") as bar:
            result = simulate(model, self.renderer, given, stream, temperature=sim.temperature,
                              batch_size=sim.batch_size, progress=bar.update, option_order=sim.option_order,
                              order_seed=self.seed if seed is None else seed,
                              position=sim.position_metrics and arm is not None,
                              position_rows=sim.position_rows(len(given)))
        rq = len(given) * n_questions / result.seconds
        log.info("%s: %d twins x %d questions in %.1f s: %.2f respondent-questions/s, %.0f tokens/s", what,
                 len(given), n_questions, result.seconds, rq, result.tokens / result.seconds)
        if self.tracked is not None and arm is not None:
            self.tracked.log_metrics({f"perf/{arm}/respondent_questions_per_s": rq,
                                      f"perf/{arm}/simulate_tokens_per_s": result.tokens / result.seconds,
                                      f"perf/{arm}/simulate_seconds": result.seconds})
        scorings = None
        if result.forward is not None and arm is not None:
            scorings = OrderScorings(result.forward, result.reverse)
        return synthetic_frame(self.study, who, result), scorings

    def finetuned_model(self, given, answers, tracked: Any) -> Any:
        """The model with an adapter: trained on (given, answers) with `finetune=lora`, or the
        adapter `finetune.uri` with `finetune=registered`. `tracked` gets the losses and the adapter."""
        from fidelity_exp.llm import adapters
        from fidelity_exp.llm.finetune import finetune

        settings = self.settings.finetune
        if settings.method == "registered":
            log.info("finetuned arm: loading the adapter %s", settings.uri)
            return adapters.fetch_adapter(self.loaded.model, settings.uri, self.settings.tracking_uri)
        on_step = (lambda step, loss: tracked.log_metrics({"train/loss": loss}, step=step)) if tracked else None
        result = finetune(self.loaded, self.renderer, given, answers, settings, on_step=on_step)
        if tracked is not None:
            tracked.log_metrics({"perf/finetune_tokens_per_s": result.tokens_per_s,
                                 "perf/finetune_seconds": result.seconds,
                                 "train/loss_first": result.losses[0], "train/loss_last": result.losses[-1],
                                 "train/examples": result.examples, "train/tokens": result.tokens})
            about = {"study": f"{self.study.spec.name} v{self.study.spec.version}", "base model": self.loaded.name,
                     "pilot humans": len(given), "LoRA": f"rank {settings.lora.rank}, alpha {settings.lora.alpha}",
                     "epochs": settings.epochs, "learning rate": settings.learning_rate,
                     "train examples": result.examples}
            adapters.log_and_register(tracked, result.model,
                                      adapters.registered_name(self.study.spec.name, self.loaded.name), about)
        return result.model

    def take_off_adapter(self, model: Any) -> None:
        """The bare base model again (peft injects the adapter into the loaded model's layers)."""
        self.loaded.model = model.unload()


@ARMS.register("base")
@dataclass
class BaseModel(Arm):
    """The pretrained instruction model, as it is."""

    uses_llm: ClassVar[bool] = True
    simulated_by_llm: ClassVar[bool] = True

    def simulate(self, ctx: ArmContext) -> Twins:
        session = ctx.llm()
        frame, scorings = session.interview(f"arm {self.name}", session.loaded.model, ctx.split, arm=self.name)
        return Twins(frame, position=scorings)


@ARMS.register("finetuned")
@dataclass
class Finetuned(Arm):
    """The same model with a LoRA adapter fine-tuned on the pilot (`finetune=lora`) or loaded
    (`finetune=registered`); the method and its settings are the `finetune` config group."""

    uses_llm: ClassVar[bool] = True
    simulated_by_llm: ClassVar[bool] = True

    def check(self, *, finetune: FinetuneSettings | None = None) -> None:
        if finetune is not None and finetune.method == "registered":
            _check_local_adapter(finetune.uri)

    def simulate(self, ctx: ArmContext) -> Twins:
        from fidelity_exp.llm.engine import uniforms_for

        session = ctx.llm()
        study, split = ctx.study, ctx.split
        if not split.folds:
            model = session.finetuned_model(session.pilot_given, session.pilot_answers, ctx.tracked)
            frame, scorings = session.interview(f"arm {self.name}", model, split, arm=self.name)
            session.take_off_adapter(model)
            return Twins(frame, position=scorings)
        if session.settings.finetune.method not in TRAINED:
            raise ConfigError("finetune.method", session.settings.finetune.method, "rectified estimates "
                              "(pilot.finetune_fraction < 1 or pilot.crossfit_folds >= 2) fine-tune on part of the "
                              "pilot: expected lora or qlora")
        labelled, unlabelled, scorings = [], [], None
        for k, fold in enumerate(split.folds):
            train = split.finetune_ids(k)
            log.info("rectification fold %d/%d: fine-tuning on %d pilot humans, rectifying with %d", k + 1,
                     len(split.folds), len(train), len(fold))
            model = session.finetuned_model(records(study.frame.loc[train], study.spec.given_columns),
                                            answers_of(study, train), ctx.tracked if k == 0 else None)
            frame, fold_scorings = session.interview(f"arm {self.name}" if k == 0 else f"fold {k}/evaluation personas",
                                                     model, split, arm=self.name if k == 0 else None)
            unlabelled.append(frame)
            scorings = scorings or fold_scorings
            fold_given = records(study.frame.loc[fold], study.spec.given_columns)
            fold_seed = session.seed + FOLD_SEED_STEP * (k + 1)
            fold_stream = uniforms_for(len(fold_given), len(study.spec.questions), fold_seed)
            labelled.append(session.interview(f"fold {k}/rectification humans", model,
                                              Split(pilot=train, evaluation=fold), fold_given, fold_stream,
                                              seed=fold_seed)[0])
            session.take_off_adapter(model)   # the bare base model again, for the next fold
        return Twins(unlabelled[0], TwinSets(labelled=pd.concat(labelled, ignore_index=True), unlabelled=unlabelled),
                     position=scorings)


def _check_local_adapter(uri: str) -> None:
    """A local adapter folder is checked before any run starts (an MLflow URI is fetched in the run).
    `finetune.uri` is there (FinetuneSettings requires it with method: registered)."""
    from fidelity_exp.llm import adapters

    folder = adapters.local_folder(uri)
    if folder is None:
        return
    if not folder.is_dir():
        raise ConfigError("finetune.uri", uri, f"expected an adapter folder, MLflow models:/ or runs:/ URI; "
                          f"{str(folder)!r} is not a folder")
    adapters.check_folder(folder)


def check_memory(settings: LLMSettings, study: Study, split: Split, finetunes: bool) -> None:
    """Refuse, before anything is loaded, a run whose estimated peak memory does not fit its
    device (llm/memory.py); `model.memory_check=false` skips it."""
    from fidelity_exp.llm import memory

    if not settings.model.memory_check:
        return
    planned = memory_estimate(settings, study, split, finetunes)
    if planned is not None:
        memory.refuse_if_too_big(*planned)


def memory_estimate(settings: LLMSettings, study: Study, split: Split, finetunes: bool):
    """(estimate, work, device, what) of this run's LLM stages, from the architecture alone and
    the longest interviews (token counts from the model's tokenizer); None when the model's
    architecture is unknown before loading (a hub model without `model.shape` and not cached) or
    its tokenizer cannot be loaded (the run then fails with that message when it loads the model)."""
    import torch

    from fidelity_exp.llm import memory

    model, sim = settings.model, settings.simulate
    try:
        tokenizer = load_tokenizer(model.tokenizer_source)
    except UserError as e:   # said again, in the run, when the model loads (a failed trial keeps its run)
        log.info("memory check skipped: the tokenizer cannot be loaded (%s)", e)
        return None
    config = architecture_config(model.shape, model.architecture, vocab_size=len(tokenizer)) or cached_config(model)
    if config is None:
        log.info("memory check skipped: model %s names no shape (model.shape) and its config.json is not in the "
                 "local cache", model.name)
        return None
    ft = settings.finetune
    trains = finetunes and ft.method in TRAINED
    sizes = memory.Sizes.of(config, ft.lora.rank if trains else 0, list(ft.lora.target_modules) if trains else [])
    device = resolve_device(model.device)
    dtype = resolve_dtype(model.dtype, device)
    renderer = Renderer(study.spec, tokenizer, show_persona=sim.show_persona)
    train_tokens = max(interview_lengths(renderer, study, split.pilot, answered=True)) if trains else 0
    twin_tokens = max(interview_lengths(renderer, study, split.evaluation, answered=False))
    segment = max(len(renderer.prompt_ids(g, [], 0)) for g in records(study.frame.loc[split.evaluation],
                                                                        study.spec.given_columns))
    work = memory.Work(dtype_bytes=torch.finfo(dtype).bits // 8, quantized=ft.method == "qlora",
                       finetune=trains, train_batch=ft.batch_size if trains else 0, train_tokens=train_tokens,
                       answers=len(study.spec.questions), checkpointing=ft.gradient_checkpointing,
                       cpu=device.type == "cpu", simulate_batch=min(sim.batch_size, len(split.evaluation)),
                       simulate_tokens=twin_tokens, segment_tokens=segment)
    est = memory.estimate(sizes, work, memory.process_bytes(device))
    what = (f"{model.name} ({sizes.parameters / 1e9:.2f}B parameters, {str(dtype).removeprefix('torch.')}"
            f"{', 4-bit base' if work.quantized else ''})")
    return est, work, device, what


def interview_lengths(renderer: Renderer, study: Study, ids: pd.Index, answered: bool) -> list[int]:
    """Tokens of each complete interview of `ids`: with their own answers (`answered`, as
    fine-tuning reads them) or, for twins, every question answered (as their KV cache ends)."""
    spec = study.spec
    given = records(study.frame.loc[ids], spec.given_columns)
    answers = answers_of(study, ids) if answered else [[q.codes[0] for q in spec.questions]] * len(given)
    return [len(renderer.ids(renderer.text(messages(spec, g, a, show_persona=renderer.show_persona), False)))
            for g, a in zip(given, answers, strict=True)]
