"""Edit: SDEdit of an uploaded image (noise it to a chosen level, let the model denoise it), or
redraw only a rectangle of it and keep the rest."""

import numpy as np
import streamlit as st

from diffusion_core import edit as E
from diffusion_core.data import decode_image
from diffusion_core.images import make_grid, png_bytes
from explorer_ui import pictures, view_cache, view_requests, widgets

SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)


def uploaded_image(upload, size: int) -> np.ndarray:
    try:
        return decode_image(upload.getvalue(), size)
    except ValueError as e:
        raise ValueError(f"{upload.name}: {e}") from None


def region_inputs() -> tuple[float, float, float, float] | None:
    if not st.checkbox("Redraw only a region", key="edit_masked",
                       help="Inpainting: the rest of the image is put back at every step, so it is kept exactly."):
        return None
    a, b = st.columns(2)
    left, right = a.slider("Left to right", 0.0, 1.0, (0.25, 0.75), 0.05, key="edit_x")
    top, bottom = b.slider("Top to bottom", 0.0, 1.0, (0.25, 0.75), 0.05, key="edit_y")
    return left, top, right, bottom


def outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the region to redraw tinted red."""
    out = image.astype(np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
    return out.round().astype(np.uint8)


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "edit", count=1, ladder=(50, 20, 10))
    size = choice.model.experiment.network.image_size
    upload = st.file_uploader("Image to edit", key="edit_upload", type=widgets.UPLOAD_TYPES,
                              help=f"Centre-cropped and resized to the model's {size}x{size}.")
    sampler = widgets.sampler_inputs("edit", choice)
    strength = st.slider("Strength", 0.0, 1.0, 0.5, 0.05, key="edit_strength",
                         help="How much noise is added before the model denoises: 0 gives the image back, "
                              "1 starts from (nearly) pure noise. Low keeps it faithful, high makes it look "
                              "like the model's own images.")
    seed, _ = widgets.seed_inputs("edit", count=None)
    region = region_inputs()
    if upload is None:
        st.info("Upload an image (jpg, png, webp, ...) to edit it.")
        st.stop()
    request = widgets.valid("Editing", lambda: view_requests.edit(
        choice.ref, choice.model, uploaded_image(upload, size), sampler.config(), strength, seed, region))

with right, widgets.section("Editing"):
    if widgets.ready("edit_approved", request, [choice.model], request.evaluations, "Edit"):
        original = request.image.array()[0]
        with widgets.running("edit_approved", request, request.evaluations, "Editing") as job:
            edited = view_cache.edit(request, job)
        shown = original if region is None else outlined(original, E.rectangle_mask(size, *region))
        a, b = st.columns(2)
        widgets.show(shown, "input" + ("" if region is None else " (red: the region to redraw)"), where=a)
        widgets.show(edited, f"edited: strength {strength:g}, {request.evaluations} of {sampler.steps} "
                             f"{request.sampler.name} steps", where=b)
        pair = make_grid(np.stack([original, edited]), cols=2)
        st.download_button("Download PNG", png_bytes(pair), key="edit_download", on_click="ignore", mime="image/png",
                           file_name=f"{choice.entry.name}_edit_s{strength:g}_seed{seed}.png",
                           help="The input and the edit side by side.")

with right, widgets.section("Strength sweep"):
    if st.checkbox(f"Strength sweep ({', '.join(f'{s:g}' for s in SWEEP)})", key="edit_sweep",
                   help="The same edit at every strength: faithfulness on the left, realism on the right."):
        sweep = [view_requests.edit(choice.ref, choice.model, request.image.array()[0], request.sampler, s, seed,
                                    region) for s in SWEEP]
        evaluations = sum(r.evaluations for r in sweep)
        if widgets.ready("edit_sweep_approved", tuple(sweep), [choice.model], evaluations, "Sweep"):
            with widgets.running("edit_sweep_approved", tuple(sweep), evaluations, "Sweeping") as job:
                edits = np.stack([view_cache.edit(r, job) for r in sweep])
            strip = pictures.labelled_grid(edits[None], [f"strength {s:g}" for s in SWEEP])
            st.image(png_bytes(strip), output_format="PNG", caption=f"seed {seed}, {request.sampler.name}")
            st.download_button("Download sweep PNG", png_bytes(strip), key="edit_sweep_download", on_click="ignore",
                               mime="image/png", file_name=f"{choice.entry.name}_edit_sweep_seed{seed}.png")
