#!/usr/bin/env bash
# One prepared run of every GPU check, for a session that is lent a GPU machine (device tool):
#   run --command "bash benchmarks/gpu_session.sh" --timeout_s 560
# The device image has torch, transformers and accelerate (no vllm, no internet): install the project
# without dependencies, time 135M then 360M (HF Trainer + compile baseline, ours at micro-batches 8 and 16,
# seq 2048), then run the GPU tests. Each part has its own timeout and writes to $OUT (or ./gpu-out) as it
# goes, so a part that runs long still leaves the rows that finished.
# Checked without a GPU: `python benchmarks/train_throughput.py --gpu --device cpu --shapes tiny --steps 3`.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
pip install --no-deps --no-build-isolation -e . >"$out/pip.log" 2>&1 || echo "pip install -e . failed (see pip.log)"
for shape in 135M 360M; do
  timeout 210 python benchmarks/train_throughput.py --gpu --shapes "$shape" --steps 10 --micro-batch 8 16 --batch-seqs 32 \
    2>"$out/throughput_$shape.err" | grep -v "train_runtime" | tee "$out/throughput_$shape.txt"
done
timeout 120 python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -20 | tee "$out/gpu_tests.txt"
