"""Option order (METRICS.md section 12) on `tiny_random`: one place renders the order, the
engine's forward, reversed, random and averaged probabilities equal full-prompt computations,
the position metrics read a letter preference right, and fine-tuning with random orders renders
every epoch anew."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fidelity_exp.arms.llm import answers_of, records
from fidelity_exp.llm.engine import direct_probabilities, simulate, uniforms_for
from fidelity_exp.llm.finetune import finetune, training_data, training_set
from fidelity_exp.llm.interview import LETTERS, Renderer, interview_orders, messages, shown_order
from fidelity_exp.metrics.position import MEASURES, OrderScorings, mean_key, per_twin, position_metrics, question_key
from fidelity_exp.metrics.suite import Options
from fidelity_exp.study import draw_split, study_from_file

from ..conftest import CONF
from .test_llm import lora_cfg, tiny


@pytest.fixture(scope="module")
def study():
    s = study_from_file(CONF / "data" / "anes96.yaml")
    return s, draw_split(s, n=16, seed=0, eval_n=6)


@pytest.fixture(scope="module")
def base():
    return tiny()


def twins_of(study):
    s, split = study
    return records(s.frame.loc[split.evaluation], s.spec.given_columns)


def reversed_at(orders, j, k):
    return [*orders[:j], tuple(range(k - 1, -1, -1)), *orders[j + 1:]]


def forward_at(orders, j):
    return [*orders[:j], None, *orders[j + 1:]]


# --- rendering ----------------------------------------------------------------------------------


def test_letters_follow_the_shown_order_and_answers_stay_codes(study):
    s, _ = study
    q = s.spec.question("selfLR")
    rev = shown_order("reversed", len(q.options))
    texts = list(q.options.values())
    chat = messages(s.spec, {}, [q.codes[0], None, None, None, None], upto=1, show_persona=False,
                    orders=[rev, None, None, None, None])
    assert f"A. {texts[-1]}" in chat[1]["content"] and f"{LETTERS[len(texts) - 1]}. {texts[0]}" in chat[1]["content"]
    assert chat[2]["content"] == LETTERS[len(texts) - 1]      # the first code, shown last
    fixed = messages(s.spec, {}, [q.codes[0], None, None, None, None], upto=1, show_persona=False)
    assert fixed[2]["content"] == "A" and f"A. {texts[0]}" in fixed[1]["content"]


def test_random_orders_are_deterministic_per_seed_and_differ_by_seed(study):
    s, _ = study
    a = [interview_orders(s.spec, "random", seed=7, who=i) for i in range(20)]
    assert a == [interview_orders(s.spec, "random", seed=7, who=i) for i in range(20)]
    assert a != [interview_orders(s.spec, "random", seed=8, who=i) for i in range(20)]
    assert len({o[0] for o in a}) > 5                       # twins get different orders of one question
    for orders in a:                                        # every order is a permutation
        assert all(sorted(o) == list(range(len(q.options))) for o, q in zip(orders, s.spec.questions))
    assert shown_order("fixed", 4) == (0, 1, 2, 3) and shown_order("reversed", 4) == (3, 2, 1, 0)
    with pytest.raises(ValueError, match="sideways"):
        shown_order("sideways", 3)


# --- the engine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reversed", "random", "averaged"])
def test_engine_probabilities_equal_the_full_prompt_computation(study, base, mode):
    """Each twin's answer probabilities (over codes) under `mode`, and its forward and reversed
    scorings with its earlier answers fixed, equal a direct computation on the full prompt
    rendered that way (batch 4 of 6: padding and the cache's roll-back in play)."""
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    result = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 0), batch_size=4, option_order=mode,
                      order_seed=3, position=True)
    for i, twin in enumerate(twins):
        orders = interview_orders(s.spec, "fixed" if mode == "averaged" else mode, seed=3, who=i)
        for j, q in enumerate(s.spec.questions):
            earlier = result.answers[i][:j]
            fwd = direct_probabilities(base.model, r, twin, earlier, j, forward_at(orders, j))
            rev = direct_probabilities(base.model, r, twin, earlier, j, reversed_at(orders, j, len(q.options)))
            np.testing.assert_allclose(result.forward[j][i], fwd, atol=1e-5)
            np.testing.assert_allclose(result.reverse[j][i], rev, atol=1e-5)
            expected = (fwd + rev) / 2 if mode == "averaged" else direct_probabilities(base.model, r, twin, earlier,
                                                                                      j, orders)
            np.testing.assert_allclose(result.probabilities[j][i], expected, atol=1e-5)
            assert np.isclose(result.probabilities[j][i].sum(), 1.0)
    assert not np.allclose(result.forward[0], result.reverse[0], atol=1e-4)   # the order matters to this model


def test_position_scoring_leaves_the_fixed_interview_unchanged(study, base):
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    plain = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 1), batch_size=4)
    scored = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 1), batch_size=4, position=True)
    assert plain.forward is None and scored.answers == plain.answers
    for j in range(5):
        np.testing.assert_allclose(scored.probabilities[j], plain.probabilities[j], atol=1e-5)
        np.testing.assert_allclose(scored.forward[j], plain.probabilities[j], atol=1e-5)
    assert scored.tokens > plain.tokens       # the reversed scorings' own tokens (options, answer slot)
    again = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 1), batch_size=3, option_order="random",
                     order_seed=5, position=True)
    same = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 1), batch_size=6, option_order="random",
                    order_seed=5, position=True)
    other = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 1), batch_size=6, option_order="random",
                     order_seed=6, position=True)
    assert again.answers == same.answers
    assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(same.probabilities, other.probabilities))


@pytest.mark.parametrize("mode", ["fixed", "random"])
def test_position_scoring_of_a_subsample_leaves_every_interview_as_it_was(study, base, mode):
    """`position_rows`: the forward and reversed scorings of those twins only (in that order), the
    same as when every twin is scored; every twin's own interview is bit for bit the same (batch 4
    of 6: batches with and without scored twins)."""
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    run = lambda **kw: simulate(base.model, r, twins, uniforms_for(len(twins), 5, 1), batch_size=4,
                                option_order=mode, order_seed=2, position=True, **kw)
    every, some = run(), run(position_rows=[5, 1])
    assert some.answers == every.answers
    for j in range(5):
        np.testing.assert_array_equal(some.probabilities[j], every.probabilities[j])
        np.testing.assert_allclose(some.forward[j], every.forward[j][[5, 1]], atol=1e-5)
        np.testing.assert_allclose(some.reverse[j], every.reverse[j][[5, 1]], atol=1e-5)
    assert some.tokens < every.tokens
    with pytest.raises(ValueError, match="position_rows"):
        run(position_rows=[1, 1])


def test_the_position_subsample_is_seeded_and_shared_by_the_arms():
    from fidelity_exp.arms.llm import SimulateSettings

    rows = SimulateSettings(position_twins=50, seed=0).position_rows(200)
    assert rows == sorted(set(rows)) and len(rows) == 50 and all(0 <= i < 200 for i in rows)
    assert rows == SimulateSettings(position_twins=50, seed=0).position_rows(200)     # every arm: the same twins
    assert rows != SimulateSettings(position_twins=50, seed=1).position_rows(200)
    assert SimulateSettings(position_twins="all").position_rows(200) is None
    assert SimulateSettings(position_twins=50).position_rows(40) is None             # fewer twins: every one


def _letter_model(tokenizer, preference: float):
    """A hand-built model: the tiny Llama whose output ignores its input and gives the letter A
    a logit of `preference` (0: every letter alike)."""
    model = tiny().model
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[tokenizer.encode("A", add_special_tokens=False)[0]] = preference
    model.lm_head = head
    return model.eval()


def test_position_metrics_read_a_letter_preference(study, base):
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    out = {}
    for preference in (2.0, 0.0):
        res = simulate(_letter_model(base.tokenizer, preference), r, twins, uniforms_for(len(twins), 5, 0),
                       batch_size=4, position=True)
        out[preference] = position_metrics(s.spec, OrderScorings(res.forward, res.reverse), Options(bootstrap=50))
    for q in s.spec.questions:
        k = len(q.options)
        favoured = np.exp(2.0) / (np.exp(2.0) + k - 1)     # A's probability, whatever A is
        assert out[2.0][question_key(q.column, "primacy")] == pytest.approx(favoured - 1 / k, abs=1e-5)
        others = (1 - favoured) / (k - 1)                  # TV: A's option gains what the last shown loses
        assert out[2.0][question_key(q.column, "order_sensitivity")] == pytest.approx(favoured - others, abs=1e-5)
        for m in MEASURES:
            assert out[0.0][question_key(q.column, m)] == pytest.approx(0.0, abs=1e-6)
    assert out[2.0][mean_key("primacy")] > 0.2
    low, high = out[2.0][mean_key("primacy") + "/ci_low"], out[2.0][mean_key("primacy") + "/ci_high"]
    assert low <= out[2.0][mean_key("primacy")] <= high


def test_position_metrics_by_hand():
    fwd = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    rev = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])    # over codes: reversed, code 3 was shown first
    got = per_twin(fwd, rev)
    np.testing.assert_allclose(got["order_sensitivity"], [0.2, 0.1])
    np.testing.assert_allclose(got["primacy"], [(0.7 + 0.2) / 2 - 1 / 3, (0.2 + 0.6) / 2 - 1 / 3])


# --- fine-tuning --------------------------------------------------------------------------------


def test_random_order_finetuning_renders_every_epoch_anew(study, base):
    s, split = study
    given, answers = records(s.frame.loc[split.pilot], s.spec.given_columns), answers_of(s, split.pilot)
    r = Renderer(s.spec, base.tokenizer)
    epochs = [training_set(r, given, answers, "random", seed=0, epoch=e) for e in range(2)]
    assert epochs[0] == training_set(r, given, answers, "random", seed=0, epoch=0)
    fixed = training_set(r, given, answers)
    assert fixed == training_set(r, given, answers, "fixed", seed=0, epoch=1)
    for rendered in epochs:   # every interview shows some question differently in each epoch, and from spec order
        assert all(a["input_ids"] != b["input_ids"] for a, b in zip(rendered, fixed))
    assert all(a["input_ids"] != b["input_ids"] for a, b in zip(*epochs))
    for a, b in zip(*epochs):                           # the same answers are learned, as their shown letters
        assert sum(t != -100 for t in a["labels"]) == sum(t != -100 for t in b["labels"])
    assert any([t for t in a["labels"] if t != -100] != [t for t in b["labels"] if t != -100] for a, b in zip(*epochs))

    # what the Trainer reads: epoch e's own rendering from the first epoch on (fixed: spec order every epoch)
    data = training_data(r, given, answers, "random", seed=0)
    for e in range(2):
        data.next_epoch()
        assert [data[i] for i in range(len(data))] == epochs[e]
    plain = training_data(r, given, answers, "fixed", seed=0)
    for _ in range(2):
        plain.next_epoch()
        assert [plain[i] for i in range(len(plain))] == fixed
    settings = lora_cfg(epochs=2, batch_size=8, option_order="random")
    result = finetune(tiny(), r, given, answers, settings, progress=False)
    assert result.served == {0: len(epochs[0]), 1: len(epochs[0])}   # the Trainer read each epoch's rendering
