#!/usr/bin/env bash
# What a lent GPU machine needs for benchmarks/paper_scale.sh, packed here and unpacked there.
#
#   bash benchmarks/device_kit.sh prepare     # here (PyPI reachable): fills .device/ (ignored by git)
#   bash benchmarks/device_kit.sh run         # there, in one call with .device carried: OUT=... required
#
# The GPU machine has no network and its own Python 3.12 with torch (CUDA), numpy, pandas, scipy,
# statsmodels, accelerate, tokenizers and huggingface_hub, but not the rest of what the benchmarks
# import. `prepare` downloads, for CPython 3.12 on x86-64 Linux, the wheels of what is missing
# there or pinned differently here (hydra-core, and omegaconf and antlr4 at the versions .venv holds,
# for the configs; transformers and peft at this project's pins; bitsandbytes at requirements/gpu.txt's pin, for QLoRA) and keeps
# a copy of SmolLM2's tokenizer (the shapes' tokenizer; the GGUF file is too large to travel).
# Everything that travels must stay under the device tool's 64 MiB: `prepare` prints the total.
# `run` installs the wheels into a folder of its own (nothing of the machine's is replaced), puts
# it and src/ first on PYTHONPATH, and runs paper_scale.sh with that tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.device
PY=${PYTHON:-python3}
pin() { grep -h "^$1==" requirements/cpu.txt requirements/gpu.txt | head -1 | cut -d' ' -f1; }
installed() { .venv/bin/python -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }   # .venv's own

case "${1:-}" in
prepare)
    rm -rf "$KIT" && mkdir -p "$KIT/whl"
    PIP=${PIP:-.venv/bin/pip}
    $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform any -d "$KIT/whl" "$(installed omegaconf)" "$(pin hydra-core)" "$(pin transformers)" "$(pin peft)" \
        "$(pin bitsandbytes)"
    # antlr4-python3-runtime (what omegaconf needs) is published as source only: built here, pure Python
    $PIP wheel --quiet --no-deps -w "$KIT/whl" "$(installed antlr4-python3-runtime)"
    .venv/bin/python - "$KIT/tokenizer" <<'EOF'
import sys
from omegaconf import OmegaConf
from fidelity_exp.llm.models import ModelSettings, load_tokenizer
from fidelity_exp.settings import typed
model = typed(ModelSettings, OmegaConf.load("conf/model/tiny_random.yaml"), "model")
load_tokenizer(model.tokenizer).save_pretrained(sys.argv[1])
EOF
    total=$(du -sb "$KIT" | cut -f1)
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    echo "$KIT: $((total / 1048576)) MiB, the tracked tree $((tree / 1048576)) MiB; together under 64 MiB: $( \
        [ $((total + tree)) -lt $((64 * 1048576)) ] && echo yes || echo NO)"
    ls -1 "$KIT/whl"
    ;;
run)
    : "${OUT:?set OUT to the folder for the results}"
    [ -d "$KIT/whl" ] || { echo "no $KIT/whl: run '$0 prepare' here first and carry $KIT" >&2; exit 2; }
    site=${SITE:-/tmp/fidelity_site}
    $PY -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$KIT"/whl/*.whl
    export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__)"
    PYTHON=$PY TOKENIZER_DIR="$PWD/$KIT/tokenizer" bash benchmarks/paper_scale.sh
    ;;
*)
    echo "usage: $0 prepare | run" >&2
    exit 2
    ;;
esac
