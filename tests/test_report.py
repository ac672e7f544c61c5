"""The HTML report (autotune/report/), checked in a real headless Chromium driven by selenium + chromedriver.

Why selenium: chromedriver's ``goog:loggingPrefs`` browser log carries every console message and uncaught
exception with its level, as structured records (no parsing of Chromium's stderr, whose format changes
between versions and headless modes), and the same session gives element screenshots and the DOM.

Studies are synthetic but real in form: a real Optuna SQLite storage written through the optuna API, and
the files ``autotune search`` leaves (space.json, summary.json, trials/<hash>/result.json, train logs,
lm-eval per-sample logs). A missing Chromium fails these tests, unless AUTOTUNE_SKIP_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.errors import UserError
from autotune.report import write_report
from autotune.report.page import safe_json

XSS_DOMAIN = "<script>alert(1)</script>"
XSS_DOMAIN_2 = 'x"><img src=x onerror="window.__xss=2">'
XSS_TASK = "<!--<b>t"
XSS_REASON = "</script><script>window.__xss=3</script>"
SECTIONS = ["summary", "verification", "settings", "history", "pareto", "importance", "mixtures", "scores", "schedules", "losses",
            "extrapolation", "problems", "trials"]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--enable-unsafe-swiftshader",  # software WebGL for plotly's parallel coordinates
                "--hide-scrollbars", "--window-size=1400,1000"]


# --------------------------------------------------------------------------------------- a synthetic study
def _dirichlet(rng: random.Random, k: int) -> list[float]:
    g = [rng.gammavariate(1.0, 1.0) for _ in range(k)]
    return [x / sum(g) for x in g]


def make_study(root: Path, domains: list[str], *, name: str = "synth", trials: int = 7, task: str = "demo_math_mc",
               reason: str = "diverged: loss is NaN at step 3", recipe: dict | None = None) -> Path:
    """A study folder as ``autotune search`` leaves it: 2 prior seed replicates, ``trials`` - 4 searched
    trials, one failed and one pruned trial; the last complete trial is infeasible."""
    rng = random.Random(0)
    root.mkdir(parents=True)
    metrics_keys = [f"{task}/acc", *(f"bpb/{d}" for d in domains)]
    identity = {
        "name": name, "base_model": {"hidden_size": 32, "num_layers": 2},
        "domains": {d: {"source": "demo:math", "role": "general" if i == len(domains) - 1 else "target"}
                    for i, d in enumerate(domains)},
        "mixture": {"bounds": {d: {"min": 0.0, "max": 1.0} for d in domains}, "floors": {},
                    "prior": {d: 1 / len(domains) for d in domains}},
        "schedule": {"kind": ["wsd", "cosine"], "peak_lr": {"low": 1e-4, "high": 1e-2, "log": True},
                     "warmup_fraction": 0.05, "decay_fraction": {"low": 0.1, "high": 0.6, "log": False},
                     "final_lr_ratio": 0.0},
        "proxy": {"tokens": 24576, "seq_len": 64, "batch_tokens": 1024, "seed": 0, "replicates": 2, "threads": None},
        "evals": "suite.yaml", "objective": {"maximize": "target", "pareto": None, "subject_to": "general >= base - 0.02"},
        "search": {"sampler": "tpe", "seed": 0}}
    (root / "space.json").write_text(json.dumps({"identity": identity, "digest": "0123456789abcdef",
                                                 "source_file": str(root / "space.yaml")}, sort_keys=True))
    (root / "space.yaml").write_text("# the space as run\n" + yaml.safe_dump(identity, sort_keys=False))
    base = {k: (0.25 if k.endswith("/acc") else 3.0) for k in metrics_keys}
    (root / "base" / "b0").mkdir(parents=True)
    (root / "base" / "b0" / "result.json").write_text(json.dumps({"status": "ok", "metrics": base}))

    storage = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    dists = {f"mix.{d}": optuna.distributions.FloatDistribution(0, 1) for d in domains[:-1]}
    dists["schedule.kind"] = optuna.distributions.CategoricalDistribution(["wsd", "cosine"])
    dists["schedule.peak_lr"] = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    rows = []
    for n in range(trials):
        prior = n < 2
        mixture = dict(zip(domains, [1 / len(domains)] * len(domains) if prior else _dirichlet(rng, len(domains)),
                           strict=True))
        schedule = {"kind": "wsd" if n % 3 else "cosine", "peak_lr": 10 ** rng.uniform(-4, -2), "warmup_fraction": 0.05,
                    "decay_fraction": rng.uniform(0.1, 0.6), "final_lr_ratio": 0.0}
        seed = n if prior else 0
        trial = study.ask(dists)
        run_dir = f"trials/{n:016x}"
        folder = root / run_dir
        (folder / "samples").mkdir(parents=True)
        trial.set_user_attr("proposal", {"mixture": mixture, "schedule": schedule, "seed": seed})
        trial.set_user_attr("prior", prior)
        trial.set_user_attr("run_dir", run_dir)
        steps = 24 if n != trials - 3 else 5
        with open(folder / "train_log.jsonl", "w") as f:
            for s in range(steps):
                per = {d: 6.0 - 3.0 * s / 24 * (0.5 + mixture[d]) + rng.gauss(0, 0.1) for d in domains}
                f.write(json.dumps({"step": s, "lr": 1e-3, "loss": sum(per.values()) / len(per),
                                    "loss_per_domain": per, "tokens": (s + 1) * 1024}) + "\n")
        row = {"trial": n, "mixture": mixture, "schedule": schedule, "seed": seed, "prior": prior, "run_dir": run_dir,
               "target": None, "general": None, "feasible": None, "metrics": {}, "reason": "", "status": ""}
        if n == trials - 3:  # failed
            (folder / "worker.log").write_text(f"step 3: loss nan\n{reason}\n")
            (folder / "result.json").write_text(json.dumps({"status": "diverged", "reason": reason}))
            trial.set_user_attr("status", "diverged")
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("counts", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            row.update(state="fail", status="diverged", reason=reason)
        elif n == trials - 2:  # pruned at the first rung
            trial.report(0.1, step=6144)
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("reason", "below the median at the 25% rung")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            row.update(state="pruned", status="pruned", reason="below the median at the 25% rung")
        else:
            acc = [float(rng.random() < 0.3 + 0.2 * mixture[domains[0]]) for _ in range(50)]
            metrics = {f"{task}/acc": sum(acc) / len(acc), **{f"bpb/{d}": 2.5 - mixture[d] + rng.gauss(0, 0.02)
                                                               for d in domains}}
            with open(folder / "samples" / f"{task}.jsonl", "w") as f:
                for i, a in enumerate(acc):
                    f.write(json.dumps({"doc_id": i, "filter": "none", "acc": a}) + "\n")
            target = metrics[f"{task}/acc"] - base[f"{task}/acc"] + sum(base[f"bpb/{d}"] - metrics[f"bpb/{d}"]
                                                                        for d in domains[:-1])
            general = base[f"bpb/{domains[-1]}"] - metrics[f"bpb/{domains[-1]}"] - (1.5 if n == trials - 1 else 0.5)
            feasible = general >= -0.02
            (folder / "result.json").write_text(json.dumps({"status": "ok", "reason": "", "metrics": metrics, "stderr": {},
                                                            "train": {"steps": steps, "tokens": steps * 1024}}))
            for k, v in {"status": "ok", "metrics": metrics, "target": target, "general": general,
                         "feasible": feasible}.items():
                trial.set_user_attr(k, v)
            trial.set_constraint("general_retention", -0.02 - general)
            study.tell(trial, target)
            row.update(state="complete", status="ok", metrics=metrics, target=target, general=general, feasible=feasible)
        rows.append(row)
    (root / "summary.json").write_text(json.dumps({"base": base, "trials": rows}))
    if recipe is not None:
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return root


# --------------------------------------------------------------------------------------- the browser
def _need(what: str) -> None:
    if os.environ.get("AUTOTUNE_SKIP_BROWSER") == "1":
        pytest.skip(f"AUTOTUNE_SKIP_BROWSER=1 ({what}): the report is not checked in a browser")
    pytest.fail(f"the report tests need headless Chromium: {what}. Install: apt-get install -y chromium "
                "chromium-driver; pip install selenium. Or set AUTOTUNE_SKIP_BROWSER=1 to skip them.", pytrace=False)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium is not installed")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _need(f"chromium {'found' if binary else 'missing'}, chromedriver {'found' if driver_path else 'missing'}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="autotune-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))  # a given path: no driver download
    # Record dialogs instead of opening them: an injected alert() shows up as data, not as a blocked session.
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__alerts = []; window.alert = window.confirm = window.prompt = "
        "function (m) { window.__alerts.push(String(m)); };")})
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_report(driver, path: Path) -> list[dict]:
    """Load the page, wait until every plot is drawn; returns the console log of this page load."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what an earlier page left
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-rendered"))
    return driver.get_log("browser")


# The screenshot's pixels, read back by the browser's own PNG decoder on a canvas (no imaging library needed):
# distinct colours over a grid of samples and the standard deviation of their luminance.
PIXEL_STATS_JS = """
var done = arguments[arguments.length - 1], img = new Image();
img.onload = function () {
  var c = document.createElement("canvas"); c.width = img.width; c.height = img.height;
  var ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0);
  var d = ctx.getImageData(0, 0, c.width, c.height).data, seen = {}, n = 0, s = 0, s2 = 0;
  for (var i = 0; i < d.length; i += 4 * 7) {
    var y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    seen[d[i] + "," + d[i + 1] + "," + d[i + 2]] = 1; n++; s += y; s2 += y * y;
  }
  done({colors: Object.keys(seen).length, std: Math.sqrt(Math.max(0, s2 / n - (s / n) * (s / n))),
        width: img.width, height: img.height});
};
img.onerror = function () { done({error: "cannot decode the screenshot"}); };
img.src = "data:image/png;base64," + arguments[0];
"""


def assert_page_ok(driver, log: list[dict]) -> None:
    errors = [e for e in log if e["level"] == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    body = driver.find_element("tag name", "body")
    plots = driver.find_elements("css selector", "div.plot")
    assert plots and body.get_attribute("data-rendered") == str(len(plots))
    for sid in SECTIONS:
        assert driver.find_elements("id", sid), f"section {sid} missing"
    # works offline: the page fetched nothing (its CSP would also block and log any fetch)
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    for plot in plots:
        pid = plot.get_attribute("id")
        drawn = driver.execute_script(
            "var el = arguments[0]; return el.querySelectorAll('.main-svg').length > 0 && "
            "(el.querySelectorAll('g.trace, g.barlayer .point, path.point').length > 0 "
            " || el.querySelectorAll('canvas').length > 0)", plot)
        assert drawn, f"{pid}: plotly drew no traces"
        driver.execute_script("arguments[0].scrollIntoView()", plot)
        stats = driver.execute_async_script(PIXEL_STATS_JS, plot.screenshot_as_base64)
        assert "error" not in stats, stats
        assert stats["colors"] >= 16 and stats["std"] >= 8, f"{pid} looks blank: {stats}"


# --------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_report_of_a_study_renders_every_section(tmp_path, browser):
    root = make_study(tmp_path / "runs" / "synth", ["math", "code", "general"])
    out = write_report(root, tmp_path / "reports" / "synth")
    assert out == tmp_path / "reports" / "synth" / "index.html"
    html = out.read_text()
    assert "https://" not in html.split("<script>", 1)[0]  # nothing linked in the head
    log = open_report(browser, out)
    assert_page_ok(browser, log)
    text = browser.find_element("tag name", "body").text
    assert "Not yet extrapolated" in text
    assert "diverged: loss is NaN at step 3" in text and "below the median at the 25% rung" in text
    assert "seed-noise floor (2 prior seeds)" in text
    # 3 domains: a ternary plot with the domains as its corners
    corners = browser.execute_script("return Array.from(document.querySelectorAll('text.atitle, text.btitle, text.ctitle'))"
                                     ".map(function (t) { return t.textContent; })")
    assert corners == ["math", "code", "general"]


def _verification(domains: list[str]) -> dict:
    """recipe.yaml's ``verification`` made by the analysis itself (``extrapolate.verify.analyze``) on known scores."""
    from autotune.extrapolate.verify import VerifyData, analyze

    labels = ["recommended", "prior (trial 0)", "uniform"]
    cands = [{"label": lab, "kind": kind, "trial": 0 if kind == "prior" else None,
              "mixture": {d: 1 / len(domains) for d in domains}, "schedule": {"kind": "wsd", "peak_lr": 1e-3}}
             for lab, kind in zip(labels, ["recommended", "prior", "uniform"], strict=True)]
    values = {"recommended": {"target": [0.30, 0.32], "general": [0.0, 0.01]},
              "prior (trial 0)": {"target": [0.20, 0.23], "general": [0.02, 0.01]},
              "uniform": {"target": [0.31, 0.29], "general": [-0.01, 0.0]}}
    pred = {lab: {g: {"value": 0.25, "low": 0.2, "high": 0.3, "level": 0.9} for g in ("target", "general")}
            for lab in labels}
    data = VerifyData({"tokens": 8192, "proxy_tokens": 4096, "seeds": [0, 1], "alpha": 0.05, "dir": "verify/x",
                       "candidates": cands}, values)
    return analyze(data, pred, maximize="target", floor=-0.05, inside_space={}).model_dump(mode="json")


@pytest.mark.slow
def test_report_shows_the_verification_first(tmp_path, browser):
    """A recipe.yaml with a verification section: its summary card, its section (second), its figure drawn with
    realised seeds and predicted intervals, its tables."""
    domains = ["math", "code", "general"]
    root = make_study(tmp_path / "runs" / "ver", domains, name="ver", recipe={"verification": _verification(domains)})
    out = write_report(root, tmp_path / "out")
    log = open_report(browser, out)
    assert_page_ok(browser, log)
    ids = browser.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
    assert ids[:2] == ["summary", "verification"]
    text = browser.find_element("id", "verification").text
    assert "the recommendation ranks 1 of 3 on target" in text and "paired over seeds" in text
    assert "predicted at proxy scale (4.1e3 tokens)" in text and "intervals not checked" in text
    names = browser.execute_script(
        "var el = document.querySelector('#verification div.plot'); return el.data.map(t => t.name)")
    assert names[:3] == ["realised (2 seeds)", "realised mean", "predicted (at proxy scale (4.1e3 tokens))"]
    assert "verification" in browser.find_element("id", "summary").text


@pytest.mark.slow
def test_report_escapes_user_strings_and_runs_none_of_them(tmp_path, browser):
    recipe = {"study": XSS_DOMAIN, "mixture": {XSS_DOMAIN: 0.4, XSS_DOMAIN_2: 0.6},
              "fit": {"target": {"model": "<b>gp</b>", "predicted": [0.1, 0.2, 0.35], "observed": [0.12, 0.18, 0.3]}}}
    root = make_study(tmp_path / "runs" / "evil", [XSS_DOMAIN, XSS_DOMAIN_2, "code", "general"], name="evil",
                      task=XSS_TASK, reason=XSS_REASON, recipe=recipe)
    out = write_report(root, tmp_path / "out")
    log = open_report(browser, out)
    assert_page_ok(browser, log)  # includes the parallel coordinates of 4 domains and the fit plot
    assert browser.execute_script("return window.__alerts") == []
    assert browser.execute_script("return window.__xss === undefined")
    assert browser.execute_script("return document.scripts.length") == 3  # plotly.js, the figures' JSON, render
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script(  # our own <b> are the summary cards' labels; a user's <b> is text
        "return Array.from(document.querySelectorAll('b')).every(function (b) { return b.closest('.card'); })")
    text = browser.find_element("tag name", "body").text
    for s in (XSS_DOMAIN, XSS_DOMAIN_2, XSS_TASK, XSS_REASON, "<b>gp</b>"):
        assert s in text, f"{s!r} is not shown as text"
    svg_texts = browser.execute_script("return Array.from(document.querySelectorAll('svg text'))"
                                       ".map(function (t) { return t.textContent; })")
    for label in (XSS_DOMAIN, XSS_DOMAIN_2, f"{XSS_TASK}/acc"):  # plotly would draw a raw <b> as bold
        assert any(label in t for t in svg_texts), f"plot labels do not show {label!r} as typed"
    assert "predicted vs observed" in text.lower() or any("predicted" in t for t in svg_texts)


def test_few_trials_and_no_recipe_say_so(tmp_path):
    root = make_study(tmp_path / "runs" / "small", ["a", "b"], name="small", trials=5)  # 2 prior + failed + pruned + 1
    # keep only one complete trial: the importances need two
    db = f"sqlite:///{root / 'study.db'}"
    s = optuna.load_study(study_name="small", storage=db)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in s.trials) == 3
    (root / "study.db").unlink()  # storage elsewhere: the report reads summary.json
    summary = json.loads((root / "summary.json").read_text())
    summary["trials"] = [r for r in summary["trials"] if r["trial"] != 1 and r["trial"] != 4]
    (root / "summary.json").write_text(json.dumps(summary))
    html = write_report(root, tmp_path / "out").read_text()
    assert "Parameter importances need at least 2 complete trials (this study has 1)" in html
    assert "Not yet extrapolated" in html
    assert "no study.db here" in html
    assert "unknown: fewer than 2 prior replicates" in html


@pytest.mark.slow
def test_default_out_dir_is_reports_of_the_study(tmp_path, monkeypatch):
    root = make_study(tmp_path / "runs" / "synth", ["a", "b", "c"], trials=5)
    monkeypatch.chdir(tmp_path)
    assert write_report(root) == Path("reports/synth/index.html")
    assert (tmp_path / "reports" / "synth" / "index.html").exists()


def test_not_a_study_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="study folder not found"):
        write_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no space.json") as e:
        write_report(tmp_path / "empty", tmp_path / "out")
    assert str(tmp_path / "empty") in str(e.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "space.json").write_text("{not json")
    with pytest.raises(UserError, match="space.json: the file is damaged: not valid JSON"):
        write_report(tmp_path / "bad", tmp_path / "out")


def test_safe_json_cannot_end_a_script():
    raw = json.dumps({"a": "</script><!--<script>", "b": "&amp;\u2028"})
    safe = safe_json(raw)
    assert "<" not in safe and ">" not in safe and "&" not in safe
    assert json.loads(safe) == json.loads(raw)


def test_report_image_helper_sees_blank(browser, tmp_path):
    """The blank-screenshot check itself: a white box fails it, so a passing plot is not a fluke."""
    page = tmp_path / "blank.html"
    page.write_text('<!DOCTYPE html><body style="margin:0"><div id="w" style="width:400px;height:300px;'
                    'background:#fff"></div></body>')
    browser.get(page.as_uri())
    el = browser.find_element("id", "w")
    stats = browser.execute_async_script(PIXEL_STATS_JS, el.screenshot_as_base64)
    assert stats["colors"] < 16 and stats["std"] < 8


def test_snr_is_the_spread_over_mixtures_over_the_seed_noise(tmp_path):
    """SNR per metric (the scores table's column): the std over searched trials over the prior seeds' std."""
    import statistics

    from autotune.records import TrialRecord
    from autotune.report.analysis import snr
    from autotune.report.load import ReportTrial, StudyData

    def trial(n, prior, target, bpb):
        return ReportTrial(TrialRecord(number=n, state="complete", prior=prior, target=target, general=0.0,
                                       metrics={"bpb/math": bpb}, mixture={"a": 1.0}))

    reps = [trial(0, True, 0.10, 2.00), trial(1, True, 0.12, 2.01)]
    others = [trial(2, False, 0.30, 1.5), trial(3, False, 0.05, 2.5), trial(4, False, 0.20, 2.0)]
    data = StudyData(root=tmp_path, name="s", identity={}, trials=reps + others)
    assert snr(data, "target") == pytest.approx(statistics.stdev([0.30, 0.05, 0.20]) / statistics.stdev([0.10, 0.12]))
    assert snr(data, "bpb/math") == pytest.approx(statistics.stdev([1.5, 2.5, 2.0]) / statistics.stdev([2.0, 2.01]))
    assert snr(StudyData(root=tmp_path, name="s", identity={}, trials=reps[:1] + others), "target") is None
    same = [trial(0, True, 0.1, 2.0), trial(1, True, 0.1, 2.0)]
    assert snr(StudyData(root=tmp_path, name="s", identity={}, trials=same + others), "target") is None
