"""Keep a training run's model at one epoch as the row of another experiment whose settings equal
the run's up to its length (same network, data, optimiser and seed: the shorter run is the first
epochs of the longer one, because the learning rate is constant and every random draw is seeded
by step). Waits for the run to save that epoch, copies the model, and writes the other
experiment's settings into the copy's description with a note of where it came from.

    python3 scripts/gpu/snapshot.py runs/ddim_10 --epoch 200 --as experiments/ddim_11.toml --out runs/ddim_11

With the 2,911 bedroom images, DDIM 9, 10 and 11 of the seed table differ only in their sample
counts (3,200, 6,400 and 12,800, all capped to the 2,911 images) and epochs (400, 400, 200): one
run of 400 epochs gives DDIM 11 at epoch 200.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffusion_core.config import load_experiment  # noqa: E402
from diffusion_core.files import atomic_write_bytes, write_json  # noqa: E402

# the fields a shorter row may differ in without changing the first epochs of training
LENGTH_FIELDS = {("experiment", "name"), ("experiment", "description"), ("experiment", "reported_fid"),
                 ("data", "samples"), ("train", "epochs"), ("train", "sample_every"), ("train", "checkpoint_every")}


def differences(a: dict, b: dict) -> set[tuple[str, str]]:
    """(section, key) pairs where two experiment dicts differ; top-level keys under 'experiment'."""
    out = set()
    for key in set(a) | set(b):
        if isinstance(a.get(key), dict) or isinstance(b.get(key), dict):
            sa, sb = a.get(key) or {}, b.get(key) or {}
            out |= {(key, k) for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)}
        elif a.get(key) != b.get(key):
            out.add(("experiment", key))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the training run's folder (holds model.json)")
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--as", dest="as_", type=Path, required=True, help="the shorter experiment's TOML")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--poll", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=3600.0)
    a = p.parse_args()
    target = load_experiment(a.as_)
    target_dict = json.loads(json.dumps(dataclasses.asdict(target)))  # tuples as the JSON's lists
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            desc = json.loads((a.run / "model.json").read_text())
            done = desc["training"]["epochs_completed"]
        except (OSError, ValueError, KeyError):
            desc, done = None, -1
        if desc is not None and abs(done - a.epoch) < 1e-6:
            break
        if done > a.epoch + 1e-6 or time.monotonic() > deadline:
            sys.exit(f"{a.run} is at epoch {done}, past or short of {a.epoch}: no snapshot")
        time.sleep(a.poll)
    source = desc["experiment"]
    diff = differences(source, target_dict) - LENGTH_FIELDS
    if diff:
        sys.exit(f"{a.as_} differs from {a.run}'s experiment in more than its length: {sorted(diff)}")
    weights = [a.run / f for f in desc["weights_files"]]
    blobs = [w.read_bytes() for w in weights]
    again = json.loads((a.run / "model.json").read_text())
    if again["training"]["epochs_completed"] != done:
        sys.exit(f"{a.run} saved again while copying; run once more")
    a.out.mkdir(parents=True, exist_ok=True)
    for w, blob in zip(weights, blobs):
        atomic_write_bytes(a.out / w.name, blob)
    training = dict(desc["training"], epochs_planned=target.train.epochs, finished=True,
                    trained_as=f"epoch {a.epoch} of the run of {source['name']} (settings equal up to "
                               f"length; the shorter row is the first epochs of the longer run)")
    write_json(a.out / "model.json", dict(desc, name=target.name, experiment=target_dict,
                                          training=training))
    for extra in ("log.jsonl",):
        if (a.run / extra).exists():
            lines = [ln for ln in (a.run / extra).read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("step", 0) <= desc["training"]["steps"]]
            atomic_write_bytes(a.out / extra, ("\n".join(lines) + "\n").encode())
    grids = sorted((a.run / "samples").glob(f"epoch_{a.epoch:04d}.png"))
    if grids:
        (a.out / "samples").mkdir(exist_ok=True)
        atomic_write_bytes(a.out / "samples" / grids[0].name, grids[0].read_bytes())
    print(f"{a.out}: epoch {a.epoch} of {a.run} as {target.name}")


if __name__ == "__main__":
    main()
