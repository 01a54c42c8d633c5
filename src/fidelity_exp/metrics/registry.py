"""The metric registry: families by name, and what each key means (direction, range).

`conf/metrics/*.yaml` lists families by name; an unknown name lists the known ones. Sweep
directions come from `higher_is_better(key)`, read off this registry, never a second list.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fidelity_exp.errors import ConfigError


@dataclass(frozen=True)
class KeyInfo:
    """What a family's keys matching `pattern` (fnmatch, arm prefix removed) mean."""

    pattern: str
    higher_is_better: bool | None   # None: a descriptive value with no better direction
    bounds: tuple[float, float] = (-np.inf, np.inf)
    identical: float | None = None  # the value when human and synthetic are the same data
    symmetric: bool = False         # unchanged when human and synthetic swap places


@dataclass
class FamilyResult:
    values: dict[str, np.ndarray]                       # key -> (B,) one value per batch row
    notes: dict[str, str] = field(default_factory=dict)  # run tags, e.g. why a regression failed


@dataclass(frozen=True)
class Family:
    name: str
    fn: Callable[..., FamilyResult]
    keys: tuple[KeyInfo, ...]


FAMILIES: dict[str, Family] = {}
_SCORE_INFO = KeyInfo("fidelity_score", higher_is_better=False, bounds=(0, 1), identical=0.0)


def register(name: str, *keys: KeyInfo):
    def wrap(fn):
        FAMILIES[name] = Family(name, fn, tuple(keys))
        return fn

    return wrap


def check_families(names) -> list[str]:
    names = list(names)
    for name in names:
        if name not in FAMILIES:
            raise ConfigError("metrics.families", name, f"unknown metric family (known: {', '.join(FAMILIES)})")
    return names


def key_info(key: str) -> KeyInfo | None:
    """The registry entry of a key (arm prefix, reference prefix and /ci_* suffixes removed)."""
    bare = re.sub(r"/ci_(low|high)$", "", key)
    bare = bare.removeprefix("reference/human_split/")
    candidates = [bare, bare.split("/", 1)[1] if "/" in bare else bare]
    if "fidelity_score" in candidates:
        return _SCORE_INFO
    for family in FAMILIES.values():
        for info in family.keys:
            if any(fnmatch.fnmatchcase(c, info.pattern) for c in candidates):
                return info
    return None


def higher_is_better(key: str) -> bool | None:
    """True/False for a key with a better direction (e.g. 'finetuned/fidelity_score' -> False)."""
    info = key_info(key)
    if info is None:
        raise KeyError(f"no registered metric matches {key!r}")
    return info.higher_is_better


def clean(name: object) -> str:
    """A question, level or term as written in keys: characters outside [A-Za-z0-9_.-] become _."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


AGGREGATE = re.compile(r"(/mean|/max|/gap|/ratio|/variance_ratio|abs_diff|/sign_agreement|/sig_diff_rate"
                       r"|/ci_coverage|/sign_f1|/false_positive_rate)$")


def is_aggregate(key: str) -> bool:
    """Aggregates get bootstrap intervals and a human split-half reference (METRICS.md section 8)."""
    return bool(AGGREGATE.search(key)) or key == "fidelity_score"
