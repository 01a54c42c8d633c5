"""Population-level divergence per question (METRICS.md section 1).

Functions on counts take (..., K) arrays of answer counts in option order and return one value
per leading index; NaN marks an undefined value (a side with no answers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import rel_entr

from fidelity_exp.metrics.encoded import Encoded, option_counts
from fidelity_exp.metrics.registry import LOWER, Component, FamilyResult, KeyInfo, clean, register
from fidelity_exp.study.spec import Question


def _freq(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=-1, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan)


def js_from_counts(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance, base 2: sqrt(JSD_2(P, Q)), in [0, 1]; 0 when P = Q.

    The same quantity as `scipy.spatial.distance.jensenshannon(P, Q, base=2)`, written with
    scipy's `rel_entr` so that a batch is one call and rounding never takes sqrt of -1e-17.
    """
    p, q = _freq(p_counts), _freq(q_counts)
    m = (p + q) / 2
    jsd = (rel_entr(p, m).sum(axis=-1) + rel_entr(q, m).sum(axis=-1)) / (2 * np.log(2))
    return np.sqrt(np.clip(jsd, 0.0, 1.0))


def tvd_from_counts(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Total variation distance 0.5 * sum_k |P_k - Q_k|, in [0, 1]."""
    return 0.5 * np.abs(_freq(p_counts) - _freq(q_counts)).sum(axis=-1)


def w1_from_counts(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Ordinal Wasserstein-1 on the option scale, normalised to [0, 1]:
    sum_{k<K} |F_P(k) - F_Q(k)| / (K - 1), F the cumulative frequencies in option order."""
    k = p_counts.shape[-1]
    cp, cq = np.cumsum(_freq(p_counts), axis=-1), np.cumsum(_freq(q_counts), axis=-1)
    return np.abs(cp[..., :-1] - cq[..., :-1]).sum(axis=-1) / (k - 1)


def nanmean_rows(columns: list[np.ndarray], batch: int) -> np.ndarray:
    """Mean over the defined values of each row; NaN where none is defined."""
    if not columns:
        return np.full(batch, np.nan)
    stacked = np.column_stack(columns)
    n = np.isfinite(stacked).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(stacked, axis=1) / n, np.nan)


_DISTANCE = dict(better=LOWER, bounds=(0, 1), identical=0.0, symmetric=True)


@register(
    "divergence",
    KeyInfo("divergence/js/mean", **_DISTANCE, aggregate=True, headline=True, curve=True, bias="divergence"),
    KeyInfo("divergence/tvd/mean", **_DISTANCE, aggregate=True, headline=True, bias="distance"),
    KeyInfo("divergence/w1/mean", **_DISTANCE, aggregate=True, headline=True, bias="distance"),
    KeyInfo("divergence/js/*", **_DISTANCE),
    KeyInfo("divergence/tvd/*", **_DISTANCE),
    KeyInfo("divergence/w1/*", **_DISTANCE),
    components=[Component("divergence/js/mean", "divergence/js/mean", position=1)],
)
def divergence(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    out: dict[str, np.ndarray] = {}
    per = {"js": [], "tvd": [], "w1": []}
    for j, q in enumerate(h.spec.questions):
        k = len(q.options)
        P, Q = option_counts(h.codes[:, j], hi, k), option_counts(s.codes[:, j], si, k)
        name = clean(q.column)
        for metric, fn in (("js", js_from_counts), ("tvd", tvd_from_counts), ("w1", w1_from_counts)):
            if metric == "w1" and not q.is_ordered:
                continue
            out[f"divergence/{metric}/{name}"] = v = fn(P, Q)
            per[metric].append(v)
    for metric, columns in per.items():
        out[f"divergence/{metric}/mean"] = nanmean_rows(columns, hi.shape[0])
    return FamilyResult(out)


# --- the same metrics on DataFrames, one question at a time (scikit-learn style) ----------


def _counts(frame: pd.DataFrame, question: Question) -> np.ndarray:
    values = frame[question.column]
    return np.array([(values == code).sum() for code in question.options], dtype=float)


def js_distance(human: pd.DataFrame, synthetic: pd.DataFrame, *, question: Question) -> float:
    """Jensen-Shannon distance (base 2) between the answer distributions; range [0, 1], best 0.

    >>> q = Question("x", "?", "binary", "other", {0: "no", 1: "yes"})
    >>> js_distance(pd.DataFrame({"x": [0, 1]}), pd.DataFrame({"x": [0, 1]}), question=q)
    0.0
    """
    return float(js_from_counts(_counts(human, question), _counts(synthetic, question)))


def tvd(human: pd.DataFrame, synthetic: pd.DataFrame, *, question: Question) -> float:
    """Total variation distance between the answer distributions; range [0, 1], best 0."""
    return float(tvd_from_counts(_counts(human, question), _counts(synthetic, question)))


def w1_ordinal(human: pd.DataFrame, synthetic: pd.DataFrame, *, question: Question) -> float:
    """Normalised ordinal Wasserstein-1 (ordinal/binary questions); range [0, 1], best 0."""
    if not question.is_ordered:
        raise ValueError(f"w1 needs an ordinal or binary question; {question.column!r} is {question.type}")
    return float(w1_from_counts(_counts(human, question), _counts(synthetic, question)))
