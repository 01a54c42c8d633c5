"""95% bootstrap intervals of the aggregate keys (METRICS.md section 8), by `metrics.interval`.

Why not plain percentiles everywhere: many keys are plug-in distances between two samples, and
sampling noise alone pushes a distance up (two samples of 20 from one population are at a JS
distance well above 0). A resample of the sample is pushed up once more, so the replicates sit
above the estimate, and their percentiles describe where a *resample's* distance falls, not
where the population's is: 15 of 128 quickstart intervals excluded their own point estimate
(e.g. `subgroup/age/js/mean` 0.412 [0.428, 0.487]). On a population with known truth
(benchmarks/calibration.py, seed 1: 200 draws of 200 twins that differ from their humans;
`perturbed_coverage_by_method_and_key`), percentile intervals held the population value of
`subgroup/<g>/js/mean` in 0% of cases and of `divergence/js/mean` in 53%.

`bias_aware` (the default) chooses by what each key declares (`KeyInfo.bias`):
- `divergence` (JS distances, and the subgroup JS built from them): the basic bootstrap interval
  (Davison & Hinkley 1997, section 5.2: the spread of theta* - theta_hat stands in for that of
  theta_hat - theta, so the percentiles are reflected about the estimate, which removes the
  bias the bootstrap shows) on the squared scale, the JS *divergence*, where the noise bias is
  additive (like a chi-square's: about (K - 1) / (2 n ln 2) per question), then back to the
  distance. Same calibration: `divergence/js/mean` 93.5%, `subgroup/<g>/js/mean` 98.3%
  (the basic interval on the distance itself: 88% and 74%; BC: 77% and 1%);
- `distance` (total variation, Wasserstein-1): the basic interval on the distance itself (88.5%
  and 88%: below nominal, and no method tried did better: percentile 75% and 88.5%);
- otherwise (ratios, shares, differences of correlations, the score): plain percentiles. Their
  bias is small beside their spread at these sizes, and the calibration favoured them over
  Efron's bias-corrected percentiles (percentile 93-99%, `bc` 77-96%), whose ends move to extreme
  quantiles that 200 replicates estimate poorly (Efron & Tibshirani 1993 ask for 1,000 or more).
Every interval is then extended to the estimate when it does not contain it (only when the
bootstrap's bias exceeds about two standard errors), clipped to the key's bounds, and is never
narrower than the method's own. Not BCa: its acceleration needs a jackknife, and a 20-group
jackknife version did not improve on BC in an exploratory run of the same calibration.

`percentile`, `basic` and `bc` apply one method to every key (each extended to the estimate too).

Keys whose bootstrap is wrong in kind get no interval, and the run says why: a count of
distinct answer profiles (`heterogeneity/unique_profiles/ratio`) cannot be bootstrapped, since
a resample repeats respondents and so holds fewer distinct profiles than the data (about 63%
when all differ); its swap test (`perm/...`, section 10) is its check against the humans.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from fidelity_exp.registry import Registry

LEVEL = 0.95
MIN_DEFINED_REPLICATES = 0.5   # an interval needs at least this share of its replicates defined
DIVERGENCE, DISTANCE = "divergence", "distance"   # what KeyInfo.bias may say

METHODS: Registry = Registry("interval method", key="metrics.interval")


def _tails(level: float) -> tuple[float, float]:
    return (1 - level) / 2, (1 + level) / 2


@METHODS.register("percentile")
def percentile(point: float, reps: np.ndarray, level: float = LEVEL, bias: str | None = None) -> tuple[float, float]:
    low, high = np.quantile(reps, _tails(level))
    return float(low), float(high)


@METHODS.register("basic")
def basic(point: float, reps: np.ndarray, level: float = LEVEL, bias: str | None = None) -> tuple[float, float]:
    low, high = np.quantile(reps, _tails(level))
    return float(2 * point - high), float(2 * point - low)


def basic_squared(point: float, reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The basic interval of point**2 (a divergence), mapped back to the distance (>= 0)."""
    low, high = basic(point**2, reps**2, level)
    return float(np.sqrt(max(low, 0.0))), float(np.sqrt(max(high, 0.0)))


def bias_z0(point: float, reps: np.ndarray) -> float:
    """Phi^-1 of the share of replicates below the estimate (ties half), kept within (0, 1)."""
    b = len(reps)
    share = (np.sum(reps < point) + 0.5 * np.sum(reps == point)) / b
    return float(norm.ppf(np.clip(share, 0.5 / b, 1 - 0.5 / b)))


@METHODS.register("bc")
def bias_corrected(point: float, reps: np.ndarray, level: float = LEVEL, bias: str | None = None
                   ) -> tuple[float, float]:
    """Efron's bias-corrected percentile interval (Efron 1981; Efron & Tibshirani 1993, 14.3)."""
    z0, z = bias_z0(point, reps), norm.ppf((1 + level) / 2)
    low, high = np.quantile(reps, [norm.cdf(2 * z0 - z), norm.cdf(2 * z0 + z)])
    return float(low), float(high)


@METHODS.register("bias_aware")
def bias_aware(point: float, reps: np.ndarray, level: float = LEVEL, bias: str | None = None) -> tuple[float, float]:
    if bias == DIVERGENCE:
        return basic_squared(point, reps, level)
    if bias == DISTANCE:
        return basic(point, reps, level)
    return percentile(point, reps, level)


def interval(point: float | None, reps: np.ndarray, method: str = "bias_aware", *, bias: str | None = None,
             bounds: tuple[float, float] = (-np.inf, np.inf), level: float = LEVEL
             ) -> tuple[float | None, float | None]:
    """(low, high) of one key from its replicates, containing `point` and within `bounds`;
    (None, None) when too few replicates are defined."""
    finite = reps[np.isfinite(reps)]
    if point is None or len(finite) == 0 or len(finite) < MIN_DEFINED_REPLICATES * len(reps):
        return None, None
    low, high = METHODS[method](float(point), finite, level, bias)   # only bias_aware reads `bias`
    low, high = min(low, point), max(high, point)
    return float(max(low, bounds[0])), float(min(high, bounds[1]))
