#!/usr/bin/env bash
# One prepared run of every GPU check, for a session that is lent a GPU machine (device tool):
#   run --command "bash benchmarks/gpu_session.sh" --timeout_s 540
# The device image has torch, transformers and accelerate (no vllm, no internet): install the project
# without dependencies, run the GPU tests, then the throughput table (135M / 360M at seq 2048).
# Everything goes to $OUT (or ./gpu-out) so a timeout still returns what finished.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
pip install --no-deps --no-build-isolation -e . >"$out/pip.log" 2>&1 || echo "pip install -e . failed (see pip.log)"
timeout 180 python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -20 | tee "$out/gpu_tests.txt"
timeout 300 python benchmarks/train_throughput.py --gpu --steps 10 --micro-batch 8 --batch-seqs 32 2>&1 \
  | grep -v Warning | tee "$out/throughput.txt"
