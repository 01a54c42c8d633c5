"""Sound conclusions (METRICS.md sections 8, 10, 11): intervals that contain their estimate, swap
tests whose batched swaps equal swaps done by hand, p and q values as defined, arm comparisons,
and the calibration of all of it on a population with known truth."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from fidelity_exp.metrics import Options, evaluate_arm, registry
from fidelity_exp.metrics.intervals import METHODS, basic_squared, interval
from fidelity_exp.metrics.suite import compare_arms
from fidelity_exp.metrics.swap import PAIRED, POOLED, benjamini_hochberg, p_value
from fidelity_exp.study import canonical_frame, load_spec_file
from fidelity_exp.study.synthetic import disclosure, disclosure_twins
from fidelity_exp.study.synthetic_file import check_synthetic

from ..conftest import CONF, REPO

SPEC = load_spec_file(CONF / "data" / "disclosure.yaml")
NO_TESTS = dict(bootstrap=0, reference_splits=0, permutations=0)


@pytest.fixture(scope="module")
def people():
    raw = disclosure(160, seed=4)
    humans = canonical_frame(SPEC, raw, origin="t", data_name="t")
    twins = disclosure_twins(raw, seed=5).drop(columns=["respondent_id"]).assign(twin_of=raw.respondent_id)
    return raw, humans, check_synthetic(SPEC, twins, name="twins", human_ids=humans.index)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=5, max_size=60), st.floats(0, 1), st.sampled_from(list(METHODS)),
       st.sampled_from([None, "divergence", "distance"]))
def test_every_interval_contains_its_estimate_and_stays_in_bounds(reps, point, method, bias):
    low, high = interval(point, np.array(reps), method, bias=bias, bounds=(0, 1))
    assert 0 <= low <= point <= high <= 1


def test_basic_interval_on_the_squared_scale_by_hand():
    reps = np.array([0.3, 0.4, 0.5])              # squares 0.09, 0.16, 0.25
    low, high = basic_squared(0.4, reps, level=0.5)   # quartiles of the squares: 0.125, 0.205
    assert low == pytest.approx(np.sqrt(2 * 0.16 - 0.205)) and high == pytest.approx(np.sqrt(2 * 0.16 - 0.125))


def test_p_and_q_values_as_defined():
    assert p_value(0.5, np.array([0.1, 0.5, 0.7, 0.2])) == pytest.approx(3 / 5)    # (1 + 2) / (4 + 1)
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}
    q = benjamini_hochberg(p)
    expected = multipletests(list(p.values()), method="fdr_bh")[1]
    assert [q[k] for k in p] == pytest.approx(list(expected))


def _by_hand(raw, humans, twins, swap: np.ndarray) -> dict:
    """The metrics of one swap pattern, built with pandas: swapped pairs exchange their answers."""
    h, s = humans.copy(), twins.copy()
    rows = np.flatnonzero(swap)
    for q in SPEC.question_columns:
        hv, sv = h[q].to_numpy().copy(), s[q].to_numpy().copy()
        hv[rows], sv[rows] = s[q].to_numpy()[rows], h[q].to_numpy()[rows]
        h[q] = pd.Categorical(hv, dtype=humans[q].dtype)
        s[q] = pd.Categorical(sv, dtype=twins[q].dtype)
    return evaluate_arm(SPEC, h, s, Options(**NO_TESTS)).values


def test_batched_swaps_equal_swaps_done_by_hand(people, monkeypatch):
    from fidelity_exp.metrics import suite

    raw, humans, twins = people
    seen = {}
    original = suite.compute

    def spy(h, hi, s, si, ctx, **kw):
        out = original(h, hi, s, si, ctx, **kw)
        if kw.get("swap_invariant") is False:
            seen["values"], seen["si"] = out[0], si
        return out

    monkeypatch.setattr(suite, "compute", spy)
    values = evaluate_arm(SPEC, humans, twins, Options(bootstrap=0, reference_splits=0, permutations=19)).values
    for r in range(2):
        swap = seen["si"][r] >= len(twins)          # twin j swapped when its row comes from the swapped copy
        hand = _by_hand(raw, humans, twins, swap)
        for key in ("divergence/js/mean", "subgroup/ethnicity/js/mean", "heterogeneity/unique_profiles/ratio",
                    "coherence/concern__disclose/spearman/abs_diff", "regression/disclosure/sign_f1", "fidelity_score"):
            assert seen["values"][key][r] == pytest.approx(hand[key], abs=1e-12, nan_ok=True), key
    assert values[registry.tests_key("n_tested")] > 10


def test_twins_identical_to_their_humans_are_never_distinguishable(people):
    raw, humans, _ = people
    twins = check_synthetic(SPEC, raw.drop(columns=["respondent_id"]).assign(twin_of=raw.respondent_id), name="same",
                            human_ids=humans.index)
    result = evaluate_arm(SPEC, humans, twins, Options(bootstrap=20, reference_splits=0, permutations=30))
    values = result.values
    assert result.notes[registry.tests_key("design")] == PAIRED
    p_values = {k: v for k, v in values.items() if k.endswith("/perm/p_value")}
    assert p_values and all(v == 1.0 for v in p_values.values())       # every swap changes nothing
    assert values[registry.tests_key("n_distinguishable")] == 0
    assert values[registry.tests_key("distinguishable/share")] == 0
    assert values[registry.perm_key("divergence/js/mean", "null_median")] == values["divergence/js/mean"] == 0


def test_unpaired_twins_are_tested_by_permuting_labels(people):
    _, humans, twins = people
    result = evaluate_arm(SPEC, humans, twins.drop(columns=["twin_of"]), Options(bootstrap=0, permutations=20,
                                                                                reference_splits=0))
    assert result.notes[registry.tests_key("design")] == POOLED
    assert registry.perm_key("divergence/js/mean", "p_value") in result.values


def test_an_arm_compared_with_itself_is_no_better(people):
    _, humans, twins = people
    opts = Options(bootstrap=30, reference_splits=0, permutations=30)
    results = {name: evaluate_arm(SPEC, humans, twins, opts) for name in ("a", "b")}
    out, _ = compare_arms(results, ("a", "b"), opts)
    key = "divergence/js/mean"
    assert out[registry.compare_key("a", "b", key, "better")] == 0
    assert out[registry.compare_key("a", "b", key, "ci_low")] == 0 == out[registry.compare_key("a", "b", key, "ci_high")]
    assert out[registry.compare_key("a", "b", key, "p_value")] == 1.0
    assert out[registry.compare_key("a", "b", None)] == 0.0


def test_a_worse_arm_loses_the_comparison(people):
    raw, humans, twins = people
    worse = twins.copy()
    for q in SPEC.questions:      # every answer collapsed to the first option
        worse[q.column] = pd.Categorical([q.codes[0]] * len(worse), dtype=twins[q.column].dtype)
    opts = Options(bootstrap=50, reference_splits=0, permutations=50)
    results = {"good": evaluate_arm(SPEC, humans, twins, opts), "bad": evaluate_arm(SPEC, humans, worse, opts)}
    out, _ = compare_arms(results, ("good", "bad"), opts)
    key = "divergence/js/mean"
    assert out[registry.compare_key("good", "bad", key, "better")] > 0.3
    assert out[registry.compare_key("good", "bad", key, "p_value")] == pytest.approx(1 / 51)
    assert out[registry.compare_key("good", "bad", key, "ci_low")] > 0
    assert out[registry.compare_key("good", "bad", None)] > 0.5
    assert results["bad"].values[registry.perm_key(key, "q_value")] <= 0.05


@pytest.mark.slow
def test_calibration_on_a_population_with_known_truth(tmp_path):
    """benchmarks/calibration.py at a size CI affords (40 repetitions of 200, B = 100, R = 200 (fewer
    swaps cost power: p values cannot go below 1 / (R + 1), see README "The cost of R"); the
    README reports the 200-repetition runs). Bounds are the targets widened by three Monte-Carlo
    standard errors at 40 repetitions (tests of one repetition share its data, so a family's
    rejection rate varies like a share over 40, not over its number of tests): they fail for a
    test that is not valid or has no power, or intervals far from nominal, not for noise."""
    out = tmp_path / "calibration.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibration.py"), "--reps", "40",
                           "--bootstrap", "100", "--permutations", "200", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    se = lambda share: 3 * np.sqrt(share * (1 - share) / figures["reps"])   # noqa: E731
    for fam, rate in figures["same_rejection_rate_by_family"].items():
        assert rate <= 0.05 + se(0.05), (fam, rate)
    assert figures["same_distinguishable_share_zero"] >= 0.9 - se(0.9)
    assert figures["perturbed_divergence_detected"] >= 0.8 - se(0.8)
    for fam, coverage in figures["perturbed_coverage_by_family"].items():
        assert 0.9 - se(0.9) <= coverage <= 0.99 + se(0.95), (fam, coverage)


def test_verdict_sentences_are_written_from_the_numbers():
    from fidelity_exp.report import verdict

    m = {}
    for arm, qs in (("ft", {"divergence/js/mean": 0.2, "subgroup/g/js/mean": 0.01}),
                    ("base", {"divergence/js/mean": 0.001, "subgroup/g/js/mean": 0.001})):
        for key, q in qs.items():
            m[registry.perm_key(registry.arm_key(arm, key), "q_value")] = q
    m[registry.compare_key("ft", "base", "divergence/js/mean", "better")] = 0.05
    m[registry.compare_key("ft", "base", "divergence/js/mean", "p_value")] = 0.004
    m[registry.compare_key("ft", "base", "subgroup/g/js/mean", "better")] = -0.01
    m[registry.compare_key("ft", "base", "subgroup/g/js/mean", "p_value")] = 0.4
    said = verdict.sentences(m, ["ft", "base"], [("ft", "base")], ["divergence/js/mean", "subgroup/g/js/mean"], 0.05)
    assert said[0] == ("ft is indistinguishable from the humans on 1 of 2 summary components (q > 0.05); "
                       "distinguishable on subgroup/g/js/mean (q = 0.010).")
    assert said[1].startswith("base is indistinguishable from the humans on 0 of 2")
    assert said[2] == ("ft beats base on divergence/js/mean (p = 0.004); but not on subgroup/g/js/mean "
                       "(BH at 0.05).")


def _answer_metrics(tuned_better: dict[str, tuple[float, float]], qs: dict[str, dict[str, float]],
                    scores: dict[str, float]) -> dict:
    m = {}
    for arm, by_key in qs.items():
        for key, q in by_key.items():
            m[registry.perm_key(registry.arm_key(arm, key), "q_value")] = q
    for key, (better, p) in tuned_better.items():
        m[registry.compare_key("finetuned", "base", key, "better")] = better
        m[registry.compare_key("finetuned", "base", key, "p_value")] = p
    for arm, score in scores.items():
        m[registry.arm_key(arm, "fidelity_score")] = score
    m[registry.reference_key("fidelity_score")] = 0.1
    return m


def test_the_short_answer_says_first_whether_fine_tuning_helped():
    """#30: the description's first sentences answer "did fine-tuning help?" (with how much, p and
    q), then which arms are like the humans, then the best arm; one row per arm with marks."""
    from fidelity_exp.report import verdict

    keys = ["divergence/js/mean", "subgroup/g/js/mean", "coherence/a__b/spearman/abs_diff"]
    qs = {"finetuned": dict.fromkeys(keys, 0.5), "base": {keys[0]: 0.01, keys[1]: 0.5, keys[2]: 0.02},
          "tabular": dict.fromkeys(keys, 0.3)}
    m = _answer_metrics({keys[0]: (0.05, 0.004), keys[1]: (0.001, 0.6), keys[2]: (0.03, 0.01)}, qs,
                        {"finetuned": 0.21, "base": 0.35, "tabular": 0.25})
    said = verdict.short_answer(m, ["base", "finetuned", "tabular"], keys, 0.05)
    assert said[0] == ("Fine-tuning helped: finetuned beats base on 2 of 3 score components (divergence/js/mean by "
                       "0.05 (p 0.004, q 0.012); coherence/a__b/spearman/abs_diff by 0.03 (p 0.010, q 0.015)) "
                       "(BH at 0.05).")
    assert said[1] == ("Like the humans on every score component: finetuned, tabular; like them on 1 of 3 for base "
                       "(swap tests, q > 0.05).")
    assert said[2] == ("Best fidelity_score (lower is better): finetuned 0.210, then tabular 0.250, base 0.350; "
                       "two halves of the humans score 0.100.")
    rows = verdict.compact_table(m, ["base", "finetuned"], keys, 0.05)
    assert rows[2] == "| base | 0.350 | 1 of 3 | ✗ | ✓ | ✗ |" and rows[3] == "| finetuned | 0.210 | 3 of 3 | ✓ | ✓ | ✓ |"
    worse = _answer_metrics({keys[0]: (-0.05, 0.001)}, qs, {"finetuned": 0.4, "base": 0.3})
    assert verdict.short_answer(worse, ["base", "finetuned"], keys, 0.05)[0].startswith(
        "Fine-tuning made twins worse: base beats finetuned on 1 of 1 score components (divergence/js/mean by 0.05")
    none = _answer_metrics({k: (0.01, 0.5) for k in keys}, qs, {"finetuned": 0.3, "base": 0.3})
    assert verdict.short_answer(none, ["base", "finetuned"], keys, 0.05)[0] == (
        "Fine-tuning did not change the twins detectably: finetuned and base differ on none of 3 score components "
        "(BH at 0.05).")
    assert verdict.short_answer(m, ["tabular"], keys, 0.05)[0].startswith("Fine-tuning: this run has no finetuned")


def test_the_run_description_opens_with_the_answer(tmp_path):
    """The tiny quickstart's description names finetuned vs base within its first 800 characters
    (what the MLflow UI shows before "Show more")."""
    import json

    from fidelity_exp.report import run_description

    from ..command import main

    done = main("+experiment=quickstart", "model=tiny_random", "finetune.max_steps=2", "pilot.n=40", "eval.n=40",
                "metrics.bootstrap=20", "metrics.permutations=20", "metrics.reference_splits=3",
                "tracking.traces_per_arm=0", "hydra.run.dir=out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    text = run_description(metrics, ["base", "finetuned", "pilot_resample", "tabular"])
    first = text[:800]
    assert first.startswith("## The answer") and "finetuned" in first and "base" in first
    assert "Fine-tuning" in first and ("Like the humans" in first or "No arm is like the humans" in first)
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert report.index("## The answer") < report.index("## Verdict")
