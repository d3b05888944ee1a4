"""Timeline: a training run's fixed-seed sample grids, scrubbed epoch by epoch, beside its loss, its
loss by noise level and the FID of its evaluated snapshots."""

import streamlit as st

from explorer_ui import cache, charts, timeline, widgets

entries = [e for e in widgets.checkpoints()[0] if timeline.is_run(e.path)]
if not entries:
    st.info("No training run with sample grids found. Name a folder of runs (e.g. runs/) in the sidebar: a run "
            "folder holds model.json, log.jsonl and samples/epoch_NNNN.png, as `python -m diffusion_core train` "
            "writes them.")
    st.stop()
left, right = st.columns([1, 3])
with left:
    entry = widgets.pick_checkpoint(entries, "timeline_run", label="Training run", reset=("timeline_epoch",))
    grids = timeline.sample_grids(entry.path.parent)
    epochs = [e for e, _ in grids]
    epoch = st.select_slider("Epoch", epochs, value=epochs[-1], key="timeline_epoch",
                             help="The grid the trainer saved after this epoch (EMA weights, the same seeds).")

with right, widgets.guard("Timeline"):
    path = dict(grids)[epoch]
    widgets.show(timeline.read_grid(path), f"{entry.label}: epoch {epoch} ({epochs.index(epoch) + 1} of "
                                           f"{len(epochs)} grids)", target=640)
    st.download_button("Download GIF of every epoch", lambda: timeline.timeline_gif(grids), key="timeline_gif",
                       on_click="ignore", mime="image/gif", file_name=f"{entry.name}_timeline.gif",
                       help="Made when you click.")
    if entry.log_path is not None:
        log = cache.read_log(str(entry.log_path), cache.log_stamps(entry.log_path))
        loss = charts.loss_chart({entry.label: log})
        if loss is not None:
            st.plotly_chart(loss, key="timeline_loss")
        by_noise = cache.read_noise_loss(str(entry.log_path), cache.log_stamps(entry.log_path))
        if by_noise is not None:
            st.plotly_chart(charts.noise_loss_chart(by_noise), key="timeline_noise_loss")
        else:
            st.caption("This run's log has no loss by noise level (logs written by earlier versions of the trainer).")
    snapshots = [e.description for e in widgets.checkpoints()[0]
                 if e.description is not None and e.path.parent == entry.path.parent]
    fid = charts.fid_over_training_chart(timeline.fid_over_snapshots(snapshots))
    if fid is not None:
        st.plotly_chart(fid, key="timeline_fid")
