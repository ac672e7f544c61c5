"""The gate's report, rendered: the terminal table, ``gate.md`` (a PR comment or ``$GITHUB_STEP_SUMMARY``) and
``junit.xml`` (one test case per suite entry), from the report dict that ``autotune.gate.run`` builds (what
``gate.json`` holds)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autotune.paths import write_text_atomic
from autotune.records import write_json_atomic

_ICON = {"pass": "✅", "fail": "❌", "skip": "⏭️"}
_INTERVAL_HELP = {"bca": "bias-corrected and accelerated percentiles of the resampled drops",
                  "percentile": "percentiles of the resampled drops"}


def _num(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _bounds(e: dict[str, Any]) -> str:
    return "-" if e["low"] is None else f"[{_num(e['low'], True)}, {_num(e['high'], True)}]"


def _tol(e: dict[str, Any]) -> str:
    if e["tolerance"] is None:
        return "-"
    relative = e["tolerance"].endswith("%") and e["threshold"] is not None
    return e["tolerance"] + (f" ({_num(e['threshold'])})" if relative else "")


_INTERVAL_WORDS = {"bca": "BCa", "percentile": "percentile"}


def interval_words(report: dict[str, Any]) -> str:
    """The bootstrap bounds' method as a reader says it (a report from before the option: percentile)."""
    method = report.get("interval", "percentile")
    return _INTERVAL_WORDS.get(method, method)


def headline(report: dict[str, Any]) -> str:
    c = report["counts"]
    gated = c["pass"] + c["fail"]
    skipped = f", {c['skip']} skipped" if c["skip"] else ""
    if report["status"] == "fail":
        names = ", ".join(e["key"] for e in report["entries"] if e["status"] == "fail")
        return f"regression in {c['fail']} of {gated} entries{skipped}: {names}"
    return f"passed: {gated} entries, no regression{skipped}"


def render_markdown(report: dict[str, Any]) -> str:
    """The summary for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    conf = f"{report['confidence']:.0%}"
    icon = _ICON[report["status"]]
    lines = [f"### {icon} autotune gate: {headline(report)}", "",
             f"`{Path(report['checkpoint']).name}` (model `{report['model_hash']}`) against baseline "
             f"`{report['baseline']}` (model `{report['baseline_model_hash']}`) on suite **{report['suite']}**. "
             f"An entry fails when the checkpoint is worse than the baseline by more than its tolerance with {conf} "
             f"confidence (paired bootstrap over the same documents, {report['resamples']} resamples, "
             f"{interval_words(report)} bounds).", "",
             f"| | entry | group | baseline | checkpoint | drop | {conf} bounds of the drop | tolerance | n | note |",
             "|:-:|---|---|--:|--:|--:|:-:|--:|--:|---|"]
    for e in report["entries"]:
        arrow = " ↓" if not e["higher_is_better"] else ""
        note = (e["note"] or "").replace("|", "\\|")
        lines.append(f"| {_ICON[e['status']]} | `{e['key']}`{arrow} | {e['group']} | {_num(e['baseline'])} | "
                     f"{_num(e['value'])} | {_num(e['drop'], True)} | {_bounds(e)} | {_tol(e)} | {e['n'] or '-'} | "
                     f"{note} |")
    lines += ["", f"Drop: how much worse the checkpoint is, in the metric's unit (positive = worse; ↓ marks metrics "
                  f"where lower is better). Bounds: one-sided {conf} bounds, {interval_words(report)} "
                  f"({_INTERVAL_HELP[report.get('interval', 'percentile')]}). n: documents resampled (held-out "
                  "bits-per-byte: scored windows). The bootstrap covers which documents were drawn, not training "
                  "noise: the tolerance absorbs seed-to-seed differences.", ""]
    return "\n".join(lines)


def render_junit(report: dict[str, Any]) -> str:
    """JUnit XML: one test case per suite entry (failure = regression, skipped = not gated)."""

    c = report["counts"]
    total = len(report["entries"])
    root = ET.Element("testsuites", name="autotune gate", tests=str(total), failures=str(c["fail"]),
                      errors="0", skipped=str(c["skip"]))
    ts = ET.SubElement(root, "testsuite", name=f"autotune gate: {report['suite']}", tests=str(total),
                       failures=str(c["fail"]), errors="0", skipped=str(c["skip"]))
    props = ET.SubElement(ts, "properties")
    for k in ("checkpoint", "model_hash", "baseline", "baseline_model_hash", "confidence", "resamples"):
        ET.SubElement(props, "property", name=k, value=str(report[k]))
    ET.SubElement(props, "property", name="interval", value=str(report.get("interval", "percentile")))
    for e in report["entries"]:
        case = ET.SubElement(ts, "testcase", classname=f"gate.{report['suite']}.{e['group']}", name=e["key"], time="0")
        detail = (f"{e['metric']}{' (lower is better)' if not e['higher_is_better'] else ''}: baseline "
                  f"{_num(e['baseline'])}, checkpoint {_num(e['value'])}, drop {_num(e['drop'], True)}, "
                  f"{report['confidence']:.0%} {_INTERVAL_WORDS.get(e.get('interval') or '', 'bootstrap')} bounds "
                  f"{_bounds(e)}, tolerance {_tol(e)}, {e['n']} documents. "
                  f"{e['note']}")
        if e["status"] == "fail":
            ET.SubElement(case, "failure", message=e["note"] or "regression", type="regression").text = detail
        elif e["status"] == "skip":
            ET.SubElement(case, "skipped", message=e["note"] or "not gated")
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def print_table(console: Console, report: dict[str, Any]) -> None:

    conf = f"{report['confidence']:.0%}"
    table = Table(title=escape(f"{Path(report['checkpoint']).name} against {report['baseline']} on suite "
                               f"{report['suite']}"))
    for col in ("", "entry", "group", "baseline", "checkpoint", "drop", f"{conf} bounds ({interval_words(report)})",
                "tolerance", "n", "note"):
        table.add_column(col, justify="right" if col in ("baseline", "checkpoint", "drop", "n") else "left",
                         no_wrap=col != "note")
    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    for e in report["entries"]:
        table.add_row(f"[{style[e['status']]}]{e['status']}[/]",
                      *map(escape, (e["key"] + (" v" if not e["higher_is_better"] else ""), e["group"],
                                    _num(e["baseline"]), _num(e["value"]), _num(e["drop"], True), _bounds(e), _tol(e),
                                    str(e["n"] or "-"), e["note"])))
    console.print(table)
    colour = "bold red" if report["status"] == "fail" else "bold green"
    console.print(f"[{colour}]{report['status'].upper()}[/] {escape(headline(report))}  "
                  "(drop > 0: worse; v: lower is better)",
                  highlight=False)


def _write_text_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)  # (the umask's mode, as everything autotune writes)


def write_outputs(folder: Path, report: dict[str, Any]) -> None:
    """``gate.json``, ``gate.md`` and ``junit.xml`` in ``folder`` (each written atomically)."""

    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "gate.json", report)
    _write_text_atomic(folder / "gate.md", render_markdown(report))
    _write_text_atomic(folder / "junit.xml", render_junit(report))
