"""The process a launcher starts: ``python -m autotune.search.worker JOB.json``.

Two kinds of job, both ending in a ``result.json`` written atomically next to the job file:

* ``prepare``: demo corpus / local files -> tokenizer -> packed tokens -> base checkpoint (all cached);
* ``trial``: base checkpoint -> proxy mid-training run on the proposal's mixture and schedule (skipped for
  the base model's reference evaluation) -> checkpoint -> suite evaluation (lm-eval + bits-per-byte).

Progress goes to stdout as ``@@progress {json}`` lines the controller turns into bars; logs go to stderr.
A crash, a NaN or an OOM becomes a result with that status and reason: the study goes on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import resource
import shutil
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from autotune import envvars
from autotune.config.run import DemoBase, GgufBase, HubBase
from autotune.config.space import SearchSpace
from autotune.data.prepare import DamagedCache, PackedDomain, pack_domain
from autotune.errors import TrialFailed, UserError, disk_full_reason, is_disk_full, is_out_of_memory
from autotune.evaluate.backends import InMemoryModel, free_accelerator_memory
from autotune.evaluate.harness import EvalOptions, HeldoutTokens, run_suite, set_offline
from autotune.evaluate.suite import load_suite
from autotune.hashing import checkpoint_hash, tokenizer_hash
from autotune.logs import to_stderr
from autotune.paths import follow_umask, home
from autotune.procs import set_parent_death_signal, sigterm_as_interrupt
from autotune.records import Job, Prepared, Proposal, RunResult, read_jsonl, write_json_atomic
from autotune.search.protocol import EXIT_NO_SPACE, NO_SPACE_EVENT, PROGRESS_PREFIX
from autotune.train.schedules import ScheduleParams


class PipeProgress:
    """Progress as JSON lines on a private copy of stdout, read by the controller (``autotune.search.launch``).

    Everything else a library prints to stdout goes to the log (stderr), so the pipe carries only
    progress; if the controller is gone (killed), progress goes quiet and the work goes on.
    """

    def __init__(self, path: str | None = None, quiet: bool = False) -> None:
        sys.stdout.flush()
        if quiet:  # a data-parallel worker other than the main one: the main one reports
            self._out = None
        elif path:  # a launcher that does not hold our stdout (Slurm) follows this file instead
            self._out = open(path, "a", buffering=1)  # noqa: SIM115  (lives as long as the worker)
        else:
            self._out = os.fdopen(os.dup(1), "w", buffering=1)
            os.dup2(2, 1)  # stray prints, Python or C, go to the log

    def start(self, phase: str, total: int) -> None:
        self._emit({"phase": phase, "total": total})

    def advance(self, n: int = 1) -> None:
        self._emit({"advance": n})

    def emit(self, event: dict) -> None:
        """Any other event for the controller (a rung's metrics)."""
        self._emit(event)

    def _emit(self, obj: dict) -> None:
        if self._out is None:
            return
        try:
            self._out.write(PROGRESS_PREFIX + json.dumps(obj) + "\n")
            self._out.flush()
        except (BrokenPipeError, OSError):
            self._out = None


def _threads(space: SearchSpace) -> int:
    return space.proxy.threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- prepare
def prepare(space: SearchSpace, progress: PipeProgress) -> Prepared:
    """Tokenizer and base checkpoint folders (the demo's are built here on first use), the domains packed."""
    from autotune.train.model import base_final_lr

    sources = {n: d.source for n, d in space.domains.items()}
    base_hash = None  # a folder's checkpoint hash unless the base says more (a Hub model's commit)
    if isinstance(space.base_model, DemoBase):
        from autotune.demo.base import prepare_demo

        tok_dir, base = prepare_demo(space.base_model, [s for s in sources.values() if isinstance(s, str)], progress)
    elif isinstance(space.base_model, GgufBase):
        from autotune.train.gguf import gguf_folder, resolve_gguf

        progress.start("base (GGUF -> HF folder, first use only)", 1)
        tok_dir = base = gguf_folder(resolve_gguf(space.base_model.gguf, space.root))
        progress.advance()
    elif isinstance(space.base_model, HubBase):  # the local HF cache's snapshot; its commit keys the base
        from autotune.hashing import hub_base_hash
        from autotune.train.model import resolve_hub_base

        try:
            tok_dir, commit = resolve_hub_base(space.base_model.hf, space.base_model.revision)
        except UserError as e:
            raise UserError(e.problem, file=space.source_file, field=e.field, value=e.value) from None
        base = tok_dir
        base_hash = hub_base_hash(base, space.base_model.hf, commit)
    else:
        tok_dir = base = space.resolve(space.base_model)
        if not (tok_dir / "config.json").exists():
            hint = "" if tok_dir.exists() else " (a Hub model in the local HF cache is named base_model: hf:ORG/NAME)"
            raise UserError(f"not a Hugging Face checkpoint folder (no config.json){hint}", file=space.source_file,
                            field="base_model", value=str(space.base_model))
    progress.start("tokenize", len(sources))
    packed = {}
    for name, src in sources.items():
        packed[name] = pack_domain(src, tok_dir, where=f"domains.{name}")
        progress.advance()
    return Prepared(tokenizer=str(tok_dir), tokenizer_hash=tokenizer_hash(tok_dir), base=str(base),
                    base_hash=base_hash or checkpoint_hash(base),
                    base_final_lr=base_final_lr(base),
                    domains={n: str(p.folder) for n, p in packed.items()},
                    manifests={n: p.manifest for n, p in packed.items()})


# ----------------------------------------------------------------------------------------------- trial
def run_trial(space: SearchSpace, job: Job, out_dir: Path, progress: PipeProgress,
              accelerator=None) -> RunResult | None:
    """Train the job's proposal (data-parallel over ``accelerator``'s processes when given; nothing to train
    for the base model's reference evaluation), then evaluate on the main process; other processes return
    None once training is done."""
    import torch

    from autotune.train.model import load_causal_lm

    prepared = job.prepared
    packed = {n: PackedDomain(Path(p)) for n, p in prepared.domains.items()}
    suite = load_suite(space.suite_path, list(space.domains))
    with _tracked(space, job, out_dir, progress, accelerator) as tracker:
        model, tokenizer = load_causal_lm(Path(prepared.base))
        if torch.cuda.is_available() and accelerator is None:
            model.to("cuda")
        train_info: dict[str, Any] = {}
        if job.proposal is not None:
            trained = train_proposal(space, job, model, tokenizer, packed, suite, out_dir, progress, accelerator,
                                     tracker=tracker)
            if trained is None:  # not the main process
                return None
            model, train_info = trained
        result = evaluate_run(space, job, model, tokenizer, packed, suite, out_dir, progress, train_info)
        tracker.log({f"eval/{k}": v for k, v in result.metrics.items()}, step=space.proxy.steps)
        return result


@contextlib.contextmanager
def _tracked(space: SearchSpace, job: Job, out_dir: Path, progress: PipeProgress, accelerator):
    """The trial's tracker run (``search.tracking``; ``autotune.search.tracking``) on the main process of a
    trial that trains, finished with the trial's status; a ``NullTracker`` otherwise. While it is open, SIGTERM
    (the controller stopping a pruned, timed-out or interrupted trial) ends the run as killed, not running."""
    from autotune.search.tracking import NullTracker, resolve, trial_config, trial_run, warn_to_stderr

    spec = resolve(space.search.tracking, out_dir.parent.parent, space.name)  # (the study resolved it already)
    if spec is None or job.proposal is None or not (accelerator is None or accelerator.is_main_process):
        yield NullTracker()
        return

    def warn(message: str) -> None:  # in worker.log and, through the progress pipe, on the controller's console
        warn_to_stderr(message)
        progress.emit({"warning": message})

    config = {**trial_config(space.name, job.trial, out_dir.name, job.proposal, space.proxy.steps,
                             int(job.proposal.context.get("seq_len") or space.proxy.seq_len)),
              "base_hash": job.prepared.base_hash, "proxy.tokens": space.proxy.tokens}
    tracker = trial_run(spec, space.name, job.trial, config, warn)
    status = "failed"
    try:
        with sigterm_as_interrupt():
            yield tracker
        status = "ok"
    except KeyboardInterrupt:
        status = "killed"
        raise
    except TrialFailed as e:
        status = e.status
        raise
    finally:
        tracker.finish(status)


def train_proposal(space: SearchSpace, job: Job, model, tokenizer, packed: dict, suite, out_dir: Path,
                   progress: PipeProgress, accelerator=None, tracker=None) -> tuple[Any, dict[str, Any]] | None:
    """The proxy run: the proposal's mixture and schedule from the base weights in ``model``; saves the
    checkpoint. Returns the model to evaluate and the train summary (None on processes other than the main).
    ``tracker`` (main process): an experiment tracker run for the training curves and rung values."""
    import torch

    from autotune.search.tracking import Every, NullTracker
    from autotune.train.trainer import train

    tracker = tracker or NullTracker()

    cuda = torch.cuda.is_available()
    proposal, prepared, proxy = job.proposal, job.prepared, space.proxy
    cfg = train_config(space, proposal, prepared.base_final_lr, cuda)
    seq_len = cfg.seq_len
    if proposal.context.get("rope_theta"):
        from autotune.train.model import set_rope_theta

        set_rope_theta(model, float(proposal.context["rope_theta"]))
    if seq_len > getattr(model.config, "max_position_embeddings", seq_len):
        model.config.max_position_embeddings = seq_len  # RoPE has no learned positions to outgrow
    # fixed phases first (mixture.phases), then the searched mixture to the end of the run
    starts = [0.0] + [ph.until for ph in space.mixture.phases]
    mixture = list(zip(starts, [ph.shares for ph in space.mixture.phases] + [proposal.mixture], strict=True))
    main_process = accelerator is None or accelerator.is_main_process
    state_dir = out_dir / "train_state"
    # FSDP: no process holds the whole trained weights; the main process keeps an unsharded copy on the
    # CPU that receives them at each rung and at the end, and evaluates that copy
    fsdp = accelerator is not None and space.search.launcher.sharding == "fsdp"
    whole = copy.deepcopy(model) if fsdp and main_process else None
    sharded = model
    if fsdp:
        model = whole  # what the main process evaluates and saves (None on the others)
    summary = train(sharded, {n: p.tokens("train") for n, p in packed.items()}, mixture, cfg,
                    log_path=out_dir / "train_log.jsonl" if main_process else None, progress=progress,
                    after_step=_rung_evaluator(space, suite, model, tokenizer, packed, out_dir, progress,
                                               device=accelerator.device if fsdp and cuda else None, tracker=tracker)
                    if main_process else None, accelerator=accelerator,
                    state_dir=state_dir if proxy.save_state_every_s > 0 else None,
                    gather_into=whole, gather_steps=proxy.rung_steps,
                    tracker=Every(tracker, space.search.tracking.every_steps, cfg.steps)
                    if main_process and space.search.tracking else None)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not main_process:
            return None
        if fsdp:

            del sharded
            free_accelerator_memory()
            if cuda:
                model.to(accelerator.device)
        else:
            model = accelerator.unwrap_model(model)
    train_info = {**summary.to_json(), "start_lr": cfg.schedule.start_lr, "seq_len": seq_len,
                  "seqs_per_step": cfg.seqs_per_step}
    if job.keep_checkpoint:
        model.config.use_cache = True
        model.save_pretrained(out_dir / "checkpoint", safe_serialization=True)
        tokenizer.save_pretrained(out_dir / "checkpoint")
        _write_trainer_state(space, job, out_dir, train_info, cfg)
        _write_card(space, job, out_dir, train_info)  # again with the scores once evaluated
        follow_umask(out_dir / "checkpoint")  # safetensors writes 0600
    shutil.rmtree(state_dir, ignore_errors=True)  # the finished checkpoint supersedes it
    return model, train_info


def train_config(space: SearchSpace, proposal: Proposal, base_final_lr: float | None, cuda: bool):
    """The trainer's configuration (``TrainConfig``) of a proposal; ``autotune search --dry-run`` builds it too
    (``autotune.search.plan``). ``base_final_lr``: the base run's final LR, for ``start_lr: base``."""
    from autotune.train.trainer import TrainConfig

    proxy = space.proxy
    schedule = dict(proposal.schedule)
    if schedule.get("start_lr") == "base":  # Study.prepare refused a base that records none
        schedule["start_lr"] = base_final_lr
    seq_len = int(proposal.context.get("seq_len") or proxy.seq_len)  # long-context knobs (space.context)
    return TrainConfig(seq_len=seq_len, seqs_per_step=proxy.batch_tokens // seq_len, steps=proxy.steps,
                       seed=proposal.seed, schedule=ScheduleParams(**schedule), micro_batch_seqs=proxy.micro_batch_seqs,
                       precision=("bf16" if cuda else "fp32") if proxy.precision == "auto" else proxy.precision,
                       compile=cuda if proxy.compile == "auto" else bool(proxy.compile), max_epochs=proxy.max_epochs,
                       state_every_s=proxy.save_state_every_s, sharding=space.search.launcher.sharding)


def evaluate_run(space: SearchSpace, job: Job, model, tokenizer, packed: dict, suite, out_dir: Path,
                 progress: PipeProgress, train_info: dict[str, Any]) -> RunResult:
    """The suite on the trained model (or the base): lm-eval tasks and held-out bits-per-byte."""
    import torch


    prepared = job.prepared
    model.eval()
    t0 = time.perf_counter()
    heldout = {d: HeldoutTokens(packed[d].tokens("heldout"), space.proxy.seq_len,
                                f"{packed[d].manifest['splits']['heldout']['source_hash']}:{prepared.tokenizer_hash}")
               for d in suite.bpb_domains if d in packed}
    saved = out_dir / "checkpoint" if job.proposal else Path(prepared.base)
    if suite.backend != "hf" and not (saved / "config.json").exists():
        model.save_pretrained(saved, safe_serialization=True)  # vLLM loads the model from disk
        tokenizer.save_pretrained(saved)
    from autotune.evaluate.lm_eval_format import STUDY_BOOTSTRAP_ITERS

    options = EvalOptions(allow_code_execution=job.allow_code_execution,
                          model_hash=None if job.proposal else prepared.base_hash,
                          bootstrap_iters=STUDY_BOOTSTRAP_ITERS, lm_eval_samples=False)  # samples/ has them
    with torch.no_grad():
        evaluated = run_suite(InMemoryModel(model, tokenizer, path=saved), suite, heldout=heldout, out_dir=out_dir,
                              options=options, progress=progress)
    meta = {**evaluated.meta, "seconds": round(time.perf_counter() - t0, 2), "base_hash": prepared.base_hash,
            "tokenizer_hash": prepared.tokenizer_hash}
    result = RunResult(status="ok", metrics=evaluated.metrics, stderr=evaluated.stderr, train=train_info, eval_meta=meta)
    _write_card(space, job, out_dir, train_info, result, suite.name)
    return result


def _write_trainer_state(space: SearchSpace, job: Job, out_dir: Path, train_info: dict[str, Any], cfg) -> None:
    """The trial checkpoint's ``trainer_state.json`` (HF Trainer's format, ``autotune.train.card``) from its train
    log: the LR it ended at makes it a base for ``schedule.start_lr: base``. Only what determines the run goes
    in (no Optuna trial number, no clock): the file is part of the checkpoint's hash."""
    from autotune.train.card import write_trainer_state

    proposal = job.proposal
    params = {**{f"share.{d}": v for d, v in proposal.mixture.items()},
              **{f"schedule.{k}": v for k, v in proposal.schedule.items() if v is not None},
              **{f"context.{k}": v for k, v in proposal.context.items() if v is not None}, "seed": proposal.seed}
    write_trainer_state(out_dir / "checkpoint", read_jsonl(out_dir / "train_log.jsonl"), max_steps=cfg.steps,
                        tokens=int(train_info.get("tokens") or 0), seqs_per_step=cfg.seqs_per_step,
                        log_every=cfg.log_every, flops_per_token=float(train_info.get("flops_per_token") or 0.0),
                        trial_name=f"{space.name}/{out_dir.name}", trial_params=params)


def _write_card(space: SearchSpace, job: Job, out_dir: Path, train_info: dict[str, Any],
                result: RunResult | None = None, suite_name: str | None = None) -> None:
    """The trial checkpoint's model card ``README.md`` (``autotune.train.card``): the study, the run, the mixture,
    the schedule, the base and, once evaluated, the scores. Nothing for the base's own evaluation."""
    from autotune.evaluate.metrics import parse_key
    from autotune.train.card import BaseInfo, CardInfo, Score, write_model_card
    from autotune.train.model import hub_origin

    checkpoint, proposal, prepared = out_dir / "checkpoint", job.proposal, job.prepared
    if proposal is None or not (checkpoint / "config.json").exists():
        return
    repo_id, commit = hub_origin(Path(prepared.base)) or (None, None)
    base = BaseInfo(path=prepared.base, hash=prepared.base_hash, repo_id=repo_id, commit=commit,
                    demo=isinstance(space.base_model, DemoBase))
    schedule = dict(proposal.schedule)
    if schedule.get("start_lr") == "base" and train_info.get("start_lr") is not None:
        schedule["start_lr"] = f"base ({train_info['start_lr']:.6g})"  # where the base run ended
    scores = []
    for key, value in sorted((result.metrics if result else {}).items()):
        entry = parse_key(key)
        scores.append(Score(key, f"heldout-{entry.name}" if entry.metric == "bpb" else entry.name, entry.metric, value,
                            result.stderr.get(key)))
    write_model_card(checkpoint, CardInfo(
        study=space.name, run=out_dir.name, trial=job.trial, base=base, mixture=dict(proposal.mixture),
        schedule=schedule, seed=proposal.seed, tokens=int(train_info.get("tokens") or 0),
        seq_len=int(train_info.get("seq_len") or space.proxy.seq_len), batch_tokens=space.proxy.batch_tokens,
        phases=[ph.model_dump(mode="json") for ph in space.mixture.phases], context=dict(proposal.context),
        final_loss=train_info.get("final_loss"), suite=suite_name, scores=scores))


def _rung_evaluator(space: SearchSpace, suite, model, tokenizer, packed, out_dir: Path, progress: PipeProgress,
                    device=None, tracker=None):
    """At each rung: held-out bits-per-byte on the suite's domains, kept in rungs.jsonl and sent to the
    controller, which reports it to Optuna and may stop the run (pruning). With ``device``, ``model`` (an
    unsharded copy kept on the CPU beside an FSDP run) moves there for the evaluation and back."""
    import torch

    from autotune.evaluate.bpb import bits_per_byte

    rung_steps = space.proxy.rung_steps
    if not rung_steps:
        return None
    seqs = space.proxy.seqs_per_step * space.proxy.seq_len

    done_before: dict[int, dict] = {}  # a resumed run: rungs already evaluated are sent again, not recomputed
    for event in read_jsonl(out_dir / "rungs.jsonl"):  # a line cut by a kill is skipped: that rung runs again
        if isinstance(event.get("step"), int):
            done_before[event["step"]] = event

    def after_step(steps_done: int) -> None:
        if steps_done not in rung_steps:
            return
        if steps_done in done_before:
            progress.emit(done_before[steps_done])
            if tracker is not None:
                tracker.log({f"rung/{k}": v for k, v in done_before[steps_done].get("metrics", {}).items()}, steps_done)
            return
        if device is not None:
            model.to(device)
        with torch.no_grad():
            metrics = {f"bpb/{d}": bits_per_byte(model, tokenizer, packed[d].tokens("heldout"), seq_len=space.proxy.seq_len,
                                                  max_tokens=suite.bpb_tokens)["bpb"] for d in suite.bpb_domains}
        if device is not None:

            model.to("cpu")
            free_accelerator_memory()
        event = {"rung": rung_steps.index(steps_done), "step": steps_done, "tokens": steps_done * seqs, "metrics": metrics}
        with open(out_dir / "rungs.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")
        progress.emit(event)
        if tracker is not None:
            tracker.log({f"rung/{k}": v for k, v in metrics.items()}, step=steps_done)

    return after_step


# ----------------------------------------------------------------------------------------------- main


def apply_memory_limit() -> None:
    """Cap this process's heap and private mappings (RLIMIT_DATA) at ``$AUTOTUNE_MEMORY_LIMIT`` bytes
    (``search.launcher.memory_limit``): past it, allocations fail and the trial ends as ``oom``."""
    limit = envvars.memory_limit()  # $AUTOTUNE_MEMORY_LIMIT, checked
    if limit:

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def main(job_path: str) -> int:
    to_stderr(logging.INFO)  # autotune's warnings and notes go to the log (stderr), as the controller shows it
    apply_memory_limit()
    job_file = Path(job_path)
    job = Job.read(job_file)
    out_dir = job_file.parent
    result_path = out_dir / "result.json"
    accelerator = _accelerator()
    main_process = accelerator is None or accelerator.is_main_process
    progress = PipeProgress(os.environ.get("AUTOTUNE_PROGRESS_FILE"), quiet=not main_process)

    set_offline()
    try:
        space = SearchSpace.model_validate({**job.space, "source_file": job.space_file})
        _set_torch_threads(_threads(space), lazily=job.kind == "prepare")
        if job.kind == "prepare":
            if main_process:
                write_json_atomic(result_path, prepare(space, progress).to_json())
            return 0
        if not main_process and job.proposal is None:
            return 0  # evaluation only (the base model): the main process does it
        result = run_trial(space, job, out_dir, progress, accelerator)
        if result is None:  # not the main process: it wrote nothing
            return 0
    except Exception as e:
        # every later job would fail the same way: stop the study (the free-space test only for errors that may
        # hide their errno, not for a trial's own failure or bad input)
        if is_disk_full(e) or (not isinstance(e, (TrialFailed, UserError)) and _no_space_left(out_dir)):
            return _stop_no_space(progress, e)
        result = _failed(e)
    try:
        write_json_atomic(result_path, result.to_json())
    except OSError as e:
        if not is_disk_full(e):
            raise
        return _stop_no_space(progress, e)
    # a failure on any one of several processes: that process wrote the result (the others may be waiting
    # in a collective for it and would never write one); exiting non-zero makes torchrun stop the group
    return 1 if accelerator is not None and not result.ok else 0


def _failed(e: Exception) -> RunResult:
    """A failure of this job as its result: a crash fails this trial, not the study (the log keeps the traceback)."""
    if isinstance(e, TrialFailed):
        return RunResult(status=e.status, reason=e.reason)
    if isinstance(e, UserError):
        return RunResult(status="failed", reason=str(e), bad_input=True)
    traceback.print_exc()
    if isinstance(e, DamagedCache):  # not this trial's fault: a crash (retried; the next session's prepare rebuilds)
        return RunResult(status="crashed", reason=str(e))
    return RunResult(status="oom" if is_out_of_memory(e) else "failed",
                     reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")


def _no_space_left(out_dir: Path) -> bool:
    """Whether the run folder's or the cache's filesystem is full (under 1 MiB free): some writers hide the
    errno (torch.save raises "file write failed")."""
    for folder in (out_dir, home()):
        try:
            if shutil.disk_usage(folder).free < 1 << 20:
                return True
        except OSError:
            continue
    return False


def _stop_no_space(progress: PipeProgress, e: BaseException) -> int:
    """Out of disk space: no result (there may be no room for one); the reason goes to the controller through
    the progress pipe, which needs no disk, and the exit code says it (``protocol.EXIT_NO_SPACE``)."""
    reason = disk_full_reason(e) if is_disk_full(e) else \
        f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]} (the disk is full)"
    with contextlib.suppress(OSError):  # the log may be on the full disk
        traceback.print_exception(e)
        print(f"out of disk space: {reason}", file=sys.stderr, flush=True)
    progress.emit({NO_SPACE_EVENT: reason})
    return EXIT_NO_SPACE


def _set_torch_threads(n: int, lazily: bool) -> None:
    """torch's intra-op threads for this job. ``lazily`` (a prepare job, which imports torch only to build a
    base not yet cached: the demo's, a GGUF file's): through ``OMP_NUM_THREADS``, which torch reads when it is
    first imported, so that a warm prepare job does not import torch at all (1.1 s of a 2 s job)."""
    if lazily and "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(n)
        return
    import torch

    torch.set_num_threads(n)


def _accelerator():
    """An ``accelerate.Accelerator`` when started by ``accelerate launch`` with several processes, else None.
    Its collectives wait up to an hour: the other processes wait while the main one evaluates a rung."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None

    import torch
    from accelerate import Accelerator, InitProcessGroupKwargs

    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=1))])


if __name__ == "__main__":
    # started by `accelerate launch` (torchrun), this dies with it too; a local launcher set it already
    # (autotune.procs); submitit's job calls main() itself, on a node where the controller is not the parent
    set_parent_death_signal()
    sys.exit(main(sys.argv[1]))
