"""Branch: one seed's trajectory, continued from its x_t at step k with other samplers, eta or
step-noise seeds; the runs side by side and, per step, how far their predicted x0 drift apart."""

import numpy as np
import streamlit as st

from diffusion_core import views as V
from diffusion_core.images import png_bytes
from diffusion_core.samplers import REGISTRY
from explorer_ui import pictures, view_cache, view_charts, view_requests, widgets

DEFAULTS = [("ddpm", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0), ("ddim", 0.5)]  # (sampler, eta) of branch i


def branch_inputs(i: int, noise_seed: int) -> V.Branch:
    sampler0, eta0 = DEFAULTS[i % len(DEFAULTS)]
    a, b, c = st.columns([3, 2, 2])
    names = list(REGISTRY)
    name = a.selectbox(f"Branch {i + 1}", names, index=names.index(sampler0) if sampler0 in names else 0,
                       key=f"branch_{i}_sampler", format_func=lambda n: REGISTRY[n].label)
    uses_eta = REGISTRY[name].uses_eta
    eta = b.number_input("eta", 0.0, 1.0, eta0, 0.1, key=f"branch_{i}_eta", disabled=not uses_eta)
    seed = c.number_input("noise seed", 0, 2**31 - 1, noise_seed + i + 1, key=f"branch_{i}_seed",
                          help="Seed of the branch's step noise (stochastic samplers).")
    return V.Branch(name, float(eta) if uses_eta else 0.0, int(seed))


def frames_grid(pics: V.BranchPictures, names: list[str], k: int) -> np.ndarray:
    """A labelled grid: one row per run, columns from step k to the finished sample."""
    last = pics.original.shape[0] - 1
    steps = sorted({int(round(s)) for s in np.linspace(k, last, min(6, last - k + 1))})
    runs = np.concatenate([pics.original[None], pics.branches])  # [B+1 x S+1 x H x W x 3]
    labels = [f"x0 at step {s}" if s < last else "sample" for s in steps]
    return pictures.labelled_grid(runs[:, steps], labels, names)


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "branch", count=1, ladder=(20, 10, 5))
    sampler = widgets.sampler_inputs("branch", choice)
    seed, _ = widgets.seed_inputs("branch", count=None)
    original = widgets.valid("Branching", sampler.config)
    if st.session_state.get("branch_k", 0) > sampler.steps - 1:
        st.session_state["branch_k"] = max(0, sampler.steps - 1)
    k = int(st.number_input("Branch at step", 0, max(0, sampler.steps - 1), min(sampler.steps // 2, sampler.steps - 1),
                            key="branch_k", help="0 branches from the starting noise; the branches continue "
                                                 "from the original's x_t at this step, on the same time grid."))
    count = int(st.number_input("Branches", 1, view_requests.MAX_BRANCHES, 2, key="branch_count"))
    branches = [branch_inputs(i, seed) for i in range(count)]
    request = widgets.valid("Branching", lambda: view_requests.branch(choice.ref, choice.model, seed,
                                                                      original, k, branches))

with right, widgets.guard("Branching"):
    if widgets.ready("branch_approved", request, [choice.model], request.evaluations):
        with widgets.running("branch_approved", request, request.evaluations, "Branching") as job:
            pics = view_cache.branch(request, job)
        names = ["original"] + [f"{i + 1}: {REGISTRY[b.sampler].label}"
                                f"{f' eta {b.eta:g}' if REGISTRY[b.sampler].uses_eta else ''}, noise {b.noise_seed}"
                                for i, b in enumerate(request.branches)]
        last = pics.original.shape[0] - 1
        st.session_state["branch_view"] = min(st.session_state.get("branch_view", last), last)
        step = st.slider("Show step", 0, last, key="branch_view",
                         help=f"Predicted x0 at each step; {last} is the finished sample.")
        runs = np.concatenate([pics.original[None], pics.branches])
        for col, run, name in zip(st.columns(len(runs)), runs, names):
            widgets.show(run[step], f"{name}: {'sample' if step == last else f'x0 at step {step}'}", target=192,
                         where=col)
        st.plotly_chart(view_charts.branch_distance_chart(pics.distances, names[1:], k), key="branch_chart")
        grid = frames_grid(pics, names, k)
        st.download_button("Download PNG", png_bytes(grid), key="branch_download", on_click="ignore",
                           mime="image/png", file_name=f"{choice.entry.name}_seed{seed}_branch{k}.png",
                           help="Every run's predicted x0 from the branch step to the sample, labelled.")
