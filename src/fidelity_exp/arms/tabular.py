"""`tabular`, a baseline that needs no LLM: per question, in interview order, a ridge-penalised
multinomial logit of the answer on the persona, conditions and (optionally) the twin's own
earlier answers, fitted on the pilot and sampled; its probabilities are kept as
`<question>__p__<code>` columns. A recent benchmark found a multinomial logit beats LLMs at the
individual level; this arm makes that comparison the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from fidelity_exp.arms import ARMS, Arm, ArmContext, Twins, twin_base
from fidelity_exp.arms.pilot_resample import numeric
from fidelity_exp.settings import option
from fidelity_exp.study.spec import StudySpec
from fidelity_exp.study.synthetic_file import PROB_SEP


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


@ARMS.register("tabular")
@dataclass
class Tabular(Arm):
    condition_on_previous: bool = True   # each answer's logit also sees the twin's earlier answers
    l2: float = option(1.0, ge=0, what="a finite number >= 0 (0: no penalty)")   # ridge penalty of the logits

    def simulate(self, ctx: ArmContext) -> Twins:
        study, split = ctx.study, ctx.split
        spec = study.spec
        pilot = study.frame.loc[split.pilot]
        twins = twin_base(study, split)
        features = Features(spec, pilot)
        rng = np.random.default_rng(ctx.seed)
        given_pilot = [features.block(pilot, c) for c in spec.given_columns]
        given_twins = [features.block(twins, c) for c in spec.given_columns]
        out = twins.copy()
        for j, q in enumerate(spec.questions):
            asked = spec.question_columns[:j] if self.condition_on_previous else []
            Xp = np.hstack(given_pilot + [features.block(pilot, c) for c in asked] + [np.zeros((len(pilot), 0))])
            Xt = np.hstack(given_twins + [features.block(out, c) for c in asked] + [np.zeros((len(out), 0))])
            y = pilot[q.column].cat.codes.to_numpy()
            answered = y >= 0
            k = len(q.options)
            W = fit_multinomial(Xp[answered], y[answered], k, self.l2)
            P = predict_proba(W, Xt)                                              # (twins, K)
            choice = (rng.random(len(P))[:, None] > np.cumsum(P, axis=1)).sum(axis=1).clip(0, k - 1)
            out[q.column] = [q.codes[c] for c in choice]
            for i, code in enumerate(q.codes):
                out[f"{q.column}{PROB_SEP}{code}"] = P[:, i]
        return Twins(out)
