"""Simulation throughput: the engine against the naive way, and against the machine's matmul rate.

    .venv/bin/python benchmarks/simulate.py                       # SmolLM2-135M, anes96, 64 twins
    .venv/bin/python benchmarks/simulate.py --model tiny_random   # a quick run

In one process, on the same model, study and twins: (a) the engine (`fidelity_exp.llm.engine`);
(b) the naive reference written here as researchers write it by hand: for each twin and
question, the full prompt, `model.generate` (batch 1, greedy, enough new tokens for the longest
option label), the text parsed back to an option; (c) ablations that each switch one of the
engine's levers off. Useful FLOP/s = 2 x parameters x the tokens an interview needs (each read
once: no padding, no recomputation) / engine seconds, beside the dense matmul rate measured in
the same run and dtype. The last line is one JSON object with the figures (also --out).

It also measures how far any engine could go: `ratio_bound_at_matmul_peak` is the ratio an exact
engine would reach if it read only the tokens no two twins share (a token's KV cache depends on
everything before it, so only identical prefixes can be shared) with every weight matmul at the
measured matmul rate and attention, norms and the rest free. The naive side is measured, so
this is an upper bound on `ratio_vs_naive` for this model, study, twins and machine.

Option order (METRICS.md section 12; `--skip-option-order` leaves it out): the engine's time with
the position metrics (every question also scored reversed, on the twin's KV cache) and with
`simulate.option_order=averaged` and `random`, each as a ratio to the plain `fixed` interview,
the modes measured in turns, twice, and each mode's faster run kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np
import torch

from common import finish, load, matmul_rate, peak_memory, study_and_split  # noqa: I001

from fidelity_exp.llm.engine import GQA_SWITCH, option_probabilities, simulate, uniforms_for
from fidelity_exp.llm.interview import LETTERS, Renderer


def naive(model, renderer: Renderer, twins, limit_s: float | None):
    """Per twin and question: full prompt, generate (batch 1, greedy), parse.
    Returns (rq/s, unparsed answers, respondent-questions done, new tokens generated per question,
    prompt tokens read per question)."""
    spec, tok = renderer.spec, renderer.tokenizer
    longest = max(len(tok.encode(text, add_special_tokens=False)) for q in spec.questions for text in q.options.values())
    done, unparsed, generated, read, start = 0, 0, 0, 0, time.perf_counter()
    for twin in twins:
        answers: list = []
        for j, q in enumerate(spec.questions):
            ids = torch.tensor([renderer.prompt_ids(twin, answers, j)], device=model.device)
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=longest, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            generated += out.shape[1] - ids.shape[1]
            read += ids.shape[1]
            answers.append(parse(text, q))
            unparsed += answers[-1] is None
            done += 1
        if limit_s and time.perf_counter() - start > limit_s:
            break
    return done / (time.perf_counter() - start), unparsed, done, generated / max(done, 1), read / max(done, 1)


def parse(text: str, q):
    """The option a free-text answer names: a leading letter, else an option's text; None if neither."""
    m = re.match(r"\s*([A-Z])\b", text)
    if m and LETTERS.index(m.group(1)) < len(q.options):
        return q.codes[LETTERS.index(m.group(1))]
    for code, label in q.options.items():
        if label.lower() in text.lower():
            return code
    return None


@torch.inference_mode()
def no_cache(model, renderer: Renderer, twins, uniforms, batch_size: int):
    """Ablation: the engine without KV reuse: every question re-reads its whole prompt (batched)."""
    from fidelity_exp.llm.engine import choose

    spec, pad = renderer.spec, renderer.tokenizer.pad_token_id
    answers = [[] for _ in twins]
    start = time.perf_counter()
    for lo in range(0, len(twins), batch_size):
        rows = list(range(lo, min(lo + batch_size, len(twins))))
        for j, q in enumerate(spec.questions):
            prompts = [renderer.prompt_ids(twins[r], answers[r], j) for r in rows]
            width = max(map(len, prompts))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(prompts):
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
            ids, mask = ids.to(model.device), mask.to(model.device)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            choice = choose(option_probabilities(logits, renderer.option_tokens[j]), uniforms[rows, j], 1.0)
            for i, r in enumerate(rows):
                answers[r].append(q.codes[int(choice[i])])
    return len(twins) * len(spec.questions) / (time.perf_counter() - start)


def non_embedding(lm) -> int:
    """Parameters that do a matmul for every token read: all but the embedding table and (when it is
    not tied to the table) the vocabulary projection, which the engine runs only at answer slots."""
    table = lm.model.get_input_embeddings().weight
    head = lm.model.get_output_embeddings().weight
    untied = head.data_ptr() != table.data_ptr()
    return lm.n_parameters - table.numel() - (head.numel() if untied else 0)


def distinct_prefix_tokens(sequences) -> int:
    """Tokens in the prefix tree of `sequences`: all tokens, less what each shares with its
    neighbour in sorted order (the prefix tree's node count)."""
    ordered = sorted(map(tuple, sequences))
    return sum(map(len, ordered)) - sum(len(os.path.commonprefix([a, b])) for a, b in zip(ordered, ordered[1:]))


def floor_seconds(lm, renderer: Renderer, twins, answers, matmul_rate: float) -> tuple[float, int]:
    """The least time any exact engine needs for these interviews on this machine: the tokens no two
    twins share, each through every weight matmul at the measured rate, plus the vocabulary
    projection at each answer slot; attention and everything else free. Returns (seconds, tokens)."""
    n_q = len(renderer.spec.questions)
    interviews = [renderer.prompt_ids(t, a, n_q - 1) for t, a in zip(twins, answers, strict=True)]
    tokens = distinct_prefix_tokens(interviews)
    head = lm.model.get_output_embeddings().weight.numel()
    return (2 * non_embedding(lm) * tokens + 2 * head * len(twins) * n_q) / matmul_rate, tokens


def option_order_overheads(model, renderer: Renderer, twins, uniforms, batch_size: int, repeats: int = 2) -> dict:
    """Seconds of each option-order setting over the plain fixed interview, measured in turns."""
    settings = {"fixed": {}, "fixed_with_position_metrics": {"position": True},
                "averaged": {"option_order": "averaged"}, "random_with_position_metrics":
                {"option_order": "random", "position": True}}
    best = {name: float("inf") for name in settings}
    tokens = {}
    for _ in range(repeats):
        for name, kwargs in settings.items():
            result = simulate(model, renderer, twins, uniforms, batch_size=batch_size, **kwargs)
            best[name] = min(best[name], result.seconds)
            tokens[name] = result.tokens
    out = {}
    for name in settings:
        if name != "fixed":
            out[f"option_order_{name}_time_ratio"] = round(best[name] / best["fixed"], 3)
            out[f"option_order_{name}_token_ratio"] = round(tokens[name] / tokens["fixed"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--study", default="anes96")
    parser.add_argument("--twins", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--naive-limit-s", type=float, default=None, help="stop the naive reference after this long")
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument("--skip-option-order", action="store_true")
    parser.add_argument("--compare-dtype", default=None, help="also run the engine in this dtype (e.g. bfloat16)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    lm = load(args.model)
    s, _, twins = study_and_split(args.study, pilot=100, twins=args.twins)
    renderer = Renderer(s.spec, lm.tokenizer)
    n_q = len(s.spec.questions)
    uniforms = uniforms_for(len(twins), n_q, 0)
    peak = matmul_rate(lm.dtype, lm.device)

    simulate(lm.model, renderer, twins[: min(4, len(twins))], uniforms[:4], batch_size=4)   # warm-up
    result = simulate(lm.model, renderer, twins, uniforms, batch_size=args.batch_size)
    engine_rq = len(twins) * n_q / result.seconds
    useful = 2 * lm.n_parameters * result.tokens / result.seconds
    naive_rq, unparsed, naive_done, naive_new, naive_read = naive(lm.model, renderer, twins, args.naive_limit_s)
    floor_s, distinct = floor_seconds(lm, renderer, twins, result.answers, peak)
    engine_tokens_per_rq = result.tokens / (len(twins) * n_q)

    figures = {
        "model": args.model, "study": args.study, "twins": len(twins), "questions": n_q, "dtype": str(lm.dtype),
        "device": str(lm.device), "threads": torch.get_num_threads(), "parameters": lm.n_parameters,
        "engine_respondent_questions_per_s": round(engine_rq, 3), "naive_respondent_questions_per_s": round(naive_rq, 3),
        "ratio_vs_naive": round(engine_rq / naive_rq, 2), "naive_unparsed_answers": unparsed,
        "naive_respondent_questions": naive_done, "naive_new_tokens_per_question": round(naive_new, 2),
        "naive_prompt_tokens_per_question": round(naive_read, 1),
        # what the ratio is made of: tokens the naive way reads per token the engine reads, and each side's speed
        "naive_tokens_per_engine_token": round((naive_read + naive_new) / engine_tokens_per_rq, 2),
        "naive_frac_of_matmul_peak": round(2 * lm.n_parameters * (naive_read + naive_new) * naive_rq / peak, 3),
        "distinct_prefix_tokens_per_respondent": round(distinct / len(twins), 1),
        "ratio_bound_at_matmul_peak": round(len(twins) * n_q / floor_s / naive_rq, 2),
        "tokens_per_s": round(result.tokens / result.seconds, 1),
        "useful_tokens_per_respondent": round(result.tokens / len(twins), 1),
        "useful_flop_per_s": int(useful), "matmul_flop_per_s": int(peak),
        "frac_of_matmul_peak": round(useful / peak, 3),
        # the embedding table does no matmul per token (and the tied projection runs once per question):
        "frac_of_matmul_peak_non_embedding": round(useful * non_embedding(lm) / lm.n_parameters / peak, 3),
    }
    if not args.skip_ablations:
        batch1 = simulate(lm.model, renderer, twins, uniforms, batch_size=1)
        figures["ablation_batch_size_1_respondent_questions_per_s"] = round(len(twins) * n_q / batch1.seconds, 3)
        unshared = simulate(lm.model, renderer, twins, uniforms, batch_size=args.batch_size, share_prefix=False)
        figures["ablation_no_shared_prefix_respondent_questions_per_s"] = round(len(twins) * n_q / unshared.seconds, 3)
        os.environ[GQA_SWITCH] = "0"           # the engine leaves a user's own setting alone
        copied = simulate(lm.model, renderer, twins, uniforms, batch_size=args.batch_size)
        del os.environ[GQA_SWITCH]
        figures["ablation_no_grouped_query_attention_respondent_questions_per_s"] = round(
            len(twins) * n_q / copied.seconds, 3)
        figures["ablation_no_kv_reuse_respondent_questions_per_s"] = round(
            no_cache(lm.model, renderer, twins, uniforms, args.batch_size), 3)
    if not args.skip_option_order:
        figures.update(option_order_overheads(lm.model, renderer, twins, uniforms, args.batch_size))
    if args.compare_dtype:
        other = load(args.model, args.compare_dtype)
        res2 = simulate(other.model, renderer, twins, uniforms, batch_size=args.batch_size)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(result.probabilities, res2.probabilities, strict=True))
        figures[f"{args.compare_dtype}_respondent_questions_per_s"] = round(len(twins) * n_q / res2.seconds, 3)
        figures[f"{args.compare_dtype}_max_abs_probability_diff"] = round(diff, 4)
    figures.update(peak_memory(lm.device))

    print(f"simulation, {args.model} ({lm.n_parameters / 1e6:.1f}M, {lm.dtype}, {lm.device}), {args.study}, "
          f"{len(twins)} twins x {n_q} questions")
    print(f"  engine: {engine_rq:.2f} respondent-questions/s ({figures['tokens_per_s']} tokens/s)")
    print(f"  naive generate-and-parse: {naive_rq:.3f} respondent-questions/s ({unparsed} of {naive_done} unparsed)")
    print(f"  engine / naive = {figures['ratio_vs_naive']}x; the naive way reads "
          f"{figures['naive_tokens_per_engine_token']}x the engine's tokens, at "
          f"{figures['naive_frac_of_matmul_peak']:.0%} of the matmul rate")
    print(f"  bound: an exact engine reading only the {figures['distinct_prefix_tokens_per_respondent']} tokens per "
          f"twin no two twins share, at the full matmul rate with attention free, would be at most "
          f"{figures['ratio_bound_at_matmul_peak']}x the naive way")
    print(f"  useful {useful / 1e9:.1f} GFLOP/s = {figures['frac_of_matmul_peak']:.0%} of the measured "
          f"{peak / 1e9:.1f} GFLOP/s matmul rate")
    for key, value in figures.items():
        if key.startswith(("ablation", "bfloat16", "float16", "option_order")):
            print(f"  {key}: {value}")
    print(f"  peak RSS {figures['peak_rss_mb']:.0f} MB")
    finish(figures, args.out)


if __name__ == "__main__":
    main()
