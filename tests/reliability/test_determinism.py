"""Determinism on CPU: the same command and seed twice gives bit-identical split, synthetic data
and metrics (every arm, the fine-tuned model included); another seed changes them."""

from __future__ import annotations

import hashlib

import pytest

from ..command import cli
from ..test_cli import _runs

RUN = ("+experiment=quickstart", "model=tiny_random", "finetune.max_steps=3", "eval.n=40", "metrics.bootstrap=10",
       "metrics.reference_splits=2")
ARMS = ("base", "finetuned", "pilot_resample", "tabular")


def _fingerprint(client, run, dest) -> dict[str, str]:
    """sha256 of each artifact that carries a result: the split, every arm's twins, metrics.json."""
    paths = ["split/pilot_ids.csv", "split/evaluation_ids.csv", "metrics.json", *(f"synthetic/{a}.csv" for a in ARMS)]
    out = {}
    for path in paths:
        local = client.download_artifacts(run.info.run_id, path, str(dest / run.info.run_id))
        out[path] = hashlib.sha256(open(local, "rb").read()).hexdigest()
    return out


@pytest.mark.slow
def test_same_seed_bit_identical_other_seed_different(tmp_path):
    for seed in (0, 0, 1):
        done = cli(*RUN, f"seed={seed}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    client, runs = _runs(tmp_path / "mlruns" / "mlflow.db", "anes96")
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    first, again, other = (_fingerprint(client, r, tmp_path / "dl") for r in runs)
    assert first == again                                    # bit for bit, file by file
    timings = ("perf/", "timing/", "system/")                # seconds, throughputs, machine load: not results
    results = [{k: v for k, v in r.data.metrics.items() if not k.startswith(timings)} for r in runs]
    assert results[0] == results[1] and len(results[0]) > 500   # every logged metric value
    changed = {path for path in first if first[path] != other[path]}
    assert changed == set(first)                             # a new seed: a new split, new twins, new metrics
    assert (tmp_path / "mlruns" / "outputs").is_dir()        # Hydra's run dirs under mlruns/, not the cwd
    assert not (tmp_path / "outputs").exists()
