"""Typed config groups: every config value has a declared type and range.

Each config group is read by one dataclass that lives beside the code that uses it (`pilot`:
study/split.py, `metrics`: metrics/suite.py, `simulate`: arms/llm.py, `model`: llm/models.py,
`finetune`: llm/finetune.py, `tracking`: tracking/mlflow_run.py, `paths`: paths.py, ...) and
registers itself there with `@group("<key>")`, so this module imports none of them. A field's
type is checked by OmegaConf's structured configs (types, unknown keys), its range by the `Rule`
in its metadata (`option(default, ge=0, ...)`), and what concerns several fields by the class's
`check()`. `check_config(cfg)` reads every registered group once, before any run exists, into
one `Settings` object that the run's plan holds; every mistake is one `ConfigError` naming
`<group>.<key>`, the value and what was expected. Code after the plan reads the typed objects,
never the raw config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, TypeVar

from fidelity_exp.errors import ConfigError

T = TypeVar("T")
SEED_MAX = 2**32 - 1         # numpy's and torch's seeds are unsigned 32-bit integers at most here


@dataclass(frozen=True)
class Rule:
    """The range of one config value: bounds, allowed values, a pattern; None means no such bound."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    one_of: tuple[Any, ...] | None = None
    pattern: str | None = None       # a text value must match this (re.fullmatch)
    nullable: bool = False           # None is a valid value
    what: str | None = None          # the expectation in words, when the bounds alone do not say it

    def expected(self) -> str:
        if self.what:
            return f"expected {self.what}"
        if self.one_of is not None:
            return f"expected one of {', '.join(map(str, self.one_of))}"
        bounds = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if v is not None]
        return "expected a finite number " + " and ".join(bounds) + (" (or null)" if self.nullable else "")

    def holds(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.one_of is not None:
            return value in self.one_of
        if self.pattern is not None:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True                       # the type is OmegaConf's to check
        return (math.isfinite(value)
                and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def option(default: Any = None, **rule: Any) -> Any:
    """A dataclass field with its range: `n: int = option(100, ge=1)`; lists and dicts are copied."""
    metadata = {"rule": Rule(**rule)} if rule else {}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def seed_option(default: int = 0) -> Any:
    return option(default, ge=0, le=SEED_MAX, what=f"a seed: an integer from 0 to {SEED_MAX}")


class Checked:
    """Base of the typed groups: every field's `Rule` is checked on construction, then `check()`."""

    def __post_init__(self) -> None:
        for f in fields(self):   # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            value = getattr(self, f.name)
            if rule is not None and not rule.holds(value):
                raise ConfigError(f.name, value, rule.expected())
        self.check()

    def check(self) -> None:
        """Checks across fields (override); raise `ConfigError(field, value, expected)`."""


def typed(cls: type[T], node: Any, key: str, what: str | None = None) -> T:
    """An instance of the dataclass `cls` from a config node or mapping (`_target_` ignored).
    `key` is where the node lives (e.g. `simulate`, `arms.tabular`), `what` names it in messages."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    what = what or f"the {key} group"
    if isinstance(node, DictConfig):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(key, "...", f"cannot be resolved: {str(e).splitlines()[0]}") from None
    if node is None:
        node = {}
    if not isinstance(node, Mapping):
        raise ConfigError(key, node, f"expected the {what}'s config (a mapping)")
    # `???` (a value the config says the user must give) arrives as None: the field's rule or the
    # class's check says what was expected.
    options = {k: (None if v == "???" else v) for k, v in node.items() if k != "_target_"}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), options))
    except OmegaConfBaseException as e:
        field_name = getattr(e, "full_key", None)
        where = ".".join(k for k in (key, str(field_name or "")) if k) or "config"
        value = options.get(str(field_name)) if field_name else options
        raise ConfigError(where, value, f"not a valid option of {what}: {str(e).splitlines()[0]}") from None
    except ConfigError as e:   # the class's own check names the field (or the full key)
        full = e.key if not key or e.key == key or e.key.startswith(f"{key}.") else f"{key}.{e.key}"
        raise ConfigError(full, e.value, e.expected) from None


# --- every group of a run ---------------------------------------------------------------------------

GROUPS: dict[str, type] = {}   # config key -> its settings class, registered where the class lives


def group(key: str) -> Callable[[type[T]], type[T]]:
    """`@group("pilot")` on a settings class: `check_config` reads the config's `pilot` node with it."""
    def register(cls: type[T]) -> type[T]:
        GROUPS[key] = cls
        return cls
    return register


@dataclass
class RunSettings(Checked):
    """The top-level keys of conf/config.yaml that belong to no group."""

    seed: int = seed_option()
    score_on: str = option("evaluation", one_of=("evaluation", "validation"))


class Settings:
    """Every group of one run, typed: `settings.pilot` is a `PilotSettings`, `settings.run` the
    top-level keys. Only the groups the config has are there (`evaluate` only when evaluating)."""

    def __init__(self, run: RunSettings, groups: Mapping[str, Any]):
        self.run, self._groups = run, dict(groups)

    def __getattr__(self, key: str) -> Any:
        groups = self.__dict__.get("_groups", {})
        if key in groups:
            return groups[key]
        raise AttributeError(f"no settings group {key!r} (registered: {', '.join(GROUPS)})")

    def __contains__(self, key: str) -> bool:
        return key in self._groups

    def __iter__(self):
        return iter(self._groups)

    def __repr__(self) -> str:
        return f"Settings(run={self.run!r}, {', '.join(f'{k}={v!r}' for k, v in self._groups.items())})"


def check_config(cfg: Any) -> Settings:
    """Every registered group of a composed run config read through its dataclass (the `data`
    group is the study spec, checked by its own parser; `arms` by each arm's class; `evaluate` by
    evaluate-only). Raises the first `ConfigError`."""
    top = {f.name: cfg.get(f.name) for f in fields(RunSettings) if cfg.get(f.name) is not None}
    run = typed(RunSettings, top, "", "the run config")
    return Settings(run, {key: typed(cls, cfg.get(key), key) for key, cls in GROUPS.items() if key in cfg})
