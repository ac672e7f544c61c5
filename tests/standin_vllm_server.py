"""A stand-in for `vllm serve` in tests: vLLM's OpenAI-compatible HTTP endpoints, backed by a real HF model.

vLLM cannot run on a CPU-only machine, so the `vllm-server` backend's life cycle (start on a free port,
wait for health, score, shut down, leave no process behind) is tested against this process instead. It
takes `vllm serve`'s command line (`CHECKPOINT --host H --port P --served-model-name N ...`) and serves:

* ``GET /health``: 503 while the model loads, then 200 (as vLLM: ready only once the engine is);
* ``GET /v1/models``: the served model name;
* ``POST /v1/completions``: ``prompt`` as token ids (what lm-eval's ``local-completions`` sends) or text,
  greedy generation up to ``max_tokens`` cut at ``stop`` strings, and with ``echo`` + ``logprobs`` the
  prompt tokens' log-probabilities (first token ``None``) and their ``top_logprobs``, as vLLM returns them.

Test-only flags: ``--never-ready`` (health stays 503), ``--load-delay S``, ``--request-delay S``
(slow scoring, to interrupt it), ``--fail-after N`` (HTTP 500 from the N+1-th completion request on),
``--pid-file F``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--never-ready", action="store_true")
    ap.add_argument("--load-delay", type=float, default=0.0)
    ap.add_argument("--request-delay", type=float, default=0.0)
    ap.add_argument("--fail-after", type=int, default=None)
    ap.add_argument("--pid-file", default=None)
    args = ap.parse_args(argv)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(str(os.getpid()))
    name = args.served_model_name or args.model
    state: dict = {"ready": False, "model": None, "tokenizer": None, "requests": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):  # to the server log (stderr), like vLLM's access log
            sys.stderr.write(f"{self.address_string()} {fmt % a}\n")

        def _send(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                if state["ready"]:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(503, {"error": "loading"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "standin"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/v1/completions":
                self._send(404, {"error": "not found"})
                return
            if not state["ready"]:
                self._send(503, {"error": "loading"})
                return
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with lock:  # one request at a time through the model, like one engine
                state["requests"] += 1
                if args.fail_after is not None and state["requests"] > args.fail_after:
                    self._send(500, {"error": "stand-in told to fail"})
                    return
                time.sleep(args.request_delay)
                try:
                    out = complete(req, state["model"], state["tokenizer"], name)
                except Exception as e:  # a bad request: 400 with the reason, as vLLM does
                    self._send(400, {"error": f"{type(e).__name__}: {e}"})
                    return
            self._send(200, out)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stderr.write(f"stand-in vllm server on {args.host}:{args.port} for {args.model}\n")
    time.sleep(args.load_delay)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    state["model"] = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    state["tokenizer"] = AutoTokenizer.from_pretrained(args.model)
    state["ready"] = not args.never_ready
    sys.stderr.write("ready\n")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


def complete(req: dict, model, tokenizer, name: str) -> dict:
    import torch

    prompts = req["prompt"]
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    max_tokens = int(req.get("max_tokens", 16))
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    want_logprobs = req.get("logprobs") is not None
    choices = []
    for i, p in enumerate(prompts):
        ids = tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
        x = torch.tensor([ids])
        with torch.no_grad():
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        new = gen[0, len(ids):].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True)
        finish = "length"
        for s in stop:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        choice = {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
        if want_logprobs and req.get("echo"):
            seq = ids + new[:1] if max_tokens else ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), dim=-1)
            token_logprobs: list = [None]
            top: list = [None]
            for t in range(1, len(seq)):
                row = logp[t - 1]
                best = int(row.argmax())
                token_logprobs.append(float(row[seq[t]]))
                top.append({tokenizer.decode([best]): float(row[best]), tokenizer.decode([seq[t]]): float(row[seq[t]])})
            choice["text"] = tokenizer.decode(seq) if isinstance(p, list) else p + tokenizer.decode(new[:1])
            choice["logprobs"] = {"tokens": [tokenizer.decode([t]) for t in seq], "token_logprobs": token_logprobs,
                                  "top_logprobs": top, "text_offset": list(range(len(seq)))}
        choices.append(choice)
    return {"id": f"cmpl-standin-{time.time_ns()}", "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


if __name__ == "__main__":
    sys.exit(main())
