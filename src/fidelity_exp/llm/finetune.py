"""LoRA fine-tuning on the pilot humans' interviews (config group `finetune`).

The training data are the pilot respondents' complete interviews, rendered by the same
`interview.messages` as simulation; the loss is on the answer letters only. With
`finetune.option_order=random` every pilot interview is rendered again for every epoch, each
question's options in a fresh order seeded by (seed, respondent, question, epoch), so the
adapter learns which option a respondent chose, not where it was printed. Training runs on
the transformers `Trainer` (optimizer, schedule, seeding, mixed precision and multi-GPU come
from it on a cluster); the loss of every step goes to MLflow through a callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

from fidelity_exp.errors import ArmFailed, ConfigError, UserError
from fidelity_exp.llm.interview import TRAINING_ORDERS, Renderer, interview_orders
from fidelity_exp.llm.models import LoadedModel
from fidelity_exp.settings import Checked, group, option, seed_option, typed

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
METHODS = ("none", "lora", "qlora", "registered")
TRAINED = ("lora", "qlora")    # the methods that fine-tune an adapter on the pilot
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
# transformers' schedules that need no arguments beyond warmup (tests check they are its SchedulerType's)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


@dataclass
class LoraSettings(Checked):
    """`finetune.lora`: the adapter's shape (peft's LoraConfig)."""

    rank: int = option(8, ge=1, le=4096, what="an integer from 1 to 4096 (the adapter's rank r)")
    alpha: float = option(16.0, gt=0, what="a positive number (LoRA's scaling alpha; alpha / rank scales the update)")
    dropout: float = option(0.05, ge=0, lt=1, what="a probability in [0, 1)")
    target_modules: List[str] = option(["q_proj", "v_proj"])

    def check(self) -> None:
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ConfigError("target_modules", self.target_modules, "expected a non-empty list of module names, "
                              "e.g. [q_proj, v_proj]")


@dataclass
class QuantizationSettings(Checked):
    """`finetune.quantization` (finetune=qlora): how bitsandbytes stores the frozen base weights."""

    bits: int = option(4, one_of=(4,), what="4 (QLoRA's 4-bit base)")
    quant_type: str = option("nf4", one_of=QUANT_TYPES)
    double_quant: bool = True
    compute_dtype: str = option("bfloat16", one_of=COMPUTE_DTYPES)


@group("finetune")
@dataclass
class FinetuneSettings(Checked):
    """The `finetune` group (conf/finetune/*.yaml); `lora` is read into a `LoraSettings` (lora,
    qlora), `quantization` into a `QuantizationSettings` (qlora); `uri` is `method: registered`'s."""

    method: str = option("lora", one_of=METHODS)
    uri: Optional[str] = None
    lora: Optional[Dict[str, Any]] = None
    learning_rate: float = option(1e-3, gt=0, le=1, what="a learning rate in (0, 1]")
    epochs: int = option(2, ge=1, le=1000, what="an integer from 1 to 1000")
    max_steps: Optional[int] = option(None, ge=1, nullable=True, what="a positive number of steps, or null "
                                      "(epochs decide)")
    batch_size: int = option(8, ge=1, what="an integer >= 1")
    scheduler: str = option("linear", one_of=SCHEDULERS)
    warmup_steps: int = option(0, ge=0, what="an integer >= 0")
    group_by_length: bool = True
    gradient_checkpointing: bool = False   # recompute each layer's activations in backward: less memory, ~1/3 more time
    option_order: str = option("fixed", one_of=TRAINING_ORDERS)   # how the pilot interviews show options
    quantization: Optional[Dict[str, Any]] = None
    seed: int = seed_option()

    def check(self) -> None:
        if self.method == "registered" and not self.uri:
            raise ConfigError("uri", self.uri, "expected models:/<name>/<version>, runs:/<run id>/adapter or a local "
                              "adapter folder (finetune=registered)")
        if self.method in TRAINED:
            self.lora = typed(LoraSettings, self.lora, "lora", "finetune.lora")
        if self.method == "qlora":
            self.quantization = typed(QuantizationSettings, self.quantization or {}, "quantization",
                                      "finetune.quantization")


def quantization_config(settings: FinetuneSettings):
    """The transformers `BitsAndBytesConfig` of `finetune=qlora` (None for every other method)."""
    if settings.method != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    q = settings.quantization
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))


def check_quantization(settings: FinetuneSettings, device: "torch.device") -> None:
    """finetune=qlora needs CUDA and bitsandbytes: said before anything is loaded."""
    if settings.method != "qlora":
        return
    if device.type != "cuda":
        raise ConfigError("finetune", "qlora", f"4-bit QLoRA runs on a CUDA GPU (bitsandbytes) and this run's device "
                          f"is {device}: on a CPU use finetune=lora (with finetune.gradient_checkpointing=true "
                          "for less memory)")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("finetune", "qlora", "needs bitsandbytes, which is not installed: pip install -r requirements/gpu.txt "
                          "(the gpu extra; README, Installing on a GPU machine)")


@dataclass
class FinetuneResult:
    model: Any                                  # the PeftModel (adapter enabled)
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    tokens: int = 0                             # real tokens forward+backward, all steps
    seconds: float = 0.0
    served: dict[int, int] = field(default_factory=dict)   # option_order=random: epoch -> interviews served

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                      target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


class _Collator:
    """Right-pads a batch (labels with -100) and counts the real tokens it hands out."""

    def __init__(self, pad_id: int):
        self.pad_id, self.tokens = pad_id, 0

    def __call__(self, batch: list[Mapping[str, list[int]]]) -> dict[str, "torch.Tensor"]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        self.tokens += int(mask.sum())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def training_set(renderer: Renderer, given: Sequence[Mapping[str, Any]], answers: Sequence[Sequence[Any]],
                 option_order: str = "fixed", seed: int = 0, epoch: int = 0):
    """The pilot interviews as (input_ids, labels) rows; options in spec order (`fixed`) or
    (`random`) in the order seeded by (seed, respondent, question, epoch)."""
    rows = []
    for i, (g, a) in enumerate(zip(given, answers, strict=True)):
        orders = (interview_orders(renderer.spec, option_order, seed=seed, who=i, epoch=epoch)
                  if option_order == "random" else None)
        ids, labels = renderer.training_example(g, a, orders)
        if any(x != -100 for x in labels):      # a respondent with no answer teaches nothing
            rows.append({"input_ids": ids, "labels": labels})
    return rows


def training_data(renderer: Renderer, given: Sequence[Mapping[str, Any]], answers: Sequence[Sequence[Any]],
                  option_order: str = "fixed", seed: int = 0) -> "_EpochData":
    """What the Trainer reads: the same interviews every epoch (`fixed`), or rendered anew for
    each epoch (`random`); `next_epoch()` is called as each epoch begins."""
    return _EpochData(lambda epoch: training_set(renderer, given, answers, option_order, seed, epoch),
                      per_epoch=option_order == "random")


@contextlib.contextmanager
def _quiet_trainer():
    """transformers 5.24's own Trainer (and peft 0.21's get_peft_model) read the deprecated
    is_gradient_checkpointing; nothing for a user to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.* is deprecated", FutureWarning)
        yield


def finetune(loaded: LoadedModel, renderer: Renderer, given: Sequence[Mapping[str, Any]],
             answers: Sequence[Sequence[Any]], settings: FinetuneSettings, *,
             on_step: Callable[[int, float], None] | None = None, progress: bool = True) -> FinetuneResult:
    """Attach a LoRA adapter to `loaded.model` and train it on the pilot interviews."""
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback, TrainingArguments

    if settings.method not in TRAINED:
        raise ConfigError("finetune.method", settings.method, "expected lora or qlora (or finetune=none for no "
                          "fine-tuning)")
    dataset = training_data(renderer, given, answers, settings.option_order, settings.seed)
    rows = dataset.rendered[0]
    if not rows:
        raise ConfigError("pilot", len(given), "the pilot has no answered question to fine-tune on")
    base = loaded.model
    if settings.method == "qlora":   # norms and the head in float32, inputs that carry gradients
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)   # the Trainer turns it on
    torch.manual_seed(settings.seed)                   # LoRA's A matrices start random
    with _quiet_trainer():   # peft 0.21 asks the same deprecated property
        try:
            model = get_peft_model(base, lora_config(settings.lora))
        except ValueError as e:   # e.g. target modules the loaded model does not have: known only now
            raise UserError(f"finetune.lora={dataclasses.asdict(settings.lora)}: {str(e).splitlines()[0]}") from None
    collator = _Collator(renderer.tokenizer.pad_token_id)
    result = FinetuneResult(model=model, examples=len(rows))

    class StepLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                result.losses.append(float(logs["loss"]))
                if on_step:
                    on_step(state.global_step, float(logs["loss"]))

        def on_epoch_begin(self, args, state, control, **kwargs):
            dataset.next_epoch()   # before the epoch's data loader is iterated

    cuda = loaded.device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=settings.batch_size, num_train_epochs=float(settings.epochs),
            max_steps=settings.max_steps or -1, learning_rate=float(settings.learning_rate),
            lr_scheduler_type=settings.scheduler, warmup_steps=settings.warmup_steps,
            weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], seed=settings.seed,
            data_seed=settings.seed, use_cpu=not cuda, bf16=cuda and loaded.dtype == torch.bfloat16,
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=not progress,
            **_checkpointing(settings.gradient_checkpointing),
            **_sampling(settings.group_by_length),
        )
        with _quiet_trainer():
            trainer = _answer_loss_trainer()(model=model, args=args, train_dataset=dataset,
                                             data_collator=collator, callbacks=[StepLog()])
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        before = _trainable(model)
        with _quiet_trainer():
            trainer.train()
        result.seconds = time.perf_counter() - start
        check_changed(before, model, len(result.losses))
    result.tokens = collator.tokens
    result.served = dict(dataset.served) if dataset.per_epoch else {}
    model.eval()
    log.info("fine-tuned on %d pilot interviews: %d steps, loss %.3f -> %.3f, %.0f tokens/s", len(rows),
             len(result.losses), result.losses[0], result.losses[-1], result.tokens_per_s)
    return result


def _trainable(model: Any) -> dict[str, "torch.Tensor"]:
    """A copy of the adapter's weights (what training may change; a few MB even at 8B)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def check_changed(before: Mapping[str, "torch.Tensor"], model: Any, steps: int) -> None:
    """Training that left every adapter weight exactly as it started had a zero gradient at
    every step (the optimizer moves a weight whenever its gradient is not zero): the adapter
    is the identity and a `finetuned` arm would be the base model under another name. Seen
    with bitsandbytes 0.50's CPU backend, whose inference layout of 4-bit weights is not
    differentiable; any other break between the loss and the adapter ends the same way."""
    import torch

    if all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n in before):
        raise ArmFailed(f"finetuned: fine-tuning changed nothing: after {steps} steps every one of the adapter's "
                        f"{len(before)} weight matrices is exactly as it started, so no gradient reached it; the "
                        "fine-tuned model would be the base model (no adapter is logged or registered)")


def answer_loss(model: Any, input_ids: "torch.Tensor", attention_mask: "torch.Tensor",
                labels: "torch.Tensor") -> "torch.Tensor":
    """Mean cross-entropy of the answer tokens, with the vocabulary projection computed only at
    the positions that predict them (a few per interview, instead of every position: the
    projection is a fifth of SmolLM2's parameters)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, T, H)
    targets = labels[:, 1:]                                                                     # (B, T-1)
    keep = targets != -100
    logits = base.lm_head(hidden[:, :-1][keep])                                                 # (answers, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def _answer_loss_trainer():
    """The transformers Trainer with `answer_loss` (imported here: transformers' Trainer is slow to import)."""
    from transformers import Trainer

    class AnswerLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = answer_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            return (loss, None) if return_outputs else loss

    return AnswerLossTrainer


def _sampling(group_by_length: bool) -> dict:
    """Batches of similar lengths (less padding); the argument's name changed in transformers 5."""
    if _takes("train_sampling_strategy"):
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def _checkpointing(on: bool) -> dict:
    """Gradient checkpointing (non-reentrant: frozen embeddings need no input gradients); the
    arguments were renamed activation_checkpointing in transformers 5."""
    name = "activation_checkpointing" if _takes("activation_checkpointing") else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False}} if on else {}


def _takes(argument: str) -> bool:
    """Whether this transformers' `TrainingArguments` has `argument` (names moved in transformers 5)."""
    import inspect

    from transformers import TrainingArguments

    return argument in inspect.signature(TrainingArguments.__init__).parameters


class _EpochData:
    """The pilot interviews (a map-style dataset: torch's DataLoader reads `len` and `[i]`),
    `render(epoch)` for each epoch when `per_epoch` (else epoch 0's every time). Epoch 0 is
    rendered first: the length-grouping sampler reads it before training. Every epoch holds the same respondents in the same places; only the options'
    order changes."""

    def __init__(self, render: Callable[[int], list[dict]], per_epoch: bool):
        self.render, self.per_epoch = render, per_epoch
        self.rendered, self.epoch = {0: render(0)}, -1
        self.served: dict[int, int] = {}   # epoch -> interviews handed to training (not the length pass)

    def next_epoch(self) -> None:
        self.epoch += 1
        if self.per_epoch and self.epoch not in self.rendered:
            self.rendered[self.epoch] = self.render(self.epoch)

    def rows(self) -> list[dict]:
        """The interviews of the current epoch."""
        return self.rendered[max(self.epoch, 0) if self.per_epoch else 0]

    def __len__(self) -> int:
        return len(self.rendered[0])

    def __getitem__(self, i: int) -> dict:
        if self.epoch >= 0:
            self.served[self.epoch] = self.served.get(self.epoch, 0) + 1
        return self.rows()[i]
