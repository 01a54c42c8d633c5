"""LoRA fine-tuning throughput against the machine's matmul rate.

    .venv/bin/python benchmarks/finetune.py                       # SmolLM2-135M, anes96 pilot, 6 steps
    .venv/bin/python benchmarks/finetune.py --model tiny_random   # a quick run
    python benchmarks/finetune.py --model llama3_1_8b_shape --pilot 256 --batch-size 16 --steps 10 \
        [--gradient-checkpointing] [--qlora]                       # on a GPU: the 8B shape, bf16

Runs `fidelity_exp.llm.finetune` (the transformers Trainer with the answer-only loss) for a few
steps on pilot interviews and reports training tokens/s (real tokens, no padding) and achieved
FLOP/s. FLOP estimate: 6 x parameters per token (the usual forward + backward count); a
frozen-base LoRA step needs no weight gradients for the base, so about 4 x parameters is the
tighter figure, reported beside it. The last line is one JSON object (also --out).
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf

from common import REPO, finish, load, matmul_rate, peak_memory, pilot_interviews, study_and_split  # noqa: I001

from fidelity_exp.llm.finetune import FinetuneSettings, check_quantization, finetune, quantization_config
from fidelity_exp.settings import typed
from fidelity_exp.llm.models import resolve_device
from fidelity_exp.llm.interview import Renderer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--study", default="anes96")
    parser.add_argument("--pilot", type=int, default=48)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full-logits", action="store_true",
                        help="ablation: the standard loss, vocabulary projection at every position")
    parser.add_argument("--out", default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="finetune.gradient_checkpointing=true")
    parser.add_argument("--qlora", action="store_true", help="finetune=qlora: 4-bit NF4 base (CUDA, bitsandbytes)")
    args = parser.parse_args()

    cfg = OmegaConf.load(REPO / "conf" / "finetune" / ("qlora.yaml" if args.qlora else "lora.yaml"))
    if args.qlora:   # qlora.yaml extends lora.yaml through Hydra's defaults list: merged here by hand
        cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "finetune" / "lora.yaml"),
                              {k: v for k, v in cfg.items() if k != "defaults"})
    cfg.seed, cfg.max_steps, cfg.batch_size = 0, args.steps, args.batch_size
    cfg.gradient_checkpointing = bool(args.gradient_checkpointing or (args.qlora and cfg.gradient_checkpointing))
    cfg = typed(FinetuneSettings, cfg, "finetune")
    check_quantization(cfg, resolve_device("auto"))
    lm = load(args.model, quantization=quantization_config(cfg))
    s, split, _ = study_and_split(args.study, pilot=args.pilot, twins=10)
    renderer = Renderer(s.spec, lm.tokenizer)
    given, answers = pilot_interviews(s, split)
    peak = matmul_rate(lm.dtype, lm.device)
    if args.full_logits:   # switch the answer-only projection off (benchmark only)
        import fidelity_exp.llm.finetune as ft

        ft.answer_loss = lambda model, input_ids, attention_mask, labels: model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    result = finetune(lm, renderer, given, answers, cfg, progress=False)
    tps = result.tokens_per_s
    flops6, flops4 = 6 * lm.n_parameters * tps, 4 * lm.n_parameters * tps
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    non_embedding = lm.n_parameters - lm.model.get_input_embeddings().weight.numel()
    figures = {
        "model": args.model, "study": args.study, "dtype": str(lm.dtype), "device": str(lm.device),
        "loss": "full_logits" if args.full_logits else "answer_positions_only", "method": str(cfg.method),
        "gradient_checkpointing": bool(cfg.gradient_checkpointing),
        "threads": torch.get_num_threads(), "parameters": lm.n_parameters, "trainable_parameters": trainable,
        "steps": len(result.losses), "batch_size": args.batch_size, "train_tokens": result.tokens,
        "seconds": round(result.seconds, 2), "tokens_per_s": round(tps, 1),
        "flop_per_s_6n": int(flops6), "flop_per_s_4n": int(flops4),
        "matmul_flop_per_s": int(peak),
        "frac_of_matmul_peak": round(flops6 / peak, 3), "frac_of_matmul_peak_4n": round(flops4 / peak, 3),
        "frac_of_matmul_peak_non_embedding": round(flops6 * non_embedding / lm.n_parameters / peak, 3),
        "loss_first": round(result.losses[0], 4), "loss_last": round(result.losses[-1], 4),
        **peak_memory(lm.device),
    }
    print(f"LoRA fine-tuning, {args.model} ({lm.n_parameters / 1e6:.1f}M, {trainable / 1e6:.2f}M trainable, "
          f"{lm.dtype}, {lm.device}), {len(result.losses)} steps of {args.batch_size} interviews")
    print(f"  {tps:.0f} tokens/s; 6N estimate {flops6 / 1e9:.1f} GFLOP/s = {flops6 / peak:.0%} of the measured "
          f"{peak / 1e9:.1f} GFLOP/s matmul rate (4N: {flops4 / peak:.0%})")
    print(f"  loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; peak RSS {figures['peak_rss_mb']:.0f} MB")
    finish(figures, args.out)


if __name__ == "__main__":
    main()
