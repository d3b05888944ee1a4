"""A/B of the fused sampling network against an earlier revision of it, in one process on one GPU.

Kernel changes move the whole call by a few percent, less than the spread between two machines
(or two calls) of the same kind, so they are judged in one process: the earlier revision's fused
modules (``diffusion_core/fused/``: ``conv``, ``resample``, ``unet``) are loaded as a package of
their own beside the current ones, both networks are built from the same random reference
network, and their CUDA graphs are timed in alternating rounds on the same input.

    python -m bench.ab_fused --extract HEAD~3 .ab-base     # in a git checkout
    python -m bench.ab_fused --base .ab-base               # on the GPU machine, with .ab-base copied there

Prints, and writes to $OUT/ab_fused.json (or --out): ms per call of each revision per round, and
each output's relative L2 distance from the float32 network.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# the fused modules, by their name in diffusion_core/fused/ and in revisions that kept them as
# diffusion_core/fused_NAME.py
MODULES = {"conv": "fused_conv", "resample": "fused_resample", "unet": "fused_unet"}


def _show(revision: str, path: str, repo: Path) -> str | None:
    done = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=repo, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def localize(text: str, flat: bool) -> str:
    """A fused module's source with its imports of the rest of diffusion_core made absolute (so it
    runs against the current folding and U-Net code) and those of its sibling fused modules kept
    relative, under their package names. ``flat``: the source comes from diffusion_core/ itself
    (``from .fused_conv import``, ``from .folding import``), else from diffusion_core/fused/."""
    if flat:  # first the core's modules (``.unet`` is the U-Net there), then the fused ones renamed
        text = re.sub(rf"^from \.(?!(?:{'|'.join(MODULES.values())})\b)(\w+)", r"from diffusion_core.\1", text,
                      flags=re.M)
        for name, old in MODULES.items():
            text = re.sub(rf"^from \. import {old}\b", f"from . import {name}", text, flags=re.M)
            text = re.sub(rf"^from \.{old}\b", f"from .{name}", text, flags=re.M)
        return text
    return re.sub(r"^from \.\.(\w+)", r"from diffusion_core.\1", text, flags=re.M)


def extract(revision: str, dest: Path, repo: Path = Path(".")) -> Path:
    """Write ``revision``'s fused modules into ``dest`` as an importable package (``localize``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, old in MODULES.items():
        text, flat = _show(revision, f"diffusion_core/fused/{name}.py", repo), False
        if text is None:
            text, flat = _show(revision, f"diffusion_core/{old}.py", repo), True
        if text is None:
            raise SystemExit(f"cannot read diffusion_core/fused/{name}.py (or diffusion_core/{old}.py) "
                             f"at {revision!r}")
        (dest / f"{name}.py").write_text(localize(text, flat))
    (dest / "__init__.py").write_text(f'"""diffusion_core\'s fused modules at {revision} (bench/ab_fused.py)."""\n')
    (dest / "REVISION").write_text(revision + "\n")
    return dest


def load(base: Path, package: str = "ab_base_fused"):
    """The extracted package's unet module, imported as ``package.unet`` (any folder name will do,
    ``.ab-base`` included)."""
    base = base.resolve()
    if not (base / "unet.py").is_file():
        raise SystemExit(f"{base} holds no extracted fused modules (make it with --extract REV {base})")
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, base / "__init__.py",
                                                      submodule_search_locations=[str(base)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.unet")


def run(base: Path, rounds: int, calls: int, batch: int) -> dict:
    import torch

    from bench.bench_fused import cuda_ms
    from bench.bench_sample import random_network
    from bench.common import REFERENCE, full_fp32
    from diffusion_core.fused import unet as fused_unet

    old = load(base)
    dev = torch.device("cuda")
    net = random_network(REFERENCE, dev).to(memory_format=torch.channels_last)
    s = REFERENCE.image_size
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, REFERENCE.channels, s, s, device=dev, generator=g).contiguous(
        memory_format=torch.channels_last)
    v = torch.rand(batch, device=dev, generator=g)
    revision = (base / "REVISION").read_text().strip() if (base / "REVISION").exists() else str(base)
    graphs = {revision: old.CudaGraphed(old.FusedUNet(net)),
              "current": fused_unet.CudaGraphed(fused_unet.FusedUNet(net))}
    res: dict = {"batch": batch, "device": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    with torch.inference_mode():
        with full_fp32(dev):
            ref = net(x, v).float()
        for name, graph in graphs.items():
            out = graph(x, v).float()
            res[f"{name} rel L2 vs fp32"] = float((out - ref).norm() / ref.norm())
        for _ in range(rounds):
            for name, graph in graphs.items():
                res.setdefault(f"{name} ms per call", []).append(round(cuda_ms(lambda: graph(x, v), reps=calls), 4))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extract", nargs=2, metavar=("REV", "DIR"), help="write REV's fused modules into DIR and stop")
    p.add_argument("--base", type=Path, help="a folder made by --extract: the revision to compare against")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=30, help="calls timed per round (median)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", default=os.environ.get("OUT", "res/bench"))
    args = p.parse_args()
    if args.extract:
        print(extract(args.extract[0], Path(args.extract[1])))
        return
    if args.base is None:
        p.error("give --base DIR (made by --extract REV DIR) or --extract REV DIR")
    res = run(args.base, args.rounds, args.calls, args.batch)
    print(json.dumps(res, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ab_fused.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
