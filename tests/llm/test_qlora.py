"""finetune=qlora's whole path, run for real on bitsandbytes' CPU backend.

Users get QLoRA on CUDA only (on a CPU the plan stops with one message: test_memory.py). Below
that guard the path is the same on every device: the base loaded in 4 bits (bitsandbytes'
Linear4bit), `prepare_model_for_kbit_training`, LoRA trained with gradient checkpointing, the
adapter logged and registered, the LLM arms simulated on the 4-bit layers. bitsandbytes 0.50
(the pin of requirements/gpu.txt) runs those layers on a CPU too, so the path runs here, in a
process of its own (tests/llm/qlora_cpu.py) with bitsandbytes on its path: `make test` installs
it into .venv/qlora, apart from the suite's packages, which never import it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SITE = Path(sys.prefix) / "qlora"      # make test: pip install --no-deps --target .venv/qlora -r requirements/gpu.txt
RUN = ("+experiment=quickstart", "model=tiny_random", "finetune=qlora", "model.device=cpu", "finetune.max_steps=3",
       "eval.n=12", "metrics.bootstrap=10", "metrics.reference_splits=2", "metrics.permutations=20",
       "tracking.traces_per_arm=0", "tracking.system_metrics=false")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bitsandbytes_site() -> Path:
    if not (SITE / "bitsandbytes").is_dir():
        message = f"bitsandbytes is not installed in {SITE} (`make test` installs it there)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SITE


def _run(site: Path, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "tests.llm.qlora_cpu", str(root), *RUN, *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def _client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def test_qlora_fine_tunes_and_simulates_on_4_bit_layers(bitsandbytes_site, tmp_path):
    done = _run(bitsandbytes_site, tmp_path, "arms=[finetuned,base]")
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads((tmp_path / "qlora.json").read_text())
    assert seen["bitsandbytes"] == "0.50.2"
    # the 4-bit layers did the work: in training (gradients on) and in both arms' simulation
    assert seen["calls"].get("grad", 0) > 0 and seen["calls"].get("no_grad", 0) > 0, seen["calls"]
    for arm in ("finetuned", "base"):
        assert seen["metrics"][f"{arm}/fidelity_score"] is not None, arm

    client = _client(tmp_path)
    run = client.get_run(seen["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["finetune.method"] == "qlora"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3] and all(math.isfinite(m.value) for m in losses)
    assert "adapter/adapter_model.safetensors" in {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert client.get_model_version("anes96-tiny_random-lora", "1").run_id == run.info.run_id
    # the adapter changed the model: the twins' option probabilities moved (the same random stream)
    frames = {arm: pd.read_csv(client.download_artifacts(run.info.run_id, f"synthetic/{arm}.csv", str(tmp_path)))
              for arm in ("finetuned", "base")}
    p = [c for c in frames["base"].columns if "__p__" in c]
    assert p and (frames["finetuned"][p] - frames["base"][p]).abs().to_numpy().max() > 1e-4


def test_a_fine_tune_that_no_gradient_reaches_fails_the_run(bitsandbytes_site, tmp_path):
    """bitsandbytes 0.50 on a CPU with AVX512-BF16 re-lays out 4-bit weights for inference the
    first time they run in eval mode, and that layout has no gradient: simulating the base arm
    first leaves the adapter exactly at its start. The run must fail saying so (llm/finetune.py,
    check_changed), not report a finetuned arm that is the base model."""
    if "avx512_bf16" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes keeps 4-bit weights differentiable here")
    done = _run(bitsandbytes_site, tmp_path, "arms=[base,finetuned]")
    assert done.returncode != 0 and not (tmp_path / "qlora.json").exists()
    assert "fine-tuning changed nothing: after 3 steps every one of the adapter's 8 weight matrices" in done.stderr
    client = _client(tmp_path)
    (run,) = client.search_runs(client.search_experiments()[0].experiment_id)
    assert run.info.status == "FAILED" and "changed nothing" in run.data.tags["error"]
    assert not client.search_registered_models() and not client.list_artifacts(run.info.run_id, "adapter")
