"""End to end in a real browser: ``streamlit run app.py`` on tiny checkpoints, driven by
Chromium through Playwright. Visits every page, changes a seed and a step slider, opens the
address a page shows in a fresh session (the same settings, the same grid), starts long actions
on Sample and Compare and stops them (progress bar, time left, Stop, then Generate again), checks
that images render and that no exception box appears; screenshots go to test-artifacts/screenshots/.

Needs ``pip install playwright`` and a Chromium at /usr/bin/chromium (``apt-get install -y
chromium``; Playwright's own browser download is not used). Skipped, with the reason, without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Streamlit server on a free port over two tiny checkpoints; always stopped afterwards."""
    folder = tmp_path_factory.mktemp("checkpoints")
    make_tiny_checkpoint(folder, "tiny_a", seed=0, metrics={"fid": 250.0})
    make_tiny_checkpoint(folder, "tiny_b", seed=1)
    (folder / "tiny_a.log.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": s / 10, "loss": 1 / s, "images_per_s": 5.0}) + "\n" for s in range(1, 21)))
    from bench.load_app import Server  # the load test's server: one way to start the app on loopback

    srv = Server(folder, tmp_path_factory.mktemp("server") / "streamlit.log", threads=1)
    try:
        srv.wait_ready(timeout=60)
        yield srv.url
    finally:
        srv.stop()
        server_log = srv.log()
        assert "Traceback" not in server_log, server_log[-3000:]


@pytest.fixture(scope="module")
def browser_page(server):
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def settle(page, min_images: int = 0) -> None:
    """Wait until the script has run (twice idle, a moment apart, so a rerun that is about to
    start is not missed) and at least ``min_images`` images in the main area have loaded."""
    for _ in range(2):
        page.wait_for_timeout(300)
        page.wait_for_selector(IDLE, timeout=60_000)
    page.wait_for_function("n => { const imgs = [...document.querySelectorAll('[data-testid=\"stMain\"] img')];"
                           " return imgs.length >= n && imgs.every(i => i.complete); }", arg=min_images)


def images(page) -> list[tuple[str, int]]:
    return page.eval_on_selector_all('[data-testid="stMain"] img', "els => els.map(e => [e.src, e.naturalWidth])")


def check(page, name: str, min_images: int = 1) -> list[tuple[str, int]]:
    settle(page, min_images)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0, name
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert not errors, (name, errors)
    found = images(page)
    assert len(found) >= min_images and all(w > 0 for _, w in found), (name, found)
    return found


def go(page, title: str) -> None:
    """Open a page through the sidebar navigation (same session, so sidebar settings persist; the
    shared settings follow in the query string)."""
    base = "/".join(page.url.split("/")[:3])  # http://127.0.0.1:PORT
    # the link whose label is exactly the title: an icon renders as text too (Trajectory's is "timeline")
    page.locator('[data-testid="stSidebarNav"] a').filter(has=page.get_by_text(title, exact=True)).click()
    path = "/" if title == "Home" else f"/{title.lower().replace(' ', '_')}"
    page.wait_for_url(re.compile(re.escape(base + path) + r"(\?.*)?$"))


def number(page, label: str, value: int) -> None:
    """Type into the first number box of this label (Compare's step sweep has a second "Images")."""
    box = page.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Enter")


def live_step(page, after: int) -> int:
    """The step k of the Live page's first "Running: step k of N" caption with k > ``after``."""
    return page.wait_for_function(
        """after => {
            for (const c of document.querySelectorAll('[data-testid="stCaptionContainer"]')) {
                const m = c.innerText.match(/^Running: step (\\d+) of \\d+ /);
                if (m && +m[1] > after) return +m[1];
            }
            return false;
        }""", arg=after, timeout=30_000).json_value()


def stop_long_action(page, what: str, shot: str, heading_below: str | None = None) -> None:
    """A long action waits for its Generate button; started, it shows a progress bar with the time
    left and a Stop button (the page's next section, ``heading_below``, stays where it is); Stop
    ends it, and the page says so and offers Generate again."""
    settle(page)
    gate, progress = page.get_by_text("press Generate to start"), page.locator('[data-testid="stProgress"]')
    gate.or_(progress).first.wait_for()  # the gate comes only when the measured speed says it is slow
    if gate.count():
        page.get_by_role("button", name="Generate", exact=True).click()
    progress.wait_for()
    page.get_by_text(re.compile(rf"^{what}: \d+%, about .+ left$")).wait_for()
    page.screenshot(path=str(SHOTS / f"{shot}_running.png"), full_page=True)
    if heading_below is not None:
        assert page.get_by_role("heading", name=heading_below).is_visible(), f"{heading_below!r} is hidden while running"
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text(re.compile(r"^Stopped\. This takes about .+ press Generate to start\.$")).wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / f"{shot}_stopped.png"), full_page=True)
    assert page.locator('[data-testid="stProgress"]').count() == 0, shot
    assert page.get_by_role("button", name="Stop", exact=True).count() == 0, shot
    assert page.get_by_role("button", name="Generate", exact=True).is_visible(), shot
    assert page.locator('[data-testid="stException"]').count() == 0, shot


TITLES = ["Home", "Experiments", "Sample", "Trajectory", "Interpolation", "Compare", "Live", "XY grid", "Branch",
          "Neighbourhood", "Edit", "Geometry", "Inversion", "Timeline"]
# Every page name the sidebar ever shows (a link's last line: material icons render as text before it).
WATCH_NAV = r"""
window.navSeen = new Set();
new MutationObserver(() => document.querySelectorAll('[data-testid="stSidebarNav"] a').forEach(
    a => window.navSeen.add(a.innerText.trim().split('\n').pop()))
).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.mark.slow
def test_every_page_in_a_browser(server, browser_page):
    page = browser_page
    page.add_init_script(WATCH_NAV)
    page.goto(server)
    page.get_by_role("heading", name="diffusion-explorer").wait_for()
    page.get_by_text("The best model here: tiny_a").wait_for()
    check(page, "00_home", min_images=0)  # the tiny checkpoints ship no sample grid
    # the page list only ever showed the pages' titles (never Streamlit's list of file names)
    assert sorted(page.evaluate("[...window.navSeen]")) == sorted(TITLES)
    assert page.locator('[data-testid="stSidebarNavViewButton"]').count() == 0  # no page hidden behind "View more"
    go(page, "Experiments")
    page.wait_for_selector('[data-testid="stDataFrame"]')
    settle(page)
    page.get_by_role("button", name="Preview (4 images, DDIM 10)").first.click()
    check(page, "01_experiments")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"] svg').length >= 2")
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 2  # FID and loss

    go(page, "Sample")
    before = check(page, "02_sample")
    number(page, "First seed", 5)
    after = check(page, "03_sample_seed5")
    assert after[0][0] != before[0][0], "changing the seed must change the grid"
    page.get_by_text("tiny_a: 4 images of 16x16, seeds 5-8").wait_for()

    # the address carries the shared settings: opened in a fresh session, it shows the same grid
    link = page.url
    assert re.search(r"[?&]checkpoint=tiny_a(&|$)", link) and re.search(r"[?&]seed=5(&|$)", link), link
    fresh = page.context.browser.new_context(viewport={"width": 1400, "height": 1600})
    try:
        other = fresh.new_page()
        other.set_default_timeout(30_000)
        other.goto(link)
        check(other, "03a_sample_from_link")
        assert other.get_by_label("First seed", exact=True).input_value() == "5"
        other.get_by_text("tiny_a: 4 images of 16x16, seeds 5-8").wait_for()
        shot = '[data-testid="stMain"] img'
        assert other.locator(shot).first.screenshot() == page.locator(shot).first.screenshot()  # the same grid
    finally:
        fresh.close()

    # a long grid: progress, time left and Stop
    number(page, "Images", 256)  # then 256 x 1000 image-steps: minutes on a CPU
    settle(page, 1)
    number(page, "Sampling steps", 1000)
    stop_long_action(page, "Sampling", "03b_sample_long")
    number(page, "Sampling steps", 20)
    number(page, "Images", 4)
    check(page, "03c_sample_again")
    page.get_by_text("tiny_a: 4 images of 16x16, seeds 5-8, ddim 20 steps").wait_for()

    go(page, "Trajectory")
    check(page, "04_trajectory", min_images=2)
    assert page.get_by_label("First seed", exact=True).input_value() == "5"  # the seed followed the user
    assert "seed=5" in page.url
    shown = page.locator('[data-testid="stMain"] img').first.bounding_box()
    slider = page.locator('[data-testid="stSlider"] input[type="range"][aria-label="Step"]')
    final = int(slider.input_value())
    slider.focus()
    for _ in range(final - 7):
        page.keyboard.press("ArrowLeft")
    settle(page)
    assert int(slider.input_value()) == 7
    page.get_by_text("x_t, input of step 7").wait_for()
    check(page, "05_trajectory_step7", min_images=2)
    scrubbed = page.locator('[data-testid="stMain"] img').first.bounding_box()
    assert (scrubbed["width"], scrubbed["height"]) == (shown["width"], shown["height"])  # x_t kept its size
    with page.expect_download() as download:
        page.get_by_role("button", name="Download GIF").click()
    assert Path(download.value.path()).read_bytes()[:6] in (b"GIF87a", b"GIF89a")

    go(page, "Interpolation")
    check(page, "06_interpolation", min_images=4)

    go(page, "Compare")
    check(page, "07_compare", min_images=3)
    number(page, "Images", 256)  # 2 x 256 x 1000 image-steps, behind Generate (at 20 steps it may run or wait)
    settle(page)
    number(page, "Sampling steps", 1000)
    stop_long_action(page, "Comparing", "07_compare_long", heading_below="Step sweep")

    # the views: each shows its pictures with the defaults (Edit once an image is uploaded)
    for title, shot, count in [("XY grid", "07a_xy_grid", 1), ("Branch", "07b_branch", 3),
                               ("Neighbourhood", "07c_neighbourhood", 3), ("Geometry", "07e_geometry", 1),
                               ("Inversion", "07f_inversion", 1), ("Timeline", "07g_timeline", 0)]:
        go(page, title)
        check(page, shot, min_images=count)
    go(page, "Edit")
    settle(page)
    picture = SHOTS / "upload.png"
    shutil.copy(SHOTS / "02_sample.png", picture)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(picture))
    check(page, "07d_edit", min_images=2)

    go(page, "Live")
    page.get_by_text("Done: step").wait_for(timeout=60_000)
    check(page, "08_live", min_images=2)
    number(page, "Images", 256)
    settle(page, 1)
    number(page, "Sampling steps", 1000)  # 256 x 1000 image-steps: tens of seconds on a 2-core CPU
    settle(page)
    page.get_by_role("button", name="Start").click()
    # while it runs, the images change from frame to frame under a "Running: step k of 1000" caption
    first = live_step(page, after=0)
    first_pictures = images(page)
    second = live_step(page, after=first)
    assert 0 < first < second < 1000, (first, second)
    assert images(page) != first_pictures, "the pictures must change while the run goes on"
    page.screenshot(path=str(SHOTS / "08a_live_running.png"), full_page=True)
    page.get_by_role("button", name="Stop").click()
    stopped = page.get_by_text(re.compile(r"^Stopped at step \d+ of 1000 "))
    stopped.wait_for(timeout=30_000)
    assert second <= int(re.search(r"step (\d+)", stopped.inner_text())[1]) < 1000
    check(page, "09_live_stopped", min_images=2)

    # a bad folder in the sidebar is a message, and the sidebar setting follows to other pages
    box = page.get_by_label("Also look in folder", exact=True)
    box.fill("/no/such/folder")
    box.press("Enter")
    settle(page)
    page.locator('[data-testid="stSidebar"]').get_by_text("is not a folder").wait_for()
    go(page, "Experiments")
    settle(page)
    page.locator('[data-testid="stSidebar"]').get_by_text("is not a folder").wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(SHOTS / "10_bad_folder.png"), full_page=True)
