"""Task YAMLs for lm-eval's own CLI on the local benchmark copies: the parity tests' other side."""

from __future__ import annotations

import json
from pathlib import Path

from autotune.testing.paths import BENCHMARKS


def lm_eval_cli_tasks(folder: Path) -> None:
    """Task YAMLs for lm-eval's CLI: each stock task included unchanged, its dataset pointed at local files."""
    import importlib.util

    stock = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
    arc = folder / "arc_data"
    arc.mkdir(parents=True)
    for split, name in (("train", "Train"), ("validation", "Dev"), ("test", "Test")):
        with open(arc / f"{split}.jsonl", "w") as out:
            for line in open(BENCHMARKS / "arc" / "ARC-Easy" / f"ARC-Easy-{name}.jsonl"):
                r = json.loads(line)
                q = r["question"]
                out.write(json.dumps({"id": r["id"], "question": q["stem"],
                                      "choices": {"text": [c["text"] for c in q["choices"]],
                                                  "label": [c["label"] for c in q["choices"]]},
                                      "answerKey": r["answerKey"]}) + "\n")
    defs = {
        "gsm8k": ("gsm8k/gsm8k.yaml", {"train": BENCHMARKS / "gsm8k/train.jsonl", "test": BENCHMARKS / "gsm8k/test.jsonl"}),
        "arc_easy": ("arc/arc_easy.yaml", {s: arc / f"{s}.jsonl" for s in ("train", "validation", "test")}),
        "lambada_openai": ("lambada/lambada_openai.yaml", {"test": BENCHMARKS / "lambada/lambada_test_openai.jsonl"}),
    }
    for task, (yaml_rel, files) in defs.items():
        lines = [f"include: {stock / yaml_rel}", f"task: {task}", "dataset_path: json", "dataset_name: null",
                 "dataset_kwargs:", "  data_files:", *[f"    {s}: {p}" for s, p in files.items()]]
        (folder / f"{task}.yaml").write_text("\n".join(lines) + "\n")
