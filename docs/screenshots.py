"""The README's pictures of the views: ``streamlit run app.py`` on the shipped checkpoints, each view
opened in headless Chromium (Playwright), the top of the page saved 800 px wide as a palette PNG in
``docs/images/``.

    python docs/screenshots.py            # every view: about 3 minutes on a 2-core CPU
    python docs/screenshots.py Edit Live  # some of them

Only the app's own output is shown: the Edit view edits one of the model's samples, the
Inversion view inverts the model's own samples, and the Timeline view shows a run that this
script trains for a few seconds on synthetic colour blobs (the shipped checkpoints are not run
folders). Needs ``pip install playwright`` and Chromium at /usr/bin/chromium (or $CHROMIUM).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
OUT = ROOT / "docs" / "images"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WIDTH = 800  # of the saved picture
VIEWPORT = (1200, 860)  # the part of the page that is shown (taller for the Timeline's charts)
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
VIEWS = ["Live", "XY grid", "Branch", "Neighbourhood", "Edit", "Geometry", "Inversion", "Timeline"]


def checkpoint_folder(folder: Path) -> Path:
    """The shipped checkpoints (linked) and a short synthetic training run with sample grids."""
    from diffusion_core import generate as G
    from diffusion_core.checkpoint import load_checkpoint
    from diffusion_core.images import png_bytes
    from diffusion_core.samplers import SamplerConfig
    from diffusion_core.training import RunOptions, Trainer
    from helpers import random_images, tiny_experiment

    for f in sorted((ROOT / "checkpoints").iterdir()):
        if f.suffix in (".json", ".safetensors", ".jsonl"):
            (folder / f.name).symlink_to(f)
    exp = tiny_experiment("synthetic_blobs", widths=(16, 32), epochs=40, batch_size=16, learning_rate=3e-3,
                          sample_every=4, ema_decay=0.9)
    Trainer(exp, random_images(64, 16, seed=0), folder / "synthetic_blobs",
            RunOptions(progress=False, log_every=4, sample_count=16)).run()
    model = load_checkpoint(ROOT / "checkpoints" / "ours2_eps.json")
    sample = G.generate(model, [3], SamplerConfig("ddim", 50))[0]  # the Edit view's input: a sample
    (folder / "sample.png").write_bytes(png_bytes(sample))
    return folder


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DIFFUSION_EXPLORER_CHECKPOINTS=str(folder))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("streamlit did not start")


def settle(page, timeout_ms: int = 600_000) -> None:
    for _ in range(2):
        page.wait_for_timeout(500)
        page.wait_for_selector(IDLE, timeout=timeout_ms)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stMain\"] img')]"
                           ".every(i => i.complete)", timeout=timeout_ms)


def save(page, name: str) -> Path:
    page.mouse.move(0, 0)  # no hover tooltips in the picture
    page.wait_for_timeout(800)  # charts finish drawing
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    shot = shot.resize((WIDTH, round(shot.height * WIDTH / shot.width)), Image.LANCZOS)
    path = OUT / f"{name}.png"
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def view(page, base: str, title: str, folder: Path) -> None:
    page.goto(f"{base}/{title.lower().replace(' ', '_')}")
    page.wait_for_selector('[data-testid="stSidebarNav"]', state="attached")
    settle(page)
    if title == "Edit":
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(folder / "sample.png"))
        settle(page)
    # an action beyond the automatic budget waits for its button (key ..._go)
    go = page.locator('[class*="st-key-"][class*="_go "] button, [class*="st-key-"][class$="_go"] button')
    if go.count():
        go.first.click()
        settle(page)
    if title == "Live":
        page.get_by_text("Done: step").wait_for(timeout=600_000)
        settle(page)
    if title == "Edit":
        page.get_by_text("Strength sweep").click()
        settle(page)
    if page.locator('[data-testid="stSidebarNav"]').is_visible():  # the view alone, without the page list
        page.locator('[data-testid="stSidebarHeader"]').hover()
        page.locator('[data-testid="stSidebarCollapseButton"] button').first.click()
        page.wait_for_timeout(800)


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint_folder(Path(tmp))
        proc, base = start_server(folder)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox",
                                                                            "--disable-gpu"])
                page = browser.new_page(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]})
                page.goto(base)
                settle(page)
                for title in sys.argv[1:] or VIEWS:
                    start = time.perf_counter()
                    height = 1500 if title == "Timeline" else VIEWPORT[1]
                    page.set_viewport_size({"width": VIEWPORT[0], "height": height})
                    view(page, base, title, folder)
                    path = save(page, title.lower().replace(" ", "_"))
                    print(f"{title}: {path.relative_to(ROOT)} ({path.stat().st_size >> 10} KiB, "
                          f"{time.perf_counter() - start:.0f} s)", flush=True)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
