"""PPI++ estimates: equal to ppi-python and to a direct computation on fixed inputs, the
human-only sandwich equal to statsmodels', and valid coverage over repeated draws on the
disclosure study, whose true coefficients are known."""

from __future__ import annotations

import warnings

import numpy as np
import patsy
import statsmodels.api as sm
from scipy import optimize, special

from fidelity_exp.inference import classical, effective_n, ppi
from fidelity_exp.study.synthetic import DISCLOSURE_FORMULA, TRUE_COEFFICIENTS, disclosure


def _data(rng, n, N, d=3, repeat_labelled=False):
    X = np.column_stack([np.ones(n), rng.normal(size=(n, d - 1))])
    X_unl = np.tile(X, (N // n, 1)) if repeat_labelled else np.column_stack([np.ones(N), rng.normal(size=(N, d - 1))])
    return X, X_unl


def test_ols_equals_ppi_python():
    from ppi_py import ppi_ols_ci

    rng = np.random.default_rng(1)
    X, X_unl = _data(rng, 150, 1200)
    beta = np.array([0.5, 1.0, -0.7])
    y, y_unl = X @ beta + rng.normal(size=150), X_unl @ beta + rng.normal(size=1200)
    f, f_unl = y + rng.normal(scale=0.8, size=150), y_unl + rng.normal(scale=0.8, size=1200)
    for lam in (None, 0.3):
        ours = ppi("ols", X, y, X, f, X_unl, f_unl, alpha=0.1, lam=lam)
        low, high = ppi_ols_ci(X, y, f, X_unl, f_unl, alpha=0.1, lam=lam)
        np.testing.assert_allclose(ours.ci_low, low, rtol=0, atol=1e-8)
        np.testing.assert_allclose(ours.ci_high, high, rtol=0, atol=1e-8)
    assert 0 < ours.lam <= 1


def test_logit_equals_ppi_python():
    from ppi_py import ppi_logistic_ci, ppi_logistic_pointestimate

    rng = np.random.default_rng(2)
    X, X_unl = _data(rng, 200, 1500)
    beta = np.array([0.3, 1.0, -0.8])
    y = (rng.random(200) < special.expit(X @ beta)).astype(float)
    y_unl = (rng.random(1500) < special.expit(X_unl @ beta)).astype(float)
    f = np.where(rng.random(200) < 0.8, y, 1 - y)           # twins right 80% of the time
    f_unl = np.where(rng.random(1500) < 0.8, y_unl, 1 - y_unl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low, high = ppi_logistic_ci(X, y, f, X_unl, f_unl, alpha=0.05)
        point = ppi_logistic_pointestimate(X, y, f, X_unl, f_unl, lam=0.4)
    ours = ppi("logit", X, y, X, f, X_unl, f_unl, alpha=0.05)
    np.testing.assert_allclose(ours.ci_low, low, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.ci_high, high, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ppi("logit", X, y, X, f, X_unl, f_unl, lam=0.4).coef, point, rtol=0, atol=1e-8)


def test_predicted_regressors_equal_a_direct_computation():
    """Twins' designs differ from the humans' (belief answers as regressors): solve the estimating
    equation with a generic root finder and build the sandwich by hand."""
    rng = np.random.default_rng(3)
    n, N, lam = 120, 900, 0.6
    X, X_unl = _data(rng, n, N)
    X_hat = X.copy()
    X_hat[:, 2] += rng.normal(scale=0.5, size=n)            # a predicted regressor
    beta = np.array([-0.2, 0.9, 0.6])
    y = (rng.random(n) < special.expit(X @ beta)).astype(float)
    f = (rng.random(n) < special.expit(X_hat @ beta)).astype(float)
    f_unl = (rng.random(N) < special.expit(X_unl @ beta)).astype(float)

    def psi(t):
        g = lambda A, b: A.T @ (special.expit(A @ t) - b)  # noqa: E731
        return g(X, y) / n + lam * (g(X_unl, f_unl) / N - g(X_hat, f) / n)

    root = optimize.root(psi, np.zeros(3), tol=1e-14).x
    ours = ppi("logit", X, y, X_hat, f, X_unl, f_unl, lam=lam)
    np.testing.assert_allclose(ours.coef, root, rtol=0, atol=1e-8)
    mu = special.expit(X @ root)
    H = sum(mu[i] * (1 - mu[i]) * np.outer(X[i], X[i]) for i in range(n)) / n
    per = lambda A, b: A * (special.expit(A @ root) - b)[:, None]  # noqa: E731
    rect = per(X, y) - lam * per(X_hat, f)
    middle = np.cov(rect.T) + (n / N) * lam ** 2 * np.cov(per(X_unl, f_unl).T)
    Hinv = np.linalg.inv(H)
    np.testing.assert_allclose(ours.se, np.sqrt(np.diag(Hinv @ middle @ Hinv) / n), rtol=1e-8)


def test_human_only_is_the_robust_regression():
    rng = np.random.default_rng(4)
    X, _ = _data(rng, 300, 300)
    y = X @ np.array([1.0, 2.0, 0.0]) + rng.normal(size=300) * (1 + np.abs(X[:, 1]))
    ours = classical("ols", X, y)
    fit = sm.OLS(y, X).fit(cov_type="HC0")
    np.testing.assert_allclose(ours.coef, fit.params, atol=1e-10)
    # np.cov's n-1 versus HC0's n
    np.testing.assert_allclose(ours.se, fit.bse * np.sqrt(300 / 299), rtol=1e-8)
    assert ours.lam == 0.0


def test_coverage_and_width_on_the_disclosure_study():
    """500 draws of 150 labelled humans + 1,500 unlabelled personas from a large disclosure
    population whose log-odds follow TRUE_COEFFICIENTS. The twins answer the belief questions with
    noise (so regressors are predicted) and the disclosure like their human 75% of the time, else
    from an attenuated model. With 500 draws a 95% interval's coverage has a Monte-Carlo SE of 1.0
    point: each coefficient's PPI coverage must lie in [0.91, 0.99] (4 SE). Twins that agree with
    their humans beyond what the regressors explain must make the intervals narrower."""
    population = disclosure(n=60_000, seed=11)
    X_all = np.asarray(patsy.dmatrix(DISCLOSURE_FORMULA.split("~")[1], population))
    names = patsy.dmatrix(DISCLOSURE_FORMULA.split("~")[1], population.head(50)).design_info.column_names
    truth = np.array([TRUE_COEFFICIENTS[t] for t in names])
    y_all = population.disclose.to_numpy(float)
    rng = np.random.default_rng(12)
    twins = population.copy()
    for q in ("concern", "trust", "benefit"):            # beliefs off by one point 30% of the time
        shift = rng.choice([-1, 0, 1], p=[0.15, 0.7, 0.15], size=len(twins))
        twins[q] = np.clip(twins[q] + shift, 1, 5)
    X_twin = np.asarray(patsy.dmatrix(DISCLOSURE_FORMULA.split("~")[1], twins))
    eta = X_twin @ (truth * 0.7)                          # a twin model with attenuated effects
    f_all = np.where(rng.random(len(twins)) < 0.75, y_all,
                     (rng.random(len(twins)) < special.expit(eta)).astype(float))

    hits_ppi, hits_human, width_ratio, ess = [], [], [], []
    for _ in range(500):
        idx = rng.choice(len(population), size=1650, replace=False)
        lab, unl = idx[:150], idx[150:]
        est = ppi("logit", X_all[lab], y_all[lab], X_twin[lab], f_all[lab], X_twin[unl], f_all[unl])
        human = classical("logit", X_all[lab], y_all[lab])
        hits_ppi.append((est.ci_low <= truth) & (truth <= est.ci_high))
        hits_human.append((human.ci_low <= truth) & (truth <= human.ci_high))
        width_ratio.append(est.width / human.width)
        ess.append(effective_n(est, human))
    coverage = np.mean(hits_ppi, axis=0)
    assert np.all(coverage >= 0.91) and np.all(coverage <= 0.99), dict(zip(names, coverage))
    assert np.mean(width_ratio) < 0.95 and np.median(ess) > 1.1 * 150, (np.mean(width_ratio), np.median(ess))
    assert np.all(np.mean(hits_human, axis=0) >= 0.90)    # the human-only sandwich is valid too
