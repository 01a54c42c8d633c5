"""The simulation engine: exact option probabilities for every twin, question by question.

Each twin is interviewed in order and sees its own earlier answers. At question j the model
has read the interview up to the answer slot; the probability of option k is the model's
probability of k's answer letter there, renormalised over the question's options (answers are
single letters, so this is the exact probability of the answer under the model, given that it
answers with one of the options). The twin's answer is drawn from these probabilities with
`temperature`, by inverse CDF on a uniform fixed per (twin, question) in advance: every arm
sees the same random stream, so arms differ only by the model.

Speed (CPU-bound; see `benchmarks/`): the prefix every interview shares (system prompt,
intro) is read once for all twins and its KV cache copied into each batch; twins are batched,
sorted by prompt length; each twin's KV cache is kept between questions, so every token is read
once; only the last position's logits are computed; on a CPU, attention reads each key/value head
in place for its group of query heads instead of copying it (see `_grouped_query_attention`).
Segments of different lengths are left-padded in the middle of the sequence, masked out, and
positions continue from each twin's own token count.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fidelity_exp.llm.interview import Renderer


@dataclass
class SimulationResult:
    answers: list[list[Any]]            # (twins, questions) chosen codes
    probabilities: list[np.ndarray]     # per question: (twins, K) model probabilities
    tokens: int                         # real (non-pad) tokens read by the model
    seconds: float


def choose(probs: np.ndarray, uniform: np.ndarray, temperature: float) -> np.ndarray:
    """Inverse-CDF draws from probs ** (1 / temperature) (argmax at temperature 0)."""
    if temperature <= 0:
        return probs.argmax(axis=1)
    with np.errstate(divide="ignore"):
        logits = np.log(probs) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    tempered = np.exp(logits)
    tempered /= tempered.sum(axis=1, keepdims=True)
    return (uniform[:, None] > np.cumsum(tempered, axis=1)).sum(axis=1).clip(0, probs.shape[1] - 1)


def option_probabilities(last_logits: torch.Tensor, option_tokens: Sequence[int]) -> np.ndarray:
    """(B, K) probabilities of the options' letters, renormalised over the options."""
    z = last_logits[:, list(option_tokens)].float()   # (B, K)
    return torch.softmax(z, dim=-1).cpu().numpy().astype(np.float64)


@torch.inference_mode()
def simulate(model: Any, renderer: Renderer, twins: Sequence[Mapping[str, Any]], uniforms: np.ndarray, *,
             temperature: float = 1.0, batch_size: int = 16, pad_id: int | None = None,
             progress: Callable[[int], None] | None = None, share_prefix: bool = True) -> SimulationResult:
    """Interview every twin (`twins`: their given columns) and return answers and probabilities.
    `tokens` counts what the interviews need (the shared prefix once per twin), not what is computed."""
    import time

    spec = renderer.spec
    n, n_q = len(twins), len(spec.questions)
    pad_id = renderer.tokenizer.pad_token_id if pad_id is None else pad_id
    device = next(model.parameters()).device
    answers: list[list[Any]] = [[None] * n_q for _ in range(n)]
    probs = [np.zeros((n, len(q.options))) for q in spec.questions]
    first = [renderer.prompt_ids(t, [], 0) for t in twins]
    order = sorted(range(n), key=lambda i: len(first[i]))   # similar lengths together: less padding
    tokens, start = 0, time.perf_counter()
    with _grouped_query_attention(device):
        prefix = _shared_prefix(model, first, device) if share_prefix and n > 1 else None
        for lo in range(0, n, batch_size):
            rows = order[lo : lo + batch_size]
            tokens += _interview_batch(model, renderer, [twins[i] for i in rows], [first[i] for i in rows],
                                       uniforms[rows], temperature, pad_id, device, rows, answers, probs, prefix)
            if progress:
                progress(len(rows))
    return SimulationResult(answers, probs, tokens, time.perf_counter() - start)


GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def _grouped_query_attention(device: torch.device):
    """On a CPU, let SDPA attend with grouped-query heads in place (`enable_gqa`). transformers
    does so only when no attention mask is given (the engine always gives one) and otherwise copies
    every key/value head once per query head of its group, at every layer and forward. The switch is
    transformers' own environment variable, set only while the engine runs and only if the user has
    not set it; the option probabilities are the same (tests/llm), SmolLM2-135M 4-10% faster on a
    2-core Xeon (`benchmarks/simulate.py`, ablation `no_grouped_query_attention`). Not on a GPU:
    there masked GQA can fall back to a slower kernel."""
    if device.type != "cpu" or GQA_SWITCH in os.environ:
        yield
        return
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        os.environ.pop(GQA_SWITCH, None)


@dataclass
class _Prefix:
    ids: list[int]
    cache: Any          # the model's KV cache of `ids`, batch 1


def _shared_prefix(model, prompts: Sequence[list[int]], device) -> _Prefix | None:
    """The tokens every first prompt starts with, read once (at least one token of each prompt stays
    for its own segment)."""
    ids = list(os.path.commonprefix(list(prompts)))[: min(map(len, prompts)) - 1]
    if len(ids) < 8:
        return None
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
    return _Prefix(ids, out.cache if hasattr(out, "cache") else out.past_key_values)


def _interview_batch(model, renderer, twins, first_prompts, uniforms, temperature, pad_id, device, rows,
                     answers, probs, prefix: _Prefix | None = None) -> int:
    spec = renderer.spec
    b = len(twins)
    fed: list[list[int]] = [[] for _ in range(b)]          # tokens each twin's cache holds
    mask = torch.zeros((b, 0), dtype=torch.long, device=device)
    cache = None
    read = 0
    if prefix is not None:                                 # every twin's cache starts as the shared prefix
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(b)
        fed = [list(prefix.ids) for _ in range(b)]
        mask = torch.ones((b, len(prefix.ids)), dtype=torch.long, device=device)
        read = b * len(prefix.ids)
    mine: list[list[Any]] = [[] for _ in range(b)]
    for j, q in enumerate(spec.questions):
        prompts = first_prompts if j == 0 else [renderer.prompt_ids(t, a, j) for t, a in zip(twins, mine, strict=True)]
        segments = []
        for r, prompt in enumerate(prompts):
            if prompt[: len(fed[r])] != fed[r]:
                raise AssertionError("an interview's tokens changed between questions (chat template not prefix-stable)")
            segments.append(prompt[len(fed[r]):])
        width = max(len(s) for s in segments)
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        seg_mask = torch.zeros((b, width), dtype=torch.long)
        for r, seg in enumerate(segments):                  # left-pad: the last position is real for every twin
            ids[r, width - len(seg):] = torch.tensor(seg)
            seg_mask[r, width - len(seg):] = 1
        ids, seg_mask = ids.to(device), seg_mask.to(device)
        counts = mask.sum(dim=1, keepdim=True)              # real tokens already read, per twin
        positions = (counts + seg_mask.cumsum(dim=1) - 1).clamp(min=0)
        mask = torch.cat([mask, seg_mask], dim=1)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{_cache_keyword(model): cache})
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        p = option_probabilities(out.logits[:, -1, :], renderer.option_tokens[j])      # (b, K)
        choice = choose(p, uniforms[:, j], temperature)
        for r in range(b):
            code = q.codes[int(choice[r])]
            mine[r].append(code)
            answers[rows[r]][j] = code
            fed[r] = prompts[r]
        probs[j][rows] = p
        read += int(seg_mask.sum())
    return read


def _cache_keyword(model: Any) -> str:
    """transformers 5 calls the KV cache argument `cache`; earlier releases `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_keyword_of(model_class: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def direct_probabilities(model: Any, renderer: Renderer, given: Mapping[str, Any], answers: Sequence[Any],
                         j: int) -> np.ndarray:
    """The straightforward computation, for checks: the full prompt of question j, one twin, no
    cache, no padding, all logits. (K,) option probabilities."""
    device = next(model.parameters()).device
    ids = torch.tensor([renderer.prompt_ids(given, answers, j)], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[:, -1, :]
    return option_probabilities(logits, renderer.option_tokens[j])[0]


def uniforms_for(n_twins: int, n_questions: int, seed: int) -> np.ndarray:
    """The random stream every arm shares: one uniform per (twin, question)."""
    return np.random.default_rng([seed, 2]).random((n_twins, n_questions))

