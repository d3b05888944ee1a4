"""Experiments (home): every checkpoint found, its facts and metrics, sample thumbnails, charts."""

import pandas as pd
import streamlit as st

from explorer_ui import cache, catalog, charts, widgets

st.title("Experiments")
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

rows = [catalog.table_row(e) for e in usable]
st.dataframe(
    pd.DataFrame(rows), hide_index=True, key="experiments_table",
    column_config={
        "learning rate": st.column_config.NumberColumn(format="%.1e"),
        "weight decay": st.column_config.NumberColumn(format="%.1e"),
        "parameters": st.column_config.NumberColumn(format="compact"),
        "images seen": st.column_config.NumberColumn(format="compact"),
        "training time (h)": st.column_config.NumberColumn(format="%.2f"),
        "FID": st.column_config.NumberColumn(format="%.2f", help="Measured by this repo with N = 'FID samples' "
                                                              "generated images (FID depends on N)"),
        "KID": st.column_config.NumberColumn(format="%.4f"),
        "seed FID (reported)": st.column_config.NumberColumn(format="%.2f", help=charts.SEED_FID_NOTE),
    },
)
st.caption("Click a column header to sort. " + charts.SEED_FID_NOTE)

st.subheader("Samples")
previews = st.session_state.setdefault("previews", set())
per_row = 4
for start in range(0, len(usable), per_row):
    for col, entry in zip(st.columns(per_row), usable[start:start + per_row]):
        with col:
            st.markdown(f"**{entry.label}**")
            if entry.sample_path is not None:
                st.image(str(entry.sample_path), caption=entry.sample_path.name, width="stretch", output_format="PNG")
                continue
            if st.button("Preview (4 images, DDIM 10)", key=f"preview_{entry.label}"):
                previews.add(entry.label)
            if entry.label in previews:
                with widgets.guard(f"Preview of {entry.label}"):
                    ref = cache.model_ref(entry, widgets.current_device())
                    widgets.show(cache.preview_grid(ref), "seeds 0-3, DDIM 10 steps")
            else:
                st.caption("No sample grid shipped.")

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
