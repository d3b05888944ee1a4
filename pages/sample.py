"""Sample: a grid of images from chosen seeds with a chosen sampler; download it as PNG."""

import streamlit as st

from diffusion_core.generate import check_sampler
from diffusion_core.images import make_grid, png_bytes
from diffusion_core.samplers import SAMPLERS, SamplerConfig
from diffusion_core.schedules import max_sampling_steps
from explorer_ui import cache, plans, widgets

st.title("Sample")
entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    entry = widgets.pick_checkpoint(entries, "sample_checkpoint", reset=("sample_steps", "sample_count"))
    ref, model = widgets.load(entry)
    count0, steps0 = widgets.default_plan([model])
    limit = max_sampling_steps(model.experiment.schedule)
    name, steps, eta = widgets.sampler_inputs("sample", steps0, limit, SAMPLERS)
    seed, count = widgets.seed_inputs("sample", count0)
    cols = st.number_input("Grid columns", min_value=1, max_value=32, value=min(count0, 4), step=1,
                           key="sample_cols")

with right, widgets.guard("Sampling"):
    config = SamplerConfig(name, steps, eta)
    check_sampler(model, config)
    size = model.experiment.network.image_size
    plans.check_grid(count, size)
    seeds = plans.seed_range(seed, count)
    key = (ref, tuple(seeds), cache.sampler_key(config))
    if widgets.ready("sample_approved", key, widgets.estimate([model], count * steps)):
        images, seconds = cache.sample_images(*key)
        grid = make_grid(images, cols=int(cols))
        widgets.show(grid, target=720)
        st.caption(f"{entry.label}: {len(images)} images of {size}x{size}, seeds {seeds[0]}-{seeds[-1]}, "
                   f"{name} {steps} steps{f', eta {eta:g}' if name == 'ddim' else ''}; "
                   f"generated in {seconds:.2f} s on {ref.device}.")
        st.download_button("Download PNG", png_bytes(grid), key="sample_download", on_click="ignore",
                           file_name=f"{entry.name}_{name}{steps}_seeds{seeds[0]}-{seeds[-1]}.png",
                           mime="image/png")
