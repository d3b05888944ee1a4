"""Sample: a grid of images from chosen seeds with a chosen sampler, optionally autoguided by a
smaller or less-trained checkpoint (a row per guidance weight); download it as PNG; find the
training images nearest to one of them (is the model copying its training data?)."""

import numpy as np
import streamlit as st

from diffusion_core.checkpoint import LoadedModel
from diffusion_core.images import make_grid, png_bytes
from diffusion_core.guidance import MAX_GUIDANCE
from explorer_ui import cache, catalog, neighbours, requests, widgets
from explorer_ui.requests import GridRequest

NO_GUIDE = "(none)"


def nearest_training_images(grid: GridRequest, model: LoadedModel, images: np.ndarray) -> None:
    """Pick a sample of the grid; show it beside its nearest training images (FID features)."""
    weights = neighbours.fid_weights()
    if weights is None:
        st.info(neighbours.INSTALL_WEIGHTS)
        return
    source = neighbours.local_source(model.description)
    if not neighbours.on_disk(source) and not widgets.folder_input_allowed():
        st.info("The training images of this checkpoint are not on this server.")
        return
    if not neighbours.on_disk(source):
        st.info(f"The training images of this checkpoint ({source or 'their path was not recorded'}) are not on "
                f"this machine. {neighbours.WHERE_DATA_GOES}: an image folder, a .tar archive or an LSUN LMDB.")
        source = st.text_input("Training data", key="nn_source", placeholder="/data/bedrooms-128.tar")
        if not source.strip():
            return
    data = neighbours.training_data(model.experiment, model.description, source)
    seeds = grid.seeds
    index = st.selectbox("Sample of the grid", range(len(seeds)), format_func=lambda i: f"#{i} (seed {seeds[i]})",
                         key="nn_index")
    request = (grid, index, data)
    estimate = neighbours.feature_estimate(data.count)
    if st.button(f"Find nearest training images ({estimate} the first time)", key="nn_go",
                 help="The first search computes the FID-Inception features of every training image on "
                      "the CPU; they are kept on disk (.cache/fid) for every later search and session."):
        st.session_state["nn_request"] = request
    if st.session_state.get("nn_request") != request:
        return
    with st.spinner(f"Features of the training images ({estimate} the first time), then the search..."):
        found = cache.nearest_training_images(grid.model, data, str(weights), images[index])
    cols = st.columns(1 + len(found["indices"]))
    widgets.show(images[index], f"sample #{index}, seed {seeds[index]}", target=128, where=cols[0])
    for col, image, i, d in zip(cols[1:], found["images"], found["indices"], found["distances"]):
        widgets.show(image, f"training image {i}: distance {d:.2f}", target=128, where=col)
    if data.count and found["n_train"] != data.count:
        st.warning(f"{data.source} gives {found['n_train']} images; the model was trained on {data.count}: "
                   "these may not be its training images.")
    if found["threshold"] is None:
        st.caption(f"No near-copy threshold: it needs 2 to {neighbours.MAX_THRESHOLD_IMAGES} training images.")
    else:
        verdict = "a near copy of a training image" if found["near_copy"] else "not a near copy"
        st.markdown(f"Near-copy threshold {found['threshold']:.2f} ({neighbours.PERCENTILE:g}% of the training "
                    f"images lie this close to another one): this sample is **{verdict}**.")


def guidance_inputs(choice: widgets.GridChoice, entries: list[catalog.Entry]
                    ) -> tuple[tuple[GridRequest, ...], list[LoadedModel]]:
    """Autoguidance: a guide among the checkpoints that fit the chosen one, and one weight or a
    row per weight. Returns the grid's requests (one per row) and the models they run."""
    fitting = catalog.guides(entries, choice.entry)
    labels = [NO_GUIDE] + [e.label for e in fitting]
    if st.session_state.get("sample_guide") not in labels:
        st.session_state.pop("sample_guide", None)
    label = st.selectbox("Autoguidance: guide", labels, key="sample_guide",
                         help="A smaller or less-trained checkpoint of the same data, schedule and resolution "
                              "(Karras et al. 2024): each step becomes D_guide + w (D_main - D_guide). Only the "
                              f"checkpoints that fit this one are listed ({len(fitting)} here).")
    if label == NO_GUIDE:
        return (choice.request,), [choice.model]
    text = st.text_input("Guidance weights", "1.5", key="sample_guidance",
                         help=f"w from 0 to {MAX_GUIDANCE:g}: 1 is the model alone, 0 the guide alone, above 1 "
                              "away from the guide (1.5 gave ours2_eps with its shipped guide its best FID; past 2 "
                              "it got worse). Several (e.g. 1, 1.5, 2, 3): a grid row each, the same seeds.")
    weights = widgets.valid("Autoguidance", lambda: requests.parse_weights(text))
    guide_ref, guide_model = widgets.load(fitting[labels.index(label) - 1])
    rows = widgets.valid("Autoguidance", lambda: requests.guided_rows(choice.request, choice.model, guide_ref,
                                                                      guide_model, weights))
    return rows, [choice.model, guide_model]


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.grid_inputs(entries, "sample", "Sampling", columns=True)
    rows, models = guidance_inputs(choice, entries)
request, sampler, seeds = choice.request, choice.request.sampler, choice.request.seeds

with right, widgets.guard("Sampling"):
    evaluations = sum(r.evaluations for r in rows)
    # each row costs what it runs: a guided row both networks at every step, a w = 1 row the model alone
    gflop = sum(widgets.cost(models if r.guide else models[:1], r.evaluations) for r in rows)
    if widgets.ready_cost("sample_approved", rows, gflop):
        with widgets.running("sample_approved", rows, evaluations, "Sampling") as job:
            done = [cache.sample_images(r, job) for r in rows]
        images, seconds = np.concatenate([d[0] for d in done]), sum(d[1] for d in done)
        grid = make_grid(images, cols=len(seeds) if len(rows) > 1 else choice.cols)
        widgets.show(grid, target=720)
        size = choice.model.experiment.network.image_size
        eta = f", eta {sampler.eta:g}" if sampler.spec.uses_eta else ""
        guided = "" if rows[0].guide is None and len(rows) == 1 else (
            f", guided by {models[-1].name} at w = " + ", ".join(f"{r.guidance:g}" for r in rows)
            + (" (a row each)" if len(rows) > 1 else ""))
        st.caption(f"{choice.entry.label}: {len(images)} images of {size}x{size}, seeds {seeds[0]}-{seeds[-1]}, "
                   f"{sampler.name} {sampler.num_steps} steps{eta}{guided}; generated in {seconds:.2f} s on "
                   f"{request.model.device}.")
        weights = "_w" + "-".join(f"{r.guidance:g}" for r in rows) if guided else ""
        st.download_button("Download PNG", png_bytes(grid), key="sample_download", on_click="ignore",
                           file_name=f"{choice.entry.name}_{sampler.name}{sampler.num_steps}{weights}_"
                                     f"seeds{seeds[0]}-{seeds[-1]}.png", mime="image/png")
        with st.expander("Nearest training images"), widgets.guard("Nearest training images"):
            nearest_training_images(rows[-1], choice.model, done[-1][0])
