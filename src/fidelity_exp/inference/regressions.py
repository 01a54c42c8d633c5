"""Rectified estimates of every spec regression (family ols or logit) from a run's humans and twins.

Three estimators of each coefficient, side by side (keys `<estimator>/regression/<r>/<term>/...`):

- `ppi`: PPI++ (prediction_powered.py) from the rectification humans (real answers and their
  twins' answers) and the twins of the unlabelled personas (the evaluation personas; their real
  answers are not used);
- `pilot_only`: the same regression on the whole pilot's real answers (what the humans alone give);
- `synthetic_only`: the regression on the unlabelled twins alone, as if they were humans;

plus `truth/regression/<r>/<term>/coef`: the fit on every respondent of the study, the estimand
a coverage experiment checks intervals against, and `ppi/regression/<r>/<term>/effective_n`.

Twins' answers enter as predictions. By default (`ppi.predictions=expected`) a numeric question
enters as the expected value under the twin's answer probabilities (less noise, still a valid
prediction); `sampled` uses the sampled answer. A question used as a factor (`C(q)`) is always
sampled.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import patsy

from fidelity_exp.inference.prediction_powered import GLMS, Estimate, classical, effective_n, ppi
from fidelity_exp.metrics.regression import FitFailure, degenerate
from fidelity_exp.metrics.registry import clean, register_other, register_words
from fidelity_exp.settings import Checked, group, option
from fidelity_exp.study.data import numeric_frame
from fidelity_exp.study.spec import Regression, StudySpec
from fidelity_exp.study.synthetic_file import PROB_SEP

RECTIFIABLE = GLMS   # the regression kinds (a spec's `family`) rectified here
PREDICTIONS = ("expected", "sampled")


@group("ppi")
@dataclass
class PPISettings(Checked):
    """The `ppi` keys (conf/config.yaml): how twins' answers enter the rectified regressions."""

    predictions: str = option("expected", one_of=PREDICTIONS)
# The keys this module writes: `<estimator>/regression/<r>/...` and `truth/regression/<r>/<term>/coef`.
ESTIMATORS = ("ppi", "pilot_only", "synthetic_only")
TRUTH = "truth"
PREFIXES = (*ESTIMATORS, TRUTH)
register_words(*PREFIXES, prefix=True)
register_words("width", "lambda", "effective_n", "median", "skipped")
register_other(*(f"{prefix}/regression/*" for prefix in PREFIXES))


def rectified_key(estimator: str, regression: str, *parts: str) -> str:
    """E.g. rectified_key("ppi", "vote", "age", "ci_low") -> 'ppi/regression/vote/age/ci_low'."""
    return "/".join([estimator, "regression", clean(regression), *parts])


def truth_terms(keys) -> list[tuple[str, str, str]]:
    """(regression, term, key) of every `truth/regression/<r>/<term>/coef` among `keys`."""
    out = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 5 and parts[0] == TRUTH and parts[1] == "regression" and parts[4] == "coef":
            out.append((parts[2], parts[3], key))
    return sorted(out)


@dataclass
class TwinSets:
    """What a rectified run produces: the rectification humans' twins (each from a model that
    did not see that human) and, per fine-tuned model, the twins of the unlabelled personas."""

    labelled: pd.DataFrame             # synthetic frame, twin_of = rectification humans
    unlabelled: list[pd.DataFrame]     # one synthetic frame per model (cross-fitting: K)


def _numeric_twins(spec: StudySpec, twins: pd.DataFrame, reg: Regression, predictions: str) -> pd.DataFrame:
    frame = numeric_frame(spec, twins.set_index("twin_of"))
    if predictions == "sampled":
        return frame
    for column in reg.variables:
        if column not in spec.question_columns or re.search(rf"C\(\s*{re.escape(column)}\s*[,)]", reg.formula):
            continue
        q = spec.question(column)
        probs = [f"{column}{PROB_SEP}{code}" for code in q.codes]
        if all(p in twins.columns for p in probs):
            values = np.array([q.numeric_values[c] for c in q.codes])
            frame[column] = twins[probs].to_numpy(float) @ values
    return frame


def _matrices(info, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    y, X = patsy.build_design_matrices(info, frame, NA_action=patsy.NAAction(NA_types=[]))
    return np.asarray(y, float)[:, 0], np.asarray(X, float)


def _complete(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.all(np.isfinite(a.reshape(len(a), -1)), axis=1)
    return ok


def _put(out: dict, estimator: str, r: str, terms: list[str], est: Estimate) -> None:
    for k, term in enumerate(terms):
        t = clean(term)
        for what, values in (("coef", est.coef), ("se", est.se), ("ci_low", est.ci_low), ("ci_high", est.ci_high)):
            out[rectified_key(estimator, r, t, what)] = float(values[k])
    out[rectified_key(estimator, r, "width", "mean")] = float(np.mean(est.width))


def rectified_regressions(spec: StudySpec, everyone: pd.DataFrame, pilot: pd.DataFrame, rectify: pd.DataFrame,
                          twins: TwinSets, *, alpha: float, predictions: str = "expected"
                          ) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics (flat keys) and notes (why a regression was skipped) for every ols/logit regression.

    everyone: all the study's humans (the estimand); pilot: the whole pilot (human-only);
    rectify: the labelled humans, in the order of `twins.labelled.twin_of`.
    """
    out: dict[str, float] = {}
    notes: dict[str, str] = {}
    human_all = numeric_frame(spec, everyone)
    env = patsy.EvalEnvironment([{"np": np}])
    for reg in spec.regressions:
        r = clean(reg.name)
        if reg.family not in RECTIFIABLE:
            notes[rectified_key("ppi", r, "skipped")] = f"family {reg.family}: rectified estimates cover ols and logit"
            continue
        try:
            with np.errstate(all="ignore"):
                y_all, X_all = patsy.dmatrices(reg.formula, human_all, NA_action="drop", eval_env=env,
                                               return_type="dataframe")
        except Exception as e:  # a formula these data cannot carry
            notes[rectified_key("ppi", r, "skipped")] = f"cannot build the design: {e}"
            continue
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # numerical chatter: a failure is reported below, once
                out.update(_rectified_one(spec, reg, r, y_all, X_all, pilot, rectify, twins, alpha, predictions))
        except FitFailure as e:
            notes[rectified_key("ppi", r, "skipped")] = str(e)
    return out, notes


def _fitted(what: str, family: str, X: np.ndarray, y: np.ndarray, terms: list[str], alpha: float) -> Estimate:
    """The classical fit on `what` (for messages), or `FitFailure` with the reason."""
    reason = degenerate(X, y, terms)
    if reason:
        raise FitFailure(f"{what}: {reason}")
    try:
        return classical(family, X, y, alpha=alpha)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise FitFailure(f"{what}: {e}") from None


def _rectified_one(spec: StudySpec, reg, r: str, y_all, X_all, pilot, rectify, twins: TwinSets, alpha: float,
                   predictions: str) -> dict[str, float]:
    """One regression's truth, pilot-only, synthetic-only and PPI++ estimates (flat keys)."""
    out: dict[str, float] = {}
    info = [y_all.design_info, X_all.design_info]
    terms = list(X_all.columns)
    truth = _fitted("all humans", reg.family, X_all.to_numpy(float), y_all.iloc[:, 0].to_numpy(float), terms, alpha)
    out.update({rectified_key(TRUTH, r, clean(t), "coef"): float(c) for t, c in zip(terms, truth.coef)})

    y_p, X_p = _matrices(info, numeric_frame(spec, pilot))
    ok = _complete(y_p, X_p)
    human = _fitted("the pilot", reg.family, X_p[ok], y_p[ok], terms, alpha)
    _put(out, "pilot_only", r, terms, human)

    y_l, X_l = _matrices(info, numeric_frame(spec, rectify.loc[twins.labelled.twin_of]))
    y_h, X_h = _matrices(info, _numeric_twins(spec, twins.labelled, reg, predictions))
    unl = [_matrices(info, _numeric_twins(spec, u, reg, predictions)) for u in twins.unlabelled]
    y_u = np.concatenate([u[0] for u in unl])
    X_u = np.concatenate([u[1] for u in unl])
    groups = np.concatenate([np.arange(len(u[0])) for u in unl])
    ok_l, ok_u = _complete(y_l, X_l, y_h, X_h), _complete(y_u, X_u)
    synthetic = _fitted("the twins", reg.family, unl[0][1][_complete(*unl[0])], unl[0][0][_complete(*unl[0])], terms,
                        alpha)
    reason = degenerate(X_l[ok_l], y_l[ok_l], terms)
    if reason:
        raise FitFailure(f"the rectification humans: {reason}")
    _put(out, "synthetic_only", r, terms, synthetic)
    try:
        est = ppi(reg.family, X_l[ok_l], y_l[ok_l], X_h[ok_l], y_h[ok_l], X_u[ok_u], y_u[ok_u], alpha=alpha,
                  groups=groups[ok_u] if len(unl) > 1 else None)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise FitFailure(f"the rectified (PPI++) fit: {e}") from None
    _put(out, "ppi", r, terms, est)
    gain = effective_n(est, human)
    out.update({rectified_key("ppi", r, clean(t), "effective_n"): float(g) for t, g in zip(terms, gain)})
    out[rectified_key("ppi", r, "effective_n", "median")] = float(np.median(gain))
    out[rectified_key("ppi", r, "lambda")] = est.lam
    out[rectified_key("ppi", r, "n_rectify")] = float(est.n)
    out[rectified_key("ppi", r, "n_unlabelled")] = float(len(np.unique(groups[ok_u])))
    out[rectified_key("pilot_only", r, "n")] = float(human.n)
    return out

