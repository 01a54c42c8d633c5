"""The search space: Hydra sweep syntax turned into Optuna distributions, and back into overrides.

Params come from `hydra.sweeper.params` and from sweep syntax on the command line (which wins
for the same key); every other command-line override is fixed and goes to every trial.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fidelity_exp.errors import ConfigError


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)   # overrides every trial gets, as typed

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the categorical params, in the order they were written."""
        for name, dist in self.distributions.items():
            if not isinstance(dist, CategoricalDistribution):
                raise ConfigError(f"hydra.sweeper.params.{name}", _describe(dist),
                                  "a grid (hydra.sweeper.sampler=grid) needs choice(...) or range(...) values")
        names = list(self.distributions)
        values = [self.distributions[n].choices for n in names]  # type: ignore[attr-defined]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def one_at_a_time(self) -> list[dict[str, Any]]:
        """Each param's values alone (every choice; an interval's two ends), the others left as
        configured: what a sampler that is not a grid may ask for, checked before a trial runs."""
        points = []
        for name, dist in self.distributions.items():
            values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
            points += [{name: v} for v in values]
        return points

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        return [*self.fixed, *(f"{k}={format_value(v)}" for k, v in params.items())]

    def described(self) -> dict[str, str]:
        """Each param's range in words, e.g. {'finetune.lora.rank': 'choice(4, 8)'}."""
        return {k: _describe(d) for k, d in sorted(self.distributions.items())}

    def signature(self) -> str:
        """What identifies the sweep: fixed overrides and the space (not n_trials, not the launcher)."""
        return json.dumps({"fixed": sorted(self.fixed), "space": self.described()})


def parse(params: Mapping[str, Any], arguments: Sequence[str]) -> SearchSpace:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    space = SearchSpace()
    written = [f"{k}={v}" for k, v in params.items()]
    for origin, items in (("hydra.sweeper.params", written), ("command line", list(arguments))):
        try:
            overrides = parser.parse_overrides(items)
        except Exception as e:  # Hydra's grammar errors name the offending text
            raise ConfigError(origin, items, f"expected Hydra sweep syntax: {e}") from None
        for override, text in zip(overrides, items):
            key = override.get_key_element()
            if override.is_sweep_override():
                space.distributions[key] = distribution(override, text)
            else:
                space.fixed.append(text)
    for key in space.distributions:  # a swept key is not also fixed
        space.fixed = [f for f in space.fixed if f.split("=", 1)[0].lstrip("+~") != key]
    return space


def distribution(override, text: str) -> BaseDistribution:
    """The Optuna distribution of one swept parameter; a range that holds no value is one message
    naming the parameter (not Optuna's error)."""
    from hydra.core.override_parser.types import IntervalSweep

    key, given = text.split("=", 1)
    if override.is_choice_sweep() or override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(key, given, "expected at least one value: range(start, stop[, step]) stops before "
                              "`stop` (as Python's range), so e.g. range(10, 20) for 10..19")
        return CategoricalDistribution(values)
    value = override.value()
    if isinstance(value, IntervalSweep):
        if value.start > value.end:
            raise ConfigError(key, given, f"expected interval(low, high) with low <= high, e.g. "
                              f"interval({format_value(value.end)}, {format_value(value.start)})")
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        if log and (value.start <= 0):
            raise ConfigError(text.split("=", 1)[0], text.split("=", 1)[1], "a log interval needs a positive start")
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(text.split("=", 1)[0], text.split("=", 1)[1],
                      "expected choice(...), range(...), interval(a,b) or tag(log, interval(a,b))")


def format_value(value: Any) -> str:
    """A param value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return text
    return "'" + text.replace("'", "\\'") + "'"


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"choice{tuple(dist.choices)}"
    log = "log " if getattr(dist, "log", False) else ""
    return f"{log}interval({dist.low}, {dist.high})"  # type: ignore[attr-defined]
