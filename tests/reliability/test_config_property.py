"""A property of every run (hypothesis, through the command line's entry point, tests/command.py): config values drawn
across and beyond their declared ranges either end with exit 2, one message naming the key and
no run in the store, or with exit 0 and well-formed metrics (every value None or finite, within
its declared bounds). Never exit 0 with a wrong number, never a traceback."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fidelity_exp.metrics.registry import unprefixed_info

from ..command import main
from .test_bad_input import _runs, _study

ODD = st.sampled_from([float("nan"), float("inf"), -float("inf")])
VALUES = {
    "seed": st.integers(-3, 2**33),
    "pilot.n": st.integers(-5, 45),
    "eval.n": st.one_of(st.none(), st.integers(-2, 45)),
    "validation.n": st.integers(-2, 30),
    "metrics.alpha": st.one_of(st.floats(-0.5, 1.5), ODD),
    "metrics.bootstrap": st.integers(-5, 12),
    "metrics.min_group_size": st.integers(-3, 50),
    "metrics.reference_splits": st.integers(-2, 4),
    "metrics.permutations": st.integers(-2, 12),
    "metrics.fdr": st.one_of(st.floats(-0.2, 1.2), ODD),
    "simulate.temperature": st.one_of(st.floats(-1, 3), ODD),
    "simulate.batch_size": st.integers(-4, 64),
    "finetune.lora.rank": st.integers(-2, 5000),
    "finetune.learning_rate": st.one_of(st.floats(-1, 2), ODD),
    "arms.tabular.l2": st.one_of(st.floats(-1, 5), ODD),
    "arms.pilot_resample.numeric_bins": st.integers(-1, 8),
}


def _text(value) -> str:
    return "null" if value is None else repr(value) if isinstance(value, float) else str(value)


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(VALUES)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALUES[k] for k in keys})))
def test_every_run_refuses_cleanly_or_reports_well_formed_metrics(tmp_path_factory, values):
    folder = tmp_path_factory.mktemp("prop")
    overrides = [f"{k}={_text(v)}" for k, v in values.items()]
    done = main(*_study(folder), *overrides, "hydra.run.dir=out", cwd=folder)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if done.returncode != 0:
        assert done.returncode == 2, done.stderr[-2000:]
        message = done.stderr.strip()
        assert message.startswith("fidelity_exp: error:") and message.count("fidelity_exp: error:") == 1
        assert any(k in message for k in values), f"{overrides}: {message}"
        assert _runs(folder) == [], f"{overrides}: a refused run left {_runs(folder)}"
        return
    assert [status for status, _ in _runs(folder)] == ["FINISHED"]
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    for key, value in metrics.items():
        if value is None:
            continue
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{overrides}: {key} = {value}"
        arm, _, rest = key.partition("/")
        info = unprefixed_info(rest) if arm in ("pilot_resample", "tabular") else None
        if info is not None and not key.endswith(("/ci_low", "/ci_high")) and "/perm/" not in key:
            low, high = info.bounds
            assert low - 1e-9 <= value <= high + 1e-9, f"{overrides}: {key} = {value} outside {info.bounds}"
