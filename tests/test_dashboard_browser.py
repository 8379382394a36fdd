"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never `playwright install`).

`python -m optsearch dashboard` runs as a user would start it (its own process, loopback, a free port);
The study is a real one (`study create` + one generation of `study run`, see test_dashboard.make_study).
Chromium opens the printed study page and we use the dashboard's own navigation to reach the trials.
Set OPTSEARCH_SCREENSHOT=docs/dashboard.png to also write the README's screenshot from this run (the best
trial's page: its formula, per-task attrs and fitness curve). The search-figures test draws on a fresh tiny
study, or on an existing one named by OPTSEARCH_STUDY and OPTSEARCH_STORAGE (how the README's
docs/dashboard_search.png was taken from a real ``--preset quick`` run; OPTSEARCH_STUDY_SCREENSHOT=PATH saves it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.test_dashboard import DemoStudy, make_study, start_cli_dashboard, stop_with_ctrl_c

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # first paint on a busy 2-core machine can take several seconds

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")


@contextlib.contextmanager
def dashboard_page(tmp_path: Path, demo: DemoStudy, width: int = 1280):
    """``python -m optsearch dashboard`` in its own process and a Chromium page on its study URL.

    The process is stopped with Ctrl-C (and must exit 0) when the block ends normally, killed otherwise.
    """
    from playwright.sync_api import sync_playwright

    proc, url = start_cli_dashboard(demo)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": 1000})
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                yield page
            finally:
                browser.close()
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    stop_with_ctrl_c(proc)


def test_study_page_shows_name_trial_count_and_formula(tmp_path):
    from playwright.sync_api import expect

    demo = make_study(tmp_path)
    with dashboard_page(tmp_path, demo, 1280) as page:
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


SEARCH_CARDS = {"generations": "Generations", "population": "Population per generation",
                "lineage": "Lineage of the best genome", "winner": "Winner: trial"}


def test_study_page_shows_the_search_figures(tmp_path):
    """The dashboard server draws the search figures itself; the study page shows them as plotly cards."""
    from playwright.sync_api import expect

    if os.environ.get("OPTSEARCH_STUDY"):
        demo = DemoStudy(os.environ["OPTSEARCH_STORAGE"], os.environ["OPTSEARCH_STUDY"], 0, 0, "")
    else:
        demo = make_study(tmp_path)
    with dashboard_page(tmp_path, demo, 1400) as page:
        for name, title in SEARCH_CARDS.items():
            card = page.locator(f'[id="user-defined-plot:optsearch-search-{name}"]')
            expect(card.locator(".main-svg").first).to_be_attached(timeout=TIMEOUT_MS)
            expect(card).to_contain_text(title)
        # the lineage card draws one marker per ancestor (its edges are lines without markers)
        import optuna

        from optsearch.analysis.evolution import read_members, winner_lineage

        st = optuna.load_study(study_name=demo.name, storage=demo.url)
        ancestors = winner_lineage(st, read_members(st)).nodes
        points = page.locator('[id="user-defined-plot:optsearch-search-lineage"] .scatterlayer .point')
        assert points.count() == len(ancestors) >= 1
        page.locator('[id="user-defined-plot:optsearch-search-generations"]').scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        shot = tmp_path / "study_search.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("OPTSEARCH_STUDY_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["OPTSEARCH_STUDY_SCREENSHOT"])
