"""Interpolation: slerp and lerp between the noise of two or more seeds (or of two uploaded
images, DDIM-inverted), side by side as strips and animations."""

import numpy as np
import streamlit as st

from diffusion_core.generate import check_sampler, image_from_bytes
from diffusion_core.images import make_grid
from diffusion_core.samplers import SamplerConfig
from explorer_ui import cache, plans, widgets

st.title("Interpolation")
entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    frames0 = 6
    entry, ref, model, _, steps0, limit = widgets.model_inputs(entries, "interp", count=2 * frames0)
    seeds_text = st.text_input("Seeds", "3, 17", key="interp_seeds",
                               help="Two or more seeds, e.g. 3, 17, 42 (a range like 0-3 works too).")
    frames = int(st.number_input("Frames", min_value=2, max_value=plans.MAX_FRAMES, value=frames0, step=1,
                                 key="interp_frames"))
    name = st.selectbox("Sampler", ["ddim", "dpmpp_2m"], key="interp_sampler",
                        help="Deterministic samplers only (DDIM with eta 0, DPM-Solver++), so that "
                             "nearby noise gives nearby images.")
    steps = widgets.steps_input("interp", steps0, limit)
    uploads = st.file_uploader("Or start from two images (DDIM inversion)", accept_multiple_files=True,
                               key="interp_upload", help="Each is centre-cropped and resized to the model's size.")

with right, widgets.guard("Interpolating"):
    config = SamplerConfig(name, steps, 0.0)
    check_sampler(model, config)
    size = model.experiment.network.image_size
    keys, seeds = None, ()
    if uploads:
        if len(uploads) != 2:
            raise ValueError(f"upload exactly two images to interpolate between them (got {len(uploads)})")
        pictures = []
        for upload in uploads:
            try:
                pictures.append(image_from_bytes(upload.getvalue(), size))
            except ValueError as e:
                raise ValueError(f"{upload.name}: {e}") from None
        images = np.stack(pictures)
        if widgets.ready("interp_inv_approved", (ref, images.tobytes(), steps),
                         widgets.estimate([model], 4 * steps), "Invert"):
            noise, recon = cache.inversion(ref, images, steps)
            keys = noise
            st.caption("Uploaded images (top) and their DDIM reconstructions from the inverted noise (bottom)")
            widgets.show(make_grid(np.concatenate([images, recon]), cols=2), target=256)
    else:
        seeds = tuple(plans.parse_seeds(seeds_text))
        if len(seeds) < 2:
            raise ValueError("give at least two seeds, e.g. 3, 17")
    if keys is not None or seeds:
        params = (ref, seeds, frames, cache.sampler_key(config), None if keys is None else keys.tobytes())
        if widgets.ready("interp_approved", params, widgets.estimate([model], 2 * frames * steps)):
            scale = max(1, 192 // size)
            for method, col in zip(("slerp", "lerp"), st.columns(2)):
                strip = cache.interpolation(ref, seeds, frames, method, cache.sampler_key(config), keys)
                with col:
                    st.subheader(method)
                    st.image(cache.gif(strip, scale), caption=f"{method}: {frames} frames, animated")
                    widgets.show(make_grid(strip, cols=frames), f"{method} strip", target=512)
                    st.download_button(f"Download {method} GIF", cache.gif(strip, scale), key=f"interp_gif_{method}",
                                       on_click="ignore", mime="image/gif",
                                       file_name=f"{entry.name}_{method}_{'-'.join(map(str, seeds)) or 'images'}.gif")
            st.caption("slerp keeps the noise on the sphere where the model was trained; lerp passes inside "
                       "it, so its middle frames tend to be washed out.")
