"""A screenshot of optuna-dashboard on a study, in headless Chromium (docs/dashboard-demo.png).

    python scripts/dashboard_screenshot.py runs/demo/study.db docs/dashboard-demo.png [--trial N]

Serves optuna-dashboard's own WSGI app over the study's storage on 127.0.0.1 (as ``optuna-dashboard
sqlite:///runs/demo/study.db`` does), opens the study's trial page in Debian's Chromium through Selenium
(the test extra's), waits for the trial's user attributes (``share.<domain>``) to render, and saves the page.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", type=Path, help="the study's SQLite file (runs/<study>/study.db)")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--trial", type=int, default=None, help="the trial to show (default: the best feasible)")
    ap.add_argument("--size", default="1800,1400", help="window width,height")
    ap.add_argument("--page", default="trials", choices=["trials", "history"],
                    help="the dashboard page: one trial (its shares and values), or the history (metric names on the "
                         "axes, infeasible trials greyed)")
    args = ap.parse_args()

    import optuna
    import optuna_dashboard
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"sqlite:///{args.db.resolve()}"
    summaries = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    number = args.trial
    if number is None:  # the best feasible trial by the first objective: what a user opens first
        feasible = [t for t in trials if all(c <= 0 for c in t.system_attrs.get("constraints", []))]
        number = max(feasible or trials, key=lambda t: t.values[0]).number
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(url), handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={args.size}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=opts)
    try:
        study_id = study._study_id
        page = f"trials?numbers={number}" if args.page == "trials" else ""
        driver.get(f"http://127.0.0.1:{server.server_port}/dashboard/studies/{study_id}/{page}")
        wanted = "target" if args.page == "history" else "share."
        found = WebDriverWait(driver, 60).until(
            ec.presence_of_element_located((By.XPATH, f"//*[contains(text(), '{wanted}')]")))
        time.sleep(2)  # the plots and tables settle
        if args.page == "trials":  # the user attributes box scrolls: show it whole
            driver.execute_script("""
                for (const e of document.querySelectorAll('*')) {
                  const st = getComputedStyle(e);
                  if (e !== document.body && (st.overflowY === 'auto' || st.overflowY === 'scroll')
                      && e.scrollHeight > e.clientHeight + 1 && e.closest('main, [class*=MuiBox]') && e.contains(arguments[0]))
                    { e.style.maxHeight = 'none'; e.style.height = 'auto'; }
                }""", found)
            time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"{args.out}: study {study.study_name}, trial {number}")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
