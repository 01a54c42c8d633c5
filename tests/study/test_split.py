"""Pilot/evaluation split: disjoint, deterministic, stratified when asked, clear errors."""

from __future__ import annotations

import pytest

from fidelity_exp.errors import ConfigError
from fidelity_exp.study import draw_split, load_spec_file, load_study, subgroup_levels

from ..conftest import CONF


@pytest.fixture(scope="module")
def anes():
    return load_study(load_spec_file(CONF / "data" / "anes96.yaml"))


@pytest.fixture(scope="module")
def disclosure():
    return load_study(load_spec_file(CONF / "data" / "disclosure.yaml"))


def test_disjoint_and_complete(anes):
    split = draw_split(anes, n=100, seed=0)
    assert len(split.pilot) == 100 and len(split.evaluation) == len(anes) - 100
    assert not set(split.pilot) & set(split.evaluation)
    assert set(split.pilot) | set(split.evaluation) == set(anes.ids)


def test_deterministic_and_seed_dependent(anes):
    a, b = draw_split(anes, n=50, seed=3), draw_split(anes, n=50, seed=3)
    assert list(a.pilot) == list(b.pilot) and list(a.evaluation) == list(b.evaluation)
    assert list(draw_split(anes, n=50, seed=4).pilot) != list(a.pilot)


def test_eval_n_caps_the_evaluation_set(anes):
    split = draw_split(anes, n=100, seed=0, eval_n=200)
    assert len(split.evaluation) == 200 and not set(split.pilot) & set(split.evaluation)


def test_stratified_is_proportional(disclosure):
    n = 200
    split = draw_split(disclosure, method="stratified", n=n, seed=1, by="ethnicity")
    sg = next(s for s in disclosure.spec.subgroups if s.name == "ethnicity")
    levels = subgroup_levels(sg, disclosure.frame)
    population = levels.value_counts(normalize=True)
    pilot = levels.loc[split.pilot].value_counts()
    assert pilot.sum() == n
    for level, share in population.items():
        assert abs(pilot[level] - n * share) < 1.0, level   # largest-remainder allocation
    # a random draw of the same size does not generally match the shares this closely
    assert not set(split.pilot) & set(split.evaluation)


def test_stratified_by_a_question_column(anes):
    split = draw_split(anes, method="stratified", n=90, seed=0, by="party")
    assert len(split.pilot) == 90


@pytest.mark.parametrize("n", [0, -5, 944, 10_000, 2.5])
def test_pilot_n_out_of_range(anes, n):
    with pytest.raises(ConfigError, match=r"pilot.n=.*from 1 to 943.*944 respondents"):
        draw_split(anes, n=n, seed=0)


def test_stratum_too_small(disclosure):
    with pytest.raises(ConfigError, match=r"stratum 'Other' of subgroup 'ethnicity'.*no pilot place"):
        draw_split(disclosure, method="stratified", n=10, seed=0, by="ethnicity")


def test_stratified_needs_a_known_subgroup(anes):
    with pytest.raises(ConfigError, match=r"pilot.by=None.*party, age, education"):
        draw_split(anes, method="stratified", n=10, seed=0)
    with pytest.raises(ConfigError, match=r"pilot.method='cluster'"):
        draw_split(anes, method="cluster", n=10, seed=0)


def test_evaluation_humans_do_not_depend_on_the_pilot(anes):
    """With eval.n set, every pilot size and seed is scored on the same evaluation humans."""
    reference = draw_split(anes, n=25, seed=0, eval_n=200, eval_seed=7).evaluation
    for n, seed in [(25, 1), (100, 0), (400, 2)]:
        split = draw_split(anes, n=n, seed=seed, eval_n=200, eval_seed=7)
        assert list(split.evaluation) == list(reference)
        assert len(split.pilot) == n and not set(split.pilot) & set(reference)
    assert list(draw_split(anes, n=25, seed=0, eval_n=200, eval_seed=8).evaluation) != list(reference)


def test_validation_is_carved_from_the_pilot_side(anes):
    split = draw_split(anes, n=100, seed=0, eval_n=200, validation_n=80)
    sets = [set(split.pilot), set(split.validation), set(split.evaluation)]
    assert [len(s) for s in sets] == [100, 80, 200]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # the evaluation humans are the same with or without a validation set
    assert list(draw_split(anes, n=100, seed=0, eval_n=200).evaluation) == list(split.evaluation)
    scored = split.scored_on("validation")
    assert list(scored.evaluation) == list(split.validation) and list(scored.pilot) == list(split.pilot)
    assert not set(scored.evaluation) & set(split.evaluation)


def test_validation_errors(anes):
    with pytest.raises(ConfigError, match=r"score_on='validation'.*validation.n"):
        draw_split(anes, n=100, seed=0).scored_on("validation")
    with pytest.raises(ConfigError, match=r"score_on='humans'"):
        draw_split(anes, n=100, seed=0).scored_on("humans")
    with pytest.raises(ConfigError, match=r"pilot.n=700.*from 1 to 644.*200 are evaluation.*100 validation"):
        draw_split(anes, n=700, seed=0, eval_n=200, validation_n=100)
    with pytest.raises(ConfigError, match=r"validation.n=-1"):
        draw_split(anes, n=10, seed=0, validation_n=-1)
