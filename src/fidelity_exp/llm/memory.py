"""Will the run fit? The peak memory of fine-tuning and of simulation, estimated before loading.

`arms.llm.check_memory` runs it in `pipeline.plan`, before the tracked run starts and before any weights are
looked up: it needs the model's architecture (`model.shape`, or a random model's
`architecture`; a hub model without a shape is looked up in the local cache's config.json),
the dtype or 4-bit quantisation, the LoRA adapter, the batch sizes and the longest interviews
of this run (token counts from the model's tokenizer). A run whose estimate exceeds what the
device has (free GPU memory, or the RAM available to a CPU run) stops with one message: the
estimate by part, what is available, and what to change. `model.memory_check=false` skips it.

The estimate, in bytes (every figure a count of tensors the stage holds at its peak):

    weights          parameters x bytes per parameter (4-bit QLoRA: the decoder's linear layers at
                     half a byte plus one scale per 64 weights; embeddings and head in the compute dtype)
    fine-tuning      weights + LoRA state (parameter, gradient, two Adam moments: 16 bytes per
                     adapter parameter) + activations saved for backward + one layer's working set
                     in backward + the answer positions' logits
    simulation       weights + KV cache (twins x longest interview x layers x 2 x key/value width)
                     + one layer's working set on the longest segment + the last position's logits
    process          on a CPU, the process's resident memory when the check runs (Python, torch,
                     the study) and the libraries torch maps at its first forward pass

Activations saved per token and layer of a Llama/Qwen decoder layer (SDPA attention, which keeps
no attention matrix): the normalised inputs, queries, keys and values (the latter two copied to
every query head: under a mask transformers repeats them), the attention output and its copy
before `o_proj`, the residual stream twice, the MLP's gate, up, activation and product
(4 x intermediate) and each LoRA module's dropout output: `SAVED_HIDDEN` x hidden + 4 x
intermediate + 2 x hidden per LoRA module. With gradient checkpointing only each layer's input
is kept, and one layer is recomputed at a time; on a CPU, though, glibc keeps much of what each
checkpointed layer frees during the forward pass (its resident memory grew 1.84 GiB where the
tensors kept were 0.38 GiB, SmolLM2, 8 x 470 tokens), so there about half of every layer's
working set (`CPU_RETAINED`) is counted too. Checked against measured peaks in
`benchmarks/memory.py` (README, "Memory").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from fidelity_exp.errors import UserError

log = logging.getLogger(__name__)
GIB = 2**30
SAVED_HIDDEN = 10        # hidden-sized tensors a decoder layer saves per token (see the module's docstring)
WORKING_HIDDEN = 4       # a layer's transient tensors in a forward or backward pass, per token: 4 x hidden
WORKING_INTERMEDIATE = 3  # ... and 3 x intermediate (gate, up, their product)
CPU_LIBRARIES = 0.25 * GIB   # what torch's CPU kernels (oneDNN, thread pools) map at the first forward
CPU_RETAINED = 0.5       # checkpointing on a CPU: the share of each layer's working set glibc keeps (measured)
QUANT_BLOCK = 64         # bitsandbytes' 4-bit block: one scale per 64 weights


@dataclass(frozen=True)
class Sizes:
    """What the estimate needs of a model, read off its architecture built on the `meta` device."""

    parameters: int            # all of them
    linear: int                # the decoder layers' linear weights (what 4-bit quantises)
    layers: int
    hidden: int
    intermediate: int
    kv_width: int              # key/value heads x head dimension
    vocab: int
    lora: int = 0              # adapter parameters
    lora_modules: int = 0      # adapted modules per layer

    @classmethod
    def of(cls, config: Any, lora_rank: int = 0, lora_targets: Sequence[str] = ()) -> "Sizes":
        from fidelity_exp.llm.models import meta_model

        model = meta_model(config)
        linear = lora = 0
        targets = set(lora_targets)
        adapted_names = set()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                linear += module.weight.numel()
                leaf = name.rsplit(".", 1)[-1]
                if leaf in targets:
                    lora += lora_rank * (module.in_features + module.out_features)
                    adapted_names.add(leaf)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(parameters=sum(p.numel() for p in model.parameters()), linear=linear,
                   layers=config.num_hidden_layers, hidden=config.hidden_size, intermediate=config.intermediate_size,
                   kv_width=getattr(config, "num_key_value_heads", heads) * head_dim, vocab=config.vocab_size,
                   lora=lora, lora_modules=len(adapted_names))


@dataclass(frozen=True)
class Work:
    """What the run asks of the model: bytes per value, batch sizes and the longest interviews."""

    dtype_bytes: int                 # weights and activations (2 for bfloat16/float16, 4 for float32)
    quantized: bool = False          # finetune=qlora: 4-bit base
    finetune: bool = True
    train_batch: int = 8
    train_tokens: int = 0            # the longest pilot interview (the widest training batch pads to it)
    answers: int = 0                 # answer positions per interview (the loss's logits)
    checkpointing: bool = False
    cpu: bool = False                # host memory (RSS), where freed memory is not always returned
    simulate_batch: int = 16
    simulate_tokens: int = 0         # the longest twin interview (the KV cache of a batch grows to it)
    segment_tokens: int = 0          # the longest single read (a batch's first prompts)


@dataclass
class Estimate:
    """Peak bytes of each stage, by part; `peak` is the larger stage."""

    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def total(self, stage: str) -> float:
        return sum(self.stages[stage].values())

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=self.total)

    @property
    def peak(self) -> float:
        return self.total(self.peak_stage)

    def describe(self, stage: str) -> str:
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in self.stages[stage].items() if value)
        return f"{stage} needs about {self.total(stage) / GIB:.1f} GiB ({parts})"


def weight_bytes(s: Sizes, w: Work) -> float:
    if not w.quantized:
        return s.parameters * w.dtype_bytes
    rest = s.parameters - s.linear
    return s.linear * (0.5 + 4 / QUANT_BLOCK) + rest * w.dtype_bytes


def estimate(s: Sizes, w: Work, process: float = 0.0) -> Estimate:
    """The peak memory of each stage the run has (see the module's docstring)."""
    out = Estimate()
    weights = weight_bytes(s, w)
    layer_work = (WORKING_HIDDEN * s.hidden + WORKING_INTERMEDIATE * s.intermediate) * w.dtype_bytes
    if w.finetune and w.train_tokens:
        tokens = w.train_batch * w.train_tokens
        per_layer = (SAVED_HIDDEN * s.hidden + 4 * s.intermediate + 2 * s.hidden * s.lora_modules) * w.dtype_bytes
        saved = tokens * (s.layers * s.hidden * w.dtype_bytes + per_layer) if w.checkpointing \
            else tokens * s.layers * per_layer
        if w.checkpointing and w.cpu:
            saved += CPU_RETAINED * tokens * s.layers * layer_work
        out.stages["fine-tuning"] = {
            "process": process, "weights": weights, "adapter and optimizer": 16 * s.lora,
            "activations": saved, "backward working set": tokens * layer_work,
            "answer logits": 3 * w.train_batch * w.answers * s.vocab * 4,
        }
    if w.simulate_tokens:
        kv = w.simulate_batch * w.simulate_tokens * s.layers * 2 * s.kv_width * w.dtype_bytes
        out.stages["simulation"] = {
            "process": process, "weights": weights, "KV cache": kv,
            "forward working set": w.simulate_batch * w.segment_tokens * layer_work,
            "logits": w.simulate_batch * s.vocab * 4 * 2,
        }
    return out


def available(device: torch.device) -> tuple[float, str]:
    """Bytes the run may use on `device`, and what they are."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return float(free), f"free on {torch.cuda.get_device_name(device)} ({total / GIB:.1f} GiB in all)"
    import psutil

    mem = psutil.virtual_memory()
    return float(mem.available), f"RAM available ({mem.total / GIB:.1f} GiB in all)"


def process_bytes(device: torch.device) -> float:
    """What the process already holds that counts toward the device's peak: on a CPU its resident
    memory now plus the libraries torch maps at its first forward; on a GPU nothing yet."""
    if device.type == "cuda":
        return 0.0
    import psutil

    return float(psutil.Process().memory_info().rss) + CPU_LIBRARIES


def advice(e: Estimate, w: Work) -> str:
    tips = []
    if "fine-tuning" in e.stages and e.peak_stage == "fine-tuning":
        if w.train_batch > 1:
            tips.append(f"a smaller finetune.batch_size (now {w.train_batch})")
        if not w.checkpointing:
            tips.append("finetune.gradient_checkpointing=true")
        if not w.quantized:
            tips.append("finetune=qlora (4-bit base, on a CUDA GPU)")
    elif w.simulate_batch > 1:
        tips.append(f"a smaller simulate.batch_size (now {w.simulate_batch})")
    if w.dtype_bytes == 4:
        tips.append("model.dtype=bfloat16 (on a GPU)")
    tips.append("a device with more memory")
    return "; ".join(tips)


def refuse_if_too_big(e: Estimate, w: Work, device: torch.device, what: str) -> None:
    """Stop with one message when the estimated peak exceeds what `device` has."""
    have, which = available(device)
    need = e.peak - e.stages[e.peak_stage].get("process", 0.0)   # the process's own memory is not in `available`
    log.info("memory check: %s: %s at the peak; %.1f GiB %s", what, e.describe(e.peak_stage), have / GIB, which)
    if need > have:
        raise UserError(f"model: {what} does not fit: {e.describe(e.peak_stage)} at the peak, {need / GIB:.1f} GiB "
                        f"beyond what the process holds now, and {device} has {have / GIB:.1f} GiB {which}. "
                        f"Try {advice(e, w)}. model.memory_check=false skips this check.")
