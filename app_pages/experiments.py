"""Experiments: every checkpoint found, its FID and FID / floor first, then its facts and other
metrics, sample thumbnails, charts; with the experiments trained on the GPU whose weights do not
ship (``results/descriptions/``)."""

import pandas as pd
import streamlit as st

from explorer_ui import cache, catalog, charts, requests, widgets


def in_columns(items: list, per_row: int = 4):
    """Each item with the column it is shown in, ``per_row`` columns a row."""
    for start in range(0, len(items), per_row):
        yield from zip(st.columns(per_row), items[start:start + per_row])


entries, _ = widgets.checkpoints()
usable = [e for e in entries if e.usable]

if not entries:
    widgets.no_checkpoints()
    st.stop()

for e in entries:
    if not e.usable:
        st.warning(f"**{e.label}** is unusable: {e.error}")

if not usable:
    widgets.no_checkpoints()
    st.stop()

unshipped = catalog.unshipped_results(usable)  # trained experiments without weights here, after the checkpoints
rows = [catalog.table_row(e) for e in usable] + unshipped
st.dataframe(
    pd.DataFrame(rows), hide_index=True, key="experiments_table",
    column_config={
        "epochs": st.column_config.NumberColumn(format="%.1f", help="Epochs completed (a run stopped by its time "
                                                                   "limit shows a fraction)"),
        "learning rate": st.column_config.NumberColumn(format="%.1e"),
        "weight decay": st.column_config.NumberColumn(format="%.1e"),
        "parameters": st.column_config.NumberColumn(format="compact"),
        "images seen": st.column_config.NumberColumn(format="compact"),
        "training time (h)": st.column_config.NumberColumn(format="%.2f"),
        "FID": st.column_config.NumberColumn(format="%.2f", help="Measured by this repo with N = 'FID samples' "
                                                              "generated images (FID depends on N: compare rows "
                                                              "of equal N)"),
        "FID / floor": st.column_config.NumberColumn(format="%.2f", help=catalog.RATIO_NOTE),
        "KID": st.column_config.NumberColumn(format="%.4f"),
        "seed FID (reported)": st.column_config.NumberColumn(format="%.2f", help=charts.SEED_FID_NOTE),
        "about": st.column_config.TextColumn(help="The experiment's own description (e.g. a seed row, or a "
                                                  "variant made to fit the checkpoint budget)"),
        "weights": st.column_config.TextColumn(help="'available': the checkpoint's weights are here and every page "
                                                    "can sample from it; otherwise why they are not in the repo "
                                                    "(a trained experiment: its facts, FID and samples only)"),
    },
)
st.caption("Click a column header to sort. Rows whose weights are not 'available' are experiments trained on the GPU "
           "whose weights are not in the repo. " + charts.SEED_FID_NOTE)

st.subheader("Samples")
previews = st.session_state.setdefault("previews", set())
for col, entry in in_columns(usable):
    with col:
        st.markdown(f"**{entry.label}**")
        if entry.sample_path is not None:
            st.image(str(entry.sample_path), caption=entry.sample_path.name, width="stretch", output_format="PNG")
            continue
        if st.button("Preview (4 images, DDIM 10)", key=f"preview_{entry.label}"):
            previews.add(entry.label)
        if entry.label in previews:
            with widgets.guard(f"Preview of {entry.label}"):
                ref = requests.model_ref(entry, widgets.current_device())
                widgets.show(cache.preview_grid(ref), "seeds 0-3, DDIM 10 steps")
        else:
            st.caption("No sample grid shipped.")

if unshipped:
    st.subheader("Trained, weights not shipped")
    for col, row in in_columns(unshipped):
        with col:
            st.markdown(f"**{row['name']}**")
            sample = catalog.result_sample(row["name"])
            if sample is not None:
                st.image(str(sample), caption=row["weights"], width="stretch", output_format="PNG")
            else:
                st.caption(f"No sample grid shipped. {row['weights']}")

st.subheader("Charts")
fid = charts.fid_chart(rows)
if fid is not None:
    st.plotly_chart(fid, key="fid_chart")
else:
    st.caption("No FID measured yet (`python -m diffusion_core evaluate ...` adds it to a checkpoint).")
logs = {}
for entry in usable:
    if entry.log_path is not None:
        with widgets.guard(f"Reading the log of {entry.label}"):
            logs[entry.label] = cache.read_log(str(entry.log_path), cache.log_stamps(entry.log_path))
loss = charts.loss_chart(logs)
if loss is not None:
    st.plotly_chart(loss, key="loss_chart")
else:
    st.caption("No training log found (NAME.log.jsonl beside a checkpoint, or log.jsonl in a run folder).")
