"""``autotune report runs/<study>``: a study folder -> ``reports/<study>/index.html``.

Reads the study's files (``load.py``), computes nothing that needs a model, and writes one HTML file that
opens offline from ``file://``: plotly.js is inlined, figures are JSON in the page.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.evaluate.metrics import key_higher_is_better
from autotune.paths import write_text_atomic
from autotune.report import figures as F
from autotune.report.analysis import best_feasible, is_feasible, noise_of, snr
from autotune.report.load import ReportTrial, StudyData, load_study_data
from autotune.report.page import esc, figures_json, fmt, grid, note, page, section, table, tree

SECTIONS = [("summary", "Summary"), ("verification", "Verification"), ("settings", "Space and settings"), ("history", "Optimisation history"),
            ("pareto", "Target vs general"), ("importance", "Parameter importances"), ("mixtures", "Mixtures"),
            ("scores", "Per-task scores"), ("schedules", "LR schedules"), ("losses", "Train loss"),
            ("extrapolation", "Extrapolation and recipe"), ("problems", "Failed and pruned trials"),
            ("trials", "All trials")]


def default_out_dir(name: str) -> Path:
    """``reports/<study>`` relative to the working directory (like ``runs/``)."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise UserError("the study's name cannot name a folder; give the output folder (--out)", field="identity.name",
                        value=name)
    return Path("reports") / name


def write_report(study_dir: Path, out_dir: Path | None = None) -> Path:
    """Write the report of the study in ``study_dir`` (``runs/<study>``) to ``out_dir/index.html``.

    ``out_dir`` defaults to ``reports/<study name>`` under the working directory. Returns the file's path.
    Raises ``UserError`` when ``study_dir`` is not a study folder. Reruns nothing; safe while a study runs.
    """
    data = load_study_data(Path(study_dir))
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(data.name)
    html = render(data)
    path = out_dir / "index.html"
    write_text_atomic(path, html)  # whole or absent; the umask's mode, as everything autotune writes
    return path


def report_command(study_dir: Path, out: Path | None) -> int:
    """The CLI's ``autotune report``: write the report, print where it is; UserError propagates (exit 2)."""
    path = write_report(study_dir, out)
    print(f"report: {path}  (open {path.resolve().as_uri()})")
    return 0


# --------------------------------------------------------------------------------------- rendering
class _Figures:
    """Collects figures in page order; each becomes a <div class="plot"> and one entry of the JSON block."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def div(self, fig: Any) -> str:
        if isinstance(fig, str):
            return note(fig)
        if isinstance(fig, list):
            return "".join(self.div(f) for f in fig)
        import plotly.io as pio

        pid = f"plot-{len(self.items)}"
        self.items.append((pid, pio.to_json(fig, validate=False)))
        return f'<div class="plot" id="{pid}"></div>'


def render(data: StudyData) -> str:
    import plotly.offline

    figs = _Figures()
    body = [
        section("summary", "Summary", _summary(data)),
        section("verification", "Verification", _verification(data, figs)),
        section("settings", "Space and settings", _settings(data)),
        section("history", "Optimisation history", figs.div(F.history_figure(data))),
        section("pareto", "Target vs general", note(
            "Each point is a complete trial; both axes are improvements over the base model (0, 0). The dotted line "
            "joins the feasible trials that no other feasible trial beats on both.") + figs.div(F.pareto_figure(data))),
        section("importance", "Parameter importances", note(
            "fANOVA (Optuna's default evaluator) on the mixture shares and the searched schedule fields: how much "
            "of the variation of each score each parameter explains. With few trials these are rough.")
            + figs.div(F.importance_figures(data))),
        section("mixtures", "Mixtures", figs.div(F.mixture_figure(data)) + figs.div(F.mixture_bars_figure(data))),
        section("scores", "Per-task scores", _scores_table(data) + figs.div(F.scores_figure(data))),
        section("schedules", "LR schedules", note(
            "Recomputed from each proposal with autotune.train.schedules (the functions the trainer uses).")
            + figs.div(F.schedules_figure(data))),
        section("losses", "Train loss", figs.div(F.losses_figure(data))),
        section("extrapolation", "Extrapolation and recipe", _recipe(data, figs)),
        section("problems", "Failed and pruned trials", _problems(data)),
        section("trials", "All trials", _trials_table(data)),
    ]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{len(data.trials)} trials from {data.trials_source}; space digest {data.digest or '?'}; "
                f"folder {data.root}; generated {now}")
    return page(f"autotune study {data.name}", subtitle, SECTIONS, "\n".join(body), figures_json(figs.items),
                plotly.offline.get_plotlyjs())


def _card(label: str, value: str, cls: str = "") -> str:
    return f'<div class="card"><b>{esc(label)}</b><span class="{cls}">{esc(value)}</span></div>'


def _schedule_text(s: dict[str, Any]) -> str:
    if not s:
        return "-"
    parts = [str(s.get("kind", "?"))]
    if isinstance(s.get("peak_lr"), int | float):
        parts.append(f"peak_lr {s['peak_lr']:.2e}")
    if s.get("kind") == "wsd" and isinstance(s.get("decay_fraction"), int | float):
        parts.append(f"decay {s['decay_fraction']:.2f}")
    return ", ".join(parts)


def _summary(data: StudyData) -> str:
    counts: dict[str, int] = {}
    for t in data.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    cards = [_card("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")]
    best = best_feasible(data)
    if best:
        cards.append(_card(f"best feasible: trial {best.number}", f"target {best.target:+.4f}, general {best.general:+.4f}",
                           "good"))
        cards.append(_card("its mixture", ", ".join(f"{d} {w:.2f}" for d, w in best.mixture.items())))
        cards.append(_card("its schedule", _schedule_text(best.schedule)))
    elif data.complete:
        cards.append(_card("best feasible", "no trial met the general-retention constraint", "bad"))
    nt, ng = noise_of(data, "target"), noise_of(data, "general")
    if nt and ng:
        cards.append(_card(f"seed-noise floor ({nt.n} prior seeds)", f"target {nt.spread:.4f}, general {ng.spread:.4f}"))
    else:
        cards.append(_card("seed-noise floor", "unknown: fewer than 2 prior replicates (proxy.replicates)", "bad"))
    cards.append(_card("recipe", "recipe.yaml present" if data.recipe_text else "not yet extrapolated"))
    ver = data.recipe.get("verification") if isinstance(data.recipe, dict) else None
    if isinstance(ver, dict) and ver.get("summary"):
        cards.append(_card("verification", str(ver["summary"]), "good" if ver.get("wins") else "bad"))
    out = f'<div class="cards">{"".join(cards)}</div>'
    if best and nt:
        verdict = ("inside" if nt.inside(best.target) else "outside")
        out += note(f"The best feasible trial's target differs from the prior's mean by {best.target - nt.mean:+.4f}: "
                    f"{verdict} the seed-noise floor (+-{nt.spread:.4f}, the spread of the prior's {nt.n} seeds).")
    out += note("Scores are improvements over the base model: target and general are weighted means of each suite "
                "entry's gain (accuracy gained, bits-per-byte saved), so the base model scores 0.")
    for n in data.notes:
        out += f'<p class="warn">{esc(n)}</p>'
    return out


def _settings(data: StudyData) -> str:
    ident = data.identity
    head = {"name": data.name, "source file": data.source_file or "-", "space digest": data.digest or "-",
            "objective": _objective_text(ident.get("objective") or {}), "evals": ident.get("evals", "-")}
    out = tree(head)
    order = ["domains", "mixture", "schedule", "proxy", "search", "base_model", "extrapolate"]
    keys = [k for k in order if k in ident] + [k for k in ident if k not in order and k not in head and k != "name"]
    out += grid({k: tree(ident[k], 1) for k in keys})
    if data.space_yaml:
        out += f"<details><summary>space.yaml as run</summary><pre>{esc(data.space_yaml)}</pre></details>"
    return out


def _objective_text(o: dict[str, Any]) -> str:
    if o.get("pareto"):
        return "Pareto front of " + " and ".join(map(str, o["pareto"]))
    text = f"maximise {o.get('maximize', '?')}"
    return text + (f" subject to {o['subject_to']}" if o.get("subject_to") else "")


def _lower_is_better(key: str) -> bool:

    return not key_higher_is_better(key)


def _scores_table(data: StudyData) -> str:
    keys = data.metric_keys()
    if not keys:
        return ""
    best = best_feasible(data)
    rows = []
    for k in keys:
        noise = noise_of(data, k)
        prior = f"{noise.mean:.4g} +- {noise.spread:.4g} (n={noise.n})" if noise else "-"
        bv = best.metrics.get(k) if best else None
        bse = best.stderr.get(k) if best else None
        best_txt = "-" if bv is None else (f"{bv:.4g}" + (f" +- {bse:.2g}" if bse is not None else ""))
        delta = "-"
        if bv is not None and noise is not None:
            delta = f"{bv - noise.mean:+.4g} ({'inside' if noise.inside(bv) else 'outside'} the seed spread"
            if bse is not None:
                # the difference of two means with about the same stderr: sqrt(2) * stderr
                delta += f"; {'within' if abs(bv - noise.mean) <= 2 * 2**0.5 * bse else 'beyond'} 2 stderr"
            delta += ")"
        ratio = snr(data, k)
        rows.append([k, "lower" if _lower_is_better(k) else "higher", data.base.get(k), prior,
                     best_txt, delta, "-" if ratio is None else f"{ratio:.2g}"])
    head = ["metric", "better", "base", "prior mean +- seed spread",
            f"best feasible (trial {best.number}) +- stderr" if best else "best feasible", "best - prior mean",
            "SNR"]
    return table(head, rows, numeric={2}) + note(
        "stderr: standard error over the task's documents (from lm-eval's per-sample log). The seed spread is the "
        "range of the prior mixture's replicate runs: differences inside it are noise at this proxy scale; so are "
        "differences within 2 stderr of the difference (sampling noise of the documents). SNR: the metric's standard "
        "deviation over the searched trials over its standard deviation over the prior's seeds; below about 1 it "
        "cannot rank mixtures at this scale.")


def _recipe(data: StudyData, figs: _Figures) -> str:
    if not data.recipe_text:
        return note("Not yet extrapolated: no recipe.yaml in the study folder (autotune extrapolate writes it).")
    out = ""
    if data.recipe is not None:
        out += _predictions(data.recipe)
        out += figs.div(F.fit_figures(data.recipe))
        out += tree(data.recipe)
    else:
        out += '<p class="warn">recipe.yaml could not be parsed; its text follows.</p>'
    out += f"<details><summary>recipe.yaml</summary><pre>{esc(data.recipe_text)}</pre></details>"
    return out


def _predictions(recipe: Any) -> str:
    """The recipe's predicted scores, each row labelled with its scale (``extrapolate.recipe_model``), and
    the line on the full scale; nothing when recipe.yaml does not validate (its tree and text still show)."""
    from pydantic import ValidationError

    from autotune.extrapolate.recipe_model import Recipe, full_scale_line, interval_text, prediction_rows

    try:
        rec = Recipe.model_validate(recipe)
    except (ValidationError, TypeError, ValueError) as e:
        return note(f"recipe.yaml does not validate ({type(e).__name__}); its predictions are not tabulated")
    rows = [[r.label, r.score, f"{r.prediction.value:.4g}", interval_text(r.prediction), r.source, r.coverage or "-"]
            for r in prediction_rows(rec)]
    return ("<h3>Predicted scores (base-relative), by scale</h3>"
            + table(["scale", "score", "predicted", "interval", "from", "held-out coverage"], rows, numeric={2})
            + note(full_scale_line(rec)))


def _verification(data: StudyData, figs: _Figures) -> str:
    """recipe.yaml's ``verification`` (autotune verify): the picture first (realised vs predicted per mixture),
    then the table of each mixture and the paired tests against the recommendation."""
    from pydantic import ValidationError

    from autotune.extrapolate.verify import Verification

    raw = data.recipe.get("verification") if isinstance(data.recipe, dict) else None
    if not raw:
        return note("Not verified: autotune verify trains the recommended mixture and baselines at a larger budget "
                    "with several seeds, and its result shows here.")
    try:
        v = Verification.model_validate(raw)
    except (ValidationError, TypeError, ValueError) as e:
        return note(f"recipe.yaml's verification does not validate ({type(e).__name__})")
    cls = "good" if v.wins else "bad"
    out = f'<p class="{cls}">{esc(v.summary)}</p>' + figs.div(F.verification_figure(v))
    order = {label: i + 1 for i, label in enumerate(v.ranking)}
    rows = []
    for c in sorted(v.candidates, key=lambda c: order[c.label]):
        row = [order[c.label], c.label + ("" if c.inside_space else " (outside the space)"),
               ", ".join(f"{d} {w:.3f}" for d, w in c.mixture.items()), _schedule_text(c.schedule)]
        for g in ("target", "general"):
            p = c.predicted.get(g)
            row += [_signed(c.mean.get(g)), fmt(c.spread.get(g), ".4f"),
                    "-" if p is None else f"{p.value:+.4f} [{fmt(p.low, '+.4f')}, {fmt(p.high, '+.4f')}]"]
        row.append({True: "yes", False: "no", None: "-"}[c.feasible])
        rows.append(row)
    head = ["rank", "mixture", "shares", "schedule", "target mean", "target seed sd", "target predicted [interval]",
            "general mean", "general seed sd", "general predicted [interval]", "feasible"]
    out += table(head, rows, numeric={0})
    tests = [[c.baseline, c.metric, _signed(c.diff), fmt(c.se, ".4f"), fmt(c.p_better, ".3f"), c.verdict]
             for c in v.comparisons if c.metric in ("target", "general")]
    out += "<h3>Recommendation minus each baseline, paired over seeds</h3>" + table(
        ["baseline", "score", "difference", "standard error", "p (one-sided)", "verdict"], tests)
    cov = ("intervals not checked: they are of proxy-scale scores and the runs trained another budget"
           if v.coverage is None else "; ".join(f"{g}: {c['inside']} of {c['n']} realised values inside the "
                                                  f"{c['level']:.0%} intervals" for g, c in v.coverage.items()))
    rho = ", ".join(f"{g} {fmt(v.rank_agreement.get(g), '.2f')}" for g in ("target", "general"))
    noise = ", ".join(f"{g} {fmt(v.seed_noise.get(g), '.4f')}" for g in ("target", "general"))
    return out + note(
        f"Realised {v.scale}; predicted {v.predicted_scale} (the recipe's models know no other scale). Seed noise "
        f"(within-mixture sd, pooled): {noise}. Predicted vs realised rank agreement (Spearman): {rho}. {cov}. "
        f"The test: the mean paired difference over se = sd sqrt(2/n), sd the seed noise pooled over every mixture "
        f"(one-sided, alpha {v.alpha:g}).")


def _problems(data: StudyData) -> str:
    bad = [t for t in data.trials if t.state in ("fail", "pruned")]
    running = [t for t in data.trials if t.state in ("running", "waiting")]
    if not bad and not running:
        return note("None: every trial completed.")
    rows = []
    for t in bad + running:
        tail = f"<details><summary>worker.log</summary><pre>{esc(t.log_tail)}</pre></details>" if t.log_tail else ""
        rows.append([t.number, t.state, t.status or "-", esc(t.reason or "-") + tail, t.pruned_at or "-",
                     t.run_dir or "-"])
    return table(["trial", "state", "status", "reason", "pruned at", "run folder"], rows, numeric={0}, raw={3})


def _trials_table(data: StudyData) -> str:
    if not data.trials:
        return note("No trial yet.")
    nt = noise_of(data, "target")
    doms = data.domains
    rows = []
    for t in data.trials:
        vs = "-"
        if nt is not None and t.complete and not t.prior:
            vs = f"{t.target - nt.mean:+.4f}" + (" (noise)" if nt.inside(t.target) else "")
        state = t.state if t.state == "complete" else f"{t.state}: {t.status}" if t.status else t.state
        rows.append([t.number, state, t.prior, t.seed, *(_share(t, d) for d in doms), _schedule_text(t.schedule),
                     _signed(t.target), _signed(t.general), is_feasible(t) if t.complete else None, vs,
                     t.run_dir or "-"])
    head = ["trial", "state", "prior", "seed", *(f"{d} share" for d in doms), "schedule", "target score",
            "general score", "feasible",
            "target - prior mean", "run folder"]
    n = len(doms)
    return table(head, rows, numeric={0, 3, *range(4, 4 + n), 5 + n, 6 + n}) + note(
        "(noise): the difference from the prior's mean target is within the spread of the prior's seeds.")


def _share(t: ReportTrial, d: str) -> str:
    w = t.mixture.get(d)
    return fmt(w, ".3f") if isinstance(w, float) else fmt(w)


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"
