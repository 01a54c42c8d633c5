"""Belief-action coherence (METRICS.md section 5)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import spearmanr

from fidelity_exp.metrics.encoded import Encoded
from fidelity_exp.metrics.registry import LOWER, Component, FamilyResult, KeyInfo, clean, register


def _numeric(enc: Encoded, column: str) -> np.ndarray:
    """(n,) numeric value of each answer to `column`, NaN when not answered."""
    j = enc.spec.question_columns.index(column)
    values = np.array(list(enc.spec.questions[j].numeric_values.values()))
    codes = enc.codes[:, j]
    return np.where(codes >= 0, values[np.maximum(codes, 0)], np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(B,) Spearman correlation of x and y over rows idx[b] answering both; NaN if either is constant."""
    out = np.full(idx.shape[0], np.nan)
    for b, rows in enumerate(idx):
        xb, yb = x[rows], y[rows]
        both = np.isfinite(xb) & np.isfinite(yb)
        xb, yb = xb[both], yb[both]
        if len(xb) < 2 or np.all(xb == xb[0]) or np.all(yb == yb[0]):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[b] = spearmanr(xb, yb).statistic
    return out


def gap_rate_rows(enc: Encoded, pair, idx: np.ndarray) -> np.ndarray:
    """(B,) share of respondents with belief in contradiction.belief whose action is in contradiction.action."""
    qb, qa = enc.spec.question(pair.belief), enc.spec.question(pair.action)
    jb, ja = enc.spec.question_columns.index(pair.belief), enc.spec.question_columns.index(pair.action)
    bpos = [list(qb.options).index(c) for c in pair.contradiction_belief]
    apos = [list(qa.options).index(c) for c in pair.contradiction_action]
    cb, ca = enc.codes[idx, jb], enc.codes[idx, ja]                      # (B, m)
    eligible = np.isin(cb, bpos) & (ca >= 0)
    contradicting = eligible & np.isin(ca, apos)
    n = eligible.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, contradicting.sum(axis=1) / n, np.nan)


@register(
    "coherence",
    KeyInfo("coherence/*/spearman/human", bounds=(-1, 1)),
    KeyInfo("coherence/*/spearman/synthetic", bounds=(-1, 1)),
    KeyInfo("coherence/*/spearman/abs_diff", better=LOWER, bounds=(0, 2), identical=0.0, symmetric=True,
            aggregate=True, headline=True, curve=True),
    KeyInfo("coherence/*/gap_rate/human", bounds=(0, 1)),
    KeyInfo("coherence/*/gap_rate/synthetic", bounds=(0, 1)),
    KeyInfo("coherence/*/gap_rate/abs_diff", better=LOWER, bounds=(0, 1), identical=0.0, symmetric=True,
            aggregate=True, headline=True),
    components=[Component("coherence/spearman/abs_diff", "coherence/*/spearman/abs_diff", position=4)],   # mean over pairs
)
def coherence(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    out: dict[str, np.ndarray] = {}
    for pair in h.spec.coherence:
        key = f"coherence/{clean(pair.belief)}__{clean(pair.action)}"
        rh = spearman_rows(_numeric(h, pair.belief), _numeric(h, pair.action), hi)
        rs = spearman_rows(_numeric(s, pair.belief), _numeric(s, pair.action), si)
        out[f"{key}/spearman/human"], out[f"{key}/spearman/synthetic"] = rh, rs
        out[f"{key}/spearman/abs_diff"] = np.abs(rh - rs)
        if pair.contradiction_belief is not None:
            gh, gs = gap_rate_rows(h, pair, hi), gap_rate_rows(s, pair, si)
            out[f"{key}/gap_rate/human"], out[f"{key}/gap_rate/synthetic"] = gh, gs
            out[f"{key}/gap_rate/abs_diff"] = np.abs(gh - gs)
    return FamilyResult(out)
