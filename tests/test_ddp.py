"""Data-parallel proxy runs (DDP through accelerate, gloo on CPU): two processes reproduce one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(SCRIPT), str(one)], check=True, capture_output=True, timeout=300)
    # torchrun under the hood (accelerate's --cpu launcher needs MPI for >1 process); the script asks for CPU + gloo
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(SCRIPT), str(two)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert a["summary"]["tokens_per_domain"] == b["summary"]["tokens_per_domain"]  # the same exact mixture
    la = [json.loads(x)["loss"] for x in Path(f"{one}.log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in Path(f"{two}.log.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-4)  # same batches, same updates
    assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-5)
    assert la[-1] < la[0]
