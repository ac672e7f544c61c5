"""The report's plots: plotly figures built from ``StudyData`` (Optuna's visualization module where it fits).

Every user string that reaches a figure goes through ``ptext``: plotly draws labels from a small HTML-like
markup (``<b>``, ``<br>``, ``<a href>``), so a domain named ``<b>x`` would be drawn bold and a name with
``<script>`` would lose its tags; escaped, plotly draws exactly the characters of the name. Plotly draws
text as SVG text nodes, never as HTML, so nothing in a label runs.

Each ``*_figure`` returns a figure, or a string saying why there is none. Figures use SVG traces only,
except the parallel coordinates of more than 3 domains (plotly draws those with WebGL).
"""

from __future__ import annotations

import math
from typing import Any

from autotune.config.space import Objective
from autotune.errors import UserError
from autotune.report.analysis import best_feasible, is_feasible, noise_of, pareto_front
from autotune.report.load import ReportTrial, StudyData
from autotune.train.schedules import ScheduleParams, lr_curve

Figure = Any  # plotly.graph_objects.Figure; plotly is imported where a figure is built

# Points per curve at most: long proxy runs log thousands of steps; a report stays a few MB.
MAX_CURVE_POINTS = 400
# Curves drawn at most (loss, LR): beyond it the plot is unreadable and the page heavy; the prior seeds,
# the best trials by target and the failed ones are kept.
MAX_CURVES = 24
# Point labels (trial numbers) drawn up to this many points.
MAX_LABELLED = 40
# Smoothing of per-domain train losses: each step's per-domain loss comes from a fraction of one batch.
LOSS_EMA = 0.8


def ptext(s: Any) -> str:
    """A user string as plotly label text: its markup characters escaped, drawn as typed."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError:

        raise UserError("the HTML report needs plotly: pip install 'plotly>=5'") from None
    return go


def _palette() -> list[str]:
    import plotly.colors

    return plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3


def trial_color(number: int) -> str:
    p = _palette()
    return p[number % len(p)]


def _layout(fig: Figure, title: str, height: int = 420, **kw: Any) -> Figure:
    kw = {"margin": {"l": 60, "r": 30, "t": 60, "b": 50}, **kw}
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", height=height, **kw)
    return fig


def curve_trials(data: StudyData, has: Any) -> tuple[list[ReportTrial], str]:
    """The trials whose curves are drawn (``has(t)`` says a trial has one) and a note when some are left out."""
    ts = [t for t in data.trials if has(t)]
    if len(ts) <= MAX_CURVES:
        return ts, ""
    ranked = sorted((t for t in ts if t.complete), key=lambda t: (not t.prior, -t.target))
    ranked += [t for t in ts if t.state == "fail"] + [t for t in ts if not t.complete and t.state != "fail"]
    keep = sorted(ranked[:MAX_CURVES], key=lambda t: t.number)
    return keep, f" ({len(keep)} of {len(ts)} trials: the prior seeds, the best by target, then failed ones)"


def _mode(n: int) -> str:
    return "markers+text" if n <= MAX_LABELLED else "markers"


def _label(t: ReportTrial) -> str:
    return f"trial {t.number}" + (" (prior)" if t.prior else "")


def _mix_text(t: ReportTrial) -> str:
    return "<br>".join(f"{ptext(d)}: {w:.3f}" for d, w in t.mixture.items())


def _hover(t: ReportTrial) -> str:
    parts = [f"<b>{_label(t)}</b>", _mix_text(t)]
    s = t.schedule
    if s:
        parts.append(ptext(f"{s.get('kind', '?')} peak_lr {s.get('peak_lr', float('nan')):.2e}"))
    if t.target is not None:
        parts.append(f"target {t.target:+.4f}, general {t.general:+.4f}")
    return "<br>".join(parts)


def general_floor(data: StudyData) -> float | None:

    try:
        return Objective.model_validate(data.identity.get("objective") or {}).general_floor
    except Exception:  # an objective this version cannot parse: no line drawn
        return None


# --------------------------------------------------------------------------------------- Optuna figures
def _searched_distributions(data: StudyData) -> dict[str, Any]:
    """The searched schedule and context fields as Optuna distributions (fixed fields are not parameters)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for section in ("schedule", "context"):
        for name, spec in (data.identity.get(section) or {}).items():
            if isinstance(spec, dict) and "low" in spec and "high" in spec:
                out[f"{section}.{name}"] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
            elif isinstance(spec, list) and len(spec) > 1:
                out[f"{section}.{name}"] = CategoricalDistribution([str(x) for x in spec])
    return out


def display_study(data: StudyData):
    """An in-memory Optuna study for Optuna's plots: parameters are the mixture *shares* (not the sampler's
    simplex coordinates) and the searched schedule and context fields; the value is the target score; constraints as
    recorded. Trial numbers match the real study (gaps are filled with empty failed trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize", study_name=ptext(data.name))
    share = {d: (f"share.{ptext(d)}", FloatDistribution(0.0, 1.0)) for d in data.domains}
    searched = _searched_distributions(data)
    floor = general_floor(data)
    by_number = {t.number: t for t in data.trials}
    for n in range(max(by_number, default=-1) + 1):
        t = by_number.get(n)
        if t is None or t.state not in ("complete", "pruned", "fail"):
            study.add_trial(create_trial(state=TrialState.FAIL))
            continue
        params: dict[str, Any] = {}
        dists: dict[str, Any] = {}
        for d, (pname, dist) in share.items():
            if isinstance(t.mixture.get(d), int | float):
                params[pname], dists[pname] = min(max(float(t.mixture[d]), 0.0), 1.0), dist
        for pname, dist in searched.items():
            section, _, field_name = pname.partition(".")
            v = (t.context if section == "context" else t.schedule).get(field_name)
            if isinstance(dist, CategoricalDistribution) and str(v) in dist.choices:
                params[pname], dists[pname] = str(v), dist
            elif isinstance(dist, FloatDistribution) and isinstance(v, int | float) and dist.low <= v <= dist.high:
                params[pname], dists[pname] = float(v), dist
        if t.complete:
            c = t.constraint
            if c is None and floor is not None:
                c = floor - t.general
            if c is None and t.feasible is False:
                c = 1.0
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=t.target, params=params, distributions=dists,
                                         user_attrs={"general": t.general, "prior": t.prior},
                                         constraints={"general_retention": c} if c is not None else None))
        else:
            state = TrialState.PRUNED if t.state == "pruned" else TrialState.FAIL
            study.add_trial(create_trial(state=state, params=params, distributions=dists))
    return study


def history_figure(data: StudyData) -> Figure | str:
    if not data.complete:
        return "No complete trial yet."
    import optuna.visualization as ov

    fig = ov.plot_optimization_history(display_study(data), target_name="target (over base)")
    noise = noise_of(data, "target")
    if noise is not None:
        fig.add_hrect(y0=noise.mean - noise.spread, y1=noise.mean + noise.spread, fillcolor="grey", opacity=0.15,
                      line_width=0, annotation_text="prior +- seed spread", annotation_position="top left")
    return _layout(fig, "Optimisation history: target score per trial, best feasible so far")


def importance_figures(data: StudyData) -> list[Figure] | str:
    """fANOVA importances (Optuna's default evaluator, seeded) of shares and schedule for target and general."""
    done = data.complete
    if len(done) < 2:
        return f"Parameter importances need at least 2 complete trials (this study has {len(done)})."
    import optuna
    import optuna.visualization as ov

    study = display_study(data)
    figs = []
    for name, target in (("target", None), ("general", lambda t: t.user_attrs["general"])):
        try:
            imp = optuna.importance.get_param_importances(
                study, target=target, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except Exception as e:  # e.g. every parameter constant: say why instead of failing the report
            return f"Parameter importances could not be computed: {type(e).__name__}: {e}"
        if not imp:
            return "Parameter importances: no parameter varies across the complete trials."
        fig = ov.plot_param_importances(study, target=target, target_name=name,
                                        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        figs.append(_layout(fig, f"Importance for {name} (fANOVA over {len(done)} complete trials)",
                            height=max(260, 60 + 32 * len(imp)), showlegend=False))
    return figs


# --------------------------------------------------------------------------------------- own figures
def pareto_figure(data: StudyData) -> Figure | str:
    done = data.complete
    if not done:
        return "No complete trial yet."
    go = _go()
    fig = go.Figure()
    groups = (("feasible", [t for t in done if is_feasible(t) and not t.prior], "circle", "#1f77b4"),
              ("infeasible", [t for t in done if not is_feasible(t) and not t.prior], "x", "#d62728"),
              ("prior (seed replicates)", [t for t in done if t.prior], "diamond", "#2ca02c"))
    for name, ts, symbol, color in groups:
        if ts:
            fig.add_trace(go.Scatter(x=[t.general for t in ts], y=[t.target for t in ts], mode=_mode(len(done)), name=name,
                                     text=[str(t.number) for t in ts], textposition="top center",
                                     marker={"symbol": symbol, "size": 11, "color": color},
                                     hovertext=[_hover(t) for t in ts], hoverinfo="text"))
    front = pareto_front([t for t in done if is_feasible(t)])
    if front:
        fig.add_trace(go.Scatter(x=[t.general for t in front], y=[t.target for t in front], mode="lines",
                                 line={"shape": "hv", "dash": "dot", "color": "#1f77b4"}, name="Pareto front (feasible)",
                                 hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", name="base model", marker={"symbol": "square", "size": 10,
                             "color": "black"}, hovertext=["base model (0, 0)"], hoverinfo="text"))
    floor = general_floor(data)
    if floor is not None:
        fig.add_vline(x=floor, line_dash="dash", line_color="#d62728",
                      annotation_text=f"general floor {floor:+g}", annotation_position="top right")
    nt, ng = noise_of(data, "target"), noise_of(data, "general")
    if nt and ng:
        fig.add_shape(type="rect", x0=ng.mean - ng.spread, x1=ng.mean + ng.spread, y0=nt.mean - nt.spread,
                      y1=nt.mean + nt.spread, fillcolor="grey", opacity=0.15, line_width=0)
    best = best_feasible(data)
    if best:
        fig.add_annotation(x=best.general, y=best.target, text=f"best feasible: trial {best.number}", showarrow=True,
                           arrowhead=2, ax=40, ay=-40)
    return _layout(fig, "Target vs general (improvements over the base model; grey: prior +- seed spread)",
                   height=480, xaxis_title="general (retention)", yaxis_title="target")


def mixture_figure(data: StudyData) -> Figure | str:
    """Ternary plot for 3 domains, share-vs-target scatter for 2; more domains use ``parallel_figure``."""
    ts = [t for t in data.trials if t.mixture]
    if not ts:
        return "No trial has a mixture yet."
    go = _go()
    doms = data.domains
    done = [t for t in ts if t.complete]
    others = [t for t in ts if not t.complete]
    fig = go.Figure()
    if len(doms) == 3:
        a, b, c = doms

        def trace(group: list[ReportTrial], name: str, marker: dict[str, Any]):
            return go.Scatterternary(a=[t.mixture.get(a, 0) for t in group], b=[t.mixture.get(b, 0) for t in group],
                                     c=[t.mixture.get(c, 0) for t in group], mode=_mode(len(ts)), name=name,
                                     text=[str(t.number) for t in group], textposition="top center", marker=marker,
                                     hovertext=[_hover(t) for t in group], hoverinfo="text")

        if done:
            fig.add_trace(trace(done, "complete (colour: target)", {
                "size": 12, "color": [t.target for t in done], "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": "target"}, "x": 1.05},
                "symbol": ["diamond" if t.prior else ("circle" if is_feasible(t) else "x") for t in done]}))
        if others:
            fig.add_trace(trace(others, "failed / pruned / running", {"size": 10, "color": "#888", "symbol": "x-thin-open",
                                                                      "line": {"width": 2, "color": "#888"}}))
        fig.update_layout(ternary={"aaxis": {"title": {"text": ptext(a)}, "min": 0},
                                   "baxis": {"title": {"text": ptext(b)}, "min": 0},
                                   "caxis": {"title": {"text": ptext(c)}, "min": 0}},
                          legend={"y": -0.1, "orientation": "h"})
        return _layout(fig, "Mixture of every trial (shares; diamond: prior, x: infeasible)", height=560)
    if len(doms) == 2:
        d = doms[0]
        fig.add_trace(go.Scatter(x=[t.mixture.get(d, 0) for t in done], y=[t.target for t in done], mode=_mode(len(done)),
                                 text=[str(t.number) for t in done], textposition="top center", name="complete",
                                 hovertext=[_hover(t) for t in done], hoverinfo="text"))
        return _layout(fig, "Mixture of every trial", xaxis_title=f"share of {ptext(d)}", yaxis_title="target")
    return parallel_figure(data)


def parallel_figure(data: StudyData) -> Figure | str:
    """Parallel coordinates: one axis per domain share (in the space's order), then target and general.
    (Optuna's ``plot_parallel_coordinate`` sorts axes by name and truncates long names.)"""
    done = [t for t in data.complete if t.mixture]
    if not done:
        return "No complete trial yet."
    go = _go()
    dims = [{"label": ptext(d), "values": [t.mixture.get(d, 0.0) for t in done], "range": [0, 1]} for d in data.domains]
    dims += [{"label": "target score", "values": [t.target for t in done]},
             {"label": "general score", "values": [t.general for t in done]}]
    fig = go.Figure(go.Parcoords(dimensions=dims, line={"color": [t.target for t in done], "colorscale": "Viridis",
                                                        "showscale": True, "colorbar": {"title": {"text": "target"}}}))
    return _layout(fig, f"Mixtures of the {len(done)} complete trials (shares) and their scores; drag along an axis "
                        "to filter", height=460, margin={"l": 80, "r": 80, "t": 90, "b": 40})


def mixture_bars_figure(data: StudyData) -> Figure | str:
    """Stacked shares per trial: readable for any number of domains."""
    ts = [t for t in data.trials if t.mixture]
    if not ts:
        return "No trial has a mixture yet."
    go = _go()
    fig = go.Figure()
    x = [f"{t.number}{'p' if t.prior else ''}{'' if t.complete else ' (' + t.state + ')'}" for t in ts]
    for d in data.domains:
        fig.add_trace(go.Bar(x=x, y=[t.mixture.get(d, 0) for t in ts], name=ptext(d),
                             hovertemplate=f"{ptext(d)}: %{{y:.3f}}<extra>%{{x}}</extra>"))
    fig.update_layout(barmode="stack", xaxis={"type": "category", "title": {"text": "trial (p: prior)"}},
                      yaxis={"title": {"text": "share of proxy tokens"}, "range": [0, 1]})
    return _layout(fig, "Shares per trial", height=380)


def scores_figure(data: StudyData) -> Figure | str:
    """Each metric per trial with its stderr, the base value and the seed-noise band of the prior."""
    keys = data.metric_keys()
    done = data.complete
    if not keys or not done:
        return "No per-task scores yet."
    go = _go()
    from plotly.subplots import make_subplots

    cols = 2 if len(keys) > 1 else 1
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[ptext(k) for k in keys], vertical_spacing=0.5 / rows)
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        ts = [t for t in done if key in t.metrics]
        se = [t.stderr.get(key) for t in ts]
        fig.add_trace(go.Scatter(
            x=[t.number for t in ts], y=[t.metrics[key] for t in ts], mode="markers", showlegend=False, name=ptext(key),
            marker={"color": ["#2ca02c" if t.prior else ("#1f77b4" if is_feasible(t) else "#d62728") for t in ts],
                    "symbol": ["diamond" if t.prior else "circle" for t in ts], "size": 8},
            error_y={"type": "data", "array": [s if s is not None else 0 for s in se], "visible": any(s for s in se)},
            hovertext=[f"{_label(t)}<br>{ptext(key)} = {t.metrics[key]:.4f}"
                       + (f" +- {t.stderr[key]:.4f} (stderr)" if key in t.stderr else "") for t in ts],
            hoverinfo="text"), row=r, col=c)
        if key in data.base:
            fig.add_hline(y=data.base[key], line_dash="dash", line_color="black", row=r, col=c)
        noise = noise_of(data, key)
        if noise is not None:
            fig.add_hrect(y0=noise.mean - noise.spread, y1=noise.mean + noise.spread, fillcolor="grey", opacity=0.18,
                          line_width=0, row=r, col=c)
    fig.update_xaxes(title_text="trial", type="linear", dtick=1 if len(data.trials) <= 30 else None)
    return _layout(fig, "Per-task scores (error bars: stderr over documents; dashed: base model; "
                        "grey: prior +- seed spread)", height=max(320, 260 * rows))


def _thin(xs: list[Any], ys: list[Any]) -> tuple[list[Any], list[Any]]:
    if len(xs) <= MAX_CURVE_POINTS:
        return xs, ys
    step = math.ceil(len(xs) / MAX_CURVE_POINTS)
    idx = list(range(0, len(xs), step))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def total_steps(data: StudyData, t: ReportTrial) -> int | None:
    steps = (t.result.get("train") or {}).get("steps")
    if isinstance(steps, int) and steps > 0:
        return steps
    proxy = data.identity.get("proxy") or {}
    try:
        seq_len, batch_tokens, tokens = int(proxy["seq_len"]), int(proxy["batch_tokens"]), int(float(proxy["tokens"]))
        return tokens // ((batch_tokens // seq_len) * seq_len)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def schedules_figure(data: StudyData) -> Figure | str:
    """LR schedules recomputed from each trial's proposal with the trainer's own pure schedule functions."""

    go = _go()
    fig = go.Figure()
    problems = []
    trials, left_out = curve_trials(data, lambda t: bool(t.schedule))
    for t in trials:
        n = total_steps(data, t)
        try:
            fields = ("kind", "peak_lr", "warmup_fraction", "decay_fraction", "final_lr_ratio", "decay_shape", "start_lr")
            # start_lr may read "base": the resolved number is in the trial's train info
            params = ScheduleParams(**{k: t.schedule[k] for k in fields if t.schedule.get(k) not in (None, "base")})
            lrs = lr_curve(n, params) if n else []
        except (TypeError, ValueError) as e:
            problems.append(f"trial {t.number}: {e}")
            continue
        xs, ys = _thin(list(range(len(lrs))), lrs)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=_label(t), line={"color": trial_color(t.number)},
                                 hovertemplate=f"{_label(t)} ({ptext(params.kind)})<br>step %{{x}}: lr %{{y:.3g}}<extra></extra>"))
    if not fig.data:
        return "No schedule to draw." + (" " + "; ".join(problems) if problems else "")
    return _layout(fig, "Learning-rate schedules (recomputed from each proposal)" + left_out, height=420,
                   xaxis_title="step", yaxis_title="learning rate")


def _ema(ys: list[float], beta: float) -> list[float]:
    out, acc = [], None
    for y in ys:
        acc = y if acc is None else beta * acc + (1 - beta) * y
        out.append(acc)
    return out


def losses_figure(data: StudyData) -> Figure | str:
    """Train loss per domain (and overall) from each trial's train_log.jsonl, EMA-smoothed."""
    ts, left_out = curve_trials(data, lambda t: bool(t.train_log))
    if not ts:
        return "No train log found (trials/<hash>/train_log.jsonl)."
    go = _go()
    from plotly.subplots import make_subplots

    panels = ["all", *data.domains]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    titles = ["all domains"] + [ptext(d) for d in data.domains]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.45 / rows)
    for t in ts:
        tokens = [row.get("tokens", row["step"]) for row in t.train_log]
        for i, panel in enumerate(panels):
            if panel == "all":
                pts = [(x, row.get("loss")) for x, row in zip(tokens, t.train_log, strict=True)]
            else:
                pts = [(x, (row.get("loss_per_domain") or {}).get(panel)) for x, row in zip(tokens, t.train_log, strict=True)]
            pts = [(x, y) for x, y in pts if isinstance(y, int | float) and math.isfinite(y)]
            if not pts:
                continue
            xs, ys = _thin([p[0] for p in pts], _ema([p[1] for p in pts], LOSS_EMA))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=_label(t), legendgroup=f"t{t.number}",
                                     showlegend=i == 0, line={"color": trial_color(t.number), "width": 1.5},
                                     hovertemplate=f"{_label(t)}<br>tokens %{{x}}: loss %{{y:.3f}}<extra></extra>"),
                          row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="tokens")
    return _layout(fig, f"Train loss per domain (EMA {LOSS_EMA} over steps; click a legend entry to hide a trial)"
                   + left_out,
                   height=max(360, 300 * rows))


def fit_figures(recipe: Any) -> list[Figure]:
    """Predicted-vs-observed scatters for any mapping in recipe.yaml holding equal-length ``predicted`` and
    ``observed`` number lists (the extrapolation's cross-validation), wherever it sits in the tree."""
    go = _go()
    found: list[tuple[str, list[float], list[float]]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            p, o = node.get("predicted"), node.get("observed")
            if (isinstance(p, list) and isinstance(o, list) and len(p) == len(o) > 1
                    and all(isinstance(v, int | float) for v in p + o)):
                found.append((path or "recipe", p, o))
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(recipe, "")
    figs = []
    for path, pred, obs in found[:12]:
        lo, hi = min(pred + obs), max(pred + obs)
        fig = go.Figure([go.Scatter(x=obs, y=pred, mode="markers", name="folds", hoverinfo="x+y"),
                         go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dash"})])
        figs.append(_layout(fig, f"Extrapolation fit: {ptext(path)} (predicted vs observed)", height=380,
                            xaxis_title="observed", yaxis_title="predicted"))
    return figs


def verification_figure(v: Any) -> Figure:
    """recipe.yaml's ``verification`` (as a validated ``Verification``): per group score, each mixture's
    realised runs (one dot per seed, a bar at their mean) beside what the recipe's models predicted for it,
    with the interval. The predictions are of proxy-scale scores; the runs' scale is in the axis title."""
    go = _go()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("target", "general"), horizontal_spacing=0.1)
    labels = [ptext(c.label) for c in v.candidates]
    for col, g in enumerate(("target", "general"), start=1):
        first = col == 1
        xs, ys = [], []
        for c, lab in zip(v.candidates, labels, strict=True):
            for x in c.values.get(g, []):
                if x is not None:
                    xs.append(lab)
                    ys.append(x)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"realised ({len(v.seeds)} seeds)",
                                 marker={"color": "#1f77b4", "size": 7}, showlegend=first, legendgroup="r"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=labels, y=[c.mean.get(g) for c in v.candidates], mode="markers",
                                 name="realised mean", marker={"symbol": "line-ew-open", "size": 26,
                                                               "color": "#1f77b4", "line": {"width": 3}},
                                 showlegend=first, legendgroup="m"), row=1, col=col)
        pv = [c.predicted[g].value if g in c.predicted else None for c in v.candidates]
        up = [(c.predicted[g].high - c.predicted[g].value) if g in c.predicted and c.predicted[g].high is not None
              else 0 for c in v.candidates]
        down = [(c.predicted[g].value - c.predicted[g].low) if g in c.predicted and c.predicted[g].low is not None
                else 0 for c in v.candidates]
        fig.add_trace(go.Scatter(x=labels, y=pv, mode="markers", name=f"predicted ({ptext(v.predicted_scale)})",
                                 marker={"symbol": "diamond-open", "size": 10, "color": "#d62728"},
                                 error_y={"type": "data", "array": up, "arrayminus": down, "visible": True},
                                 showlegend=first, legendgroup="p"), row=1, col=col)
    return _layout(fig, f"Verification: realised {ptext(v.scale)} vs predicted", height=440,
                   yaxis_title="score vs base (higher is better)")
