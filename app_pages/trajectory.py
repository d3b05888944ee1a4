"""Trajectory: one seed's denoising, computed once and scrubbed step by step from the cache.

Both pictures keep one size and one caption form while scrubbing; time is shown on one scale for
every model (1 the noisiest level, 0 clean: ``schedules.time_fraction``), the model's own time in
the tooltip."""

import streamlit as st

from diffusion_core.images import gif_bytes
from diffusion_core.schedules import describe_time, time_fraction
from explorer_ui import cache, charts, pictures, requests, widgets

SHOWN = 256  # each picture is drawn this wide (the largest whole multiple of the model's size below it)

entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "traj", count=1, ladder=(50, 20, 10))
    sampler = widgets.sampler_inputs("traj", choice)
    seed, _ = widgets.seed_inputs("traj", count=None)
    request = widgets.valid("Recording the trajectory",
                            lambda: requests.trajectory(choice.ref, choice.model, seed, sampler.config()))

with right, widgets.guard("Recording the trajectory"):
    steps, size = request.sampler.num_steps, choice.model.experiment.network.image_size
    if widgets.ready("traj_approved", request, [choice.model], steps):
        with widgets.running("traj_approved", request, steps, "Recording the trajectory") as job:
            traj = cache.trajectory(request, job)  # cached: moving the slider below never re-runs the model
        last = len(traj.pred_x0)  # S steps; index S is the finished sample
        if st.session_state.get("traj_step", last) > last:
            st.session_state["traj_step"] = last
        st.session_state.setdefault("traj_step", last)
        i = st.slider("Step", 0, last, key="traj_step",
                      help=f"0 is pure noise; {last} is the finished sample. Scrubbing reads the cache.")
        a, b = st.columns(2)
        schedule = choice.model.experiment.schedule
        width = max(1, SHOWN // size) * size  # fixed for every step: the pictures never change size
        if i < last:
            widgets.show(traj.x_t[i], f"x_t, input of step {i}", target=SHOWN, where=a, width=width)
            widgets.show(traj.pred_x0[i], f"predicted x0 at step {i}", target=SHOWN, where=b, width=width)
            st.caption(f"Step {i} of {last}: t = {time_fraction(schedule, traj.times[i]):.3f} (1 is pure noise, "
                       f"0 clean), signal rate {traj.signal_rates[i]:.3f}, noise rate {traj.noise_rates[i]:.3f}.",
                       help=describe_time(schedule, traj.times[i]) + ".")
        else:
            widgets.show(traj.x_t[last], f"finished sample after {last} steps", target=SHOWN, where=a,
                         width=width)
            widgets.show(traj.pred_x0[last - 1], f"predicted x0 at the last step ({last - 1})", target=SHOWN,
                         where=b, width=width)
            st.caption(f"Step {last} of {last}: t = 0 (clean), signal rate 1, noise rate 0: the finished sample.",
                       help="Every model's time runs from 1 (its noisiest trained level) to 0 (clean).")
        st.plotly_chart(charts.rates_chart(traj.signal_rates, traj.noise_rates, i), key="traj_rates")
        frames = pictures.trajectory_frames(traj.x_t, traj.pred_x0)
        st.download_button("Download GIF", lambda: gif_bytes(frames, duration_ms=120, scale=max(1, 192 // size)),
                           key="traj_download", on_click="ignore", mime="image/gif",
                           file_name=f"{choice.entry.name}_seed{seed}_{request.sampler.name}{steps}.gif",
                           help="x_t (left) and predicted x0 (right) at every step; made when you click.")
