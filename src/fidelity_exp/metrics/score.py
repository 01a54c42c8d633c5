"""`fidelity_score`, the sweep objective (METRICS.md section 9): lower is better.

Each component maps the metric values to one number per batch row; the score is the mean of
the defined components. `conf/metrics/*.yaml` lists the components by name.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from fidelity_exp.errors import ConfigError
from fidelity_exp.metrics.divergence import nanmean_rows


def _mean_of(pattern: str, transform=lambda x: x):
    def component(values: dict[str, np.ndarray], batch: int) -> np.ndarray:
        cols = [transform(v) for k, v in values.items() if fnmatch.fnmatchcase(k, pattern)]
        return nanmean_rows(cols, batch)

    return component


COMPONENTS = {
    "divergence/js/mean": _mean_of("divergence/js/mean"),
    "subgroup/js/mean": _mean_of("subgroup/*/js/mean"),                                # mean over subgroups
    "heterogeneity/unique_profiles/ratio": _mean_of("heterogeneity/unique_profiles/ratio",
                                                    lambda r: np.minimum(np.abs(1 - r), 1.0)),
    "coherence/spearman/abs_diff": _mean_of("coherence/*/spearman/abs_diff"),          # mean over pairs
    "regression/sign_f1": _mean_of("regression/*/sign_f1", lambda f1: 1 - f1),         # mean over regressions
}


def check_components(names) -> list[str]:
    names = list(names)
    for name in names:
        if name not in COMPONENTS:
            raise ConfigError("metrics.score_components", name,
                              f"unknown fidelity_score component (known: {', '.join(COMPONENTS)})")
    return names


def fidelity_score(values: dict[str, np.ndarray], components, batch: int) -> np.ndarray:
    """(B,) mean of the defined components; NaN when none is defined."""
    return nanmean_rows([COMPONENTS[c](values, batch) for c in components], batch)
