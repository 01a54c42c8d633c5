"""Typed config groups (settings.py): every shipped config passes, every value has a type and a
range, and the declared choices are what the libraries accept."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fidelity_exp.errors import ConfigError
from fidelity_exp.pipeline import check_config  # importing the pipeline registers every group
from fidelity_exp.settings import Rule

CONF = Path(__file__).resolve().parents[1] / "conf"
NEEDS = {"stratified": ["pilot.by=party"], "registered": ["finetune.uri=models:/x/1"],
         "evaluate": ["evaluate.synthetic=twins.csv"]}


def _presets():
    for group in ("model", "finetune", "pilot", "data", "arms"):
        for f in sorted((CONF / group).glob("*.yaml")):
            yield [f"{group}={f.stem}" if group != "arms" else f"arms=[{f.stem}]", *NEEDS.get(f.stem, [])]
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        yield [f"+experiment={f.stem}", *NEEDS.get(f.stem, [])]


@pytest.mark.parametrize("overrides", list(_presets()), ids=lambda o: o[0])
def test_every_shipped_config_passes_its_schema(overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        groups = check_config(compose("config", overrides=overrides))
    assert {"pilot", "metrics", "model", "finetune", "simulate", "tracking", "paths"} <= set(groups)


@pytest.mark.parametrize("override, key", [
    ("seed=-1", "seed"), ("metrics.alpha=0", "metrics.alpha"), ("finetune.lora.alpha=-2", "finetune.lora.alpha"),
    ("simulate.batch_size=0", "simulate.batch_size"), ("finetune.warmup_steps=-1", "finetune.warmup_steps"),
    ("eval.n=0", "eval.n"), ("metrics.permutations=2.5", "metrics.permutations"),
    ("tracking.enabled=sometimes", "tracking.enabled"), ("model.source=ftp", "model.source"),
])
def test_a_value_out_of_its_range_names_its_key(override, key):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[override])
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert e.value.key == key and "expected" in e.value.expected.lower() or "not a valid" in e.value.expected


def test_rules_refuse_non_finite_numbers():
    rule = Rule(ge=0)
    assert rule.holds(0) and rule.holds(3.5)
    assert not any(rule.holds(x) for x in (-1, float("nan"), float("inf")))
    assert Rule(ge=1, nullable=True).holds(None) and not Rule(ge=1).holds(None)


def test_the_schedulers_offered_are_transformers_own():
    from transformers import SchedulerType

    from fidelity_exp.llm.finetune import SCHEDULERS

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_settings_imports_no_reader_module():
    """settings.py sits below every module that reads a group: each registers its own class."""
    import ast

    src = (Path(__file__).resolve().parents[1] / "src/fidelity_exp/settings.py").read_text()
    imported = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("fidelity_exp")} <= {"fidelity_exp.errors"}


def test_the_metric_options_defaults_are_written_once():
    """conf/metrics/default.yaml, `Options` and `api.score` agree on every default."""
    import dataclasses
    import inspect

    import yaml

    from fidelity_exp import api
    from fidelity_exp.metrics.suite import Options

    written = yaml.safe_load((CONF / "metrics" / "default.yaml").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    assert {k: v for k, v in written.items() if k != "seed"} == {k: v for k, v in defaults.items() if k != "seed"}
    signature = inspect.signature(api.score).parameters
    assert all(signature[k].default == v for k, v in defaults.items())


def _outside(rule: Rule, kind: type):
    """A value just outside a declared rule (None when the rule gives nothing to step over)."""
    if rule.one_of is not None:
        return "not_one_of_them"
    step = 1 if kind is int else 0.5
    for bound, value in (("ge", rule.ge), ("gt", rule.gt), ("le", rule.le), ("lt", rule.lt)):
        if value is not None and abs(value) < 2**40:
            return {"ge": value - step, "gt": value, "le": value + step, "lt": value}[bound]
    return None


def _declared_ranges():
    """(key, value) for every field of every registered group with a declared range (and the
    nested groups those read), each with a value just outside it: generated from the rules."""
    import dataclasses
    import typing

    from fidelity_exp.llm.finetune import LoraSettings
    from fidelity_exp.llm.models import TokenizerSettings
    from fidelity_exp.settings import GROUPS, RunSettings

    nested = {"finetune.lora": LoraSettings, "model.tokenizer": TokenizerSettings}
    for prefix, cls in [("", RunSettings), *GROUPS.items(), *nested.items()]:
        if prefix in ("evaluate", "model.tokenizer"):     # read only by +experiment=evaluate / model=tiny_random
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rule = f.metadata.get("rule")
            kind = int if hints[f.name] in (int, typing.Optional[int]) else float
            value = _outside(rule, kind) if rule is not None else None
            if value is not None:
                yield (f"{prefix}.{f.name}" if prefix else f.name), value


RANGES = list(_declared_ranges())


def test_every_group_declares_ranges():
    keys = {k.split(".")[0] for k, _ in RANGES}
    assert {"seed", "pilot", "eval", "validation", "metrics", "model", "finetune", "simulate", "tracking",
            "ppi"} <= keys, keys
    assert len(RANGES) >= 30


@pytest.mark.parametrize("key, value", RANGES, ids=[k for k, _ in RANGES])
def test_a_value_just_outside_its_declared_rule_is_refused_naming_its_key(key, value):
    extra = ["pilot=stratified", "pilot.by=party"] if key == "pilot.by" else []
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*extra, f"++{key}={value}"])   # ++: also a key the preset leaves out
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert e.value.key == key, (e.value.key, key)
    assert "expected" in e.value.expected.lower() or "not a valid" in e.value.expected
