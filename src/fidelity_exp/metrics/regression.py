"""Regression coefficient recovery (METRICS.md section 6).

Each spec regression is fitted on the human and on the synthetic data with statsmodels. The
design matrices are built once per data set by the formula machinery statsmodels' formula API
uses (patsy); each fit (the point estimate, every bootstrap replicate, every reference half)
then selects rows of them, so a replicate costs one model fit and no formula parsing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import patsy
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import (
    ConvergenceWarning, HessianInversionWarning, PerfectSeparationError, PerfectSeparationWarning,
)

from fidelity_exp.metrics.encoded import Encoded
from fidelity_exp.metrics.registry import HIGHER, LOWER, Component, FamilyResult, KeyInfo, clean, register
from fidelity_exp.study.data import numeric_frame
from fidelity_exp.study.spec import Regression

Z_CRIT = 1.959964  # two-sided 5% normal critical value, as METRICS.md fixes it (the report's bars use it too)
AGGREGATES = ("sign_agreement", "sig_diff_rate", "ci_coverage", "sign_f1", "false_positive_rate")
MODELS = {"ols": sm.OLS, "logit": sm.Logit, "probit": sm.Probit, "mnlogit": sm.MNLogit}


class FitFailure(Exception):
    pass


@dataclass(frozen=True)
class Design:
    y: np.ndarray             # (rows,) outcome (numeric values)
    X: np.ndarray             # (rows, p) design matrix
    terms: list[str]          # column names of X, as statsmodels names them
    row_of: np.ndarray        # (n,) design row of each respondent, -1 when incomplete
    outcome_labels: dict      # numeric outcome value -> option code (for mnlogit keys)


@dataclass(frozen=True)
class Fit:
    coef: dict[str, float]
    se: dict[str, float]
    p: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


def design(enc: Encoded, reg: Regression) -> Design:
    frame = numeric_frame(enc.spec, enc.frame).reset_index(drop=True)
    frame["__row__"] = np.arange(len(frame))
    try:
        # A clean namespace (numpy as np, plus patsy's own C, Q, I, ...): names in our code can
        # never shadow what a formula means.
        with np.errstate(all="ignore"):   # np.log(0) in a formula: reported as non-finite values by `fit`
            y, X = patsy.dmatrices(reg.formula, frame, return_type="dataframe", NA_action="drop",
                                   eval_env=patsy.EvalEnvironment([{"np": np}]))
    except Exception as e:  # a formula that does not fit this data (e.g. one level of a factor)
        raise FitFailure(f"cannot build the design: {e}") from None
    row_of = np.full(len(frame), -1, dtype=np.int64)
    row_of[X.index.to_numpy()] = np.arange(len(X))
    outcome = enc.spec.question(_outcome(reg)) if _outcome(reg) in enc.spec.question_columns else None
    labels = {v: c for c, v in outcome.numeric_values.items()} if outcome is not None else {}
    return Design(y.iloc[:, 0].to_numpy(dtype=float), X.to_numpy(dtype=float), list(X.columns), row_of, labels)


def _outcome(reg: Regression) -> str:
    return reg.variables[0]


def degenerate(X: np.ndarray, y: np.ndarray, terms: list[str]) -> str | None:
    """Why a design cannot be fitted, in words a user can act on, or None: no rows, non-finite
    values (say `np.log(0)`), a constant outcome, a constant term, collinear terms."""
    if len(y) == 0:
        return "no complete rows"
    bad = [t for t, col in zip(terms, X.T) if not np.all(np.isfinite(col))]
    if bad or not np.all(np.isfinite(y)):
        return f"non-finite values (inf or nan) in {', '.join(bad) if bad else 'the outcome'}"
    if len(np.unique(y)) < 2:
        return "the outcome is constant"
    constant = [t for t, col in zip(terms, X.T) if t != "Intercept" and np.ptp(col) == 0]
    if constant and ("Intercept" in terms or len(constant) > 1):   # without an intercept one may stand for it
        return f"term {', '.join(constant)} is constant among these respondents"
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        return f"singular design: {X.shape[1]} terms but rank {rank} (collinear terms)"
    return None


def fit(reg: Regression, d: Design, rows: np.ndarray, alpha: float) -> Fit:
    """Fit `reg` on the design rows `rows`; `FitFailure` says why a fit is not usable."""
    y, X = d.y[rows], d.X[rows]
    reason = degenerate(X, y, d.terms)
    if reason:
        raise FitFailure(reason)
    kwargs = {} if reg.family == "ols" else {"disp": 0}
    if reg.cov_type:
        kwargs["cov_type"] = reg.cov_type
    with warnings.catch_warnings():
        for w in (PerfectSeparationWarning, ConvergenceWarning, HessianInversionWarning):
            warnings.simplefilter("error", w)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            res = MODELS[reg.family](y, X).fit(**kwargs)
        except (PerfectSeparationError, PerfectSeparationWarning):
            raise FitFailure("perfect separation") from None
        except (ConvergenceWarning, HessianInversionWarning) as e:
            raise FitFailure(f"the fit did not converge ({e})") from None
        except (np.linalg.LinAlgError, ValueError) as e:
            raise FitFailure(str(e)) from None
        if getattr(res, "mle_retvals", None) and not res.mle_retvals.get("converged", True):
            raise FitFailure("the fit did not converge")
        # statsmodels computes these lazily: inside the guard, so a degenerate fit warns nobody
        params, bse, pvalues = np.asarray(res.params), np.asarray(res.bse), np.asarray(res.pvalues)
        ci = np.asarray(res.conf_int(alpha))
    if reg.family == "mnlogit":
        names, (lo, hi) = _mnlogit_names(d, y), _mnlogit_ci(ci, params.shape)
        params, bse, pvalues = params.T.ravel(), bse.T.ravel(), pvalues.T.ravel()
    else:
        names, lo, hi = list(d.terms), ci[:, 0], ci[:, 1]
    if not np.all(np.isfinite(bse)):
        raise FitFailure("standard errors are undefined")
    return Fit(*(dict(zip(names, map(float, v))) for v in (params, bse, pvalues, lo, hi)))


def _mnlogit_names(d: Design, y: np.ndarray) -> list[str]:
    outcomes = np.unique(y)[1:]  # statsmodels takes the lowest outcome as the base
    return [f"{t}__{d.outcome_labels.get(o, o)}" for o in outcomes for t in d.terms]


def _mnlogit_ci(ci: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    # conf_int of MNLogit stacks outcomes: ((J-1) * p, 2), outcome-major like our names
    ci = ci.reshape(shape[1], shape[0], 2) if ci.ndim == 2 else ci
    return ci[..., 0].ravel(), ci[..., 1].ravel()


def compare(fh: Fit, fs: Fit, alpha: float) -> tuple[dict[str, float], dict[str, float]]:
    """Per-term comparison keys and the aggregates over the non-intercept terms of both fits."""
    per, rows = {}, []
    for t in fh.coef:
        if t not in fs.coef:
            continue
        bh, bs, sh, ss = fh.coef[t], fs.coef[t], fh.se[t], fs.se[t]
        z = (bh - bs) / np.sqrt(sh**2 + ss**2)
        agree = float(np.sign(bh) == np.sign(bs))
        overlap = float(fh.low[t] <= fs.high[t] and fs.low[t] <= fh.high[t])
        per.update({f"{clean(t)}/z_diff": z, f"{clean(t)}/sign_agree": agree, f"{clean(t)}/ci_overlap": overlap})
        if t != "Intercept" and not t.startswith("Intercept__"):
            y = np.sign(bh) if fh.p[t] < alpha else 0.0
            yhat = np.sign(bs) if fs.p[t] < alpha else 0.0
            rows.append((agree, abs(z) > Z_CRIT, fs.low[t] <= bh <= fs.high[t], y, yhat))
    agg = dict.fromkeys(AGGREGATES, np.nan)
    if rows:
        a = np.array(rows, dtype=float)
        agg["sign_agreement"], agg["sig_diff_rate"], agg["ci_coverage"] = a[:, 0].mean(), a[:, 1].mean(), a[:, 2].mean()
        y, yhat = a[:, 3], a[:, 4]
        tp = np.sum((yhat == y) & (y != 0))
        fp = np.sum((yhat != 0) & (yhat != y))
        fn = np.sum((y != 0) & (yhat != y))
        if 2 * tp + fp + fn > 0:
            agg["sign_f1"] = 2 * tp / (2 * tp + fp + fn)
        if np.sum(y == 0) > 0:
            agg["false_positive_rate"] = np.sum((y == 0) & (yhat != 0)) / np.sum(y == 0)
    return per, agg


def term_key(regression: str, term: str, what: str, side: str | None = None) -> str:
    """The key of one term's value, e.g. term_key("vote", "age", "coef", "human") (the report's forest plot)."""
    return f"regression/{clean(regression)}/{clean(term)}/{what}" + (f"/{side}" if side else "")


def terms_in(metrics: dict, prefix: str, regression: str) -> list[str]:
    """The (clean) non-intercept terms of a regression among `<prefix>/regression/<r>/<term>/coef/human` keys."""
    head, tail = f"{prefix}/regression/{clean(regression)}/", "/coef/human"
    terms = sorted({k[len(head):-len(tail)] for k in metrics if k.startswith(head) and k.endswith(tail)})
    return [t for t in terms if t != "Intercept"]


_SHARE = dict(bounds=(0, 1), aggregate=True)


@register(
    "regression",
    KeyInfo("regression/*/sign_f1", better=HIGHER, identical=1.0, **_SHARE, headline=True, curve=True),
    KeyInfo("regression/*/sign_agreement", better=HIGHER, identical=1.0, symmetric=True, **_SHARE, headline=True),
    KeyInfo("regression/*/ci_coverage", better=HIGHER, identical=1.0, **_SHARE, headline=True),
    KeyInfo("regression/*/sig_diff_rate", better=LOWER, identical=0.0, symmetric=True, **_SHARE, headline=True),
    KeyInfo("regression/*/false_positive_rate", better=LOWER, identical=0.0, **_SHARE),
    KeyInfo("regression/*/coef/*"),
    KeyInfo("regression/*/se/*", bounds=(0, np.inf)),
    KeyInfo("regression/*/z_diff", identical=0.0),
    KeyInfo("regression/*/sign_agree", better=HIGHER, bounds=(0, 1), identical=1.0, symmetric=True),
    KeyInfo("regression/*/ci_overlap", better=HIGHER, bounds=(0, 1), identical=1.0, symmetric=True),
    components=[Component("regression/sign_f1", "regression/*/sign_f1", lambda f1: 1 - f1, position=5)],   # mean over regressions
)
def regression(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    B = hi.shape[0]
    out: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    for reg in h.spec.regressions:
        r = clean(reg.name)
        designs = {}
        for side, enc in (("human", h), ("synthetic", s)):
            try:
                designs[side] = opts.cached(("design", id(enc), reg.name), lambda enc=enc: design(enc, reg))
            except FitFailure as e:
                notes[f"regression/{r}/error/{side}"] = str(e)
        if len(designs) < 2:
            continue
        # A side whose rows are the same in every batch row (the humans while two arms' twins are
        # swapped) is fitted once.
        fixed = {"human": B > 1 and bool((hi == hi[:1]).all()), "synthetic": B > 1 and bool((si == si[:1]).all())}
        once: dict[str, Fit | FitFailure] = {}
        for b in range(B):
            fits = {}
            for side, idx in (("human", hi[b]), ("synthetic", si[b])):
                d = designs[side]
                rows = d.row_of[idx]
                try:
                    if fixed[side] and side in once:
                        if isinstance(once[side], FitFailure):
                            raise once[side]
                        fits[side] = once[side]
                        continue
                    fits[side] = fit(reg, d, rows[rows >= 0], opts.alpha)
                    if fixed[side]:
                        once[side] = fits[side]
                except FitFailure as e:
                    if fixed[side]:
                        once[side] = e
                    if b == 0:
                        notes[f"regression/{r}/error/{side}"] = str(e)
            if len(fits) < 2:
                continue
            per, agg = compare(fits["human"], fits["synthetic"], opts.alpha)
            row = {f"{clean(t)}/{what}/{side}": getattr(fits[side], attr)[t]
                   for side in ("human", "synthetic") for t in fits[side].coef
                   for what, attr in (("coef", "coef"), ("se", "se"))}
            row.update(per)
            row.update(agg)
            for k, v in row.items():
                out.setdefault(f"regression/{r}/{k}", np.full(B, np.nan))[b] = v
        for k in AGGREGATES:
            out.setdefault(f"regression/{r}/{k}", np.full(B, np.nan))
    return FamilyResult(out, notes)


def fit_formula(reg: Regression, frame: pd.DataFrame):
    """The statsmodels formula-API fit of `reg` on a numeric frame (for checks and reports)."""
    import statsmodels.formula.api as smf

    model = getattr(smf, reg.family)(reg.formula, frame)
    kwargs = {} if reg.family == "ols" else {"disp": 0}
    if reg.cov_type:
        kwargs["cov_type"] = reg.cov_type
    return model.fit(**kwargs)
