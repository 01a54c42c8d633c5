"""`pilot_resample`, a baseline that needs no LLM: each twin answers exactly as one pilot human
from its nearest persona cell (Gower distance over persona and conditions, numeric columns
coarsened into pilot-quantile bins; ties form the cell; the whole pilot when nothing is
comparable). An LLM has to beat it to be worth its cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fidelity_exp.arms import ARMS, Arm, ArmContext, Twins, twin_base
from fidelity_exp.settings import option
from fidelity_exp.study.spec import StudySpec


def numeric(values: pd.Series) -> bool:
    """Whether a column of a canonical frame holds numbers (`canonical_frame` has already made
    every all-number persona column float)."""
    return pd.api.types.is_numeric_dtype(values) and values.notna().any()


# --- pilot_resample -----------------------------------------------------------------------


def _gower_columns(spec: StudySpec, pilot: pd.DataFrame, twins: pd.DataFrame, bins: int):
    """Per given column: (pilot values, twin values, kind) scaled for a Gower distance."""
    for p in spec.persona:
        a, b = pilot[p.column], twins[p.column]
        if p.type in ("numeric", "ordinal") and numeric(a):
            a, b = a.astype(float), pd.to_numeric(b.astype(object), errors="coerce").astype(float)
            if p.type == "numeric":  # coarsen into pilot quantile bins so that cells can hold several humans
                edges = np.unique(np.nanquantile(a, np.linspace(0, 1, bins + 1)[1:-1])) if a.notna().any() else []
                a = pd.Series(np.where(a.notna(), np.searchsorted(edges, a, side="right"), np.nan), index=a.index)
                b = pd.Series(np.where(b.notna(), np.searchsorted(edges, b, side="right"), np.nan), index=b.index)
            span = np.nanmax(a) - np.nanmin(a) if a.notna().any() else 0
            yield a.to_numpy(float), b.to_numpy(float), max(float(span), 1.0), "numeric"
        else:
            yield a.astype(object).to_numpy(), b.astype(object).to_numpy(), 1.0, "nominal"
    for c in spec.conditions:
        yield pilot[c.column].astype(object).to_numpy(), twins[c.column].astype(object).to_numpy(), 1.0, "nominal"


def nearest_cells(spec: StudySpec, pilot: pd.DataFrame, twins: pd.DataFrame, bins: int = 5) -> np.ndarray:
    """(n_twins, n_pilot) boolean: the pilot humans at the smallest Gower distance from each twin.

    Numeric persona columns are coarsened into `bins` pilot-quantile bins, ordinal ones scaled
    to [0, 1]; nominal columns and conditions count 0 when equal, 1 when not. Columns missing on
    either side are left out of that pair's distance. A twin with no comparable column is in
    the cell of the whole pilot.
    """
    total = np.zeros((len(twins), len(pilot)))
    used = np.zeros((len(twins), len(pilot)))
    for a, b, span, kind in _gower_columns(spec, pilot, twins, bins):
        if kind == "numeric":
            d = np.abs(b[:, None] - a[None, :]) / span                         # (twins, pilot)
            ok = np.isfinite(d)
        else:
            known_a = pd.notna(a)
            known_b = pd.notna(b)
            d = (b[:, None] != a[None, :]).astype(float)
            ok = known_b[:, None] & known_a[None, :]
        total += np.where(ok, d, 0.0)
        used += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where(used > 0, total / used, np.nan)
    best = np.nanmin(np.where(np.isfinite(dist), dist, np.inf), axis=1, keepdims=True)
    cells = np.isclose(dist, best) & np.isfinite(dist)
    cells[~cells.any(axis=1)] = True   # fall back to the whole pilot
    return cells


@ARMS.register("pilot_resample")
@dataclass
class PilotResample(Arm):
    # numeric persona columns coarsened into this many pilot-quantile bins
    numeric_bins: int = option(5, ge=1, le=1000, what="a positive integer (at most 1000)")

    def simulate(self, ctx: ArmContext) -> Twins:
        study, split = ctx.study, ctx.split
        spec = study.spec
        pilot = study.frame.loc[split.pilot]
        twins = twin_base(study, split)
        cells = nearest_cells(spec, pilot, twins, bins=self.numeric_bins)
        rng = np.random.default_rng(ctx.seed)
        # one uniform draw within each twin's cell: the k-th member, k uniform in [0, cell size)
        sizes = cells.sum(axis=1)
        k = np.floor(rng.random(len(twins)) * sizes).astype(int)
        donor = np.array([np.flatnonzero(row)[i] for row, i in zip(cells, k)])
        answers = pilot[spec.question_columns].iloc[donor].astype(object)
        answers = answers.where(answers.notna(), None).reset_index(drop=True)
        return Twins(pd.concat([twins, answers], axis=1))
