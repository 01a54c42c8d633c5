"""Heterogeneity: are synthetic respondents as varied as humans? (METRICS.md section 2)"""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy as shannon

from fidelity_exp.metrics.divergence import nanmean_rows
from fidelity_exp.metrics.encoded import Encoded, moments, option_counts
from fidelity_exp.metrics.registry import ONE, Component, FamilyResult, KeyInfo, clean, register


def distinct_per_row(ids: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(B,) number of distinct non-negative ids among ids[idx[b]]."""
    chosen = ids[idx]
    width = int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 1
    batch = np.broadcast_to(np.arange(idx.shape[0])[:, None], chosen.shape)
    keep = chosen >= 0
    seen = np.bincount(batch[keep] * width + chosen[keep], minlength=idx.shape[0] * width)
    return (seen.reshape(idx.shape[0], width) > 0).sum(axis=1).astype(float)


def normalised_entropy(counts: np.ndarray) -> np.ndarray:
    """H(P) / ln K with natural logs and 0 ln 0 = 0, in [0, 1]; NaN without answers."""
    k = counts.shape[-1]
    total = counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = shannon(np.where(total[..., None] > 0, counts, 1), axis=-1) / np.log(k)
    return np.where(total > 0, h, np.nan)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(den) & (den != 0), num / den, np.nan)


_RATIO = dict(better=ONE, bounds=(0, np.inf), identical=1.0)


@register(
    "heterogeneity",
    KeyInfo("heterogeneity/unique_profiles/human", bounds=(0, np.inf)),
    KeyInfo("heterogeneity/unique_profiles/synthetic", bounds=(0, np.inf)),
    KeyInfo("heterogeneity/unique_profiles/ratio", **_RATIO, aggregate=True, headline=True, no_interval=(
        "a bootstrap resample repeats respondents, so it holds fewer distinct answer profiles than the data: "
        "a count the bootstrap cannot reproduce; its swap test (perm/) compares it with the humans")),
    KeyInfo("heterogeneity/entropy/*", bounds=(0, 1)),
    KeyInfo("heterogeneity/entropy_ratio/mean", **_RATIO, aggregate=True, headline=True, curve=True),
    KeyInfo("heterogeneity/sd_ratio/mean", **_RATIO, aggregate=True, headline=True),
    KeyInfo("heterogeneity/sd_ratio/*", **_RATIO),
    # |1 - ratio| capped at 1
    components=[Component("heterogeneity/unique_profiles/ratio", "heterogeneity/unique_profiles/ratio",
                          lambda r: np.minimum(np.abs(1 - r), 1.0), position=3)],
)
def heterogeneity(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    out: dict[str, np.ndarray] = {}
    uh, us = distinct_per_row(h.profiles, hi), distinct_per_row(s.profiles, si)
    out["heterogeneity/unique_profiles/human"] = uh
    out["heterogeneity/unique_profiles/synthetic"] = us
    out["heterogeneity/unique_profiles/ratio"] = ratio(us, uh)
    entropy_ratios, sd_ratios = [], []
    for j, q in enumerate(h.spec.questions):
        k, name = len(q.options), clean(q.column)
        P, Q = option_counts(h.codes[:, j], hi, k), option_counts(s.codes[:, j], si, k)
        eh, es = normalised_entropy(P), normalised_entropy(Q)
        out[f"heterogeneity/entropy/{name}/human"], out[f"heterogeneity/entropy/{name}/synthetic"] = eh, es
        entropy_ratios.append(np.where(eh > 0, ratio(es, eh), np.nan))
        if q.is_ordered:
            values = np.array(list(q.numeric_values.values()))
            sd_h, sd_s = np.sqrt(moments(P, values)[2]), np.sqrt(moments(Q, values)[2])
            out[f"heterogeneity/sd_ratio/{name}"] = r = ratio(sd_s, sd_h)
            sd_ratios.append(r)
    out["heterogeneity/entropy_ratio/mean"] = nanmean_rows(entropy_ratios, hi.shape[0])
    out["heterogeneity/sd_ratio/mean"] = nanmean_rows(sd_ratios, hi.shape[0])
    return FamilyResult(out)
