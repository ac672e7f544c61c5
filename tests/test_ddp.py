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


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(SCRIPT), *args], capture_output=True, text=True, timeout=180)


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in Path(f"{out}.log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_shards_the_model_and_trains_what_one_process_trains(tmp_path):
    """FSDP2 over two CPU processes (gloo): each holds half the weights, the losses and final weights equal
    a single process's, the main process's whole copy gets the weights at the asked step and at the end, and
    a run that crashes after step 8 resumes from its step-5 state to the same weights and log."""
    one, two, crashed = tmp_path / "one.json", tmp_path / "two.json", tmp_path / "crashed.json"
    subprocess.run([sys.executable, str(SCRIPT), str(one), "--sharding", "fsdp"], check=True, capture_output=True,
                   timeout=300)
    proc = _launch(str(two), "--sharding", "fsdp")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world"] == 2
    assert b["sharded_numel"] * 2 == b["whole_numel"] == a["whole_numel"]  # the main process holds half
    assert a["summary"]["tokens_per_domain"] == b["summary"]["tokens_per_domain"]
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-4, abs=1e-4)
    assert b["checksum"] == pytest.approx(a["checksum"], rel=1e-5)
    gathered = dict(b["gathered"])
    assert gathered[5] == gathered[1] != gathered[6]  # the copy changes only when gathered (step 6, the end)
    assert gathered[12] == pytest.approx(a["checksum"], rel=1e-5)

    state = tmp_path / "state"
    proc = _launch(str(crashed), "--sharding", "fsdp", "--state-dir", str(state), "--crash-after", "8")
    assert proc.returncode != 0 and (state / "state.pt").exists() and not crashed.exists()
    proc = _launch(str(crashed), "--sharding", "fsdp", "--state-dir", str(state))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from the train state at step 5 of 12" in proc.stderr
    c = json.loads(crashed.read_text())
    assert c["checksum"] == b["checksum"]  # bitwise: the same batches, updates and reduction order
    assert _losses(crashed) == _losses(two)


@pytest.mark.slow
def test_time_based_saves_agree_across_processes(tmp_path):
    """Saving a state is collective under FSDP; the processes' clocks differ (here the second starts 1 s
    late), so they save when the main process's clock says: the run neither hangs nor changes."""
    out, ref = tmp_path / "timed.json", tmp_path / "ref.json"
    proc = _launch(str(out), "--sharding", "fsdp", "--state-dir", str(tmp_path / "state"), "--state-every-s", "0.5",
                   "--skew", "1.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "state" / "state.pt").exists()
    assert _launch(str(ref), "--sharding", "fsdp").returncode == 0
    assert json.loads(out.read_text())["checksum"] == json.loads(ref.read_text())["checksum"]
