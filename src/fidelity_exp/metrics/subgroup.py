"""Subgroup alignment and within-group variance (METRICS.md sections 3 and 4).

Levels are computed in each data set from its own values, so a subgroup defined on a question
follows what each synthetic respondent answered. A level is valid when it has at least
`min_group_size` humans; per-level keys are reported for valid levels only.
"""

from __future__ import annotations

import warnings

import numpy as np

from fidelity_exp.metrics.divergence import js_from_counts, nanmean_rows
from fidelity_exp.metrics.encoded import Encoded, level_option_counts, level_sizes, moments
from fidelity_exp.metrics.heterogeneity import ratio
from fidelity_exp.metrics.registry import LOWER, ONE, Component, FamilyResult, KeyInfo, clean, register


def reduce_rows(x: np.ndarray, fn) -> np.ndarray:
    """fn over the finite entries of each row of (B, L); NaN for a row without any."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(np.where(np.isfinite(x), x, np.nan), axis=1)


def _questions(h: Encoded, sg):
    return [(j, q) for j, q in enumerate(h.spec.questions) if q.column != sg.column]


_JS = dict(better=LOWER, bounds=(0, 1), identical=0.0, bias="divergence")


def level_key(subgroup: str, level: str) -> str:
    """The key of one level's JS distance (the report's per-level plot reads it)."""
    return f"subgroup/{clean(subgroup)}/{clean(level)}/js"


@register(
    "subgroup",
    KeyInfo("subgroup/*/js/mean", **_JS, aggregate=True, headline=True, curve=True),
    KeyInfo("subgroup/*/js/max", **_JS, aggregate=True),
    KeyInfo("subgroup/*/js/gap", **_JS, aggregate=True),
    KeyInfo("subgroup/*/gap_inflation/mean", better=ONE, bounds=(0, np.inf), identical=1.0, aggregate=True,
            headline=True),
    KeyInfo("subgroup/*/*/js", **_JS),
    components=[Component("subgroup/js/mean", "subgroup/*/js/mean", position=2)],   # mean over subgroups
)
def subgroup(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    out: dict[str, np.ndarray] = {}
    for sg in h.spec.subgroups:
        g, L = clean(sg.name), len(sg.levels)
        h_size, s_size = level_sizes(h.levels[sg.name], hi, L), level_sizes(s.levels[sg.name], si, L)
        valid = h_size >= opts.min_group_size                                   # (B, L)
        js_per_q, spreads = [], []
        for j, q in _questions(h, sg):
            k = len(q.options)
            hc = level_option_counts(h.codes[:, j], h.levels[sg.name], hi, L, k)  # (B, L, K)
            sc = level_option_counts(s.codes[:, j], s.levels[sg.name], si, L, k)
            js_per_q.append(js_from_counts(hc, sc))                              # (B, L)
            if q.is_ordered:
                values = np.array(list(q.numeric_values.values()))
                mh, ms = moments(hc, values)[1], moments(sc, values)[1]         # (B, L) level means
                use = valid & (s_size >= 1) & np.isfinite(mh) & np.isfinite(ms)
                spread_h = reduce_rows(np.where(use, mh, np.nan), np.nanmax) - reduce_rows(
                    np.where(use, mh, np.nan), np.nanmin)
                spread_s = reduce_rows(np.where(use, ms, np.nan), np.nanmax) - reduce_rows(
                    np.where(use, ms, np.nan), np.nanmin)
                spreads.append(ratio(spread_s, spread_h))
        if js_per_q:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                level_js = np.nanmean(np.stack(js_per_q), axis=0)               # (B, L)
        else:
            level_js = np.full(h_size.shape, np.nan)
        level_js = np.where(s_size == 0, 1.0, level_js)  # a group the simulator never produces
        level_js = np.where(valid, level_js, np.nan)
        for li, level in enumerate(sg.levels):
            out[level_key(sg.name, level)] = level_js[:, li]
        out[f"subgroup/{g}/js/mean"] = reduce_rows(level_js, np.nanmean)
        out[f"subgroup/{g}/js/max"] = reduce_rows(level_js, np.nanmax)
        out[f"subgroup/{g}/js/gap"] = out[f"subgroup/{g}/js/max"] - reduce_rows(level_js, np.nanmin)
        out[f"subgroup/{g}/gap_inflation/mean"] = nanmean_rows(spreads, hi.shape[0])
    return FamilyResult(out)


@register(
    "within_group",
    KeyInfo("within_group/*/variance_ratio", better=ONE, bounds=(0, np.inf), identical=1.0, aggregate=True,
            headline=True),
)
def within_group(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    out: dict[str, np.ndarray] = {}
    for sg in h.spec.subgroups:
        L = len(sg.levels)
        h_size, s_size = level_sizes(h.levels[sg.name], hi, L), level_sizes(s.levels[sg.name], si, L)
        cell_ok = (h_size >= opts.min_group_size) & (h_size >= 2) & (s_size >= 2)
        ratios = []
        for j, q in _questions(h, sg):
            if not q.is_ordered:
                continue
            values = np.array(list(q.numeric_values.values()))
            k = len(q.options)
            vh = moments(level_option_counts(h.codes[:, j], h.levels[sg.name], hi, L, k), values)[2]
            vs = moments(level_option_counts(s.codes[:, j], s.levels[sg.name], si, L, k), values)[2]
            ratios.append(np.where(cell_ok & (vh > 0), ratio(vs, vh), np.nan))   # (B, L)
        cells = np.concatenate(ratios, axis=1) if ratios else np.full((hi.shape[0], 1), np.nan)
        out[f"within_group/{clean(sg.name)}/variance_ratio"] = reduce_rows(cells, np.nanmean)
    return FamilyResult(out)
