"""PPI++: regression coefficients from a few humans plus many synthetic twins, with valid intervals.

Angelopoulos, Duchi & Zrnic (2023), "PPI++: Efficient prediction-powered inference"; the
original PPI is Angelopoulos et al., Science 382 (2023). For a GLM loss l (OLS: squared error;
logit: the negative log-likelihood) the estimate is

    theta(lam) = argmin  L_n(theta) + lam * ( L~_N(theta) - L^_n(theta) )

with L_n the mean loss of the n labelled humans' real data, L^_n the mean loss of *their twins'*
data, and L~_N the mean loss of the twins of N unlabelled personas. Whatever the twins get wrong,
the bracket has expectation zero, so the estimate is consistent for the human coefficients; the
better the twins, the narrower the interval. `lam` (power tuning) is chosen to minimise the
variance and clipped to [0, 1]; lam = 0 is the human-only estimate.

Twins answer every question, so regressors that are survey answers (beliefs) are *predicted*
too: `X_hat` (the labelled twins' design) may differ from `X`. When it does not (all regressors
are persona or condition columns), the numbers follow ppi-python 0.2.3 step by step (`ppi_ols_ci`
on equal designs, `ppi_logistic_ci`): lam tuned at the lam = 1 estimate, tuned again at the
result, the Hessian pooled over labelled and unlabelled covariates. With predicted regressors the
Hessian is the labelled humans' alone (the Jacobian of the estimating equation tends to the true
Hessian; the twins' terms cancel in expectation). Variance: the sandwich
H^-1 [ Var(g - lam g^)/n + lam^2 Var(g~)/N ] H^-1, intervals normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

GLMS = ("ols", "logit")   # the regression kinds (a spec's `family`) PPI++ is written for


@dataclass(frozen=True)
class Estimate:
    coef: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    lam: float          # 0 for a human-only estimate
    n: int              # labelled humans
    n_unlabelled: int   # twins of unlabelled personas (0 for a human-only estimate)

    @property
    def width(self) -> np.ndarray:
        return self.ci_high - self.ci_low


def _grads(family: str, X: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Per-row gradient of the loss at theta (rows x coefficients)."""
    eta = X @ theta
    residual = eta - y if family == "ols" else special.expit(eta) - y
    return X * residual[:, None]


def _hessian_sum(family: str, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    if family == "ols":
        return X.T @ X
    mu = special.expit(X @ theta)
    return (X * (mu * (1 - mu))[:, None]).T @ X


def _solve(family: str, X, y, X_hat, y_hat, X_unl, y_unl, lam: float,
           start: np.ndarray) -> tuple[np.ndarray, bool]:
    """theta(lam): the root of the estimating equation (the gradient of the objective) by Newton's
    method, each step halved until the gradient's norm drops. (With predicted regressors the
    objective need not be convex; its stationary point is still the estimator.)"""
    n, N = len(y), len(y_unl)

    def gradient(theta):
        rectifier = _grads(family, X_unl, y_unl, theta).sum(0) / N - _grads(family, X_hat, y_hat, theta).sum(0) / n
        return _grads(family, X, y, theta).sum(0) / n + lam * rectifier

    def jacobian(theta):
        return (_hessian_sum(family, X, theta) / n
                + lam * (_hessian_sum(family, X_unl, theta) / N - _hessian_sum(family, X_hat, theta) / n))

    theta = start.astype(float).copy()
    g = gradient(theta)
    for _ in range(100):
        size = np.linalg.norm(g)
        if size < 1e-13:
            break
        step = np.linalg.lstsq(jacobian(theta), g, rcond=None)[0]
        t = 1.0
        while t > 1e-8:
            candidate = theta - t * step
            g_new = gradient(candidate)
            if np.all(np.isfinite(g_new)) and np.linalg.norm(g_new) < size:
                break
            t /= 2
        else:
            break   # no step reduces the gradient: no root near here
        theta, g = candidate, g_new
    return theta, bool(np.linalg.norm(g) < 1e-8 * max(1.0, np.abs(theta).max()))


def _stats(family, X, y, X_hat, y_hat, X_unl, y_unl, theta, pooled: bool):
    n, N = len(y), len(y_unl)
    g, g_hat, g_unl = (_grads(family, X, y, theta), _grads(family, X_hat, y_hat, theta),
                       _grads(family, X_unl, y_unl, theta))
    if pooled:   # ppi-python's Hessian, pooled over all (observed) covariates
        H = (_hessian_sum(family, X_unl, theta) + _hessian_sum(family, X, theta)) / (N + n)
    else:
        H = _hessian_sum(family, X, theta) / n
    return g, g_hat, g_unl, np.linalg.inv(H)


def _group_means(rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, rows.shape[1]))
    np.add.at(sums, inverse, rows)
    return sums / np.bincount(inverse)[:, None]


def _tuned_lam(g, g_hat, g_unl, H_inv) -> float:
    """The variance-minimising lam (PPI++ eq. for the trace of the covariance), clipped to [0, 1]."""
    n, N = len(g), len(g_unl)
    gc, hc = g - g.mean(0), g_hat - g_hat.mean(0)
    cov = (gc.T @ hc + hc.T @ gc) / n
    var_hat = np.atleast_2d(np.cov(np.concatenate([g_hat, g_unl]).T))
    num = np.trace(H_inv @ cov @ H_inv)
    den = 2 * (1 + n / N) * np.trace(H_inv @ var_hat @ H_inv)
    return float(np.clip(num / den, 0, 1)) if den > 0 else 0.0


def _start(family: str, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    if family == "logit":  # the humans' own MLE
        theta, converged = _solve(family, X, y, X, y, X[:1], y[:1], 0.0, np.zeros(X.shape[1]))
        if not converged:
            raise ValueError("the humans' own logit does not converge (perfect separation?)")
    return theta


def ppi(family: str, X, y, X_hat, y_hat, X_unl, y_unl, *, alpha: float = 0.05, lam: float | None = None,
        groups: np.ndarray | None = None) -> Estimate:
    """The PPI++ estimate of the regression of y on X among humans.

    X, y: the labelled humans' real design and outcome; X_hat, y_hat: the same humans' twins';
    X_unl, y_unl: the twins of the unlabelled personas. lam=None tunes lam; a number fixes it.
    `groups` (cross-fitting): rows of X_unl that are the same persona answered by different
    models; their gradients are averaged per persona for the variance, so the persona, not the
    row, is the unit.
    """
    if family not in GLMS:
        raise ValueError(f"family {family!r}: expected one of {GLMS}")
    X, X_hat, X_unl = (np.asarray(a, float) for a in (X, X_hat, X_unl))
    y, y_hat, y_unl = (np.asarray(a, float) for a in (y, y_hat, y_unl))
    observed = X.shape == X_hat.shape and np.array_equal(X, X_hat)
    start = _start(family, X, y)

    def point(lam_: float) -> tuple[np.ndarray, float]:
        """theta(lam), with lam halved while the estimating equation has no root near the humans'
        own estimate (possible with predicted regressors: the twins' terms need not be convex)."""
        if family == "ols" and observed:   # ppi-python's closed form for equal designs
            return (np.linalg.lstsq(X_unl, lam_ * y_unl, rcond=None)[0]
                    + np.linalg.lstsq(X, y - lam_ * y_hat, rcond=None)[0]), lam_
        for _ in range(12):
            theta, converged = _solve(family, X, y, X_hat, y_hat, X_unl, y_unl, lam_, start)
            if converged:
                return theta, lam_
            lam_ /= 2
        return start, 0.0

    def tune(theta: np.ndarray) -> float:
        g, g_hat, g_unl, H_inv = _stats(family, X, y, X_hat, y_hat, X_unl, y_unl, theta, pooled=observed)
        return _tuned_lam(g, g_hat, g_unl if groups is None else _group_means(g_unl, groups), H_inv)

    if lam is None:
        # As ppi-python with observed regressors: tune at the lam = 1 estimate, then again at the
        # result. With predicted ones the first tuning is at the humans' own estimate instead
        # (plain PPI, lam = 1, may have no solution there).
        first = point(1.0)[0] if observed else start
        lam = tune(point(tune(first))[0])
    theta, lam = point(lam)
    g, g_hat, g_unl, H_inv = _stats(family, X, y, X_hat, y_hat, X_unl, y_unl, theta, pooled=observed and lam != 0)
    if groups is not None:
        g_unl = _group_means(g_unl, groups)
    n, N = len(y), len(g_unl)
    var = np.atleast_2d(np.cov((g - lam * g_hat).T)) + n / N * np.atleast_2d(np.cov((lam * g_unl).T))
    se = np.sqrt(np.diag(H_inv @ var @ H_inv) / n)
    z = stats.norm.ppf(1 - alpha / 2)
    return Estimate(theta, se, theta - z * se, theta + z * se, float(lam), n, N)


def classical(family: str, X, y, *, alpha: float = 0.05) -> Estimate:
    """The human-only estimate with the same (sandwich) variance: PPI with lam = 0."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    return ppi(family, X, y, X, y, X[:2], y[:2], alpha=alpha, lam=0.0)


def effective_n(estimate: Estimate, human_only: Estimate) -> np.ndarray:
    """Per coefficient: how many humans a human-only estimate would need for the rectified
    interval's width (width scales as 1/sqrt(n))."""
    return human_only.n * (human_only.width / estimate.width) ** 2
