"""Inversion: DDIM-invert images (uploaded, or the model's own samples) at several step counts,
with and without the fixed-point refinement, and decode them back: the reconstruction error of
each, as a table and a chart (the DDIM paper's Table 2 at this scale)."""

import numpy as np
import pandas as pd
import streamlit as st

from diffusion_core.data import decode_image
from diffusion_core.images import png_bytes
from diffusion_core.samplers import SamplerConfig, step_limit
from explorer_ui import cache, pictures, requests, view_cache, view_charts, view_requests, widgets

SOURCES = ("the model's own samples", "uploaded images")


def uploaded(uploads: list, size: int) -> np.ndarray:
    if not uploads:
        raise ValueError("upload one or more images (or choose the model's own samples)")
    images = []
    for upload in uploads:
        try:
            images.append(decode_image(upload.getvalue(), size))
        except ValueError as e:
            raise ValueError(f"{upload.name}: {e}") from None
    return np.stack(images)


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "inv", count=2, ladder=(20, 10, 5))
    size, limit = choice.model.experiment.network.image_size, step_limit("ddim", choice.model.experiment.schedule)
    source = st.radio("Images", SOURCES, key="inv_source")
    if source == SOURCES[0]:
        seed, count = widgets.seed_inputs("inv", 2)
        grid = widgets.valid("Sampling", lambda: requests.grid(choice.ref, choice.model, seed, count,
                                                               SamplerConfig("ddim", min(50, limit))))
    else:
        uploads = st.file_uploader("Images to invert", accept_multiple_files=True, key="inv_upload",
                                   type=widgets.UPLOAD_TYPES,
                                   help=f"Each is centre-cropped and resized to {size}x{size}.")
    options = [s for s in view_requests.INVERSION_STEPS if s <= limit] or [limit]
    steps = st.multiselect("DDIM steps", options, default=[s for s in options if s <= 20], key="inv_steps")
    refinement = int(st.number_input("Fixed-point iterations", 0, 10, 3, key="inv_refine",
                                     help="Rows with this many fixed-point iterations per inversion step (Pan et "
                                          "al. 2023) beside the plain inversion; 0 for the plain one only."))

with right, widgets.guard("Inverting"):
    if source == SOURCES[0]:
        if not widgets.ready("inv_sample_approved", grid, [choice.model], grid.evaluations, "Sample"):
            st.stop()
        with widgets.running("inv_sample_approved", grid, grid.evaluations, "Sampling") as job:
            images = cache.sample_images(grid, job)[0]
    else:
        images = uploaded(uploads, size)
    request = view_requests.inversion_quality(choice.ref, choice.model, images, steps, refinement)
    if widgets.ready("inv_approved", request, [choice.model], request.evaluations, "Invert"):
        with widgets.running("inv_approved", request, request.image_steps, "Inverting") as job:
            rows, recons = view_cache.inversion_quality(request, job)
        table = pd.DataFrame([{"steps": r.steps, "fixed-point iterations": r.refinement, "MSE": r.mse,
                               "PSNR (dB)": r.psnr, "std of the inverted noise": r.latent_std,
                               "network calls per image": r.evaluations, "seconds": r.seconds} for r in rows])
        st.dataframe(table, hide_index=True, key="inv_table", column_config={
            "MSE": st.column_config.NumberColumn(format="%.2e", help="Mean squared error per dimension of the "
                                                                     "reconstruction, pixels in [0, 1]"),
            "PSNR (dB)": st.column_config.NumberColumn(format="%.1f"),
            "std of the inverted noise": st.column_config.NumberColumn(format="%.3f", help="1 for standard "
                                                                       "normal noise, what sampling starts from"),
            "seconds": st.column_config.NumberColumn(format="%.2f")})
        st.plotly_chart(view_charts.inversion_chart([r.steps for r in rows], [r.mse for r in rows],
                                                    [r.refinement for r in rows]), key="inv_chart")
        cells = np.concatenate([images[None], recons]).transpose(1, 0, 2, 3, 4)  # [N x 1+rows x S x S x 3]
        labels = ["input"] + [f"{r.steps} st." + (f" +{r.refinement} fp" if r.refinement else "") for r in rows]
        grid_image = pictures.labelled_grid(cells, labels, cell=64)
        st.image(png_bytes(grid_image), output_format="PNG",
                 caption="Each input and its DDIM reconstructions (st.: steps, fp: fixed-point iterations)")
        st.download_button("Download PNG", png_bytes(grid_image), key="inv_download", on_click="ignore",
                           mime="image/png", file_name=f"{choice.entry.name}_inversion.png")
        st.download_button("Download CSV", table.to_csv(index=False), key="inv_csv", on_click="ignore",
                           mime="text/csv", file_name=f"{choice.entry.name}_inversion.csv")
