"""Neighbourhood: variations around one seed (its starting noise turned towards fresh noise by a
chosen angle, norm kept) and a closed circular walk through noise space as a seamless GIF."""

import numpy as np
import streamlit as st

from diffusion_core.images import make_grid, png_bytes
from explorer_ui import cache, plans, view_cache, view_requests, widgets

entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "nb", count=8, ladder=(20, 10, 5))
    sampler = widgets.sampler_inputs("nb", choice, deterministic=True)
    seed, _ = widgets.seed_inputs("nb", count=None)
    strength = st.slider("Strength", 0.0, 1.0, 0.25, 0.05, key="nb_strength",
                         help="How far each variation turns from the seed's noise: strength x 90 degrees on "
                              "the sphere of the noise's norm (0: the seed's image, 1: an unrelated one).")
    count = int(st.number_input("Variations", 1, view_requests.MAX_VARIATIONS, choice.count0, key="nb_count"))
    first = int(st.number_input("First variation seed", 0, plans.MAX_SEED, 1000, key="nb_first",
                                help="Variation i turns towards the noise of this seed + i."))
    frames = int(st.number_input("Walk frames", 2, plans.MAX_FRAMES, 12, key="nb_frames"))
    towards = int(st.number_input("Walk through seed", 0, plans.MAX_SEED, 1, key="nb_towards",
                                  help="The walk is the great circle through the seed's noise and this seed's "
                                       "(made orthogonal to it): it comes back where it started."))
    config = widgets.valid("Variations", sampler.config)
    variations = widgets.valid("Variations", lambda: view_requests.variations(
        choice.ref, choice.model, seed, first, count, strength, config))
    walk = widgets.valid("Circular walk", lambda: view_requests.walk(choice.ref, choice.model, seed, towards,
                                                                     frames, config))

with right:
    with widgets.section("Variations"):
        st.subheader("Variations")
        if widgets.ready("nb_var_approved", variations, [choice.model], variations.evaluations):
            with widgets.running("nb_var_approved", variations, variations.evaluations, "Variations") as job:
                own, images = view_cache.variations(variations, job)
            grid = make_grid(np.concatenate([own[None], images]), cols=min(9, count + 1))
            widgets.show(grid, f"seed {seed} (first), then its variations at {strength * 90:.0f} degrees towards "
                               f"seeds {variations.variation_seeds[0]}-{variations.variation_seeds[-1]}", target=720)
            st.download_button("Download PNG", png_bytes(grid), key="nb_var_download", on_click="ignore",
                               mime="image/png", file_name=f"{choice.entry.name}_seed{seed}_variations.png")
    with widgets.section("Circular walk"):
        st.subheader("Circular walk")
        if widgets.ready("nb_walk_approved", walk, [choice.model], walk.evaluations, "Walk"):
            with widgets.running("nb_walk_approved", walk, walk.evaluations, "Walking") as job:
                strip = view_cache.walk(walk, job)
            scale = max(1, 192 // choice.model.experiment.network.image_size)
            a, b = st.columns([1, 2])
            a.image(cache.gif(strip, scale), caption=f"{frames} frames, looping")
            with b:
                widgets.show(make_grid(strip, cols=min(frames, 12)), "the frames in order; after the last "
                             "comes the first", target=512)
            st.download_button("Download GIF", cache.gif(strip, scale), key="nb_walk_download", on_click="ignore",
                               mime="image/gif", file_name=f"{choice.entry.name}_walk_{seed}_{towards}.gif")
