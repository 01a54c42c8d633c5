"""Baseline arms that need no LLM, run beside every LLM arm on the same evaluation twins.

- `pilot_resample`: each twin answers exactly as one pilot human from its nearest persona cell.
- `tabular`: per question, in interview order, a multinomial logit of the answer on the persona
  (and the twin's own earlier answers), fitted on the pilot and sampled.

A recent benchmark found a multinomial logit beats LLMs at the individual level; these arms
make that comparison the default. Both return synthetic frames in the SURVEY_SPEC.md format:
the twins' persona and condition columns, their answers, `twin_of`, and for `tabular` the
probability of every option (`<question>__p__<code>`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from fidelity_exp.arms import register, twin_base
from fidelity_exp.study.data import Study
from fidelity_exp.study.spec import StudySpec
from fidelity_exp.study.split import Split


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


@register("pilot_resample")
def pilot_resample(study: Study, split: Split, options, seed: int) -> pd.DataFrame:
    spec = study.spec
    pilot = study.frame.loc[split.pilot]
    twins = twin_base(study, split)
    cells = nearest_cells(spec, pilot, twins, bins=int(options.get("numeric_bins", 5)))
    rng = np.random.default_rng(seed)
    # one uniform draw within each twin's cell: the k-th member, k uniform in [0, cell size)
    sizes = cells.sum(axis=1)
    k = np.floor(rng.random(len(twins)) * sizes).astype(int)
    donor = np.array([np.flatnonzero(row)[i] for row, i in zip(cells, k)])
    answers = pilot[spec.question_columns].iloc[donor].astype(object)
    answers = answers.where(answers.notna(), None).reset_index(drop=True)
    return pd.concat([twins, answers], axis=1)


# --- tabular ------------------------------------------------------------------------------


class Features:
    """Persona, conditions and (optionally) earlier answers as a numeric design, fitted on the pilot."""

    def __init__(self, spec: StudySpec, pilot: pd.DataFrame):
        self.spec = spec
        self.numeric: dict[str, tuple[float, float]] = {}
        self.levels: dict[str, list] = {}
        for p in spec.persona:
            col = pilot[p.column]
            if p.type in ("numeric", "ordinal") and numeric(col):
                x = col.astype(float)
                self.numeric[p.column] = (float(x.mean()), float(x.std(ddof=0)) or 1.0)
            else:
                self.levels[p.column] = sorted(pd.unique(col.dropna().astype(str)))
        for c in spec.conditions:
            self.levels[c.column] = [str(code) for code in c.codes]
        for q in spec.questions:
            if q.is_ordered:
                v = pilot[q.column].astype(object).map(q.numeric_values).astype(float)
                self.numeric[q.column] = (float(v.mean()) if v.notna().any() else 0.0, float(v.std(ddof=0)) or 1.0)
            else:
                self.levels[q.column] = [str(code) for code in q.codes]

    def block(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        """(n, d) encoding of one column: a standardised number (missing: 0, the mean) or one-hot."""
        if column in self.numeric:
            mean, sd = self.numeric[column]
            values = frame[column].astype(object)
            if column in self.spec.question_columns:
                values = values.map(self.spec.question(column).numeric_values)
            x = (pd.to_numeric(values, errors="coerce").to_numpy(float) - mean) / sd
            return np.nan_to_num(x, nan=0.0)[:, None]
        as_text = frame[column].astype(object).map(lambda v: None if v is None or pd.isna(v) else str(v)).to_numpy()
        return (as_text[:, None] == np.array(self.levels[column], dtype=object)[None, :]).astype(float)


def fit_multinomial(X: np.ndarray, y: np.ndarray, k: int, l2: float) -> np.ndarray:
    """L2-penalised multinomial logit (intercepts unpenalised); returns (d + 1, k) weights.

    y holds class positions 0..k-1; classes absent from y get large negative intercepts through
    the fit itself (their likelihood only ever pushes them down), so never NaN.
    """
    n, d = X.shape
    Xb = np.hstack([np.ones((n, 1)), X])
    Y = np.zeros((n, k))
    Y[np.arange(n), y] = 1.0
    penalty = np.ones((d + 1, k))
    penalty[0] = 0.0

    def loss(w_flat):
        W = w_flat.reshape(d + 1, k)
        Z = Xb @ W
        Z -= Z.max(axis=1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
        f = -(Y * logp).sum() / n + 0.5 * l2 * (penalty * W**2).sum() / n
        grad = Xb.T @ (np.exp(logp) - Y) / n + l2 * penalty * W / n
        return f, grad.ravel()

    res = minimize(loss, np.zeros((d + 1) * k), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(d + 1, k)


def predict_proba(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    Z = np.hstack([np.ones((len(X), 1)), X]) @ W
    Z -= Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


@register("tabular")
def tabular(study: Study, split: Split, options, seed: int) -> pd.DataFrame:
    spec = study.spec
    pilot = study.frame.loc[split.pilot]
    twins = twin_base(study, split)
    features = Features(spec, pilot)
    previous = bool(options.get("condition_on_previous", True))
    l2 = float(options.get("l2", 1.0))
    rng = np.random.default_rng(seed)
    given_pilot = [features.block(pilot, c) for c in spec.given_columns]
    given_twins = [features.block(twins, c) for c in spec.given_columns]
    out = twins.copy()
    for j, q in enumerate(spec.questions):
        asked = spec.question_columns[:j] if previous else []
        Xp = np.hstack(given_pilot + [features.block(pilot, c) for c in asked] + [np.zeros((len(pilot), 0))])
        Xt = np.hstack(given_twins + [features.block(out, c) for c in asked] + [np.zeros((len(out), 0))])
        y = pilot[q.column].cat.codes.to_numpy()
        answered = y >= 0
        k = len(q.options)
        W = fit_multinomial(Xp[answered], y[answered], k, l2)
        P = predict_proba(W, Xt)                                              # (twins, K)
        choice = (rng.random(len(P))[:, None] > np.cumsum(P, axis=1)).sum(axis=1).clip(0, k - 1)
        out[q.column] = [q.codes[c] for c in choice]
        for i, code in enumerate(q.codes):
            out[f"{q.column}__p__{code}"] = P[:, i]
    return out
