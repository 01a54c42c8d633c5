"""The metric registry: families by name, and what every key they produce means.

Each family module registers its function with the keys it produces (`KeyInfo`: a pattern, its
better direction, bounds, the value on identical data, its role) and the `fidelity_score`
components it contributes (`Component`). Everything else is derived from these declarations and
never written a second time: which keys get bootstrap intervals, a human reference and the swap
tests (the aggregates), the report's rows (headline keys), the sweep's pilot-size curve (curve
keys), the score's components and their default, and the sweep direction of an objective.

The key conventions around a metric key also live here, and only here: the arm prefix
(`<arm>/<key>`), the interval suffixes (`<key>/ci_low`, `<key>/ci_high`), the human reference
(`reference/human_split/<key>`), and how a question, level or term is written in a key (`clean`).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from fidelity_exp.registry import Registry

# What "better" means for a key (METRICS.md section 10): lower, higher, or closest to 1.
LOWER, HIGHER, ONE = "lower", "higher", "one"


@dataclass(frozen=True)
class KeyInfo:
    """What the keys matching `pattern` (fnmatch, arm prefix removed; `*` matches `/` too) mean.

    Roles: every key is per-item (one question, level, pair or term) unless `aggregate`; an
    aggregate gets a 95% interval, the human reference and the tests against humans; a
    `headline` aggregate is a row of the report; a `curve` one a panel of the sweep's curve.
    """

    pattern: str
    better: str | None = None       # LOWER, HIGHER, ONE, or None: a descriptive value
    bounds: tuple[float, float] = (-np.inf, np.inf)
    identical: float | None = None  # the value when human and synthetic are the same data
    symmetric: bool = False         # unchanged when human and synthetic swap places
    aggregate: bool = False
    headline: bool = False
    curve: bool = False
    swap_invariant: bool = False    # swapping a twin's answers with its human's leaves it unchanged
    no_interval: str | None = None  # why an aggregate gets no bootstrap interval (a run tag says it)
    bias: str | None = None         # the interval's bias correction (metrics/intervals.py): divergence, distance

    def __post_init__(self) -> None:
        if self.better not in (None, LOWER, HIGHER, ONE):
            raise ValueError(f"KeyInfo {self.pattern!r}: better={self.better!r}, expected lower, higher, one or None")
        if (self.headline or self.curve) and not self.aggregate:
            raise ValueError(f"KeyInfo {self.pattern!r}: a headline or curve key must be an aggregate")

    @property
    def higher_is_better(self) -> bool | None:
        """For a sweep direction: True/False, None when the key has no monotone better side."""
        return {LOWER: False, HIGHER: True}.get(self.better)

    def badness(self, value: np.ndarray) -> np.ndarray:
        """How far from best, increasing (for tests: 'at least as bad as')."""
        if self.better == LOWER:
            return value
        if self.better == HIGHER:
            return -value
        if self.better == ONE:
            return np.abs(value - 1.0)
        raise ValueError(f"{self.pattern} has no better direction")

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.pattern)


@dataclass(frozen=True)
class Component:
    """A `fidelity_score` component: the mean over the keys matching `pattern` of `transform(value)`,
    one number in [0, 1] per batch row, lower better (METRICS.md section 9)."""

    name: str
    pattern: str
    transform: Callable[[np.ndarray], np.ndarray] = lambda x: x
    default: bool = True   # part of the score unless the config lists its own components
    position: int = 99     # its place in the default list (METRICS.md section 9's order: the order summed in)


@dataclass
class FamilyResult:
    values: dict[str, np.ndarray]                       # key -> (B,) one value per batch row
    notes: dict[str, str] = field(default_factory=dict)  # run tags, e.g. why a regression failed


@dataclass(frozen=True)
class Family:
    name: str
    fn: Callable[..., FamilyResult]
    keys: tuple[KeyInfo, ...]
    components: tuple[Component, ...] = ()


FAMILIES: Registry[Family] = Registry("metric family", key="metrics.families")
COMPONENTS: Registry[Component] = Registry("fidelity_score component", key="metrics.score_components")
DERIVED: list[KeyInfo] = []   # keys computed from the families' keys (fidelity_score)
# Keys outside the arms' fidelity metrics (no interval, reference or test): the rectified estimates,
# and what a run logs about itself (timings, throughput, training, a sweep's best value).
OTHER: list[KeyInfo] = []
_CACHE: dict[str, KeyInfo | None] = {}   # unprefixed key -> its declaration; emptied on every change


def register(name: str, *keys: KeyInfo, components: Iterable[Component] = ()):
    """Register a metric family: `fn(h, hi, s, si, ctx) -> FamilyResult` and its keys."""
    def wrap(fn):
        FAMILIES.register(name, Family(name, fn, tuple(keys), tuple(components)))
        _CACHE.clear()
        for c in components:
            COMPONENTS.register(c.name, c)
        return fn

    return wrap


def unregister(name: str) -> None:
    """Remove a family and its components (tests register throwaway families)."""
    family = FAMILIES[name]
    for c in family.components:
        COMPONENTS.unregister(c.name)
    FAMILIES.unregister(name)
    _CACHE.clear()


def register_derived(info: KeyInfo) -> KeyInfo:
    DERIVED.append(info)
    _CACHE.clear()
    return info


def register_other(*patterns: str) -> None:
    """Declare keys that are not an arm's fidelity metric, where the module that writes them lives."""
    OTHER.extend(KeyInfo(p) for p in patterns)


def declared(key: str) -> bool:
    """Whether a key a run writes (metrics.json or MLflow) is declared here: an arm's metric, the
    reference, a test or comparison, or one of `OTHER`."""
    head, _, rest = key.partition("/")
    if head == COMPARE:   # compare/<A__vs__B>/<key>/<what> or compare/<A__vs__B>/better_share
        pair, _, compared = rest.partition("/")
        key, _, what = compared.rpartition("/")
        return split_pair(pair) is not None and (
            compared == "better_share" or (what in COMPARISON and unprefixed_info(key) is not None))
    return key_info(key) is not None or any(info.matches(key) for info in OTHER)


def default_components() -> tuple[str, ...]:
    """The default components in METRICS.md section 9's order, whatever order the families were imported in."""
    return tuple(name for name, c in sorted(COMPONENTS.items(), key=lambda item: item[1].position) if c.default)


# --- key conventions ----------------------------------------------------------------------

REFERENCE = "reference/human_split"
INTERVAL = ("ci_low", "ci_high")
PERM = ("null_median", "p_value", "q_value")             # section 10, per tested key
TESTS = "tests"                                          # section 10, per arm
COMPARE = "compare"                                      # section 11, per pair of arms
COMPARISON = ("diff", "better", "ci_low", "ci_high", "p_value")


def clean(name: object) -> str:
    """A question, level or term as written in keys: characters outside [A-Za-z0-9_.-] become _."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


NAME_LIMIT = 64   # characters of a name in a key: with it, every key stays within MLflow's 250
_WORDS: set[str] = set()   # key words of modules outside the families (register_words)
_PREFIXES: set[str] = set()   # first segments of keys that are not an arm's (register_words(prefix=True))


def register_words(*words: str, prefix: bool = False) -> None:
    """Words a module builds keys from besides the families' (e.g. the rectified estimators');
    `prefix`: they begin keys, where an arm's name would."""
    _WORDS.update(w.lower() for w in words)
    if prefix:
        _PREFIXES.update(w.lower() for w in words)


def prefix_words() -> set[str]:
    """The first segments of the keys that are not an arm's: an arm cannot be named like one."""
    return {REFERENCE.split("/")[0], COMPARE} | _PREFIXES


def reserved_words() -> set[str]:
    """The words metric keys are built from (every fixed segment of every declared key and of the
    conventions around them): a question, level, term, regression or arm named like one of them
    would make keys that read as something else (a question `mean` is `divergence/js/mean`)."""
    patterns = [k.pattern for f in FAMILIES.values() for k in f.keys] + [k.pattern for k in DERIVED]
    words = {seg for p in patterns for seg in p.split("/") if "*" not in seg}
    words |= {*REFERENCE.split("/"), *INTERVAL, "perm", *PERM, TESTS, COMPARE, *COMPARISON, "better_share"}
    return {w.lower() for w in words} | _WORDS


def name_problems(names: Iterable[tuple[str, object]], what: str, reserved: set[str] | None = None
                  ) -> list[tuple[str, str]]:
    """(where, problem) for every name of one kind (`what`: questions, levels of a subgroup, ...)
    that would not give distinct, valid metric keys: too long, a reserved word, `..`, or the same
    as another name once written in a key (`clean`, case ignored: some stores ignore case)."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, tuple[str, object]] = {}
    reserved = reserved_words() if reserved is None else reserved
    for where, name in names:
        key = clean(name)
        if PAIR_SEP in key:
            problems.append((where, f"{name!r} contains {PAIR_SEP!r}, which separates the arms of a comparison"))
            continue
        if len(key) > NAME_LIMIT:
            problems.append((where, f"{name!r} is {len(key)} characters; metric keys hold names of at most "
                                    f"{NAME_LIMIT}"))
        elif key.lower() in reserved:
            problems.append((where, f"{name!r} is a word the metric keys are made of (it would read as another "
                                    "key); rename it"))
        elif ".." in key or key.strip(".") == "":
            problems.append((where, f"{name!r} cannot be part of a metric key ('..' or dots only)"))
        elif key.lower() in seen and seen[key.lower()][1] != name:
            first_where, first = seen[key.lower()]
            problems.append((where, f"{name!r} and {first!r} ({first_where}) are both written {key!r} in metric "
                                    f"keys, so their {what} would merge; rename one"))
        seen.setdefault(key.lower(), (where, name))
    return problems


def arm_key(arm: str, key: str) -> str:
    return f"{arm}/{key}"


def prefixed(arm: str, values: dict) -> dict:
    return {arm_key(arm, k): v for k, v in values.items()}


def interval_keys(key: str) -> tuple[str, str]:
    return f"{key}/{INTERVAL[0]}", f"{key}/{INTERVAL[1]}"


def reference_key(key: str) -> str:
    return f"{REFERENCE}/{key}"


def perm_key(key: str, what: str) -> str:
    """E.g. perm_key("divergence/js/mean", "p_value") -> 'divergence/js/mean/perm/p_value'."""
    assert what in PERM, what
    return f"{key}/perm/{what}"


def tests_key(what: str) -> str:
    """An arm's summary of its tests: 'distinguishable/share', 'n_tested', 'n_distinguishable', 'design'."""
    return f"{TESTS}/{what}"


PAIR_SEP = "__vs__"


def pair_name(a: str, b: str) -> str:
    return f"{a}{PAIR_SEP}{b}"


def split_pair(name: str) -> tuple[str, str] | None:
    """'A__vs__B' -> ('A', 'B'); None when `name` is not a pair's name."""
    a, sep, b = name.partition(PAIR_SEP)
    return (a, b) if sep else None


def compare_key(a: str, b: str, key: str | None, what: str = "better_share") -> str:
    """E.g. compare_key("finetuned", "base", "divergence/js/mean", "p_value"), or the pair's
    `better_share` with key None."""
    assert what in COMPARISON or (key is None and what == "better_share"), what
    return f"{COMPARE}/{pair_name(a, b)}/" + (f"{key}/{what}" if key is not None else what)


def compared_pairs(keys: Iterable[str]) -> list[tuple[str, str]]:
    """The (A, B) pairs that have comparison keys among `keys`, in first-seen order."""
    pairs: dict[tuple[str, str], None] = {}
    for key in keys:
        parts = key.split("/")
        if parts[0] == COMPARE and len(parts) > 2 and split_pair(parts[1]):
            pairs[split_pair(parts[1])] = None
    return list(pairs)


_SUFFIX = re.compile(rf"/({'|'.join(INTERVAL)}|perm/(?:{'|'.join(PERM)}))$")


def bare_key(key: str) -> str:
    """A key without the interval or test suffix and the reference prefix (the arm prefix stays)."""
    return _SUFFIX.sub("", key).removeprefix(f"{REFERENCE}/")


# An arm's tests against the humans (section 10): descriptive counts and the share of score
# components it is distinguishable on.
register_derived(KeyInfo(tests_key("distinguishable/share"), better=LOWER, bounds=(0, 1), identical=0.0))
register_derived(KeyInfo(tests_key("n_tested"), bounds=(0, np.inf)))
register_derived(KeyInfo(tests_key("n_distinguishable"), bounds=(0, np.inf), identical=0.0))


# --- what a key means ---------------------------------------------------------------------


def _declared() -> Iterable[KeyInfo]:
    yield from DERIVED
    for family in FAMILIES.values():
        yield from family.keys


def key_info(key: str) -> KeyInfo | None:
    """The declaration of a key, with or without its arm prefix (and reference/interval parts)."""
    bare = bare_key(key)
    candidates = [bare, bare.split("/", 1)[1] if "/" in bare else bare]
    for info in _declared():
        if any(info.matches(c) for c in candidates):
            return info
    return None


def unprefixed_info(key: str) -> KeyInfo | None:
    """The declaration of a key written without an arm prefix (no guessing which part is the arm)."""
    if key not in _CACHE:
        _CACHE[key] = next((info for info in _declared() if info.matches(key)), None)
    return _CACHE[key]


def higher_is_better(key: str) -> bool | None:
    """True/False for a key with a better direction (e.g. 'finetuned/fidelity_score' -> False)."""
    info = key_info(key)
    if info is None:
        raise KeyError(f"no registered metric matches {key!r}")
    return info.higher_is_better


def is_aggregate(key: str) -> bool:
    """Aggregates get intervals, the human reference and the tests (METRICS.md sections 8, 10, 11)."""
    info = unprefixed_info(key)
    return info is not None and info.aggregate


def _pick(keys: Iterable[str], want: Callable[[KeyInfo], bool], first_only: bool) -> list[str]:
    info_of = {k: unprefixed_info(k) for k in keys}
    out: list[str] = []
    for info in _declared():
        if want(info):
            found = [k for k, i in info_of.items() if i is info]
            out += sorted(found)[:1] if first_only else found
    return out


def headline_keys(keys: Iterable[str]) -> list[str]:
    """The report's rows among `keys` (unprefixed), in declaration order."""
    return _pick(keys, lambda i: i.headline, first_only=False)


def curve_keys(keys: Iterable[str]) -> list[str]:
    """The sweep curve's panels among `keys` (unprefixed): one key per curve declaration."""
    return _pick(keys, lambda i: i.curve, first_only=True)


def component_keys(keys: Iterable[str], components: Iterable[str]) -> list[str]:
    """The keys (unprefixed) the given score components are made of."""
    patterns = [COMPONENTS[c].pattern for c in components]
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


def direction_words(key: str) -> str:
    info = key_info(key)
    if info is None or info.better is None:
        return ""
    return {LOWER: "lower better", HIGHER: "higher better", ONE: "best 1"}[info.better]
