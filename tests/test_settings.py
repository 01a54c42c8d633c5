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
