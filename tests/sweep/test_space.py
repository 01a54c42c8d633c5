"""The search space: Hydra sweep syntax to Optuna distributions, grids, and overrides back."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fidelity_exp.errors import ConfigError
from fidelity_exp.sweep.space import format_value, parse


def test_each_sweep_syntax_becomes_its_distribution():
    space = parse({"a": "choice(4, 8, 16)", "b": "tag(log, interval(1e-4, 1e-2))", "c": "int(interval(1, 4))",
                   "d": "interval(0.5, 1.5)", "e": "range(0, 3)", "f": "tag(log, int(interval(1, 64)))"}, [])
    d = space.distributions
    assert d["a"] == CategoricalDistribution([4, 8, 16])
    assert d["b"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["c"] == IntDistribution(1, 4)
    assert d["d"] == FloatDistribution(0.5, 1.5)
    assert d["e"] == CategoricalDistribution([0, 1, 2])     # Hydra's range excludes its end, like Python's
    assert d["f"] == IntDistribution(1, 64, log=True)


def test_command_line_wins_and_plain_overrides_are_fixed():
    space = parse({"finetune.lora.rank": "choice(4, 8, 16, 32)"},
                  ["+experiment=quickstart", "+sweep=lora", "finetune.lora.rank=choice(8,16)", "eval.n=50"])
    assert space.distributions["finetune.lora.rank"].choices == (8, 16)
    assert space.fixed == ["+experiment=quickstart", "+sweep=lora", "eval.n=50"]
    assert space.overrides({"finetune.lora.rank": 8, "x": 0.001, "y": "a b", "z": None, "w": True}) == [
        "+experiment=quickstart", "+sweep=lora", "eval.n=50", "finetune.lora.rank=8", "x=0.001", "y='a b'",
        "z=null", "w=true"]


def test_one_at_a_time_is_every_choice_and_each_interval_end():
    space = parse({"simulate.option_order": "choice(fixed, averaged)", "lr": "tag(log, interval(1e-4, 1e-2))",
                   "epochs": "int(interval(1, 4))"}, [])
    assert space.one_at_a_time() == [{"simulate.option_order": "fixed"}, {"simulate.option_order": "averaged"},
                                     {"lr": 1e-4}, {"lr": 1e-2}, {"epochs": 1}, {"epochs": 4}]


def test_grid_is_every_combination_in_written_order():
    grid = parse({"pilot.n": "choice(25, 50)", "seed": "choice(0, 1, 2)"}, []).grid()
    assert grid == [{"pilot.n": n, "seed": s} for n in (25, 50) for s in (0, 1, 2)]
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.lr=.*needs choice"):
        parse({"lr": "interval(0.1, 1)"}, []).grid()


def test_signature_ignores_order_but_not_values():
    a = parse({"x": "choice(1,2)"}, ["+experiment=quickstart", "eval.n=5"]).signature()
    b = parse({"x": "choice(1,2)"}, ["eval.n=5", "+experiment=quickstart"]).signature()
    c = parse({"x": "choice(1,3)"}, ["eval.n=5", "+experiment=quickstart"]).signature()
    assert a == b != c


@pytest.mark.parametrize("value,text", [(0.5, "0.5"), (1e-4, "0.0001"), (3, "3"), ("lora", "lora"),
                                        ("x=y", "'x=y'")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_bad_syntax_is_a_config_error():
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.*Hydra sweep syntax"):
        parse({"a": "choice(1,"}, [])
    with pytest.raises(ConfigError, match=r"log interval needs a positive start"):
        parse({"a": "tag(log, interval(0.0, 1.0))"}, [])
