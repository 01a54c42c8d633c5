"""The verdict at the top of every report: for each headline metric and arm, the value with its
95% interval, what the key is when twins are as good as humans at this sample size (the swap
null median), whether the arm is distinguishable from the humans (q <= fdr), and how each
compared pair of arms differs; then sentences written from those numbers (never by hand).

Significance of a pair's difference uses Benjamini-Hochberg over the pair's score-component
keys, as `compare/<A>__vs__<B>/better_share` does; an arm's distinguishability uses the q values
of its tests (`<key>/perm/q_value`, BH over all the arm's tested keys).
"""

from __future__ import annotations

import math

import pandas as pd

from fidelity_exp.metrics import registry
from fidelity_exp.metrics.swap import benjamini_hochberg


def fmt(x) -> str:
    """A value as the report shows it; undefined as —."""
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def cell(metrics: dict, key: str) -> str:
    """`value [ci_low, ci_high]` of a full key (the interval when it has one)."""
    value = metrics.get(key)
    if value is None:
        return "—"
    low, high = (metrics.get(k) for k in registry.interval_keys(key))
    return fmt(value) + (f" [{fmt(low)}, {fmt(high)}]" if low is not None else "")


def _p(x) -> str:
    return "—" if x is None else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def against_humans(metrics: dict, arms: list[str], keys: list[str], fdr: float) -> pd.DataFrame:
    """One row per headline key; per arm: value [interval], null median, q and the verdict."""
    rows = []
    for key in keys:
        row = {"metric": key, "better": registry.direction_words(key)}
        for arm in arms:
            full = registry.arm_key(arm, key)
            null = metrics.get(registry.perm_key(full, "null_median"))
            q = metrics.get(registry.perm_key(full, "q_value"))
            text = cell(metrics, full)
            if null is not None:
                text += f"; humans-like {fmt(null)}"
            if q is not None:
                text += f"; {'DISTINGUISHABLE' if q <= fdr else 'like humans'} (q {_p(q)})"
            row[arm] = text
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", "better", *arms])


def pair_tests(metrics: dict, a: str, b: str, keys: list[str]) -> dict[str, tuple[float, float, float]]:
    """key -> (better, p, q) for the pair's keys with a p value; q by BH over them."""
    found = {}
    for key in keys:
        better = metrics.get(registry.compare_key(a, b, key, "better"))
        p = metrics.get(registry.compare_key(a, b, key, "p_value"))
        if better is not None and p is not None:
            found[key] = (better, p)
    q = benjamini_hochberg({k: p for k, (_, p) in found.items()})
    return {k: (better, p, q[k]) for k, (better, p) in found.items()}


def pair_significance(metrics: dict, a: str, b: str, keys: list[str], fdr: float) -> dict[str, tuple[float, float, bool]]:
    """key -> (better, p, significant) for the pair's keys with a p value; significance by BH over them."""
    return {k: (better, p, q <= fdr) for k, (better, p, q) in pair_tests(metrics, a, b, keys).items()}


def arm_vs_arm(metrics: dict, pairs: list[tuple[str, str]], keys: list[str], fdr: float) -> pd.DataFrame:
    rows = []
    for key in keys:
        row = {"metric": key}
        for a, b in pairs:
            better = metrics.get(registry.compare_key(a, b, key, "better"))
            if better is None:
                row[f"{a} vs {b}"] = "—"
                continue
            low, high = (metrics.get(registry.compare_key(a, b, key, w)) for w in ("ci_low", "ci_high"))
            p = metrics.get(registry.compare_key(a, b, key, "p_value"))
            row[f"{a} vs {b}"] = (f"{'+' if better >= 0 else ''}{better:.3f}"
                                  + (f" [{fmt(low)}, {fmt(high)}]" if low is not None else "") + f", p {_p(p)}")
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", *[f"{a} vs {b}" for a, b in pairs]])


def sentences(metrics: dict, arms: list[str], pairs: list[tuple[str, str]], components: list[str],
              fdr: float) -> list[str]:
    """Plain words for each arm (distinguishable or not, on the score's components) and each pair."""
    out = []
    for arm in arms:
        tested = {k: metrics.get(registry.perm_key(registry.arm_key(arm, k), "q_value")) for k in components}
        tested = {k: q for k, q in tested.items() if q is not None}
        if not tested:
            continue
        like = [k for k, q in tested.items() if q > fdr]
        unlike = [k for k, q in tested.items() if q <= fdr]
        text = (f"{arm} is indistinguishable from the humans on {len(like)} of {len(tested)} summary components "
                f"(q > {fdr:g})")
        if unlike:
            text += "; distinguishable on " + ", ".join(
                f"{k} (q = {_p(tested[k])})" for k in unlike)
        out.append(text + ".")
    for a, b in pairs:
        sig = pair_significance(metrics, a, b, components, fdr)
        if not sig:
            continue
        wins = [k for k, (better, _, s) in sig.items() if s and better > 0]
        losses = [k for k, (better, _, s) in sig.items() if s and better < 0]
        ties = [k for k, (_, _, s) in sig.items() if not s]
        parts = []
        if wins:
            parts.append(f"{a} beats {b} on " + ", ".join(f"{k} (p = {_p(sig[k][1])})" for k in wins))
        if losses:
            parts.append(f"{b} beats {a} on " + ", ".join(f"{k} (p = {_p(sig[k][1])})" for k in losses))
        if ties:
            parts.append(("but not" if wins or losses else f"{a} and {b} do not differ") + " on "
                         + ", ".join(ties) + f" (BH at {fdr:g})")
        out.append("; ".join(parts) + ".")
    return out


# --- the short answer: what a reader needs first -------------------------------------------------

TUNED, BASE = "finetuned", "base"   # the arms whose comparison answers "did fine-tuning help?"


def short_answer(metrics: dict, arms: list[str], components: list[str], fdr: float) -> list[str]:
    """Three sentences, in this order: did fine-tuning beat the base model (on which score
    components, by how much, p and BH q); which arms are like the humans on every component;
    which arm has the best fidelity_score (with the humans' split-half level)."""
    return [_tuning_sentence(metrics, arms, components, fdr), _humans_sentence(metrics, arms, components, fdr),
            _best_sentence(metrics, arms)]


def _tuning_sentence(metrics: dict, arms: list[str], components: list[str], fdr: float) -> str:
    if TUNED not in arms or BASE not in arms:
        return f"Fine-tuning: this run has no {TUNED} and {BASE} arms to compare (arms: {', '.join(arms)})."
    found = pair_tests(metrics, TUNED, BASE, components)
    if not found:
        return (f"Fine-tuning: {TUNED} vs {BASE} was not tested (no paired comparison with p values: "
                "metrics.permutations=0, or the arms do not share their humans).")
    wins = [k for k, (b, _, q) in found.items() if q <= fdr and b > 0]
    losses = [k for k, (b, _, q) in found.items() if q <= fdr and b < 0]

    def listed(keys):
        return "; ".join(f"{k} by {abs(found[k][0]):.3g} (p {_p(found[k][1])}, q {_p(found[k][2])})"
                         for k in keys[:3]) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")
    n = len(found)
    if wins and not losses:
        head = f"Fine-tuning helped: {TUNED} beats {BASE} on {len(wins)} of {n} score components ({listed(wins)})"
    elif losses and not wins:
        head = (f"Fine-tuning made twins worse: {BASE} beats {TUNED} on {len(losses)} of {n} score components "
                f"({listed(losses)})")
    elif wins and losses:
        head = (f"Fine-tuning is mixed: {TUNED} beats {BASE} on {len(wins)} of {n} score components ({listed(wins)}) "
                f"and loses on {len(losses)} ({listed(losses)})")
    else:
        head = (f"Fine-tuning did not change the twins detectably: {TUNED} and {BASE} differ on none of {n} score "
                "components")
    return head + f" (BH at {fdr:g})."


def _like_counts(metrics: dict, arm: str, components: list[str], fdr: float) -> tuple[int, int] | None:
    qs = [metrics.get(registry.perm_key(registry.arm_key(arm, k), "q_value")) for k in components]
    qs = [q for q in qs if q is not None]
    return (sum(q > fdr for q in qs), len(qs)) if qs else None


def _humans_sentence(metrics: dict, arms: list[str], components: list[str], fdr: float) -> str:
    counts = {arm: _like_counts(metrics, arm, components, fdr) for arm in arms}
    tested = {arm: c for arm, c in counts.items() if c is not None}
    if not tested:
        return "Like the humans: not tested (metrics.permutations=0)."
    like = [arm for arm, (k, n) in tested.items() if k == n]
    partly = sorted((arm for arm in tested if arm not in like), key=lambda a: -tested[a][0] / tested[a][1])
    parts = [("Like the humans on every score component: " + ", ".join(like)) if like
             else "No arm is like the humans on every score component"]
    if partly:
        parts.append("like them on " + ", ".join(f"{tested[a][0]} of {tested[a][1]} for {a}" for a in partly))
    return "; ".join(parts) + f" (swap tests, q > {fdr:g})."


def _best_sentence(metrics: dict, arms: list[str]) -> str:
    from fidelity_exp.metrics.score import SCORE

    scored = {arm: metrics.get(registry.arm_key(arm, SCORE)) for arm in arms}
    scored = {arm: v for arm, v in scored.items() if v is not None}
    if not scored:
        return f"Best arm: no arm has a {SCORE}."
    order = sorted(scored, key=scored.get)
    best = order[0]
    text = f"Best {SCORE} (lower is better): {best} {cell(metrics, registry.arm_key(best, SCORE))}"
    if len(order) > 1:
        text += ", then " + ", ".join(f"{a} {fmt(scored[a])}" for a in order[1:])
    reference = metrics.get(registry.reference_key(SCORE))
    if reference is not None:
        text += f"; two halves of the humans score {fmt(reference)}"
    return text + "."


def compact_table(metrics: dict, arms: list[str], components: list[str], fdr: float) -> list[str]:
    """Markdown: one row per arm, its fidelity_score and one mark per score component (like the
    humans / distinguishable / not tested), the components numbered under the table."""
    from fidelity_exp.metrics.score import SCORE

    numbers = [f"C{i}" for i in range(1, len(components) + 1)]
    lines = ["| arm | " + SCORE + " | like humans | " + " | ".join(numbers) + " |",
             "|---|---|---|" + "---|" * len(components)]
    for arm in arms:
        marks = []
        for key in components:
            q = metrics.get(registry.perm_key(registry.arm_key(arm, key), "q_value"))
            marks.append("·" if q is None else ("✓" if q > fdr else "✗"))
        counts = _like_counts(metrics, arm, components, fdr)
        like = "—" if counts is None else f"{counts[0]} of {counts[1]}"
        score = fmt(metrics.get(registry.arm_key(arm, SCORE)))
        lines.append(f"| {arm} | {score} | {like} | " + " | ".join(marks) + " |")
    legend = "; ".join(f"{c} {k}" for c, k in zip(numbers, components))
    return [*lines, "", f"✓ like the humans (q > {fdr:g}), ✗ distinguishable, · not tested. {legend}."]
