"""Interpolation: slerp and lerp between the noise of two or more seeds (or of two uploaded
images, DDIM-inverted), side by side as strips and animations."""

import numpy as np
import streamlit as st

from diffusion_core.data import decode_image
from diffusion_core.images import make_grid
from explorer_ui import cache, plans, requests, widgets



def inversion_request(choice: widgets.ModelChoice, uploads: list, steps: int) -> requests.InversionRequest:
    """The DDIM inversion of exactly two uploaded images (each centre-cropped to the model's size)."""
    if len(uploads) != 2:
        raise ValueError(f"upload exactly two images to interpolate between them (got {len(uploads)})")
    pictures = []
    for upload in uploads:
        try:
            pictures.append(decode_image(upload.getvalue(), choice.model.experiment.network.image_size))
        except ValueError as e:
            raise ValueError(f"{upload.name}: {e}") from None
    return requests.inversion(choice.ref, choice.model, np.stack(pictures), steps)


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    frames0 = 6
    choice = widgets.model_inputs(entries, "interp", count=2 * frames0)
    seeds_text = st.text_input("Seeds", "3, 17", key="interp_seeds",
                               help="Two or more seeds, e.g. 3, 17, 42 (a range like 0-3 works too).")
    frames = int(st.number_input("Frames", min_value=2, max_value=plans.MAX_FRAMES, value=frames0, step=1,
                                 key="interp_frames"))
    sampler = widgets.sampler_inputs("interp", choice, deterministic=True)
    uploads = st.file_uploader("Or start from two images (DDIM inversion)", accept_multiple_files=True,
                               type=widgets.UPLOAD_TYPES, key="interp_upload",
                               help="PNG, JPEG or WebP; each is centre-cropped and resized to the model's size.")
    start = None
    if uploads:
        start = widgets.valid("Interpolating", lambda: inversion_request(choice, uploads, sampler.steps))
    request = widgets.valid("Interpolating", lambda: requests.interpolation(
        choice.ref, choice.model, frames, sampler.config(), () if uploads else plans.parse_seeds(seeds_text), start))

with right, widgets.guard("Interpolating"):
    model, steps = choice.model, sampler.steps
    approved = True
    if start is not None:
        approved = widgets.ready("interp_inv_approved", start, [model], start.evaluations, "Invert")
        if approved:
            with widgets.running("interp_inv_approved", start, start.image_steps, "Inverting") as job:
                _, recon = cache.inversion(start, job)
            st.caption("Uploaded images (top) and their DDIM reconstructions from the inverted noise (bottom)")
            widgets.show(make_grid(np.concatenate([start.images.array(), recon]), cols=2), target=256)
    if approved and widgets.ready("interp_approved", request, [model], 2 * frames * steps):
        scale = max(1, 192 // model.experiment.network.image_size)
        with widgets.running("interp_approved", request, 2 * frames * steps, "Interpolating") as job:
            strips = {method: cache.interpolation(request, method, job) for method in ("slerp", "lerp")}
        for method, col in zip(("slerp", "lerp"), st.columns(2)):
            strip = strips[method]
            with col:
                st.subheader(method)
                st.image(cache.gif(strip, scale), caption=f"{method}: {frames} frames, animated")
                widgets.show(make_grid(strip, cols=frames), f"{method} strip", target=512)
                st.download_button(f"Download {method} GIF", cache.gif(strip, scale), key=f"interp_gif_{method}",
                                   on_click="ignore", mime="image/gif",
                                   file_name=f"{choice.entry.name}_{method}_"
                                             f"{'-'.join(map(str, request.seeds)) or 'images'}.gif")
        st.caption("slerp keeps the noise on the sphere where the model was trained; lerp passes inside "
                   "it, so its middle frames tend to be washed out.")
