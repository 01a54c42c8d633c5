"""The no-LLM baselines: twins of exactly the evaluation humans, answers in the spec's codes,
seeded, and doing what their names say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fidelity_exp.arms import ARMS, ArmContext, build_arms
from fidelity_exp.arms.pilot_resample import nearest_cells
from fidelity_exp.arms.tabular import fit_multinomial, predict_proba
from fidelity_exp.errors import ConfigError
from fidelity_exp.study import draw_split, study_from_file
from fidelity_exp.study.synthetic_file import check_synthetic

from ..conftest import CONF


@pytest.fixture(scope="module")
def disclosure():
    study = study_from_file(CONF / "data" / "disclosure.yaml")
    return study, draw_split(study, n=150, seed=0)


def twins_of(arm: str, study, split, seed: int, **options) -> pd.DataFrame:
    """An arm built from its class with `options`, answering as twins of the split's evaluation humans."""
    return ARMS[arm](**options).simulate(ArmContext(study, split, seed=seed)).frame


@pytest.mark.parametrize("arm", ["pilot_resample", "tabular"])
def test_twins_of_the_evaluation_humans_in_spec_format(disclosure, arm):
    study, split = disclosure
    raw = twins_of(arm, study, split, 7)
    twins = check_synthetic(study.spec, raw, name=arm, human_ids=split.evaluation)   # raises if malformed
    assert list(twins["twin_of"]) == list(split.evaluation)
    assert not set(twins["twin_of"]) & set(split.pilot)
    given = study.frame.loc[split.evaluation, study.spec.given_columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(twins[study.spec.persona_columns].reset_index(drop=True),
                                  given[study.spec.persona_columns], check_dtype=False, check_index_type=False)
    again = twins_of(arm, study, split, 7)
    pd.testing.assert_frame_equal(raw, again)                       # seeded
    assert not raw.equals(twins_of(arm, study, split, 8))           # and seed-dependent


def test_pilot_resample_copies_a_whole_pilot_answer_vector_from_the_nearest_cell(disclosure):
    study, split = disclosure
    pilot = study.frame.loc[split.pilot]
    raw = twins_of("pilot_resample", study, split, 0)
    pilot_vectors = {tuple(r) for r in pilot[study.spec.question_columns].astype(object).itertuples(index=False)}
    twin_vectors = [tuple(r) for r in raw[study.spec.question_columns].itertuples(index=False)]
    assert all(v in pilot_vectors for v in twin_vectors)


def test_nearest_cell_prefers_exact_matches_and_falls_back_to_the_whole_pilot():
    from fidelity_exp.study import parse_spec

    spec = parse_spec({"name": "t", "version": 1, "source": {"kind": "csv", "path": "x"},
                       "persona": [{"column": "sex", "type": "nominal"}, {"column": "age", "type": "numeric"}],
                       "questions": [{"column": "q", "text": "?", "type": "binary", "options": {0: "n", 1: "y"}}]})
    pilot = pd.DataFrame({"sex": ["f", "f", "m", "m"], "age": [20.0, 60.0, 20.0, 60.0]})
    twins = pd.DataFrame({"sex": ["f", "m", None], "age": [21.0, 59.0, np.nan]})
    cells = nearest_cells(spec, pilot, twins, bins=2)
    assert cells[0].tolist() == [True, False, False, False]
    assert cells[1].tolist() == [False, False, False, True]
    assert cells[2].all()                                            # nothing comparable: the whole pilot


def test_tabular_logit_recovers_a_known_multinomial_model():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 2))
    W_true = np.array([[0.0, 0.5, -0.5], [0.0, 1.5, -1.0], [0.0, -1.0, 2.0]])
    P = predict_proba(W_true, X)
    y = (rng.random(len(X))[:, None] > np.cumsum(P, axis=1)).sum(axis=1)
    W = fit_multinomial(X, y, 3, l2=1e-3)
    W -= W[:, :1]                                                     # identify against class 0
    assert np.abs(W - W_true).max() < 0.2


def test_tabular_probabilities_are_a_distribution(disclosure):
    study, split = disclosure
    raw = twins_of("tabular", study, split, 0, condition_on_previous=True, l2=1.0)
    for q in study.spec.questions:
        probs = raw[[f"{q.column}__p__{c}" for c in q.codes]].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()


def test_unknown_arm_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"arms='gpt5'.*unknown arm; known: base, finetuned, pilot_resample, served, tabular"):
        ARMS["gpt5"]


def test_arm_options_are_typed_and_range_checked():
    target = {"_target_": "fidelity_exp.arms.tabular.Tabular"}
    assert build_arms({"tab": {**target, "l2": 3}})["tab"].l2 == 3.0
    for options, key in (({"l2": "lots"}, "arms.tab.l2"), ({"l2": -1}, "arms.tab.l2"), ({"l3": 1}, "arms.tab.l3"),
                         ({"condition_on_previous": "maybe"}, "arms.tab.condition_on_previous")):
        with pytest.raises(ConfigError, match=key):
            build_arms({"tab": {**target, **options}})
    with pytest.raises(ConfigError, match="arms.tab._target_"):
        build_arms({"tab": {"_target_": "fidelity_exp.study.Split"}})
