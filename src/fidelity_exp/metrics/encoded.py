"""One data set (human or synthetic) as integer arrays, and batches of resamples of it.

Every metric is computed on a *batch*: an index array `idx` of shape (B, m) selects B samples
of m respondents each. The point estimate is the batch `arange(n)[None]`; a bootstrap is B
resamples with replacement; the human split-half reference is R halves. One code path serves
all three, so the interval and the reference are always of exactly the quantity reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fidelity_exp.study.data import subgroup_levels
from fidelity_exp.study.spec import StudySpec


@dataclass(frozen=True)
class Encoded:
    spec: StudySpec
    frame: pd.DataFrame            # the canonical frame (for regressions and rank statistics)
    codes: np.ndarray              # (n, Q) option position of each answer, -1 when not answered
    levels: dict[str, np.ndarray]  # subgroup name -> (n,) level position, -1 when in no level
    profiles: np.ndarray           # (n,) id of the answer vector over profile questions, -1 if incomplete

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    def all_rows(self) -> np.ndarray:
        return np.arange(self.n)[None, :]


def encode(spec: StudySpec, frame: pd.DataFrame) -> Encoded:
    """Encode a canonical frame (see `study.data`): answers as option positions."""
    codes = np.column_stack([frame[q.column].cat.codes.to_numpy(dtype=np.int64) for q in spec.questions])
    levels = {}
    for sg in spec.subgroups:
        names = subgroup_levels(sg, frame)
        lookup = {lv: i for i, lv in enumerate(sg.levels)}
        levels[sg.name] = names.map(lambda v: lookup.get(v, -1)).to_numpy(dtype=np.int64)
    return Encoded(spec, frame, codes, levels, _profile_ids(spec, codes))


def profile_questions(spec: StudySpec) -> list[int]:
    """Positions of the questions with role belief (all questions if none has it)."""
    beliefs = [i for i, q in enumerate(spec.questions) if q.role == "belief"]
    return beliefs or list(range(len(spec.questions)))


def _profile_ids(spec: StudySpec, codes: np.ndarray) -> np.ndarray:
    sub = codes[:, profile_questions(spec)]
    complete = (sub >= 0).all(axis=1)
    ids = np.full(len(codes), -1, dtype=np.int64)
    if complete.any():
        _, inverse = np.unique(sub[complete], axis=0, return_inverse=True)
        ids[complete] = inverse.ravel()
    return ids


def option_counts(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """(B, K) answer counts per option, missing answers left out. `codes`: (n,) positions."""
    c = codes[idx]                                        # (B, m)
    batch = np.broadcast_to(np.arange(idx.shape[0])[:, None], c.shape)
    keep = c >= 0
    flat = batch[keep] * k + c[keep]
    return np.bincount(flat, minlength=idx.shape[0] * k).reshape(idx.shape[0], k)


def level_option_counts(codes: np.ndarray, levels: np.ndarray, idx: np.ndarray, n_levels: int, k: int) -> np.ndarray:
    """(B, L, K) answer counts per subgroup level and option."""
    c, lv = codes[idx], levels[idx]
    batch = np.broadcast_to(np.arange(idx.shape[0])[:, None], c.shape)
    keep = (c >= 0) & (lv >= 0)
    flat = (batch[keep] * n_levels + lv[keep]) * k + c[keep]
    return np.bincount(flat, minlength=idx.shape[0] * n_levels * k).reshape(idx.shape[0], n_levels, k)


def level_sizes(levels: np.ndarray, idx: np.ndarray, n_levels: int) -> np.ndarray:
    """(B, L) members per subgroup level."""
    lv = levels[idx]
    batch = np.broadcast_to(np.arange(idx.shape[0])[:, None], lv.shape)
    keep = lv >= 0
    flat = batch[keep] * n_levels + lv[keep]
    return np.bincount(flat, minlength=idx.shape[0] * n_levels).reshape(idx.shape[0], n_levels)


def moments(counts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, variance with ddof=1) of numeric answers from option counts (..., K).

    Undefined entries are NaN: the mean when n = 0, the variance when n < 2.
    """
    n = counts.sum(axis=-1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (counts * values).sum(axis=-1) / n
        sq = (counts * (values - mean[..., None]) ** 2).sum(axis=-1)
        var = np.where(n >= 2, sq / (n - 1), np.nan)
    return n, np.where(n > 0, mean, np.nan), var
