"""`fidelity_score`, the sweep objective (METRICS.md section 9): lower is better.

Each family declares the components it contributes (`registry.Component`); the score is the mean
of the defined components, each one number per batch row. `conf/metrics/*.yaml` lists the
components by name (null: the declared defaults).
"""

from __future__ import annotations

import fnmatch

import numpy as np

from fidelity_exp.metrics.divergence import nanmean_rows
from fidelity_exp.metrics.registry import COMPONENTS, LOWER, KeyInfo, default_components, register_derived

SCORE = "fidelity_score"
register_derived(KeyInfo(SCORE, better=LOWER, bounds=(0, 1), identical=0.0, aggregate=True, headline=True,
                         curve=True))


def check_components(names) -> list[str]:
    return COMPONENTS.check(default_components() if names is None else names)


def component_values(values: dict[str, np.ndarray], name: str, batch: int) -> np.ndarray:
    """(B,) one component: the mean over its keys of the transformed values."""
    c = COMPONENTS[name]
    return nanmean_rows([c.transform(v) for k, v in values.items() if fnmatch.fnmatchcase(k, c.pattern)], batch)


def fidelity_score(values: dict[str, np.ndarray], components, batch: int) -> np.ndarray:
    """(B,) mean of the defined components; NaN when none is defined."""
    return nanmean_rows([component_values(values, c, batch) for c in components], batch)
