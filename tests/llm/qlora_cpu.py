"""finetune=qlora carried out on bitsandbytes' CPU backend: run by `test_qlora.py` in a process of
its own, with bitsandbytes on its path (the suite's own process never imports it).

A run refuses qlora on a CPU in its plan (one clear message: the product is CUDA-only for users).
This script plans with `device_checks=False`, as a sweep does for trials it leaves to their
nodes, and carries the run out as `pipeline.run` does (log_setup, carry_out): the base weights
loaded in 4 bits (bitsandbytes' Linear4bit), `prepare_model_for_kbit_training`, LoRA trained by
the Trainer with gradient checkpointing, the adapter logged and registered, the LLM arms
simulated and scored.
It counts the 4-bit layers' forward calls (the real ones, passed through) to show they did the
work, and writes what it saw to `<root>/qlora.json`.

    python -m tests.llm.qlora_cpu ROOT [OVERRIDE ...]      # from the repository's root
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path


def main(root: Path, overrides: list[str]) -> None:
    import bitsandbytes
    import torch
    from hydra import initialize_config_dir

    from fidelity_exp import pipeline, tracking
    from tests.conftest import CONF, Composer

    calls: collections.Counter = collections.Counter()
    real_forward = bitsandbytes.nn.Linear4bit.forward

    def counted(self, x, *args, **kwargs):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return real_forward(self, x, *args, **kwargs)

    bitsandbytes.nn.Linear4bit.forward = counted
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg, choices = Composer(root)(*overrides)   # as the tests compose every run
    p = pipeline.plan(cfg, choices, device_checks=False)
    with tracking.start_run(p.settings.tracking, p.settings.paths, run_name="qlora-cpu", tags={}) as tracked:
        pipeline.log_setup(tracked, cfg, p)
        metrics = pipeline.carry_out(p, root / "out", tracked)
        run_id = tracked.run_id
    (root / "qlora.json").write_text(json.dumps({
        "bitsandbytes": bitsandbytes.__version__, "calls": dict(calls), "run_id": run_id, "metrics": metrics}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
