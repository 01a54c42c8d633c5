"""Shared pieces of the benchmarks: the machine's matmul rate, peak memory, the study and model."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from fidelity_exp.arms.llm import answers_of, records  # noqa: E402
from fidelity_exp.llm.models import ModelSettings, load_model  # noqa: E402
from fidelity_exp.settings import typed  # noqa: E402
from fidelity_exp.study import draw_split, study_from_file  # noqa: E402


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int | None = None, reps: int = 10) -> float:
    """Dense square matmul FLOP/s on this machine in `dtype` (warmed up, best of `reps`); n = 2048 on a
    CPU, 8192 on a GPU (large enough to reach the card's rate)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(device: torch.device) -> dict:
    """Peak host RSS, and on a GPU the peak memory torch allocated there."""
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def load(model: str, dtype: str | None = None, quantization=None):
    """A model preset of conf/model (`smollm2_135m`) or the path of a model config file."""
    path = Path(model) if model.endswith((".yaml", ".yml")) else REPO / "conf" / "model" / f"{model}.yaml"
    cfg = OmegaConf.load(path)
    if dtype:
        cfg.dtype = dtype
    return load_model(typed(ModelSettings, cfg, "model"), quantization=quantization)


def study_and_split(study: str, pilot: int, twins: int, seed: int = 0):
    s = study_from_file(REPO / "conf" / "data" / f"{study}.yaml")
    split = draw_split(s, n=pilot, seed=seed, eval_n=twins)
    return s, split, records(s.frame.loc[split.evaluation], s.spec.given_columns)


def pilot_interviews(s, split):
    return records(s.frame.loc[split.pilot], s.spec.given_columns), answers_of(s, split.pilot)


def finish(figures: dict, out: str | None) -> None:
    line = json.dumps(figures)
    if out:
        Path(out).write_text(line + "\n")
    print(line)
