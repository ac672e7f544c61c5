"""What autotune knows about each metric, in one table, and how entry keys name them.

Per metric: its direction, whether chance correction applies, whether autotune computes it from lm-eval's
per-sample log-likelihoods (and for which output types) and whether it is on a log-likelihood scale. A
metric not in the table (``exact_match``, ``f1``, ...) is higher-is-better and none of the rest.

Entry keys (``TaskEntry.key``, ``BpbEntry.key``, the rows of results): ``task/metric``,
``task/metric:chance`` (chance-corrected), ``bpb/domain`` (held-out bits-per-byte); a study's group scores
are ``target`` and ``general``. Pure: no imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool = True
    # a score in [0, 1] whose chance level is 1 / number of choices: ``normalize: chance`` applies to it
    chance: bool = False
    # computed by autotune from lm-eval's per-sample log-likelihoods (autotune/evaluate/continuous.py), for
    # tasks of these output types. At proxy scale accuracy is mostly noise (Marin: signal-to-noise 1-2 for
    # accuracy, 8-22 for bits-per-byte; DataDecide: continuous likelihood metrics predict large-scale
    # rankings best).
    continuous: tuple[str, ...] = ()
    # on a log-likelihood scale: the gate's tolerance is relative (a 1% worse bits-per-byte means the same at
    # 0.8 and at 3.0 bits); bounded scores (acc, exact_match, gold_prob, chance-corrected) get points
    likelihood: bool = False


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", chance=True),
    Metric("acc_norm", chance=True),
    # mean log of the gold choice's probability mass among the choices
    Metric("gold_logprob", continuous=("multiple_choice",), likelihood=True),
    # mean probability mass of the gold choice among the choices
    Metric("gold_prob", chance=True, continuous=("multiple_choice",)),
    # bits per UTF-8 byte of the gold continuation
    Metric("gold_bpb", higher_is_better=False, continuous=("multiple_choice", "loglikelihood"), likelihood=True),
    Metric("bpb", higher_is_better=False, likelihood=True),  # held-out bits-per-byte on a domain (BpbEntry)
    Metric("bits_per_byte", higher_is_better=False, likelihood=True),
    Metric("byte_perplexity", higher_is_better=False, likelihood=True),
    Metric("word_perplexity", higher_is_better=False, likelihood=True),
    Metric("perplexity", higher_is_better=False, likelihood=True),
)}

# Views of the table, as the rest of the code reads it.
LOWER_IS_BETTER = frozenset(n for n, m in METRICS.items() if not m.higher_is_better)
CONTINUOUS_METRICS: dict[str, tuple[str, ...]] = {n: m.continuous for n, m in METRICS.items() if m.continuous}
CHANCE_METRICS = frozenset(n for n, m in METRICS.items() if m.chance)
LIKELIHOOD_METRICS = frozenset(n for n, m in METRICS.items() if m.likelihood)

# A study's group scores: weighted means of entry improvements over the base model, higher is better.
GROUP_SCORES = ("target", "general")


def metric(name: str) -> Metric:
    """The metric's facts; a metric autotune has no entry for is higher-is-better and nothing else."""
    return METRICS.get(name) or Metric(name)


def higher_is_better(name: str) -> bool:
    return metric(name).higher_is_better


@dataclass(frozen=True)
class EntryKey:
    """A parsed entry key: ``name`` is the task (or label) or, for bits-per-byte, the domain."""

    name: str
    metric: str
    chance: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.metric in GROUP_SCORES or higher_is_better(self.metric)


def parse_key(key: str) -> EntryKey:
    """``task/metric[:chance]`` -> (task, metric, chance); ``bpb/domain`` -> (domain, "bpb"); a key without
    ``/`` (a group score, a bare metric name) is its own metric. The metric is after the last ``/``."""
    if key.startswith("bpb/"):
        return EntryKey(key.removeprefix("bpb/"), "bpb")
    name, _, rest = key.rpartition("/")
    metric_name, _, suffix = rest.partition(":")
    return EntryKey(name, metric_name, chance=suffix == "chance")


def key_higher_is_better(key: str) -> bool:
    """Orientation of an entry key or a group score: group and task scores up, bits-per-byte and perplexities down."""
    return parse_key(key).higher_is_better
