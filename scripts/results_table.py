"""Print the README's results tables (markdown) from the measured descriptions in results/descriptions/
and the real-vs-real floors in results/floors.json: the seed table beside ours, the floors and the
steps table of the best model; with --cifar, the CIFAR-10 table beside the DDIM paper's column.

    python scripts/results_table.py            # from the repository root
    python scripts/results_table.py --cifar [NAME_OR_DESCRIPTION.json]   # default: cifar10
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "descriptions"
FLOORS = ROOT / "results" / "floors.json"
ROWS = ["ddpm_01", "ddpm_01_narrow", "ddim_01", "ddim_02", "ddim_03", "ddim_04", "ddim_05", "ddim_06", "ddim_07",
        "ddim_08", "ddim_09", "ours", "ours2_eps", "ours2_v", "ours2_attn"]
SEED_LABEL = {"ddpm_01": "DDPM 1", "ddpm_01_narrow": "DDPM 1, narrow (not a seed row)", "ddim_01": "DDIM 1",
              "ddim_02": "DDIM 2", "ddim_03": "DDIM 3", "ddim_04": "DDIM 4", "ddim_05": "DDIM 5", "ddim_06": "DDIM 6",
              "ddim_07": "DDIM 7", "ddim_08": "DDIM 8", "ddim_09": "DDIM 9", "ours": "ours, round 1",
              "ours2_eps": "**ours** (round 2, A: L1 on noise)", "ours2_v": "ours, round 2, B: v-prediction",
              "ours2_attn": "ours, round 2, C: attention, v-prediction"}
BEST = "ours2_eps"


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def evaluation(desc: dict, sampler: str, steps: int, eta: float) -> dict | None:
    for e in desc.get("metrics", {}).get("evaluations", []):
        if (e["sampler"], e["steps"], float(e["eta"])) == (sampler, steps, eta):
            return e
    return None


def configuration(desc: dict) -> str:
    exp = desc["experiment"]
    n, t, d = exp["network"], exp["train"], exp["data"]
    aug = {"flip_x2": " (x2 aug.)", "flip": " (flips)"}.get(d["augment"], "")
    size = desc["training"]["dataset"]["size"]
    return (f"{n['image_size']}px, {n['widths']} d{n['block_depth']}, lr {t['learning_rate']:g}, "
            f"{t['epochs']} ep x {size}{aug}")


def seed_table(floors: dict) -> str:
    head = ("| experiment | configuration | images seen | GPU time | FID, N = 2,911 (DDIM 50) | "
            "FID at equal N | floor at equal N | **FID / floor** | KID | near-copies | seed's FID (as reported) | "
            "weights |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name in ROWS:
        d = load(name)
        tr = d["training"]
        e = evaluation(d, "ddim", 50, 0.0)
        done = "" if tr["finished"] else f" ({tr['epochs_completed']:.0f} of {tr['epochs_planned']} ep)"
        fid = f"{e['fid']:.1f}"
        ddpm = evaluation(d, "ddpm", 1000, 0.0)
        if ddpm is not None and d["experiment"]["family"] == "ddpm":
            fid += f" (DDPM 1000: {ddpm['fid']:.1f})"
        eq = e.get("equal_n")
        if eq:
            equal = f"{eq['fid']:.1f} | {eq['floor_fid']:.1f} | **{eq['ratio']:.2f}**"
        else:
            equal = "- | - | - (not re-measured)"
        seed = d["experiment"].get("reported_fid")
        weights = "shipped" if "shipped" in d else f"not shipped ({d['parameters'] * 2 / 2**20:.1f} MiB)"
        gpu = tr["device"].replace("NVIDIA ", "").replace(" 80GB HBM3", "")
        if tr.get("gpu_sharing"):
            gpu += ", shared"
        lines.append(f"| {SEED_LABEL[name]} | {configuration(d)} | {tr['images_seen']:,}{done} | "
                     f"{tr['wall_time_s'] / 60:.1f} min, {gpu} | {fid} | {equal} | {e['kid']:.4f} | "
                     f"{100 * e['near_copy_share']:.1f}% | {'-' if seed is None else seed} | {weights} |")
    return "\n".join(lines)


def steps_table(name: str) -> str:
    d = load(name)
    cols = [10, 20, 50, 100]
    lines = ["| sampler | " + " | ".join(f"{s} steps" for s in cols) + " | 1000 steps |",
             "|---|" + "---|" * (len(cols) + 1)]
    for label, sampler, eta in [("DDIM, eta 0", "ddim", 0.0), ("DDIM, eta 1 (DDPM-like)", "ddim", 1.0)]:
        cells = [evaluation(d, sampler, s, eta) for s in cols]
        lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c['fid']:.1f}" for c in cells) + " | - |")
    anc = evaluation(d, "ddpm", 1000, 0.0)
    lines.append("| DDPM ancestral | - | - | - | - | " + ("-" if anc is None else f"{anc['fid']:.1f}") + " |")
    return "\n".join(lines)


def floor_table(floors: dict) -> str:
    sizes = sorted(floors, key=int)
    return ("| resolution | " + " | ".join(f"{s}px" for s in sizes) + " |\n|---|" + "---|" * len(sizes) + "\n"
            "| FID, half vs half (1,455 vs 1,456) | " + " | ".join(f"{floors[s]['fid']:.2f}" for s in sizes) + " |")


# The DDIM paper's CIFAR-10 column (Song et al. 2021, Table 1: FID of 50,000 samples, their model of
# 35.7M parameters after 800k steps of batch 128): DDIM eta 0 and the DDPM ancestral sampler (sigma-hat)
# at 1000 steps. Settings the paper does not report stay blank.
DDIM_PAPER_CIFAR = {("ddim", 10, 0.0): 13.36, ("ddim", 20, 0.0): 6.84, ("ddim", 50, 0.0): 4.67,
                    ("ddim", 100, 0.0): 4.16, ("ddpm", 1000, 0.0): 3.17}
CIFAR_ROWS = ([("DDIM, eta 0", "ddim", s, 0.0) for s in (10, 20, 50, 100)]
              + [("DDIM, eta 1", "ddim", s, 1.0) for s in (10, 20, 50, 100)]
              + [("DPM-Solver++(2M)", "dpmpp_2m", s, 0.0) for s in (10, 20)]
              + [("DDPM ancestral", "ddpm", 1000, 0.0)])
JPEG_NOTE = ("Data: the CIFAR-10 training set re-encoded as JPEG, so these FIDs are close to, not equal to, "
             "FIDs on the original images; the paper's column is on the original images.")


def cifar_table(desc: dict) -> str:
    """The CIFAR-10 steps table of a measured description beside the DDIM paper's column, then the
    floor at equal N, near copies, the training budget, the FID-against-time curve (if measured)
    and the JPEG note. Settings not measured (DDPM 1000 on a continuous schedule) print as -."""
    lines = ["| sampler | steps | FID (ours) | N | KID (ours) | DDIM paper, FID-50k |", "|---|---|---|---|---|---|"]
    for label, sampler, steps, eta in CIFAR_ROWS:
        e = evaluation(desc, sampler, steps, eta)
        paper = DDIM_PAPER_CIFAR.get((sampler, steps, eta))
        ours = "- | - | -" if e is None else f"{e['fid']:.2f} | {e['num_samples']:,} | {e['kid']:.4f}"
        lines.append(f"| {label} | {steps} | {ours} | {'-' if paper is None else paper} |")
    tr, head = desc["training"], evaluation(desc, "ddim", 50, 0.0)
    notes = [f"Training: {tr['wall_time_s'] / 60:.1f} GPU-minutes on {tr.get('device', '?')}, "
             f"{tr['images_seen']:,} images seen, {desc.get('parameters', 0) / 1e6:.2f}M parameters."]
    if head is not None:
        eq = head.get("equal_n")
        if eq:
            notes.append(f"Equal N (DDIM 50): FID {eq['fid']:.2f} of {eq['num_samples']:,} samples against one half "
                         f"of the training set, floor {eq['floor_fid']:.2f} (two disjoint halves), ratio "
                         f"{eq['ratio']:.2f}, over {eq['splits']} splits.")
        if "near_copy_share" in head:
            notes.append(f"Near copies (DDIM 50): {100 * head['near_copy_share']:.2f}% of samples.")
        notes.append(f"FID weights: {head['weights']}.")
    curve = desc.get("metrics", {}).get("fid_curve") or []
    if curve:
        notes.append("FID against training time (" + f"{curve[0]['sampler']} {curve[0]['steps']} steps, "
                     f"N = {curve[0]['num_samples']:,}): " + ", ".join(
                         f"{c['gpu_minutes']:.1f} min {c['fid']:.2f}" for c in curve) + ".")
    return "\n".join(lines + [""] + notes + [JPEG_NOTE])


def main() -> None:
    if sys.argv[1:2] == ["--cifar"]:
        name = sys.argv[2] if len(sys.argv) > 2 else "cifar10"
        path = Path(name) if name.endswith(".json") else RESULTS / f"{name}.json"
        if not path.is_file():
            sys.exit(f"{path}: no measured CIFAR-10 description (scripts/gpu/README.md says how to measure one)")
        print(cifar_table(json.loads(path.read_text())))
        return
    floors = json.loads(FLOORS.read_text())["floors"]
    best = sys.argv[1] if len(sys.argv) > 1 else BEST
    print(seed_table(floors), "", floor_table(floors), sep="\n")
    for name in ([best] if len(sys.argv) > 1 else [BEST, "ddim_08"]):
        print("", f"Steps table ({name}, FID at N = 2,911):", "", steps_table(name), sep="\n")


if __name__ == "__main__":
    main()
