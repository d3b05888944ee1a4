"""Compare: two to four checkpoints from the same seeds and steps, opening on the two with the
lowest recorded FID at a step count fair to both, every grid drawn at the same size; a step sweep
of one."""

import numpy as np
import streamlit as st

from diffusion_core.images import make_grid, png_bytes
from diffusion_core.samplers import SamplerConfig, step_limit
from explorer_ui import cache, catalog, compute, pictures, plans, requests, widgets

SAMPLER = "ddim"  # both comparisons use DDIM at eta 0: the same starting noise gives comparable images
FAIR_STEPS = (20,)  # DDIM 20 is near DDIM 50 (FID 20.2 vs 19.3 for ours2_eps, 36.3 vs 32.3 for ddim_08: README);
# fewer steps would judge the models by the sampler, so when time is short the default takes fewer images

entries = widgets.usable_or_stop()
labels = [e.label for e in entries]
by_label = {e.label: e for e in entries}
best_two = [labels[i] for i in catalog.by_fid(entries)[:2]]

st.subheader("Checkpoints side by side")
if [x for x in st.session_state.get("cmp_checkpoints", []) if x not in labels]:
    st.session_state.pop("cmp_checkpoints")
chosen = st.multiselect("Checkpoints (two to four)", labels, default=best_two, max_selections=4,
                        key="cmp_checkpoints", on_change=widgets.forget, args=(("cmp_steps", "cmp_count"),))
if len(chosen) < 2:
    st.info("Choose two to four checkpoints." if len(labels) > 1 else
            "Only one usable checkpoint: add another to compare (the step sweep below works with one).")
else:
    loaded = [widgets.load(by_label[label]) for label in chosen]
    models = [m for _, m in loaded]
    count0, steps0 = widgets.default_plan(models, ladder=FAIR_STEPS, share=0.5)
    limit = min(step_limit(SAMPLER, m.experiment.schedule) for m in models)
    a, b, c = st.columns(3)
    seed, count = widgets.seed_inputs("cmp", count0, where=a)
    steps = widgets.steps_input("cmp", steps0, limit, where=b)
    cols = int(c.number_input("Grid columns", min_value=1, max_value=16,
                              key=widgets.preset("cmp_cols", min(count0, 2))))
    with widgets.section("Comparing"):
        grids = tuple(requests.grid(ref, model, seed, count, SamplerConfig(SAMPLER, steps))
                      for ref, model in loaded)
        if widgets.ready("cmp_approved", grids, models, count * steps):
            with widgets.running("cmp_approved", grids, len(grids) * count * steps, "Comparing") as job:
                results = [cache.sample_images(request, job) for request in grids]
            sizes = [m.experiment.network.image_size for m in models]
            shown = pictures.common_size(sizes)  # every grid drawn at the same size, whatever its resolution
            side = []
            for (images, seconds), size, label, col in zip(results, sizes, chosen, st.columns(len(grids))):
                side.append(make_grid(pictures.resize_images(images, shown), cols=cols))
                with col:
                    widgets.show(side[-1], f"{label} ({size} px, {seconds:.1f} s)", target=840 // len(grids))
            seeds = grids[0].seeds
            st.caption(f"Seeds {seeds[0]}-{seeds[-1]}, DDIM {steps} steps (eta 0), every grid drawn at the "
                       f"same size (each image {shown} px wide). Equal seeds give equal starting noise only at "
                       "equal image sizes.")
            if len(set(sizes)) > 1:
                st.info("These checkpoints make images of different sizes (" +
                        ", ".join(f"{label}: {size} px" for label, size in zip(chosen, sizes)) +
                        "), so the same seed gives them different starting noise: compare their quality, "
                        "not image by image.")
            both = pictures.labelled_grid(np.stack(side)[None], [f"{label} ({size} px)"
                                                                for label, size in zip(chosen, sizes)])
            st.download_button("Download side by side (PNG)", png_bytes(both), key="cmp_download",
                               on_click="ignore", mime="image/png",
                               file_name=f"compare_{'_'.join(by_label[c].name for c in chosen)}_ddim{steps}_"
                                         f"seeds{seeds[0]}-{seeds[-1]}.png")

st.subheader("Step sweep")
left, right = st.columns([1, 3])
with left:
    entry = widgets.pick_checkpoint(entries, "sweep_checkpoint", reset=("sweep_steps",),
                                    index=catalog.best_index(entries))
    ref, model = widgets.load(entry)
    choices = plans.sweep_steps(step_limit(SAMPLER, model.experiment.schedule))
    default = plans.sweep_default(choices, widgets.gflops(model), widgets.current_device(), compute.threads(),
                                  share=0.5)
    sweep = st.multiselect("DDIM steps", choices, key=widgets.preset("sweep_steps", default))
    seed, count = widgets.seed_inputs("sweep", 1)
with right, widgets.section("Step sweep"):
    grids = requests.sweep(ref, model, seed, count, [int(s) for s in sweep], SAMPLER)
    evaluations = sum(g.evaluations for g in grids)
    if widgets.ready("sweep_approved", grids, [model], evaluations, "Run sweep"):
        with widgets.running("sweep_approved", grids, evaluations, "Step sweep") as job:
            cells = np.stack([cache.sample_images(g, job)[0] for g in grids], axis=1)  # [seeds x steps x H x W x 3]
        seeds = grids[0].seeds
        grid = pictures.labelled_grid(cells, [f"{g.sampler.num_steps} steps" for g in grids],
                                      [f"seed {s}" for s in seeds])
        st.image(png_bytes(grid), output_format="PNG", caption=f"{entry.label}: DDIM (eta 0) step sweep")
        st.download_button("Download PNG", png_bytes(grid), key="sweep_download", on_click="ignore",
                           file_name=f"{entry.name}_step_sweep.png", mime="image/png")
