"""Seconds of each app page's default action on each shipped checkpoint, on this machine's CPU,
as a user meets them: a fresh app process per checkpoint (first page visits uncached, the model
loaded once), then each page run again (cached). Runs the real pages through Streamlit's AppTest.

    python -m bench.app_defaults                     # every checkpoint in checkpoints/
    python -m bench.app_defaults checkpoints/ours2_eps.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["experiments", "sample", "trajectory", "interpolation", "compare", "live"]


def one_checkpoint(json_path: Path) -> dict[str, list[float]]:
    """In this process: time every page's first and second run on a folder holding only this checkpoint."""
    from streamlit.testing.v1 import AppTest

    from diffusion_core.checkpoint import read_description

    with tempfile.TemporaryDirectory() as tmp:
        desc = read_description(json_path)
        for f in [json_path.name, *desc["weights_files"]]:
            shutil.copy(json_path.parent / f, Path(tmp) / f)
        os.environ["DIFFUSION_EXPLORER_CHECKPOINTS"] = tmp
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        times: dict[str, list[float]] = {}
        for page in PAGES:
            for _ in range(2):
                t0 = time.perf_counter()
                if page == "experiments" and not times:
                    at.run()
                else:
                    at.switch_page(f"app_pages/{page}.py").run()
                times.setdefault(page, []).append(time.perf_counter() - t0)
                if at.exception:
                    raise RuntimeError(f"{page}: {at.exception[0].value}")
        return times


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(one_checkpoint(Path(argv[1]))))
        return
    import torch

    paths = [Path(a) for a in argv] or sorted((ROOT / "checkpoints").glob("*.json"))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| checkpoint | " + " | ".join(PAGES) + " |\n|---|" + "---|" * len(PAGES))
    for p in paths:  # one process per checkpoint: nothing cached from the one before
        r = subprocess.run([sys.executable, "-m", "bench.app_defaults", "--one", str(p)], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode:
            print(f"| {p.stem} | failed: {r.stderr.strip().splitlines()[-1][:200]} |")
            continue
        times = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {p.stem} | " + " | ".join(f"{a:.1f} / {b:.2f}" for a, b in (times[k] for k in PAGES)) + " |",
              flush=True)
    print("first visit / second visit (cached), seconds; the default action included unless it waits for a button")


if __name__ == "__main__":
    main(sys.argv[1:])
