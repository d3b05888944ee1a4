"""Sample: a grid of images from chosen seeds with a chosen sampler; download it as PNG; find the
training images nearest to one of them (is the model copying its training data?)."""

import numpy as np
import streamlit as st

from diffusion_core.checkpoint import LoadedModel
from diffusion_core.images import make_grid, png_bytes
from explorer_ui import cache, neighbours, widgets
from explorer_ui.requests import GridRequest


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


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.grid_inputs(entries, "sample", "Sampling", columns=True)
request, sampler, seeds = choice.request, choice.request.sampler, choice.request.seeds

with right, widgets.guard("Sampling"):
    if widgets.ready("sample_approved", request, [choice.model], request.evaluations):
        with widgets.running("sample_approved", request, request.evaluations, "Sampling") as job:
            images, seconds = cache.sample_images(request, job)
        grid = make_grid(images, cols=choice.cols)
        widgets.show(grid, target=720)
        size = choice.model.experiment.network.image_size
        eta = f", eta {sampler.eta:g}" if sampler.spec.uses_eta else ""
        st.caption(f"{choice.entry.label}: {len(images)} images of {size}x{size}, seeds {seeds[0]}-{seeds[-1]}, "
                   f"{sampler.name} {sampler.num_steps} steps{eta}; generated in {seconds:.2f} s on "
                   f"{request.model.device}.")
        st.download_button("Download PNG", png_bytes(grid), key="sample_download", on_click="ignore",
                           file_name=f"{choice.entry.name}_{sampler.name}{sampler.num_steps}_"
                                     f"seeds{seeds[0]}-{seeds[-1]}.png", mime="image/png")
        with st.expander("Nearest training images"), widgets.guard("Nearest training images"):
            nearest_training_images(request, choice.model, images)
