"""Option order (position) effects of an LLM arm (METRICS.md section 12).

Not a comparison with the humans: an LLM twin's exact answer probabilities, scored twice per
question with its earlier answers held fixed, options in spec order (`forward`) and reversed
(`reverse`), both over option codes (`llm/engine.py` computes them). Humans have no such
probabilities, so these keys get no human reference and no tests; the two means get 95%
bootstrap intervals over resampled twins (`metrics.interval`, `metrics.bootstrap`).

    position/<q>/order_sensitivity   mean over twins of TV(p_fwd, p_rev); 0 = order does not matter
    position/<q>/primacy             mean over twins of (p_fwd[first shown] + p_rev[first shown]) / 2 - 1/K
    position/order_sensitivity/mean, position/primacy/mean: means over questions
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fidelity_exp.metrics.intervals import interval
from fidelity_exp.metrics.suite import Options
from fidelity_exp.metrics.registry import LOWER, KeyInfo, clean, interval_keys, register_derived, unprefixed_info
from fidelity_exp.study.spec import StudySpec

POSITION = "position"
MEASURES = ("primacy", "order_sensitivity")
BOOTSTRAP_STREAM = 5   # seed offset of the twins' resamples (suite.py uses 1-3)

register_derived(KeyInfo(f"{POSITION}/order_sensitivity/mean", better=LOWER, bounds=(0, 1), aggregate=True))
register_derived(KeyInfo(f"{POSITION}/primacy/mean", bounds=(-1, 1), aggregate=True))
register_derived(KeyInfo(f"{POSITION}/*/order_sensitivity", better=LOWER, bounds=(0, 1)))
register_derived(KeyInfo(f"{POSITION}/*/primacy", bounds=(-1, 1)))


@dataclass
class OrderScorings:
    """An LLM arm's twins scored forward and reversed: per question, (twins, K) over codes."""

    forward: list[np.ndarray]
    reverse: list[np.ndarray]


def question_key(column: str, measure: str) -> str:
    return f"{POSITION}/{clean(column)}/{measure}"


def mean_key(measure: str) -> str:
    return f"{POSITION}/{measure}/mean"


def per_twin(forward: np.ndarray, reverse: np.ndarray) -> dict[str, np.ndarray]:
    """(twins,) order sensitivity and primacy of one question."""
    k = forward.shape[1]
    return {"order_sensitivity": 0.5 * np.abs(forward - reverse).sum(axis=1),
            "primacy": (forward[:, 0] + reverse[:, k - 1]) / 2 - 1 / k}


def position_metrics(spec: StudySpec, scorings: OrderScorings, options: Options) -> dict[str, float | None]:
    """Section 12's keys (no arm prefix) from one arm's forward and reversed scorings; intervals
    with the run's metric options (`bootstrap` replicates, `seed`, `interval` method)."""
    bootstrap, seed, method = options.bootstrap, options.seed, options.interval
    out: dict[str, float | None] = {}
    columns = {m: [] for m in MEASURES}   # measure -> per question (twins,)
    for q, fwd, rev in zip(spec.questions, scorings.forward, scorings.reverse, strict=True):
        for measure, values in per_twin(fwd, rev).items():
            out[question_key(q.column, measure)] = float(values.mean())
            columns[measure].append(values)
    n = len(scorings.forward[0]) if scorings.forward else 0
    rng = np.random.default_rng([seed, BOOTSTRAP_STREAM])
    resamples = rng.integers(0, n, size=(bootstrap, n)) if bootstrap > 0 and n > 1 else None
    for measure, per_question in columns.items():
        if not per_question:
            continue
        twin_means = np.mean(per_question, axis=0)          # every twin answers every question
        key = mean_key(measure)
        out[key] = point = float(twin_means.mean())
        if resamples is not None:
            low, high = interval(point, twin_means[resamples].mean(axis=1), method, bounds=unprefixed_info(key).bounds)
            out.update(zip(interval_keys(key), (low, high)))
    return out
