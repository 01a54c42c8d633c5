"""The memory check's estimate against measured peaks, one process per stage.

    .venv/bin/python benchmarks/memory.py                                  # the quickstart, SmolLM2, this CPU
    .venv/bin/python benchmarks/memory.py model=llama3_1_8b_shape          # on a GPU: the 8B shape, bf16
    .venv/bin/python benchmarks/memory.py model=qwen2_5_7b_shape finetune=qlora finetune.batch_size=4

Arguments are Hydra overrides of `+experiment=quickstart` (the run whose memory is estimated).
For each stage the run has, a fresh child process composes the run, computes the estimate as
`pipeline.plan` does (`arms.llm.memory_estimate`), then does the stage's worst case for real:
fine-tuning one step on the `finetune.batch_size` longest pilot interviews (the widest batch),
and simulating the `simulate.batch_size` twins with the longest interviews (the largest KV
cache) with the run's option order and position metrics. It reports the measured peak: on a
CPU the process's peak resident memory (`ru_maxrss`: model loading included), on a GPU
`torch.cuda.max_memory_allocated`. The last line is one JSON object (also --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from common import REPO, finish, peak_rss_mb  # noqa: I001

GIB = 2**30


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["+experiment=quickstart", "tracking.enabled=false", *overrides],
                            return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def child(stage: str, overrides: list[str]) -> dict:
    import dataclasses

    from fidelity_exp.arms.llm import answers_of, interview_lengths, memory_estimate, records
    from fidelity_exp.llm.engine import simulate, uniforms_for
    from fidelity_exp.llm.finetune import finetune, quantization_config
    from fidelity_exp.llm.interview import Renderer
    from fidelity_exp.llm.models import load_model
    from fidelity_exp.pipeline import plan

    cfg, choices = compose([*overrides, "model.memory_check=false"])
    p = plan(cfg, choices)
    s, split, llm = p.study, p.split, p.llm
    est, work, device, what = memory_estimate(llm, s, split, finetunes=True)
    name = {"finetune": "fine-tuning", "simulate": "simulation"}[stage]
    loaded = load_model(llm.model, quantization=quantization_config(llm.finetune))
    renderer = Renderer(s.spec, loaded.tokenizer, show_persona=llm.simulate.show_persona)
    if stage == "finetune":
        lengths = interview_lengths(renderer, s, split.pilot, answered=True)
        ids = split.pilot[sorted(range(len(lengths)), key=lambda i: -lengths[i])[: work.train_batch]]
        ft = dataclasses.replace(llm.finetune, max_steps=1)
        finetune(loaded, renderer, records(s.frame.loc[ids], s.spec.given_columns), answers_of(s, ids), ft,
                 progress=False)
        widest = max(lengths)
    else:
        lengths = interview_lengths(renderer, s, split.evaluation, answered=False)
        ids = split.evaluation[sorted(range(len(lengths)), key=lambda i: -lengths[i])[: work.simulate_batch]]
        given = records(s.frame.loc[ids], s.spec.given_columns)
        sim = llm.simulate
        simulate(loaded.model, renderer, given, uniforms_for(len(given), len(s.spec.questions), 0),
                 batch_size=sim.batch_size, option_order=sim.option_order, position=sim.position_metrics)
        widest = max(lengths)
    measured = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_mb() * 2**20)
    parts = dict(est.stages[name])
    if device.type == "cuda":
        parts.pop("process", None)
    estimate = sum(parts.values())
    return {"stage": name, "model": what, "device": str(device), "longest_interview_tokens": widest,
            "estimate_gib": round(estimate / GIB, 3), "measured_gib": round(measured / GIB, 3),
            "measured_is": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (ru_maxrss)",
            "estimate_over_measured": round(estimate / measured, 3),
            "parts_gib": {k: round(v / GIB, 3) for k, v in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of +experiment=quickstart")
    parser.add_argument("--stage", choices=("finetune", "simulate"), help=argparse.SUPPRESS)   # a child process
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(child(args.stage, args.overrides)))
        return
    rows = []
    for stage in ("finetune", "simulate"):
        done = subprocess.run([sys.executable, __file__, "--stage", stage, *args.overrides], capture_output=True,
                              text=True)
        if done.returncode:
            sys.exit(f"{stage}: exit {done.returncode}\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"{r['stage']:12s} {r['model']} on {r['device']}: estimate {r['estimate_gib']:.2f} GiB, measured "
              f"{r['measured_gib']:.2f} GiB ({r['measured_is']}), ratio {r['estimate_over_measured']:.2f}; "
              f"longest interview {r['longest_interview_tokens']} tokens; parts {r['parts_gib']}")
    finish({"stages": rows}, args.out)


if __name__ == "__main__":
    main()
