"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never `playwright install`).

`python -m optsearch dashboard` runs as a user would start it (its own process, loopback, a free port);
The study is a real one (`study create` + one generation of `study run`, see test_dashboard.make_study).
Chromium opens the printed study page and we use the dashboard's own navigation to reach the trials.
Set OPTSEARCH_SCREENSHOT=docs/dashboard.png to also write the README's screenshot from this run (the best
trial's page: its formula, per-task attrs and fitness curve).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.test_dashboard import make_study, start_cli_dashboard, stop_with_ctrl_c

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # first paint on a busy 2-core machine can take several seconds

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")


def test_study_page_shows_name_trial_count_and_formula(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    demo = make_study(tmp_path)
    proc, url = start_cli_dashboard(demo)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1000})
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                # the study page: the app bar names the study, the history plot is drawn
                expect(page.get_by_text(re.compile(rf"^{demo.name} \(id=\d+\)$"))).to_be_visible()
                expect(page.get_by_role("heading", name="History")).to_be_visible()
                page.screenshot(path=str(tmp_path / "study.png"))

                # to the trial list through the side bar, then the best trial
                page.get_by_role("link", name="Trials (List)").click()
                expect(page).to_have_url(re.compile(r"/dashboard/studies/\d+/trials"))
                expect(page.get_by_text(f"{demo.n_trials} Trials", exact=True)).to_be_visible()
                page.get_by_text(f"Trial {demo.best_number}", exact=True).click()
                detail = page.get_by_role("heading", name=re.compile(rf"^Trial {demo.best_number} \(trial_id="))
                expect(detail).to_be_visible()
                expect(page.locator("main")).to_contain_text(f"formula {demo.best_formula}")
                shot = tmp_path / "trial.png"
                page.mouse.move(1200, 40)  # let the click's ripple fade before the picture
                page.wait_for_timeout(800)
                page.screenshot(path=str(shot))
                assert shot.stat().st_size > 10_000
                if os.environ.get("OPTSEARCH_SCREENSHOT"):
                    shutil.copyfile(shot, os.environ["OPTSEARCH_SCREENSHOT"])
            finally:
                browser.close()
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    stop_with_ctrl_c(proc)
