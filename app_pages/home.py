"""Home: what the app does, the best checkpoint's samples, and where to go from here."""

import streamlit as st

from explorer_ui import catalog, widgets

PAGES = [  # (page file, title, what it is for)
    ("app_pages/experiments.py", "Experiments", "every trained experiment: FID, FID / floor, facts, samples, "
                                                "loss curves"),
    ("app_pages/sample.py", "Sample", "a grid from chosen seeds, any sampler, steps, eta; PNG download; is a "
                                      "sample a copy of a training image?"),
    ("app_pages/trajectory.py", "Trajectory", "one seed's denoising, scrubbed step by step: x_t beside the "
                                              "predicted clean image"),
    ("app_pages/interpolation.py", "Interpolation", "slerp and lerp between seeds, or between two uploaded "
                                                    "photos (DDIM inversion)"),
    ("app_pages/compare.py", "Compare", "checkpoints side by side from the same seeds; a step sweep"),
    ("app_pages/live.py", "Live", "watch the sampler work, step by step, with a Stop button"),
    ("app_pages/xy_grid.py", "XY grid", "images over any two of checkpoint, sampler, steps, eta and seed"),
    ("app_pages/branch.py", "Branch", "one trajectory continued from step k with other samplers, eta or noise"),
    ("app_pages/neighbourhood.py", "Neighbourhood", "variations of a seed and a looping walk through noise space"),
    ("app_pages/edit.py", "Edit", "SDEdit of an uploaded image, or redraw only a rectangle of it"),
    ("app_pages/geometry.py", "Geometry", "several seeds' denoising paths projected to 2-D"),
    ("app_pages/inversion.py", "Inversion", "DDIM inversion and its reconstruction error at several step counts"),
    ("app_pages/timeline.py", "Timeline", "a training run's sample grids scrubbed epoch by epoch, as a GIF"),
]

st.markdown("Look inside image diffusion models trained on bedroom scenes: sample them with DDPM, DDIM or "
            "DPM-Solver++, scrub through a denoising, interpolate between noises, compare checkpoints, and "
            "see what each experiment measured. Settings you choose (checkpoint, sampler, steps, seed) follow "
            "you from page to page and stay in the address bar, so a view can be shared as a link.")

entries = widgets.usable_or_stop()

best = entries[catalog.best_index(entries)]
row = catalog.table_row(best)
left, right = st.columns([3, 2])
with left:
    st.subheader("Where to go")
    for path, title, about in PAGES:
        st.page_link(path, label=f"**{title}**: {about}")
with right:
    measured = [f"FID {row['FID']:.1f}" if row["FID"] is not None else "no FID recorded"]
    if row["FID / floor"] is not None:
        measured.append(f"{row['FID / floor']:.2f} times the real-vs-real floor")
    st.subheader(f"The best model here: {best.label}")
    if best.sample_path is not None:
        st.image(str(best.sample_path), width="stretch", output_format="PNG",
                 caption=f"Samples of {best.label} ({', '.join(measured)}; lowest FID of the "
                         f"{len(entries)} checkpoint{'s' if len(entries) != 1 else ''} here).")
    else:
        st.caption(f"{best.label}: {', '.join(measured)}. No sample grid shipped: the Sample page makes one.")
