"""HTML of the report: one self-contained file (plotly.js inlined, figure data as JSON, no network).

Escaping, the whole of the report's XSS story:

* text and attributes: ``html.escape`` on every value that is not our own literal markup (``esc``);
* figure data: one ``<script type="application/json">`` block whose JSON has ``<``, ``>`` and ``&``
  written as ``\\u003c``, ``\\u003e``, ``\\u0026``, so no ``</script>`` or ``<!--`` can end or bend it
  (``safe_json``); the page reads it with ``JSON.parse`` and hands it to ``Plotly.newPlot``;
* labels inside figures: ``figures.ptext``;
* a Content-Security-Policy that allows no network fetch at all (the file must work offline).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

# plotly.js needs inline scripts, eval (WebGL shader code generation in parcoords) and inline styles.
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; worker-src blob:")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9cfdb;font-size:13px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #dde1e7;padding:8px 28px;font-size:13px}
nav a{margin-right:14px;color:#2557a7;text-decoration:none} nav a:hover{text-decoration:underline}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:18px 0;padding:14px 18px}
section h2{margin:0 0 8px;font-size:18px} p.note,.muted{color:#5b6475;font-size:13px}
.plot{width:100%;min-height:260px;margin:6px 0}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #e3e6eb;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.tree th{background:#f7f8fa;font-weight:500;color:#3b4456} table.tree table{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #dde1e7;border-radius:6px;padding:10px 14px;min-width:180px}
.card b{display:block;font-size:12px;color:#5b6475;font-weight:500} .card span{font-size:17px}
.bad{color:#b42318} .good{color:#1a7f37} .warn{background:#fff4e5;border:1px solid #f5c27a;padding:6px 10px;border-radius:4px}
pre{background:#f6f7f9;border:1px solid #e3e6eb;padding:8px;overflow:auto;font-size:12px;max-height:420px}
.grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:8px 0}
.box{border:1px solid #e3e6eb;border-radius:6px;padding:6px 10px} .box h3{margin:0 0 4px;font-size:14px}
details summary{cursor:pointer;color:#2557a7;font-size:13px}
"""

# Renders every figure; marks <body data-rendered="N"> when all are drawn (tests wait on it) and reports a
# failed plot on the console and in its box instead of leaving it blank.
RENDER_JS = """
(function () {
  var figs = JSON.parse(document.getElementById("report-figures").textContent);
  var config = {responsive: true, displaylogo: false, typesetMath: false, showLink: false,
                showSendToCloud: false, showEditInChartStudio: false};
  var jobs = figs.map(function (f) {
    var el = document.getElementById(f.id);
    try {
      return Plotly.newPlot(el, f.figure.data, f.figure.layout, config).catch(function (e) {
        el.textContent = "this plot failed to draw: " + e; console.error("plot " + f.id + " failed: " + e); throw e;
      });
    } catch (e) {
      el.textContent = "this plot failed to draw: " + e; console.error("plot " + f.id + " failed: " + e);
      return Promise.reject(e);
    }
  });
  Promise.all(jobs).then(function () { document.body.setAttribute("data-rendered", String(jobs.length)); },
                         function () { document.body.setAttribute("data-rendered", "error"); });
})();
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def safe_json(text: str) -> str:
    """JSON text made safe inside ``<script>``: no ``<``, ``>`` or ``&`` left (still the same JSON)."""
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def fmt(x: Any, spec: str = ".4g") -> str:
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "-"}[x]
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], numeric: set[int] | None = None,
          raw: set[int] | None = None) -> str:
    """Cells are escaped, except columns in ``raw`` (our own markup built from escaped parts)."""
    numeric, raw = numeric or set(), raw or set()
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            out.append(f"<td{cls}>{cell if i in raw else esc(fmt(cell))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def tree(node: Any, depth: int = 0) -> str:
    """Any YAML/JSON value as nested tables (the space, the recipe): keys and values escaped."""
    if isinstance(node, dict):
        if not node:
            return '<span class="muted">{}</span>'
        if depth > 0 and len(node) <= 6 and all(not isinstance(v, dict | list) for v in node.values()):
            return esc(", ".join(f"{k}: {fmt(v, '.6g')}" for k, v in node.items()))  # a range, a small record
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{tree(v, depth + 1)}</td></tr>" for k, v in node.items())
        return f'<table class="tree">{rows}</table>'
    if isinstance(node, list):
        if all(not isinstance(v, dict | list) for v in node):
            return esc(", ".join(fmt(v, ".6g") for v in node)) or '<span class="muted">[]</span>'
        rows = "".join(f"<tr><th>{i}</th><td>{tree(v, depth + 1)}</td></tr>" for i, v in enumerate(node))
        return f'<table class="tree">{rows}</table>'
    return esc(fmt(node, ".6g"))


def grid(cells: dict[str, str]) -> str:
    """Small titled boxes side by side (already-rendered HTML bodies; titles escaped)."""
    boxes = "".join(f'<div class="box"><h3>{esc(k)}</h3>{v}</div>' for k, v in cells.items())
    return f'<div class="grid">{boxes}</div>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str, figures_json: str, plotly_js: str) -> str:
    if "</script" in plotly_js.lower() or "<!--" in plotly_js:
        raise AssertionError("plotly.js contains a script terminator; it cannot be inlined as is")
    links = "".join(f'<a href="#{esc(sid)}">{esc(label)}</a>' for sid, label in nav)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
<script>{plotly_js}</script>
</head>
<body>
<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>
<nav>{links}</nav>
<main>
{body}
</main>
<script type="application/json" id="report-figures">{figures_json}</script>
<script>{RENDER_JS}</script>
</body>
</html>
"""


def figures_json(items: list[tuple[str, str]]) -> str:
    """``[(div id, plotly JSON of one figure)]`` -> the safe JSON array the page renders."""
    parts = [f'{{"id":{json.dumps(pid)},"figure":{fig}}}' for pid, fig in items]
    return safe_json("[" + ",".join(parts) + "]")
