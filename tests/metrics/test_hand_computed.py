"""Each metric against values computed by hand on 5-row frames (METRICS.md definitions)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import spearmanr

from fidelity_exp.metrics import Options, evaluate_arm, higher_is_better, human_reference
from fidelity_exp.metrics.divergence import js_distance, tvd, w1_ordinal
from fidelity_exp.metrics.regression import Fit, compare
from fidelity_exp.study import canonical_frame, parse_spec

SPEC = parse_spec({
    "name": "mini", "version": 1, "source": {"kind": "csv", "path": "unused.csv"},
    "persona": [{"column": "g", "type": "nominal"}],
    "questions": [
        {"column": "a", "text": "A?", "type": "ordinal", "role": "belief", "options": {1: "low", 2: "mid", 3: "high"}},
        {"column": "b", "text": "B?", "type": "binary", "role": "action", "options": {"no": "No", "yes": "Yes"}},
        {"column": "c", "text": "C?", "type": "nominal", "role": "other", "options": {"x": "X", "y": "Y"}},
    ],
    "subgroups": {"grp": {"column": "g", "groups": {"A": ["A"], "B": ["B"]}}},
    "coherence": [{"belief": "a", "action": "b", "contradiction": {"belief": [3], "action": ["yes"]}}],
})
HUMAN = {"g": list("AAABB"), "a": [1, 1, 2, 3, 3], "b": ["no", "no", "yes", "yes", "yes"], "c": list("xyxyx")}
SYNTH = {"g": list("AABBB"), "a": [1, 2, 2, 2, 3], "b": ["no", "yes", "yes", "yes", "no"], "c": list("xxxxx"),
         "twin_of": [0, 1, 2, 3, 4]}


def frame(data: dict) -> pd.DataFrame:
    return canonical_frame(SPEC, pd.DataFrame(data), origin="test", data_name="test", use_id=False,
                           extra_ok=["twin_of"])


def values(human=HUMAN, synth=SYNTH, spec=SPEC, **options) -> dict:
    opts = Options(bootstrap=0, reference_splits=0, permutations=0, min_group_size=options.pop("min_group_size", 2),
                   **options)
    return evaluate_arm(spec, frame(human), frame(synth), opts).values


def js_by_hand(p, q) -> float:
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = (p + q) / 2
    kl = lambda x, y: sum(xi * math.log(xi / yi) for xi, yi in zip(x, y) if xi > 0)  # noqa: E731
    return math.sqrt((kl(p, m) + kl(q, m)) / 2 / math.log(2))


def test_divergence():
    v = values()
    js_a = js_by_hand([.4, .2, .4], [.2, .6, .2])
    js_c = js_by_hand([.6, .4], [1, 0])
    assert v["divergence/js/a"] == pytest.approx(js_a, abs=1e-12)
    assert js_a == pytest.approx(jensenshannon([.4, .2, .4], [.2, .6, .2], base=2), abs=1e-12)
    assert v["divergence/js/b"] == pytest.approx(0.0, abs=1e-12)
    assert v["divergence/js/c"] == pytest.approx(js_c, abs=1e-12)
    assert v["divergence/js/mean"] == pytest.approx((js_a + 0 + js_c) / 3, abs=1e-12)
    assert v["divergence/tvd/a"] == pytest.approx(0.4)
    assert v["divergence/tvd/c"] == pytest.approx(0.4)
    assert v["divergence/w1/a"] == pytest.approx((0.2 + 0.2) / 2)   # F_P = (.4, .6), F_Q = (.2, .8), K - 1 = 2
    assert v["divergence/w1/b"] == pytest.approx(0.0)
    assert "divergence/w1/c" not in v                                 # nominal: no W1
    assert v["divergence/w1/mean"] == pytest.approx(0.1)


def test_dataframe_functions_match_the_suite():
    h, s = frame(HUMAN), frame(SYNTH)
    q = SPEC.question("a")
    assert js_distance(h, s, question=q) == pytest.approx(js_by_hand([.4, .2, .4], [.2, .6, .2]))
    assert tvd(h, s, question=q) == pytest.approx(0.4)
    assert w1_ordinal(h, s, question=q) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="ordinal or binary"):
        w1_ordinal(h, s, question=SPEC.question("c"))


def test_heterogeneity():
    v = values()
    assert v["heterogeneity/unique_profiles/human"] == 3          # belief question a: {1, 2, 3}
    assert v["heterogeneity/unique_profiles/synthetic"] == 3
    assert v["heterogeneity/unique_profiles/ratio"] == 1.0
    ent = lambda p: -sum(x * math.log(x) for x in p if x > 0)    # noqa: E731
    assert v["heterogeneity/entropy/a/human"] == pytest.approx(ent([.4, .2, .4]) / math.log(3))
    assert v["heterogeneity/entropy/a/synthetic"] == pytest.approx(ent([.2, .6, .2]) / math.log(3))
    assert v["heterogeneity/entropy/c/synthetic"] == 0.0
    ratios = [ent([.2, .6, .2]) / ent([.4, .2, .4]), 1.0, 0.0]
    assert v["heterogeneity/entropy_ratio/mean"] == pytest.approx(np.mean(ratios))
    sd_a = np.std([1, 2, 2, 2, 3], ddof=1) / np.std([1, 1, 2, 3, 3], ddof=1)
    sd_b = np.std([0, 1, 1, 1, 0], ddof=1) / np.std([0, 0, 1, 1, 1], ddof=1)   # text codes: positions
    assert v["heterogeneity/sd_ratio/a"] == pytest.approx(sd_a)
    assert v["heterogeneity/sd_ratio/b"] == pytest.approx(sd_b)
    assert v["heterogeneity/sd_ratio/mean"] == pytest.approx((sd_a + sd_b) / 2)


def test_subgroup_alignment_and_within_group_variance():
    v = values()
    js_a = np.mean([js_by_hand([2 / 3, 1 / 3, 0], [.5, .5, 0]), js_by_hand([2 / 3, 1 / 3], [.5, .5]),
                    js_by_hand([2 / 3, 1 / 3], [1, 0])])
    js_b = np.mean([js_by_hand([0, 0, 1], [0, 2 / 3, 1 / 3]), js_by_hand([0, 1], [1 / 3, 2 / 3]),
                    js_by_hand([.5, .5], [1, 0])])
    assert v["subgroup/grp/A/js"] == pytest.approx(js_a)
    assert v["subgroup/grp/B/js"] == pytest.approx(js_b)
    assert v["subgroup/grp/js/mean"] == pytest.approx((js_a + js_b) / 2)
    assert v["subgroup/grp/js/max"] == pytest.approx(max(js_a, js_b))
    assert v["subgroup/grp/js/gap"] == pytest.approx(abs(js_a - js_b))
    # level means of a: human A 4/3, B 3; synthetic A 1.5, B 7/3; of b: human 1/3, 1; synthetic 1/2, 2/3
    assert v["subgroup/grp/gap_inflation/mean"] == pytest.approx(((5 / 6) / (5 / 3) + (1 / 6) / (2 / 3)) / 2)
    # cells with human variance > 0: (A, a) 0.5 / (1/3) and (A, b) 0.5 / (1/3)
    assert v["within_group/grp/variance_ratio"] == pytest.approx(1.5)


def test_subgroup_level_too_small_is_left_out():
    v = values(min_group_size=3)           # level B has 2 humans: not valid
    assert "subgroup/grp/B/js" not in v or v["subgroup/grp/B/js"] is None
    assert v["subgroup/grp/js/mean"] == pytest.approx(v["subgroup/grp/A/js"])
    assert v["subgroup/grp/js/gap"] == 0.0


def test_a_level_the_simulator_never_produces_scores_one():
    synth = dict(SYNTH, g=list("AAAAA"))
    assert values(synth=synth)["subgroup/grp/B/js"] == 1.0


def test_coherence():
    v = values()
    rh = spearmanr([1, 1, 2, 3, 3], [0, 0, 1, 1, 1]).statistic
    rs = spearmanr([1, 2, 2, 2, 3], [0, 1, 1, 1, 0]).statistic
    assert v["coherence/a__b/spearman/human"] == pytest.approx(rh)
    assert v["coherence/a__b/spearman/synthetic"] == pytest.approx(rs)
    assert v["coherence/a__b/spearman/abs_diff"] == pytest.approx(abs(rh - rs))
    assert v["coherence/a__b/gap_rate/human"] == 1.0       # both a=3 humans answered yes
    assert v["coherence/a__b/gap_rate/synthetic"] == 0.0   # the one a=3 twin answered no
    assert v["coherence/a__b/gap_rate/abs_diff"] == 1.0


def test_twin_accuracy():
    v = values()
    for q in "abc":
        assert v[f"individual/{q}/accuracy"] == pytest.approx(3 / 5)
    assert v["individual/accuracy/mean"] == pytest.approx(0.6)
    assert "individual/accuracy/mean" not in values(synth={k: x for k, x in SYNTH.items() if k != "twin_of"})


def test_fidelity_score_is_the_mean_of_its_components():
    v = values()
    parts = [v["divergence/js/mean"], v["subgroup/grp/js/mean"], 0.0, v["coherence/a__b/spearman/abs_diff"]]
    assert v["fidelity_score"] == pytest.approx(np.mean(parts))   # no regression: left out
    only = values(score_components=("divergence/js/mean",))
    assert only["fidelity_score"] == pytest.approx(v["divergence/js/mean"])


# --- undefined is None, never 0 -------------------------------------------------------------


def test_question_without_synthetic_answers_is_undefined():
    v = values(synth=dict(SYNTH, c=[None] * 5))
    assert v["divergence/js/c"] is None and v["divergence/tvd/c"] is None
    assert v["heterogeneity/entropy/c/synthetic"] is None
    assert v["divergence/js/mean"] == pytest.approx((v["divergence/js/a"] + v["divergence/js/b"]) / 2)


def test_zero_human_spread_leaves_ratios_undefined():
    v = values(human=dict(HUMAN, a=[2] * 5))
    assert v["heterogeneity/sd_ratio/a"] is None
    assert v["coherence/a__b/spearman/human"] is None and v["coherence/a__b/spearman/abs_diff"] is None
    assert v["heterogeneity/unique_profiles/ratio"] == 3.0        # 3 synthetic profiles / 1 human profile


# --- regression ------------------------------------------------------------------------------


def fit(coef, p, se=0.1):
    return Fit(coef=coef, se={t: se for t in coef}, p=p, low={t: c - 2 * se for t, c in coef.items()},
               high={t: c + 2 * se for t, c in coef.items()})


def test_regression_aggregates_by_hand():
    human = fit({"Intercept": 1.0, "x1": 0.5, "x2": -0.4, "x3": 0.01, "x4": 0.3},
                {"Intercept": 0.0, "x1": 0.001, "x2": 0.001, "x3": 0.8, "x4": 0.01})
    synth = fit({"Intercept": -1.0, "x1": 0.45, "x2": 0.5, "x3": 0.3, "x4": 0.05},
                {"Intercept": 0.0, "x1": 0.001, "x2": 0.001, "x3": 0.01, "x4": 0.7})
    per, agg = compare(human, synth, alpha=0.05)
    # labels y (human) = (+, -, 0, +), yhat (synthetic) = (+, +, +, 0) over x1..x4
    assert agg["sign_agreement"] == pytest.approx(3 / 4)       # x2 disagrees; the intercept is left out
    assert agg["sign_f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))   # TP x1; FP x2, x3; FN x2, x4
    assert agg["false_positive_rate"] == 1.0                    # x3: y = 0, yhat != 0
    # |b_H - b_S| > 1.959964 * sqrt(0.1^2 + 0.1^2) = 0.277 for x2 (0.9) and x3 (0.29), not x1, x4 (0.25)
    assert agg["sig_diff_rate"] == pytest.approx(2 / 4)
    assert agg["ci_coverage"] == pytest.approx(1 / 4)          # only x1's human estimate lies in S's interval
    assert per["x1/z_diff"] == pytest.approx(0.05 / math.sqrt(0.02))
    assert per["Intercept/sign_agree"] == 0.0 and per["x2/ci_overlap"] == 0.0 and per["x4/ci_overlap"] == 1.0


def test_regression_f1_and_fpr_undefined_without_labels():
    human = fit({"Intercept": 1.0, "x1": 0.5}, {"Intercept": 0.0, "x1": 0.001})
    per, agg = compare(human, human, alpha=0.05)
    assert agg["sign_f1"] == 1.0 and agg["false_positive_rate"] is not None and np.isnan(agg["false_positive_rate"])
    none_significant = fit({"Intercept": 1.0, "x1": 0.5}, {"Intercept": 0.0, "x1": 0.5})
    assert np.isnan(compare(none_significant, none_significant, alpha=0.05)[1]["sign_f1"])


def test_registry_directions():
    assert higher_is_better("finetuned/fidelity_score") is False
    assert higher_is_better("base/regression/vote_choice/sign_f1") is True
    assert higher_is_better("tabular/divergence/js/mean") is False
    assert higher_is_better("x/heterogeneity/unique_profiles/ratio") is None
    with pytest.raises(KeyError):
        higher_is_better("x/no/such/metric")


def test_unknown_family_lists_the_known_ones():
    from fidelity_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics.families='diversity'.*unknown metric family; known: .*divergence.*within_group"):
        Options(families=("diversity",))


def test_reference_is_the_mean_over_human_halves():
    human = frame({"g": list("AABBAABBAB") * 4, "a": [1, 2, 3, 2, 1, 3, 3, 2, 1, 1] * 4,
                   "b": ["no", "yes"] * 20, "c": list("xxyyxyxyxy") * 4})
    ref = human_reference(SPEC, human, Options(bootstrap=0, reference_splits=5, min_group_size=2))
    assert set(ref) >= {"reference/human_split/divergence/js/mean", "reference/human_split/fidelity_score"}
    assert 0 < ref["reference/human_split/divergence/js/mean"] < 1
    assert all(k.startswith("reference/human_split/") for k in ref)
