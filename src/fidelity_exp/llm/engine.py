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

Option order (METRICS.md section 12; `interview.py` decides the orders): a twin is interviewed
with each question's options in its mode's order (spec order, reversed, or a seeded random
order), and probabilities are always returned over option codes. For the position metrics and
`averaged`, question j is also scored in the other order(s) with the twin's earlier answers as
they are: the tokens all of a twin's scorings share (the previous answer, the question's text)
are read into its cache once, each extra scoring's own tokens (its options and the answer slot)
are read on top and cropped off the cache again, then the twin's own order is read and kept.
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

from fidelity_exp.llm.interview import Order, Renderer, interview_orders, shown_mode, shown_order


@dataclass
class SimulationResult:
    answers: list[list[Any]]            # (twins, questions) chosen codes
    probabilities: list[np.ndarray]     # per question: (twins, K) what the answer was drawn from, over codes
    tokens: int                         # real (non-pad) tokens read by the model
    seconds: float
    forward: list[np.ndarray] | None = None   # with position metrics: per question (twins, K) over codes,
    reverse: list[np.ndarray] | None = None   # options shown in spec order / reversed (METRICS.md section 12)


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
    """(B, K) probabilities of the options' letters, renormalised over the options (in shown order)."""
    z = last_logits[:, list(option_tokens)].float()   # (B, K)
    return torch.softmax(z, dim=-1).cpu().numpy().astype(np.float64)


def over_codes(shown: np.ndarray, orders: Sequence[Order | None]) -> np.ndarray:
    """(B, K) probabilities by shown letter -> by option (spec order), each row with its own order."""
    k = shown.shape[1]
    index = np.array([range(k) if o is None else o for o in orders], dtype=np.int64).reshape(-1, k)
    out = np.empty_like(shown)
    np.put_along_axis(out, index, shown, axis=1)
    return out


@dataclass(frozen=True)
class _Branches:
    """What question j is scored under besides the order the twin is interviewed in: `extra`
    order modes (forward and reversed, for the position metrics or `averaged`), and which of
    main/extra are the forward and reversed scorings."""

    history: str                 # the mode every earlier question was shown in
    extra: tuple[str, ...]       # modes scored besides the main one (the cache is rolled back after each)
    forward: str                 # "main" or an extra mode
    reverse: str
    average: bool = False        # answer from (forward + reversed) / 2

    @classmethod
    def of(cls, mode: str, position: bool) -> "_Branches":
        history = shown_mode(mode)
        if not position and mode != "averaged":
            return cls(history, (), "", "")
        extra = {"fixed": ("reversed",), "averaged": ("reversed",), "reversed": ("fixed",),
                 "random": ("fixed", "reversed")}[mode]
        forward = "main" if history == "fixed" else "fixed"
        reverse = "main" if history == "reversed" else "reversed"
        return cls(history, extra, forward, reverse, average=mode == "averaged")


@torch.inference_mode()
def simulate(model: Any, renderer: Renderer, twins: Sequence[Mapping[str, Any]], uniforms: np.ndarray, *,
             temperature: float = 1.0, batch_size: int = 16, pad_id: int | None = None,
             progress: Callable[[int], None] | None = None, share_prefix: bool = True,
             option_order: str = "fixed", order_seed: int = 0, position: bool = False,
             position_rows: Sequence[int] | None = None) -> SimulationResult:
    """Interview every twin (`twins`: their given columns) and return answers and probabilities.
    `tokens` counts what the interviews need (the shared prefix once per twin), not what is computed.

    `option_order` (METRICS.md section 12): the twins see every question's options in spec order
    (`fixed`), reversed, in a `random` order seeded by (`order_seed`, twin, question), or
    answer from the mean of the forward and reversed probabilities (`averaged`, shown forward).
    `position=True` also scores every question forward and reversed with the twin's earlier
    answers held fixed (`SimulationResult.forward/reverse`): each extra scoring reads only
    the tokens after what it shares with the twin's own prompt (the options and the answer
    slot), on the twin's KV cache, which is then rolled back. `position_rows` (indices into
    `twins`) limits those scorings to a subsample: `forward/reverse` then hold its rows, in that
    order; every twin's own interview is read exactly as with all rows scored (the tokens the
    scorings share are read for every twin). `averaged` needs both scorings of every twin: there
    the subsample is ignored."""
    import time

    spec = renderer.spec
    branches = _Branches.of(option_order, position)
    n, n_q = len(twins), len(spec.questions)
    pad_id = renderer.tokenizer.pad_token_id if pad_id is None else pad_id
    device = next(model.parameters()).device
    answers: list[list[Any]] = [[None] * n_q for _ in range(n)]
    probs = [np.zeros((n, len(q.options))) for q in spec.questions]
    scored = bool(branches.extra)
    if position_rows is None or branches.average or not scored:
        position_rows = range(n)
    where = {int(i): k for k, i in enumerate(position_rows)}    # twin -> its row in forward/reverse
    if len(where) != len(position_rows) or not all(0 <= i < n for i in where):
        raise ValueError(f"position_rows: expected distinct twin indices below {n}")
    forward = [np.zeros((len(where), len(q.options))) for q in spec.questions] if scored else None
    reverse = [np.zeros((len(where), len(q.options))) for q in spec.questions] if scored else None
    orders = [interview_orders(spec, branches.history, seed=order_seed, who=i) for i in range(n)]
    first = [renderer.prompt_ids(t, [], 0, o) for t, o in zip(twins, orders, strict=True)]
    by_length = sorted(range(n), key=lambda i: len(first[i]))   # similar lengths together: less padding
    tokens, start = 0, time.perf_counter()
    with _grouped_query_attention(device):
        prefix = None
        if share_prefix and n > 1:   # also a prefix of the first question as the extra orders show it
            alt_first = [renderer.prompt_ids(twins[0], [], 0, [shown_order(m, len(spec.questions[0].options)),
                                                                *orders[0][1:]]) for m in branches.extra]
            prefix = _shared_prefix(model, first + alt_first, device)
        for lo in range(0, n, batch_size):
            rows = by_length[lo : lo + batch_size]
            batch = _Batch(model, renderer, [twins[i] for i in rows], [orders[i] for i in rows], branches, pad_id,
                           device, prefix, [r for r, i in enumerate(rows) if i in where])
            tokens += batch.interview([first[i] for i in rows], uniforms[rows], temperature)
            out = [where[i] for i in rows if i in where]
            for j in range(n_q):
                probs[j][rows] = batch.probs[j]
                if scored and out:
                    forward[j][out], reverse[j][out] = batch.forward[j], batch.reverse[j]
            for r, i in enumerate(rows):
                answers[i] = batch.answers[r]
            if progress:
                progress(len(rows))
    return SimulationResult(answers, probs, tokens, time.perf_counter() - start, forward, reverse)


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


class _Batch:
    """A batch of twins interviewed together: their KV cache, attention mask and the tokens
    each twin's cache holds, question by question."""

    def __init__(self, model, renderer: Renderer, twins, orders, branches: _Branches, pad_id, device,
                 prefix: _Prefix | None, scored_rows: list[int]):
        self.model, self.renderer, self.twins, self.orders = model, renderer, twins, orders
        self.branches, self.pad_id, self.device = branches, pad_id, device
        self.scored_rows = scored_rows      # the twins (rows of this batch) scored in the extra orders
        b = len(twins)
        self.fed: list[list[int]] = [[] for _ in range(b)]          # tokens each twin's cache holds
        self.mask = torch.zeros((b, 0), dtype=torch.long, device=device)
        self.cache = None
        self.read = 0
        if prefix is not None:                                 # every twin's cache starts as the shared prefix
            self.cache = copy.deepcopy(prefix.cache)
            self.cache.batch_repeat_interleave(b)
            self.fed = [list(prefix.ids) for _ in range(b)]
            self.mask = torch.ones((b, len(prefix.ids)), dtype=torch.long, device=device)
            self.read = b * len(prefix.ids)
        n_q = len(renderer.spec.questions)
        self.answers: list[list[Any]] = [[] for _ in range(b)]
        self.probs: list[np.ndarray] = [None] * n_q
        self.forward: list[np.ndarray] = [None] * n_q
        self.reverse: list[np.ndarray] = [None] * n_q

    def interview(self, first_prompts, uniforms, temperature) -> int:
        spec, renderer = self.renderer.spec, self.renderer
        for j, q in enumerate(spec.questions):
            prompts = first_prompts if j == 0 else [renderer.prompt_ids(t, a, j, o) for t, a, o in
                                                    zip(self.twins, self.answers, self.orders, strict=True)]
            for r, prompt in enumerate(prompts):
                if prompt[: len(self.fed[r])] != self.fed[r]:
                    raise AssertionError("an interview's tokens changed between questions "
                                         "(chat template not prefix-stable)")
            scored = self._extra_scorings(j, prompts) if self.branches.extra else {}
            logits = self._read([p[len(f):] for p, f in zip(prompts, self.fed, strict=True)], keep=True)
            self.fed = prompts   # fresh lists, never changed in place
            p = over_codes(option_probabilities(logits, renderer.option_tokens[j]), [o[j] for o in self.orders])
            if scored:
                scored["main"] = p[self.scored_rows]
                self.forward[j], self.reverse[j] = scored[self.branches.forward], scored[self.branches.reverse]
                if self.branches.average:
                    p = (self.forward[j] + self.reverse[j]) / 2
            self.probs[j] = p
            choice = choose(p, uniforms[:, j], temperature)
            for r in range(len(self.twins)):
                self.answers[r].append(q.codes[int(choice[r])])
        return self.read

    def _extra_scorings(self, j: int, prompts: list[list[int]]) -> dict[str, np.ndarray]:
        """Question j scored in each extra order (earlier answers as they are): first the tokens
        every scoring of a twin shares are read into its cache (kept; for every twin, so that its
        own interview reads the same whichever twins are scored), then each extra scoring's own
        tokens, read and rolled back, for the `scored_rows`. Returns mode -> (len(scored_rows), K)
        over codes."""
        spec, renderer = self.renderer.spec, self.renderer
        k = len(spec.questions[j].options)
        alt_orders = {m: shown_order(m, k) for m in self.branches.extra}
        alts = {m: [renderer.prompt_ids(t, a, j, [*o[:j], alt, *o[j + 1:]]) for t, a, o in
                    zip(self.twins, self.answers, self.orders, strict=True)] for m, alt in alt_orders.items()}
        shared = []
        for r, prompt in enumerate(prompts):
            others = [alts[m][r] for m in alts]
            if any(x[: len(self.fed[r])] != self.fed[r] for x in others):
                raise AssertionError("an interview's tokens changed with the order of the current question")
            common = len(os.path.commonprefix([prompt, *others]))
            shared.append(min(common, min(len(x) for x in [prompt, *others]) - 1))
        if any(c > len(f) for c, f in zip(shared, self.fed, strict=True)):
            self._read([p[len(f):c] for p, f, c in zip(prompts, self.fed, shared, strict=True)], keep=True)
            self.fed = [p[:c] for p, c in zip(prompts, shared, strict=True)]
        out = {}
        if not self.scored_rows:
            return out
        every = len(self.scored_rows) == len(self.twins)
        for m, alt_prompts in alts.items():
            segments = [alt_prompts[r][len(self.fed[r]):] for r in self.scored_rows]
            logits = self._read(segments, keep=False) if every else self._read_some(segments, self.scored_rows)
            shown = option_probabilities(logits, renderer.option_tokens[j])
            out[m] = over_codes(shown, [alt_orders[m]] * len(self.scored_rows))
        return out

    def _read(self, segments: list[list[int]], keep: bool) -> torch.Tensor:
        """Read each twin's segment (left-padded to one width) on top of its cache; the (b, V)
        logits of the last position. `keep=False` rolls the cache back afterwards."""
        b = len(segments)
        width = max(len(s) for s in segments)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        seg_mask = torch.zeros((b, width), dtype=torch.long)
        for r, seg in enumerate(segments):                  # left-pad: the last position is real for every twin
            if seg:
                ids[r, width - len(seg):] = torch.tensor(seg)
                seg_mask[r, width - len(seg):] = 1
        ids, seg_mask = ids.to(self.device), seg_mask.to(self.device)
        counts = self.mask.sum(dim=1, keepdim=True)         # real tokens already read, per twin
        positions = (counts + seg_mask.cumsum(dim=1) - 1).clamp(min=0)
        mask = torch.cat([self.mask, seg_mask], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{_cache_keyword(self.model): self.cache})
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        if keep:
            self.mask = mask
        else:
            _drop_last(self.cache, width)
        self.read += int(seg_mask.sum())
        return out.logits[:, -1, :]

    def _read_some(self, segments: list[list[int]], rows: list[int]) -> torch.Tensor:
        """`_read(keep=False)` for some twins of the batch: their rows of the cache and mask are
        selected, read on, and the batch's own cache and mask are left as they were."""
        index = torch.tensor(rows, device=self.device)
        layers = self.cache.layers if self.cache is not None else []   # transformers' per-layer key/value tensors
        saved = [(layer.keys, layer.values) for layer in layers]
        whole_cache, whole_mask, whole_twins = self.cache, self.mask, self.twins
        if self.cache is not None:
            self.cache.batch_select_indices(index)   # new tensors of the rows: the saved ones stay as they were
        self.mask, self.twins = whole_mask[index], [whole_twins[r] for r in rows]
        try:
            return self._read(segments, keep=True)  # on the selected rows: nothing of the batch's is changed
        finally:
            for layer, (keys, values) in zip(layers, saved, strict=True):
                layer.keys, layer.values = keys, values
            self.cache, self.mask, self.twins = whole_cache, whole_mask, whole_twins


def _drop_last(cache: Any, n: int) -> None:
    """Remove the last `n` positions of a KV cache (a negative `crop` removes that many, in
    transformers 4 and 5 alike)."""
    if n:
        cache.crop(-n)


def _cache_keyword(model: Any) -> str:
    """transformers 5 calls the KV cache argument `cache`; earlier releases `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_keyword_of(model_class: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def direct_probabilities(model: Any, renderer: Renderer, given: Mapping[str, Any], answers: Sequence[Any],
                         j: int, orders: Sequence[Order | None] | None = None) -> np.ndarray:
    """The straightforward computation, for checks: the full prompt of question j (options shown
    in `orders`), one twin, no cache, no padding, all logits. (K,) option probabilities over codes."""
    device = next(model.parameters()).device
    ids = torch.tensor([renderer.prompt_ids(given, answers, j, orders)], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[:, -1, :]
    return over_codes(option_probabilities(logits, renderer.option_tokens[j]), [orders[j] if orders else None])[0]


def uniforms_for(n_twins: int, n_questions: int, seed: int) -> np.ndarray:
    """The random stream every arm shares: one uniform per (twin, question)."""
    return np.random.default_rng([seed, 2]).random((n_twins, n_questions))

