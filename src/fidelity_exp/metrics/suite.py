"""Score arms against the humans: point values, bootstrap intervals, tests against the humans,
the human reference, and arm-versus-arm comparisons (METRICS.md sections 8, 10, 11).

    result = evaluate_arm(spec, human_frame, synthetic_frame, options)      # one arm
    reference = human_reference(spec, human_frame, options)
    compared, notes = compare_arms({"a": result_a, "b": result_b}, ("a", "b"), options)

They return flat `{key: float | None}` dicts with METRICS.md keys (without the arm prefix for an
arm; `registry.prefixed(arm, values)` adds it); None means undefined.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

import numpy as np
import pandas as pd

from fidelity_exp.errors import ConfigError
from fidelity_exp.settings import Checked, group, option, seed_option, typed
from fidelity_exp.metrics import registry, swap
from fidelity_exp.metrics.encoded import Encoded, encode
from fidelity_exp.metrics.intervals import METHODS, interval
from fidelity_exp.metrics.registry import interval_keys, perm_key, reference_key, tests_key
from fidelity_exp.metrics.score import SCORE, check_components, fidelity_score
from fidelity_exp.study.spec import StudySpec

log = logging.getLogger(__name__)
MIN_DEFINED_SWAPS = 0.5      # a test needs at least this share of its swapped values defined
BYTES_PER_REPLICATE_ROW = 64   # peak scoring memory per replicate and respondent (Options.check_memory)
SWAP_STREAM, COMPARE_STREAM = 2, 3   # seed offsets: the reference uses [seed, 1], the bootstrap seed itself


@group("metrics")
@dataclass
class Options(Checked):
    """The metric options, also the `metrics` config group (`conf/metrics/default.yaml` documents
    each); None for `families` and `score_components` means every registered family and the
    declared default components; `compare` lists (A, B) pairs of arms (None: none here; a run fills
    in METRICS.md's default)."""

    families: tuple[str, ...] | None = None
    min_group_size: int = option(10, ge=1, what="a number of humans >= 1 (a subgroup level needs that many)")
    alpha: float = option(0.05, gt=0, lt=1, what="a significance level in (0, 1), e.g. 0.05")
    bootstrap: int = option(200, ge=0, what="an integer >= 0 (0: none)")
    reference_splits: int = option(20, ge=0, what="an integer >= 0 (0: none)")
    seed: int = seed_option()
    score_components: tuple[str, ...] | None = None
    interval: str = "bias_aware"
    permutations: int = option(200, ge=0, what="an integer >= 0 (0: none)")
    fdr: float = option(0.05, gt=0, lt=1, what="a false discovery rate in (0, 1), e.g. 0.05")
    compare: Any = None              # pairs [A, B] or 'A__vs__B': a tuple of (A, B) once checked

    def check(self) -> None:
        for name in ("families", "score_components"):
            if getattr(self, name) is not None and len(getattr(self, name)) == 0:
                raise ConfigError(f"metrics.{name}", [], "expected at least one name, or null for "
                                  + ("every registered family" if name == "families" else "the default components"))
        self.families = tuple(registry.FAMILIES.check(list(registry.FAMILIES) if self.families is None
                                                      else list(self.families)))
        self.score_components = tuple(check_components(None if self.score_components is None
                                                       else list(self.score_components)))
        METHODS[self.interval]
        for name in ("bootstrap", "reference_splits", "permutations", "min_group_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"metrics.{name}", value, "expected an integer")
        if self.bootstrap == 1:   # a percentile interval of one replicate: both ends are that replicate
            raise ConfigError("metrics.bootstrap", 1, "expected 0 (no intervals) or at least 2: one replicate gives "
                              f"a zero-width interval ({self.interval_replicates} or more for a "
                              f"{1 - self.alpha:.0%} interval whose ends are not the most extreme replicates)")
        if 0 < self.permutations < self.fewest_permutations:
            raise ConfigError("metrics.permutations", self.permutations,
                              f"expected 0 (no tests) or at least {self.fewest_permutations}: with R permutations the "
                              f"smallest p value is 1/(R+1) = {1 / (self.permutations + 1):.3g}, above metrics.fdr="
                              f"{self.fdr:g}, so no arm could ever be found unlike the humans and every one would "
                              "read 'like humans'")
        if self.compare is not None:
            if isinstance(self.compare, str) or not isinstance(self.compare, (list, tuple)):
                raise ConfigError("metrics.compare", self.compare, "expected a list of pairs of arms, e.g. "
                                  "[[finetuned, base]] or [finetuned__vs__base]")
            self.compare = tuple(_pair(p) for p in self.compare)

    @property
    def interval_replicates(self) -> int:
        """2/alpha: the fewest replicates whose (1 - alpha) interval ends are not the most extreme ones."""
        return math.ceil(2 / self.alpha)

    @property
    def fewest_permutations(self) -> int:
        """1/fdr - 1: the fewest permutations whose smallest p value, 1/(R+1), can reach fdr."""
        return max(1, math.ceil(1 / self.fdr - 1e-9) - 1)

    def check_memory(self, n_humans: int, n_twins: int, memory: int | None = None) -> None:
        """Scoring holds every bootstrap replicate (and every permutation) of the humans and twins
        at once: about 32 bytes per replicate and respondent measured on the shipped studies (944
        humans, as many twins); BYTES_PER_REPLICATE_ROW = 64 leaves room for the arm comparisons,
        which score two arms' swaps together. More than half of this machine's memory is refused
        before anything runs, naming the most that fits."""
        memory = memory or physical_memory()
        if not memory:
            return
        for name in ("bootstrap", "permutations"):
            replicates = getattr(self, name)
            need = BYTES_PER_REPLICATE_ROW * replicates * (n_humans + n_twins)
            if need > memory / 2:
                most = int(memory / 2 // (BYTES_PER_REPLICATE_ROW * (n_humans + n_twins)))
                raise ConfigError(f"metrics.{name}", replicates,
                                  f"expected at most {most:,} here: scoring holds all {replicates:,} replicates of "
                                  f"{n_humans:,} humans and {n_twins:,} twins at once, about {need / 2**30:,.1f} GiB "
                                  f"(~{BYTES_PER_REPLICATE_ROW} bytes per replicate and respondent), more than half of "
                                  f"this machine's {memory / 2**30:.0f} GiB")

    def warn_if_few_replicates(self) -> None:
        """Said once per scoring (api.evaluate): 2 to 2/alpha - 1 replicates give intervals, rough ones."""
        if 1 < self.bootstrap < self.interval_replicates:
            log.warning("metrics.bootstrap=%d: fewer than 2/alpha = %d replicates, so the %.0f%% intervals' ends are "
                        "the most extreme replicates or between them; use at least %d for intervals you report",
                        self.bootstrap, self.interval_replicates, 100 * (1 - self.alpha), self.interval_replicates)

    @classmethod
    def from_config(cls, cfg: Any) -> "Options":
        return typed(cls, cfg, "metrics")

    def check_compare(self, arms) -> None:
        """Every compared arm is one of `arms` (before anything is computed or logged)."""
        arms = list(arms)
        for pair in self.compare or ():
            if any(name not in arms for name in pair):
                raise ConfigError("metrics.compare", registry.pair_name(*pair), f"expected pairs of this run's arms "
                                  f"({', '.join(arms) or 'none'})")


def _pair(p: Any) -> tuple[str, str]:
    """An (A, B) pair from [A, B] or 'A__vs__B'."""
    if isinstance(p, str) and registry.split_pair(p):
        a, b = registry.split_pair(p)
    elif not isinstance(p, str) and len(p) == 2:
        a, b = p
    else:
        raise ConfigError("metrics.compare", p, "expected pairs of arms, [A, B] or 'A__vs__B'")
    if not all(isinstance(x, str) and x for x in (a, b)):
        raise ConfigError("metrics.compare", p, "expected pairs of arm names, [A, B] or 'A__vs__B'")
    if a == b:
        raise ConfigError("metrics.compare", p, "expected two different arms")
    return str(a), str(b)


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
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)   # bootstrap, per key
    pairing: swap.Pairing | None = field(default=None, repr=False)
    human: Encoded | None = field(default=None, repr=False)        # what was scored (comparisons reuse it)
    synthetic: Encoded | None = field(default=None, repr=False)


def compute(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts: Context, *, swap_invariant: bool = True):
    """Every selected family on a batch: ({key: (B,) array}, notes). Without `swap_invariant`,
    families whose keys a swap cannot change (twin accuracy) are left out."""
    values: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    for name in opts.families:
        family = registry.FAMILIES[name]
        if not swap_invariant and family.keys and all(k.swap_invariant for k in family.keys):
            continue
        result = family.fn(h, hi, s, si, opts)
        values.update(result.values)
        notes.update(result.notes)
    values[SCORE] = fidelity_score(values, opts.score_components, hi.shape[0])
    return values, notes


def _defined(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_indices(h: Encoded, s: Encoded, pair: swap.Pairing, b: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(hi, si): B resamples. Complete pairs are resampled together (a human with its twin): every
    arm twinned with the same humans then gets the same resamples of them, which the arm
    comparisons of section 11 use; otherwise humans and twins are resampled independently."""
    rng = np.random.default_rng(seed)
    hi = rng.integers(0, h.n, size=(b, h.n))
    si = pair.twin_of_human[hi] if pair.complete else rng.integers(0, s.n, size=(b, s.n))
    return hi, si


def evaluate_arm(spec: StudySpec, human: pd.DataFrame, synthetic: pd.DataFrame, opts: Options) -> ArmResult:
    """Point values of every key; for the aggregates, 95% bootstrap intervals (`opts.interval`,
    `opts.bootstrap` resamples) and the swap tests against the humans (`opts.permutations`)."""
    h, s = encode(spec, human), encode(spec, synthetic)
    ctx = Context(opts)
    pair = swap.pairing(h, s)
    point, notes = compute(h, h.all_rows(), s, s.all_rows(), ctx)
    values = {k: _defined(v[0]) for k, v in point.items()}
    replicates: dict[str, np.ndarray] = {}
    if opts.bootstrap > 0:
        hi, si = bootstrap_indices(h, s, pair, opts.bootstrap, opts.seed)
        replicates, _ = compute(h, hi, s, si, ctx)
        for key, reps in replicates.items():
            info = registry.unprefixed_info(key)
            if info is None or not info.aggregate or values.get(key) is None:
                continue
            if info.no_interval:
                notes[f"{key}/interval"] = f"no interval: {info.no_interval}"
                continue
            values.update(zip(interval_keys(key), interval(values[key], reps, opts.interval, bias=info.bias,
                                                           bounds=info.bounds)))
    if opts.permutations > 0:
        tested, test_notes = swap_tests(h, s, pair, values, opts)
        values.update(tested)
        notes.update(test_notes)
    return ArmResult(values, notes, replicates, pair, h, s)


def _enough(null: np.ndarray) -> np.ndarray | None:
    """The defined swapped values, or None when fewer than MIN_DEFINED_SWAPS of them are."""
    finite = null[np.isfinite(null)]
    return finite if len(finite) and len(finite) >= MIN_DEFINED_SWAPS * len(null) else None


def swap_tests(h: Encoded, s: Encoded, pair: swap.Pairing, values: dict, opts: Options
               ) -> tuple[dict[str, float | None], dict[str, str]]:
    """Section 10: each aggregate's null median and p value under swaps, BH q values over the
    arm's tested keys, and the summary counts."""
    rng = np.random.default_rng([opts.seed, SWAP_STREAM])
    if pair.paired:
        swaps = rng.random((opts.permutations, s.n)) < 0.5
        h2, hi, s2, si = swap.swapped_sets(h, s, pair, swaps)
    else:
        h2, hi, s2, si = swap.permuted_sets(h, s, rng, opts.permutations)
    swapped, _ = compute(h2, hi, s2, si, Context(opts), swap_invariant=False)
    out: dict[str, float | None] = {}
    p_values: dict[str, float] = {}
    for key, null in swapped.items():
        info = registry.unprefixed_info(key)
        observed = values.get(key)
        if info is None or not info.aggregate or info.swap_invariant or observed is None or info.better is None:
            continue
        finite = _enough(null)
        if finite is None:
            continue
        out[perm_key(key, "null_median")] = float(np.median(finite))
        p_values[key] = out[perm_key(key, "p_value")] = swap.p_value(float(info.badness(np.array(observed))),
                                                                     info.badness(finite))
    q_values = swap.benjamini_hochberg(p_values)
    out.update({perm_key(k, "q_value"): q for k, q in q_values.items()})
    distinguishable = [k for k, q in q_values.items() if q <= opts.fdr]
    components = registry.component_keys(q_values, opts.score_components)
    out[tests_key("n_tested")] = float(len(q_values))
    out[tests_key("n_distinguishable")] = float(len(distinguishable))
    out[tests_key("distinguishable/share")] = (
        float(np.mean([q_values[k] <= opts.fdr for k in components])) if components else None)
    return out, {tests_key("design"): pair.design}


def compare_arms(results: Mapping[str, ArmResult], pair: tuple[str, str], opts: Options
                 ) -> tuple[dict[str, float | None], dict[str, str]]:
    """Section 11 for arms A and B twinned with the same humans: per aggregate key the difference,
    how much better A is, its 95% interval (the arms' bootstraps share their resamples of the
    humans) and a two-sided paired swap test; and the share of score components A is better on."""
    a, b = pair
    ra, rb = results[a], results[b]
    same_humans = (ra.pairing is not None and rb.pairing is not None and ra.pairing.complete
                   and rb.pairing.complete)
    if not same_humans:
        return {}, {registry.compare_key(a, b, None, "better_share") + "/skipped":
                    "both arms need one twin per evaluation human (twin_of) to be compared"}
    h, ea, eb = ra.human, ra.synthetic, rb.synthetic
    keys = [k for k in ra.values if _comparable(k, ra, rb)]
    out: dict[str, float | None] = {}
    observed = {}
    for key in keys:
        info = registry.unprefixed_info(key)
        va, vb = ra.values[key], rb.values[key]
        observed[key] = better = float(info.badness(np.array(vb)) - info.badness(np.array(va)))
        out[registry.compare_key(a, b, key, "diff")] = va - vb
        out[registry.compare_key(a, b, key, "better")] = better
        if key in ra.replicates and key in rb.replicates and not info.no_interval:
            reps = info.badness(rb.replicates[key]) - info.badness(ra.replicates[key])
            low, high = interval(better, reps, opts.interval)   # no bias scale: a difference of two arms
            out[registry.compare_key(a, b, key, "ci_low")], out[registry.compare_key(a, b, key, "ci_high")] = low, high
    p_values: dict[str, float] = {}
    if opts.permutations > 0 and keys:
        rng = np.random.default_rng([opts.seed, COMPARE_STREAM])
        swaps = rng.random((opts.permutations, h.n)) < 0.5
        stack, ai, bi = swap.arm_swapped_sets(ea, eb, ra.pairing, rb.pairing, swaps)
        ctx = Context(opts)
        fixed = np.broadcast_to(np.arange(h.n), (opts.permutations, h.n))
        swapped_a, _ = compute(h, fixed, stack, ai, ctx, swap_invariant=False)
        swapped_b, _ = compute(h, fixed, stack, bi, ctx, swap_invariant=False)
        for key in keys:
            if key not in swapped_a or key not in swapped_b:
                continue
            info = registry.unprefixed_info(key)
            finite = _enough(info.badness(swapped_b[key]) - info.badness(swapped_a[key]))
            if finite is None:
                continue
            p_values[key] = out[registry.compare_key(a, b, key, "p_value")] = swap.p_value(abs(observed[key]),
                                                                                         np.abs(finite))
    q_values = swap.benjamini_hochberg(p_values)
    components = registry.component_keys(q_values, opts.score_components)
    out[registry.compare_key(a, b, None)] = (
        float(np.mean([q_values[k] <= opts.fdr and observed[k] > 0 for k in components])) if components else None)
    return out, {}


def _comparable(key: str, ra: ArmResult, rb: ArmResult) -> bool:
    info = registry.unprefixed_info(key)
    return (info is not None and info.aggregate and not info.swap_invariant and info.better is not None
            and ra.values.get(key) is not None and rb.values.get(key) is not None)


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


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
