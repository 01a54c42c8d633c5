"""Properties every registered metric must have, on random small data sets (hypothesis):
its identity value on identical inputs, symmetry where the definition is symmetric, its
bounds, a registry entry, and undefined values as None (never NaN, never a silent 0)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fidelity_exp.metrics import FAMILIES, Options, evaluate_arm, key_info
from fidelity_exp.study import canonical_frame, parse_spec

SPEC = parse_spec({
    "name": "props", "version": 1, "source": {"kind": "csv", "path": "unused.csv"},
    "persona": [{"column": "g", "type": "nominal"}, {"column": "age", "type": "numeric"}],
    "questions": [
        {"column": "a", "text": "A?", "type": "ordinal", "role": "belief", "options": {1: "1", 2: "2", 3: "3", 4: "4"}},
        {"column": "n", "text": "N?", "type": "nominal", "role": "belief", "options": {"r": "R", "s": "S", "t": "T"}},
        {"column": "b", "text": "B?", "type": "binary", "role": "action", "options": {0: "no", 1: "yes"}},
    ],
    "subgroups": {"grp": {"column": "g", "groups": {"A": ["A"], "B": ["B"], "C": ["C"]}},
                  "ans": {"column": "a", "groups": {"low": [1, 2], "high": [3, 4]}}},
    "coherence": [{"belief": "a", "action": "b", "contradiction": {"belief": [4], "action": [1]}}],
    "regressions": {"lin": {"formula": "a ~ b + age", "family": "ols"}},
})


def rows(n_min=3, n_max=24):
    maybe = lambda values: st.one_of(st.sampled_from(values), st.none())  # noqa: E731
    row = st.fixed_dictionaries({
        "g": st.sampled_from(["A", "B", "C"]), "age": st.integers(18, 90),
        "a": maybe([1, 2, 3, 4]), "n": maybe(["r", "s", "t"]), "b": maybe([0, 1]),
    })
    return st.lists(row, min_size=n_min, max_size=n_max)


def frame(records, twins: bool = False) -> pd.DataFrame:
    raw = pd.DataFrame(records, columns=["g", "age", "a", "n", "b"])
    if twins:
        raw["twin_of"] = range(len(raw))
    return canonical_frame(SPEC, raw, origin="prop", data_name="prop", use_id=False, extra_ok=["twin_of"])


def evaluate(h, s):
    return evaluate_arm(SPEC, h, s, Options(bootstrap=0, reference_splits=0, permutations=0, min_group_size=2)).values


COMMON = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_family_is_exercised():
    assert set(FAMILIES) == {"divergence", "heterogeneity", "subgroup", "within_group", "coherence", "regression",
                             "individual"}


@COMMON
@given(rows())
def test_identical_inputs_give_the_identity_value(records):
    h = frame(records)
    values = evaluate(h, frame(records, twins=True))
    for key, value in values.items():
        info = key_info(key)
        assert info is not None, f"{key} has no registry entry"
        if value is not None and info.identical is not None:
            assert value == pytest.approx(info.identical, abs=1e-9), key


@COMMON
@given(rows(), rows())
def test_bounds_and_no_nan(h_records, s_records):
    values = evaluate(frame(h_records), frame(s_records, twins=False))
    for key, value in values.items():
        info = key_info(key)
        assert info is not None, f"{key} has no registry entry"
        if value is None:
            continue
        assert math.isfinite(value), f"{key} is {value}: undefined must be None"
        low, high = info.bounds
        assert low - 1e-9 <= value <= high + 1e-9, f"{key}={value} outside {info.bounds}"


@COMMON
@given(rows(), rows())
def test_symmetric_metrics_are_symmetric(h_records, s_records):
    h, s = frame(h_records), frame(s_records)
    forward, backward = evaluate(h, s), evaluate(s, h)
    for key, value in forward.items():
        if key_info(key).symmetric:
            other = backward.get(key)
            if value is None or other is None:
                assert value is None and other is None, key
            else:
                assert value == pytest.approx(other, abs=1e-9), key


@COMMON
@given(rows(n_min=4))
def test_a_question_nobody_answers_is_undefined_not_zero(records):
    unanswered = [dict(r, n=None) for r in records]
    values = evaluate(frame(records), frame(unanswered))
    for key in ("divergence/js/n", "divergence/tvd/n", "heterogeneity/entropy/n/synthetic"):
        assert values.get(key) is None, key


@COMMON
@given(rows(n_min=4))
def test_twin_accuracy_against_itself_is_one(records):
    values = evaluate(frame(records), frame(records, twins=True))
    for q in ("a", "n", "b"):
        answered = sum(r[q] is not None for r in records)
        assert values.get(f"individual/{q}/accuracy") == (1.0 if answered else None)
