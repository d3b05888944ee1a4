"""XY grid: images over any two settings (checkpoint, sampler, steps, eta, seed), rows x columns,
labelled, as one PNG; every other setting as chosen on the left."""

import streamlit as st

from diffusion_core import views as V
from diffusion_core.images import png_bytes
from diffusion_core.samplers import REGISTRY
from explorer_ui import pictures, view_cache, view_requests, widgets

DEFAULT_VALUES = {"steps": "5, 10, 20", "eta": "0, 0.5, 1", "seed": "0-3"}


def axis_input(which: str, name: str, labels: list[str]) -> V.Axis:
    """The values of one axis: a multiselect for checkpoints and samplers, text for the rest."""
    key = f"xy_{which}_{name}"
    if name == "checkpoint":
        values = st.multiselect("Checkpoints", labels, default=labels[:2], key=key)
    elif name == "sampler":
        values = st.multiselect("Samplers", list(REGISTRY), default=["ddim", "dpmpp_2m"], key=key,
                                format_func=lambda n: REGISTRY[n].label)
    else:
        values = st.text_input(f"{name.capitalize()} values", DEFAULT_VALUES[name], key=key,
                               help="Seeds as 3, 17, 42 or 0-3; steps as whole numbers; eta from 0 to 1.")
    return V.parse_axis(name, values)


entries = widgets.usable_or_stop()
by_label = {e.label: e for e in entries}
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "xy", count=4)
    sampler = widgets.sampler_inputs("xy", choice)
    seed, _ = widgets.seed_inputs("xy", count=None)
    row_name = st.selectbox("Rows", V.AXES, index=V.AXES.index("sampler"), key="xy_rows")
    rows = widgets.valid("Rows", lambda: axis_input("rows", row_name, list(by_label)))
    col_name = st.selectbox("Columns", V.AXES, index=V.AXES.index("steps"), key="xy_cols")
    cols = widgets.valid("Columns", lambda: axis_input("cols", col_name, list(by_label)))
    loaded = {choice.entry.label: (choice.ref, choice.model)}
    for axis in (rows, cols):
        if axis.name == "checkpoint":
            loaded.update({label: widgets.load(by_label[label]) for label in axis.values})
    base = V.Cell(choice.entry.label, sampler.name, sampler.steps, sampler.eta, seed)
    request = widgets.valid("XY grid", lambda: view_requests.xy_grid(loaded, base, rows, cols))

with right, widgets.guard("XY grid"):
    gflop = sum(widgets.cost([loaded[label][1]], request.evaluations_of(label)) for label in dict(request.models))
    if widgets.ready_cost("xy_approved", request, gflop):
        with widgets.running("xy_approved", request, request.evaluations, "Sampling the grid") as job:
            cells, took = view_cache.xy_grid(request, job)
        grid = pictures.labelled_grid(cells, [V.axis_label(cols.name, v) for v in cols.values],
                                      [V.axis_label(rows.name, v) for v in rows.values])
        st.image(png_bytes(grid), output_format="PNG",
                 caption=f"rows: {rows.name}, columns: {cols.name}; generated in {took:.1f} s on "
                         f"{next(iter(loaded.values()))[0].device}")
        fixed = [f"{n} {getattr(base, n) if n != 'sampler' else REGISTRY[base.sampler].label}"
                 for n in V.AXES if n not in (rows.name, cols.name)]
        st.caption("Fixed: " + ", ".join(fixed) + ". Samplers without eta ignore it; images of smaller "
                   "checkpoints are scaled up to the largest size.")
        st.download_button("Download PNG", png_bytes(grid), key="xy_download", on_click="ignore", mime="image/png",
                           file_name=f"{choice.entry.name}_{rows.name}_x_{cols.name}.png")
