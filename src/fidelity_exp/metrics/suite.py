"""Score one arm against the humans: point values, bootstrap intervals, the human reference.

    values = evaluate_arm(spec, human_frame, synthetic_frame, options)
    reference = human_reference(spec, human_frame, options)

Both return flat `{key: float | None}` dicts with METRICS.md keys (without the arm prefix);
None means undefined. `prefixed(arm, values)` adds the arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np
import pandas as pd

from fidelity_exp.metrics import registry
from fidelity_exp.metrics.encoded import Encoded, encode
from fidelity_exp.metrics.registry import interval_keys, prefixed, reference_key
from fidelity_exp.metrics.score import SCORE, check_components, fidelity_score
from fidelity_exp.study.spec import StudySpec

MIN_DEFINED_REPLICATES = 0.5  # an interval needs at least this share of replicates defined


@dataclass
class Options:
    """The metric options (`conf/metrics/default.yaml` documents each); None for `families` and
    `score_components` means every registered family and the declared default components."""

    families: tuple[str, ...] | None = None
    min_group_size: int = 10
    alpha: float = 0.05
    bootstrap: int = 200
    reference_splits: int = 20
    seed: int = 0
    score_components: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.families = tuple(registry.FAMILIES.check(list(registry.FAMILIES) if self.families is None
                                                      else self.families))
        self.score_components = tuple(check_components(self.score_components))

    @classmethod
    def from_config(cls, cfg: Any) -> "Options":
        def listed(name):
            value = cfg.get(name)
            return None if value is None else tuple(value)

        return cls(families=listed("families"), min_group_size=int(cfg.min_group_size), alpha=float(cfg.alpha),
                   bootstrap=int(cfg.bootstrap), reference_splits=int(cfg.reference_splits), seed=int(cfg.seed),
                   score_components=listed("score_components"))



class Context:
    """The options plus a cache that lives for one evaluation (designs, twin rows), so the
    point estimate, the replicates and the reference halves build them once."""

    def __init__(self, opts: Options):
        self.opts, self._cache = opts, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.opts, name)

    def cached(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@dataclass
class ArmResult:
    values: dict[str, float | None]
    notes: dict[str, str]


def compute(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts: Context):
    """Every selected family on a batch: ({key: (B,) array}, notes)."""
    values: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    for name in opts.families:
        result = registry.FAMILIES[name].fn(h, hi, s, si, opts)
        values.update(result.values)
        notes.update(result.notes)
    values[SCORE] = fidelity_score(values, opts.score_components, hi.shape[0])
    return values, notes


def _defined(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_arm(spec: StudySpec, human: pd.DataFrame, synthetic: pd.DataFrame, opts: Options) -> ArmResult:
    """Point values of every key, and percentile-bootstrap 95% intervals of the aggregates
    (humans and synthetic respondents resampled independently, `opts.bootstrap` times)."""
    h, s = encode(spec, human), encode(spec, synthetic)
    ctx = Context(opts)
    point, notes = compute(h, h.all_rows(), s, s.all_rows(), ctx)
    values = {k: _defined(v[0]) for k, v in point.items()}
    if opts.bootstrap > 0:
        rng = np.random.default_rng(opts.seed)
        hi = rng.integers(0, h.n, size=(opts.bootstrap, h.n))
        si = rng.integers(0, s.n, size=(opts.bootstrap, s.n))
        replicates, _ = compute(h, hi, s, si, ctx)
        for key, reps in replicates.items():
            if not registry.is_aggregate(key) or values.get(key) is None:
                continue
            low, high = percentile_interval(reps)
            values.update(zip(interval_keys(key), (low, high)))
    return ArmResult(values, notes)


def percentile_interval(reps: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    finite = reps[np.isfinite(reps)]
    if len(finite) < MIN_DEFINED_REPLICATES * len(reps) or len(finite) == 0:
        return None, None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def human_reference(spec: StudySpec, human: pd.DataFrame, opts: Options) -> dict[str, float | None]:
    """`reference/human_split/<key>`: each aggregate with S replaced by a random half of the humans
    and H by the other half, averaged over `opts.reference_splits` splits."""
    h = encode(spec, human)
    if opts.reference_splits < 1 or h.n < 4:
        return {}
    rng = np.random.default_rng([opts.seed, 1])
    half = h.n // 2
    perms = np.stack([rng.permutation(h.n) for _ in range(opts.reference_splits)])
    split_values, _ = compute(h, perms[:, :half], h, perms[:, half : 2 * half], Context(opts))
    out = {}
    for key, reps in split_values.items():
        if registry.is_aggregate(key):
            finite = reps[np.isfinite(reps)]
            out[reference_key(key)] = float(finite.mean()) if len(finite) else None
    return out

