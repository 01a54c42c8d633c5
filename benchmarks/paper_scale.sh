#!/usr/bin/env bash
# Every 7-8B measurement of README "Performance" in one call, for a lent GPU (one script, one
# device call): for Llama-3.1-8B's and Qwen2.5-7B's shapes (random weights, bfloat16) the memory
# check against torch.cuda.max_memory_allocated, the simulation benchmark (engine vs naive at
# batch 1; engine at batch 16, 64, 256) and the fine-tuning benchmark (LoRA bf16 with and without
# gradient checkpointing; QLoRA when bitsandbytes imports). Each result is a JSON line in $OUT.
#
#   OUT=/tmp/out bash benchmarks/paper_scale.sh                  # on the GPU machine
#   SHRINK=1 OUT=/tmp/out bash benchmarks/paper_scale.sh         # the plumbing, on a CPU, 2-layer shapes
#   OUT=/tmp/out bash benchmarks/device_kit.sh run               # on a machine without network (prepare first)
#
# The shapes borrow SmolLM2's tokenizer: from the GGUF file when it is installed, else from
# TOKENIZER_DIR (a folder saved with tokenizer.save_pretrained, e.g. the converted copy that
# llm/assets.py keeps beside the GGUF file), which is small enough to travel with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
SHAPES=${SHAPES:-llama3_1_8b_shape qwen2_5_7b_shape}
TWINS=${TWINS:-512}
PILOT=${PILOT:-256}

preset() {   # conf/model/$1.yaml, with TOKENIZER_DIR and SHRINK applied, as a yaml file in $OUT
    local file="$OUT/$1.yaml"
    $PY - "$1" "$file" <<'EOF'
import os, sys
from omegaconf import OmegaConf
cfg = OmegaConf.load(f"conf/model/{sys.argv[1]}.yaml")
if os.environ.get("TOKENIZER_DIR"):
    cfg.tokenizer = {"source": "hub", "name_or_path": os.environ["TOKENIZER_DIR"]}
if os.environ.get("SHRINK"):
    cfg.architecture = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
OmegaConf.save(cfg, sys.argv[2])
EOF
    echo "$file"
}

if [ -n "${SHRINK:-}" ]; then TWINS=8; PILOT=16; fi
for shape in $SHAPES; do
    model=$(preset "$shape")
    echo "== $shape" >&2
    if [ -z "${SHRINK:-}" ]; then   # the memory benchmark composes conf/model presets by name
        tok=()
        [ -z "${TOKENIZER_DIR:-}" ] || tok=("~model.tokenizer" "+model.tokenizer.source=hub"
                                           "+model.tokenizer.name_or_path=$TOKENIZER_DIR")
        $PY benchmarks/memory.py "model=$shape" "${tok[@]}" --out "$OUT/memory_$shape.json" || echo "memory: failed" >&2
    fi
    for batch in 16 64 256; do
        extra=(--skip-option-order)
        [ "$batch" = 16 ] || extra+=(--skip-ablations --naive-limit-s 1)
        $PY benchmarks/simulate.py --model "$model" --twins "$TWINS" --batch-size "$batch" --naive-limit-s 60 \
            "${extra[@]}" --out "$OUT/simulate_${shape}_b$batch.json" || echo "simulate b$batch: failed" >&2
    done
    $PY benchmarks/finetune.py --model "$model" --pilot "$PILOT" --batch-size 8 --steps 10 \
        --out "$OUT/finetune_${shape}_lora.json" || echo "finetune lora: failed" >&2
    $PY benchmarks/finetune.py --model "$model" --pilot "$PILOT" --batch-size 8 --steps 10 --gradient-checkpointing \
        --out "$OUT/finetune_${shape}_lora_ckpt.json" || echo "finetune lora ckpt: failed" >&2
    if $PY -c "import bitsandbytes" 2>/dev/null; then
        $PY benchmarks/finetune.py --model "$model" --pilot "$PILOT" --batch-size 8 --steps 10 --qlora \
            --out "$OUT/finetune_${shape}_qlora.json" || echo "finetune qlora: failed" >&2
    fi
done
ls -l "$OUT"
