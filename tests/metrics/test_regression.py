"""Regression recovery on the synthetic disclosure study (known truth), agreement with the
statsmodels formula API, and failed fits leaving keys undefined with the reason noted."""

from __future__ import annotations

import numpy as np
import pytest

from fidelity_exp.metrics import Options, evaluate_arm
from fidelity_exp.metrics.encoded import encode
from fidelity_exp.metrics.registry import clean
from fidelity_exp.metrics.regression import design, fit, fit_formula
from fidelity_exp.study import canonical_frame, load_spec_file, numeric_frame
from fidelity_exp.study.synthetic import TRUE_COEFFICIENTS, disclosure

from ..conftest import CONF

SPEC = load_spec_file(CONF / "data" / "disclosure.yaml")
OPTS = Options(families=("regression",), bootstrap=0, reference_splits=0, permutations=0)


def draw(n, seed, **coefficients):
    raw = disclosure(n, seed=seed, coefficients=coefficients or None)
    return canonical_frame(SPEC, raw, origin="test", data_name="disclosure", use_id=True)


@pytest.fixture(scope="module")
def human():
    return draw(20_000, seed=101)


def test_data_from_the_true_model_recovers_every_sign(human):
    v = evaluate_arm(SPEC, human, draw(20_000, seed=202), OPTS).values
    assert v["regression/disclosure/sign_f1"] == 1.0
    assert v["regression/disclosure/sign_agreement"] == 1.0
    assert v["regression/disclosure/false_positive_rate"] is None   # every true term is significant here
    for term, truth in TRUE_COEFFICIENTS.items():
        key = f"regression/disclosure/{clean(term)}"
        assert v[f"{key}/coef/synthetic"] == pytest.approx(truth, abs=5 * v[f"{key}/se/synthetic"])


def test_a_flipped_coefficient_loses_exactly_that_term(human):
    v = evaluate_arm(SPEC, human, draw(20_000, seed=202, trust=-0.45), OPTS).values
    agree = {k.split("/")[2]: val for k, val in v.items() if k.endswith("/sign_agree")}
    assert agree.pop("trust") == 0.0
    assert set(agree.values()) == {1.0}
    assert v["regression/disclosure/sign_agreement"] == pytest.approx(7 / 8)   # 8 terms besides the intercept
    assert v["regression/disclosure/sign_f1"] == pytest.approx(2 * 7 / (2 * 7 + 1 + 1))


def test_array_fits_match_the_formula_api():
    frame = draw(929, seed=0)
    enc = encode(SPEC, frame)
    reg = SPEC.regressions[0]
    d = design(enc, reg)
    mine = fit(reg, d, np.arange(len(d.y)), alpha=0.05)
    ref = fit_formula(reg, numeric_frame(SPEC, frame))
    for term in ref.params.index:
        assert mine.coef[term] == pytest.approx(ref.params[term], abs=1e-8)
        assert mine.se[term] == pytest.approx(ref.bse[term], abs=1e-8)
        assert mine.low[term] == pytest.approx(ref.conf_int(0.05).loc[term, 0], abs=1e-8)


def test_a_failed_fit_leaves_the_regression_undefined_and_says_why(human):
    constant = draw(500, seed=3)
    constant["disclose"] = constant["disclose"].cat.codes.clip(0, 0).map({0: 0}).astype("category")
    constant["disclose"] = constant["disclose"].cat.set_categories([0, 1])
    result = evaluate_arm(SPEC, human, constant, OPTS)
    assert all(v is None for k, v in result.values.items() if k.startswith("regression/"))
    assert result.notes == {"regression/disclosure/error/synthetic": "the outcome is constant"}


def test_perfect_separation_is_a_failed_fit(human):
    separated = draw(400, seed=4)
    separated["disclose"] = (separated["concern"].astype(int) <= 2).astype(int).astype("category").cat.set_categories([0, 1])
    result = evaluate_arm(SPEC, human, separated, OPTS)
    assert result.values["regression/disclosure/sign_f1"] is None
    note = result.notes["regression/disclosure/error/synthetic"]
    assert "separation" in note or "converge" in note or "singular" in note
