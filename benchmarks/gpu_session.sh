#!/usr/bin/env bash
# One prepared run of every GPU check, for a session that is lent a GPU machine (device tool):
#   run --command "bash benchmarks/gpu_session.sh" --timeout_s 590
# The device image has torch, transformers and accelerate (no vllm, no internet): use the project from
# this checkout (no install), time 135M then 360M (HF Trainer + compile baseline; ours at micro-batches 8 and 16,
# and at 8 with the loss's softmax gradient eager; seq 2048), then run the GPU tests. The acceptance is read
# in the "MFU (anchor FLOPs, measured peak)" column (see benchmarks/train_throughput.py). Each part has its own timeout and writes to $OUT (or ./gpu-out) as it
# goes, so a part that runs long still leaves the rows that finished.
# Checked without a GPU: `python benchmarks/train_throughput.py --gpu --device cpu --shapes tiny --steps 3`.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
# the trainer and the GPU tests need only torch, transformers, numpy, pyyaml and pytest (all in the image);
# the package is used from this checkout (no install: the image lacks pydantic/optuna/lm-eval, no internet)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python -c "import autotune.train.trainer" 2>&1 | tee -a "$out/gpu.txt"
for shape in 135M:200 360M:250; do
  timeout "${shape#*:}" python benchmarks/train_throughput.py --gpu --shapes "${shape%%:*}" --steps 10 --micro-batch 8 16 --batch-seqs 32 \
    2>"$out/throughput_${shape%%:*}.err" | grep -v "train_runtime" | tee "$out/throughput_${shape%%:*}.txt"
done
timeout 100 python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -20 | tee "$out/gpu_tests.txt"
