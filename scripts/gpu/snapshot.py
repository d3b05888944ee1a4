"""Keep a training run's model at one epoch as the row of another experiment whose settings equal
the run's up to its length (same network, data, optimiser and seed: the shorter run is the first
epochs of the longer one, because the learning rate is constant and every random draw is seeded
by step). Takes the snapshot that ``train --keep-snapshots`` kept at that epoch (a save falls on it
when the epoch is a multiple of ``train.checkpoint_every``), and writes the other experiment's
settings into the copy's description with a note of where it came from.

    python3 scripts/gpu/snapshot.py runs/ddim_10 --epoch 200 --as experiments/ddim_11.toml --out runs/ddim_11

With the 2,911 bedroom images, DDIM 9, 10 and 11 of the seed table differ only in their sample
counts (3,200, 6,400 and 12,800, all capped to the 2,911 images) and epochs (400, 400, 200): one
run of 400 epochs gives DDIM 11 at epoch 200.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffusion_core.checkpoint import experiment_from_description, read_description  # noqa: E402
from diffusion_core.config import ExperimentConfig, load_experiment  # noqa: E402
from diffusion_core.files import atomic_write_bytes, write_json  # noqa: E402
from diffusion_core.training import truncate_log  # noqa: E402

# the fields a shorter row may differ in without changing the first epochs of training
LENGTH_FIELDS = {("experiment", "name"), ("experiment", "description"), ("experiment", "reported_fid"),
                 ("data", "samples"), ("train", "epochs"), ("train", "sample_every"), ("train", "checkpoint_every")}


def differences(a: ExperimentConfig, b: ExperimentConfig) -> set[tuple[str, str]]:
    """(section, key) pairs where two experiments differ; top-level fields under 'experiment'."""
    da, db = a.to_dict(), b.to_dict()
    out = set()
    for key in set(da) | set(db):
        if isinstance(da.get(key), dict) or isinstance(db.get(key), dict):
            sa, sb = da.get(key) or {}, db.get(key) or {}
            out |= {(key, k) for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)}
        elif da.get(key) != db.get(key):
            out.add(("experiment", key))
    return out


def snapshot_at(run: Path, epoch: int) -> Path:
    """The description of the run's snapshot at ``epoch`` (``snapshots/step_STEP.json``)."""
    kept = sorted((run / "snapshots").glob("step_*.json"))
    if not kept:
        raise ValueError(f"{run / 'snapshots'}: no snapshots; train with --keep-snapshots")
    epochs = {p: read_description(p)["training"]["epochs_completed"] for p in kept}
    for path, done in epochs.items():
        if abs(done - epoch) < 1e-6:
            return path
    kept_epochs = ", ".join(f"{e:g}" for e in epochs.values())
    raise ValueError(f"{run} kept no snapshot at epoch {epoch} (it kept {kept_epochs}); "
                     "a save falls on the epochs that are multiples of train.checkpoint_every")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the training run's folder (holds snapshots/)")
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--as", dest="as_", type=Path, required=True, help="the shorter experiment's TOML")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    target = load_experiment(a.as_)
    try:
        path = snapshot_at(a.run, a.epoch)
    except ValueError as e:
        sys.exit(str(e))
    desc = read_description(path)
    source = experiment_from_description(desc, str(path))  # older descriptions: missing fields at their defaults
    diff = differences(source, target) - LENGTH_FIELDS
    if diff:
        sys.exit(f"{a.as_} differs from {a.run}'s experiment in more than its length: {sorted(diff)}")
    a.out.mkdir(parents=True, exist_ok=True)
    for name in desc["weights_files"]:
        atomic_write_bytes(a.out / name.replace(path.stem, "model", 1), (path.parent / name).read_bytes())
    training = dict(desc["training"], epochs_planned=target.train.epochs, finished=True,
                    trained_as=f"epoch {a.epoch} of the run of {source.name} (settings equal up to "
                               f"length; the shorter row is the first epochs of the longer run)")
    weights_files = [name.replace(path.stem, "model", 1) for name in desc["weights_files"]]
    write_json(a.out / "model.json", dict(desc, name=target.name, experiment=target.to_dict(), training=training,
                                          weights_files=weights_files))
    if (a.run / "log.jsonl").exists():
        shutil.copyfile(a.run / "log.jsonl", a.out / "log.jsonl")
        truncate_log(a.out / "log.jsonl", desc["training"]["steps"])
    grid = a.run / "samples" / f"epoch_{a.epoch:04d}.png"
    if grid.exists():
        (a.out / "samples").mkdir(exist_ok=True)
        atomic_write_bytes(a.out / "samples" / grid.name, grid.read_bytes())
    print(f"{a.out}: epoch {a.epoch} of {a.run} as {target.name}")


if __name__ == "__main__":
    main()
