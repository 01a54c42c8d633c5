"""Loading the pretrained instruction model (config group `model`).

Sources:
- `gguf_package`: a GGUF file shipped inside an installed Python package (SmolLM2-135M-Instruct,
  offline); transformers de-quantises it to the chosen dtype.
- `hub`: a HuggingFace hub id or a local directory (`name_or_path`), for GPU users with the
  weights in their cache or internet; `trust_remote_code` stays off unless the config turns it on.
- `random`: a model built from an architecture config with random weights, with the tokenizer
  (and chat template) of another source: a few-layer Llama for tests (`architecture`), or the
  exact shape of a real model (`shape`: Llama-3.1-8B, Qwen2.5-7B, ...) for benchmarks and
  memory checks on a device, no download needed.

Shapes (`model.shape`): the architecture config.json of a real model, shipped in
`llm/shapes/NAME.json` (a few KB each) or a path to one. The hub and GGUF presets name theirs too,
so the memory check (`llm/memory.py`) knows the model's size before anything is loaded;
`meta_model` builds it on PyTorch's `meta` device (parameters without storage).

`dtype: auto` means bfloat16 on CUDA, float32 elsewhere; `device: auto` means CUDA when present.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from fidelity_exp.errors import ConfigError, UserError
from fidelity_exp.llm.assets import check_gguf, converted_dir, keep_converted, packaged_file
from fidelity_exp.settings import Checked, group, option, seed_option, typed

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
SOURCES = ("gguf_package", "hub", "random")
DTYPES = ("float32", "bfloat16", "float16")   # torch's dtypes of these names (torch is imported when a model loads)


DEVICE = r"auto|cpu|mps|cuda(:\d+)?"
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
SHAPES = Path(__file__).parent / "shapes"   # architecture configs of real models (NAME.json)


@dataclass
class TokenizerSettings(Checked):
    """`model.tokenizer` (for `source: random`): whose tokenizer and chat template to borrow."""

    source: str = option("gguf_package", one_of=("gguf_package", "hub"))
    package: Optional[str] = None
    file: Optional[str] = None
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    trust_remote_code: bool = False

    def check(self) -> None:
        _needs(self, {"gguf_package": ("package", "file"), "hub": ("name_or_path",)})


@group("model")
@dataclass
class ModelSettings(Checked):
    """The `model` group (conf/model/*.yaml): which keys a source needs is checked in `check`."""

    name: str = option("model", pattern=NAME, what="a short name (letters, digits, '_', '-', '.'; it names "
                       "registered adapters)")
    source: str = option("gguf_package", one_of=SOURCES)
    name_or_path: Optional[str] = None     # hub
    revision: Optional[str] = None         # hub
    package: Optional[str] = None          # gguf_package
    file: Optional[str] = None             # gguf_package
    seed: int = seed_option()              # random: the weights' seed
    shape: Optional[str] = None            # a shipped architecture (llm/shapes/NAME.json) or a config.json path
    architecture: Optional[Dict[str, Any]] = None   # random: LlamaConfig keys (or overrides of `shape`)
    tokenizer: Optional[Dict[str, Any]] = None      # random: read into a TokenizerSettings by `check`
    dtype: str = option("auto", one_of=("auto", *DTYPES))
    device: str = option("auto", pattern=DEVICE, what="auto, cpu, cuda, cuda:N or mps")
    trust_remote_code: bool = False
    memory_check: bool = True              # refuse a run whose estimated peak memory does not fit (llm/memory.py)

    def check(self) -> None:
        _needs(self, {"gguf_package": ("package", "file"), "hub": ("name_or_path",), "random": ("tokenizer",)})
        if self.shape is not None:
            shape_file(self.shape)
        if self.source == "random":
            if self.architecture is None and self.shape is None:
                raise ConfigError("architecture", None, "is required with source: random (or a shape, e.g. "
                                  "shape: llama3_1_8b)")
            self.tokenizer = typed(TokenizerSettings, self.tokenizer, "tokenizer", "the model's tokenizer")
            _check_architecture(self.architecture or {})

    @property
    def tokenizer_source(self) -> "ModelSettings | TokenizerSettings":
        """Where the tokenizer comes from: the model itself, or (source: random) `tokenizer`."""
        return self.tokenizer if self.source == "random" else self


def shape_file(shape: str) -> Path:
    """The config.json a `model.shape` names: a shipped shape (llm/shapes/NAME.json) or a file."""
    shipped = SHAPES / f"{shape}.json"
    if shipped.is_file():
        return shipped
    path = Path(shape).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        return path
    known = ", ".join(sorted(p.stem for p in SHAPES.glob("*.json")))
    raise ConfigError("shape", shape, f"expected a shipped shape ({known}) or the path of a model's config.json")


def architecture_config(shape: str | None, architecture: Mapping[str, Any] | None = None,
                        vocab_size: int | None = None):
    """The transformers config of a model from its `model.shape` and `model.architecture` alone
    (no weights, no download): None when neither is given (a hub or GGUF model without a shape).
    A `random` model without a shape is a Llama over `vocab_size` tokens, tied embeddings."""
    from transformers import AutoConfig, LlamaConfig

    arch = dict(architecture or {})
    if shape:
        path = shape_file(shape)
        try:
            keys = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
            keys.pop("architectures", None)
            model_type = keys.pop("model_type")
            return AutoConfig.for_model(model_type, **{**keys, **arch})
        except (ValueError, KeyError, OSError) as e:
            raise ConfigError("model.shape", shape, f"{path} is not a model config.json ({e})") from None
    if not arch:
        return None
    return LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=True, **arch)


def cached_config(settings: ModelSettings):
    """A hub model's config.json from the local cache (or its local directory): None when it is
    not there. Only the config is read: no weights, no download."""
    if settings.source != "hub":
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(settings.name_or_path, **{**_hub_kwargs(settings), "local_files_only": True})
    except (OSError, ValueError):
        return None


def meta_model(config):
    """The model a config describes on PyTorch's `meta` device: its parameters have shapes and
    dtypes but no storage, so an 8B model is built in a second with no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _needs(settings: Any, required: Mapping[str, tuple[str, ...]]) -> None:
    for key in required.get(settings.source, ()):
        if getattr(settings, key) in (None, ""):
            raise ConfigError(key, None, f"is required with source: {settings.source}")


SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "max_position_embeddings", "head_dim")


def _check_architecture(arch: Mapping[str, Any]) -> None:
    """The sizes of a random model's architecture: positive integers whose heads divide evenly."""
    for key in SIZES:
        value = arch.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"architecture.{key}", value, "expected a positive integer")
    heads, kv = arch.get("num_attention_heads"), arch.get("num_key_value_heads")
    if heads and arch.get("hidden_size") and "head_dim" not in arch and arch["hidden_size"] % heads:
        raise ConfigError("architecture.num_attention_heads", heads,
                          f"expected a divisor of architecture.hidden_size ({arch['hidden_size']})")
    if heads and kv and heads % kv:
        raise ConfigError("architecture.num_key_value_heads", kv,
                          f"expected a divisor of architecture.num_attention_heads ({heads})")


@dataclass
class LoadedModel:
    name: str
    model: Any          # a transformers causal LM (eval mode)
    tokenizer: Any
    device: "torch.device"
    dtype: "torch.dtype"

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def resolve_device(spec: str) -> "torch.device":
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_dtype(spec: str, device: "torch.device") -> "torch.dtype":
    """`model.dtype` (checked by ModelSettings: auto or one of DTYPES) as torch's dtype on `device`."""
    import torch

    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


def load_model(settings: ModelSettings, quantization: Any = None) -> LoadedModel:
    """The model and tokenizer the `model` group describes, on its device, in eval mode.
    `quantization` (a transformers `BitsAndBytesConfig`, from `finetune=qlora`) loads the base
    weights in 4 bits."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer = load_tokenizer(settings.tokenizer_source)
    if settings.source == "random":
        model = _random_model(settings, tokenizer, dtype, device, quantization)
    else:
        model = _pretrained_model(settings, dtype, device, quantization)
    if quantization is None:
        model.to(device)
    model.eval()
    log.info("model %s: %.1fM parameters, %s on %s", settings.name, sum(p.numel() for p in model.parameters()) / 1e6,
             str(dtype).removeprefix("torch."), device)
    return LoadedModel(settings.name, model, tokenizer, device, dtype)


def _hub_kwargs(source: "ModelSettings | TokenizerSettings") -> dict:
    return {"trust_remote_code": source.trust_remote_code, "revision": source.revision,
            "local_files_only": os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "True")}


def load_tokenizer(source: "ModelSettings | TokenizerSettings"):
    """The tokenizer of a model (`ModelSettings.tokenizer_source`): from a GGUF package or the hub."""
    from transformers import AutoTokenizer

    if source.source == "gguf_package":
        return _gguf_tokenizer(source.package, source.file)
    try:
        tok = AutoTokenizer.from_pretrained(source.name_or_path, **_hub_kwargs(source))
    except OSError as e:
        raise UserError(_not_found(source, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@functools.lru_cache(maxsize=4)
def _gguf_tokenizer(package: str, file: str, use_converted: bool = True):
    from transformers import AutoTokenizer

    path = packaged_file(package, file)
    check_gguf(path)
    converted = converted_dir(path, "tokenizer")
    if use_converted and (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if use_converted:
        keep_converted(path, "tokenizer", tok.save_pretrained)
    return tok


def gguf_model(package: str, file: str, dtype: "torch.dtype", use_converted: bool = True):
    """The GGUF file's model de-quantised (float32, then `dtype`): from the converted copy beside
    the file when there is one (assets.converted_dir), else from the file, keeping a copy."""
    import torch
    from transformers import AutoModelForCausalLM

    path = packaged_file(package, file)
    check_gguf(path)
    converted = converted_dir(path, "model")
    if use_converted and (converted / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).to(dtype)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers de-quantises GGUF weights into ordinary tensors but still marks the model
    # as quantized, and its Trainer then refuses to train adapters on it: unmark it.
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if use_converted:
        keep_converted(path, "model", model.save_pretrained)
    return model.to(dtype)


def _pretrained_model(settings: ModelSettings, dtype: "torch.dtype", device: "torch.device", quantization: Any = None):
    from transformers import AutoModelForCausalLM

    if settings.source == "gguf_package":
        if quantization is not None:
            raise ConfigError("model.source", "gguf_package", "finetune=qlora quantises hub weights: expected a "
                              "hub model (or a random one with a shape)")
        return gguf_model(settings.package, settings.file, dtype)
    placed = {} if quantization is None else {"quantization_config": quantization, "device_map": {"": device}}
    try:
        return AutoModelForCausalLM.from_pretrained(settings.name_or_path, dtype=dtype, **placed,
                                                    **_hub_kwargs(settings))
    except OSError as e:
        raise UserError(_not_found(settings, e)) from None


def _not_found(source: "ModelSettings | TokenizerSettings", e: Exception) -> str:
    offline = _hub_kwargs(source)["local_files_only"]
    hint = (" HF_HUB_OFFLINE=1 is set, so only the local cache is searched: download the model once with "
            "internet (huggingface-cli download NAME), or point model.name_or_path at a local directory."
            if offline else "")
    return f"model.name_or_path={source.name_or_path!r}: cannot be loaded ({str(e).splitlines()[0]}).{hint}"


def _random_model(settings: ModelSettings, tokenizer, dtype: "torch.dtype", device: "torch.device",
                  quantization: Any = None):
    """Random weights (seeded): a small Llama over the tokenizer's vocabulary (`architecture`),
    or a real model's shape (`shape`), created on its device in its dtype."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    config = architecture_config(settings.shape, settings.architecture, vocab_size=len(tokenizer))
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                                                     tokenizer.eos_token_id)
    torch.manual_seed(settings.seed)
    if not settings.shape:   # the tests' tiny Llama: built as always (its weights are the tests' fixtures)
        model = LlamaForCausalLM(config).to(dtype)
    else:
        if config.vocab_size < len(tokenizer):
            raise ConfigError("model.shape", settings.shape, f"its vocabulary ({config.vocab_size} tokens) is "
                              f"smaller than the tokenizer's ({len(tokenizer)})")
        with torch.device(device if quantization is None else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if quantization is None:
        return model
    import tempfile   # quantised the way a checkpoint is: written, then loaded in 4 bits

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, quantization_config=quantization,
                                                    device_map={"": device})
