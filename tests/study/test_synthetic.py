"""The synthetic disclosure study reproduces its documented design and coefficients."""

from __future__ import annotations

import re

import pandas as pd
import statsmodels.formula.api as smf

from fidelity_exp.study import load_spec_file
from fidelity_exp.study.synthetic import DISCLOSURE_FORMULA, ETHNICITY_SHARES, TRUE_COEFFICIENTS, disclosure

from ..conftest import CONF


def test_design_of_the_default_draw():
    d = disclosure()
    assert len(d) == 929
    cells = d.groupby(["purpose", "assurance", "sensitive"]).size()
    assert len(cells) == 8 and set(cells) <= {116, 117}   # balanced 2x2x2 assignment
    sizes = d["ethnicity"].value_counts()
    assert set(sizes.index) == set(ETHNICITY_SHARES) and sizes.max() > 5 * sizes.min()  # unequal groups
    for belief in ("concern", "trust", "benefit"):
        assert set(d[belief]) == {1, 2, 3, 4, 5}
    assert set(d["disclose"]) == {0, 1}


def test_deterministic_given_seed():
    pd.testing.assert_frame_equal(disclosure(300, seed=4), disclosure(300, seed=4))
    assert not disclosure(300, seed=4).equals(disclosure(300, seed=5))


def test_logit_on_a_large_draw_recovers_the_true_coefficients():
    d = disclosure(60_000, seed=11)
    fit = smf.logit(DISCLOSURE_FORMULA, d).fit(disp=0)
    assert set(fit.params.index) == set(TRUE_COEFFICIENTS)
    for term, truth in TRUE_COEFFICIENTS.items():
        z = (fit.params[term] - truth) / fit.bse[term]
        assert abs(z) < 4, f"{term}: estimate {fit.params[term]:.3f}, truth {truth}, z {z:.1f}"


def test_privacy_paradox_about_a_quarter_of_concerned_disclose():
    d = disclosure(60_000, seed=12)
    share = d.loc[d["concern"] >= 4, "disclose"].mean()
    assert 0.22 < share < 0.28


def test_spec_regression_is_the_generating_model():
    spec = load_spec_file(CONF / "data" / "disclosure.yaml")
    assert spec.regressions[0].formula == DISCLOSURE_FORMULA
    assert spec.source == {"kind": "synthetic", "name": "disclosure", "n": 929, "seed": 0}
    # the spec's header comment documents the same true coefficients
    header = (CONF / "data" / "disclosure.yaml").read_text().split("name:")[0]
    documented = {t: float(v) for t, v in re.findall(r"([A-Za-z][\w()\[\].]*) (-?\d+\.\d+)", header)}
    assert documented == TRUE_COEFFICIENTS
