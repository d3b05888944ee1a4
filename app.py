"""diffusion-explorer: explore diffusion-model checkpoints visually.

    streamlit run app.py

A thin router: shared settings in the sidebar, then one page file of ``pages/`` per task.
Checkpoints come from ``checkpoints/`` (or ``$DIFFUSION_EXPLORER_CHECKPOINTS``) and any folder
named in the sidebar.
"""

import streamlit as st

from explorer_ui import compute, widgets

st.set_page_config(page_title="diffusion-explorer", page_icon=":material/blur_on:", layout="wide")
compute.configure_torch()

pages = [
    st.Page("pages/experiments.py", title="Experiments", icon=":material/table_chart:", default=True),
    st.Page("pages/sample.py", title="Sample", icon=":material/grid_view:"),
    st.Page("pages/trajectory.py", title="Trajectory", icon=":material/timeline:"),
    st.Page("pages/interpolation.py", title="Interpolation", icon=":material/swap_horiz:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/live.py", title="Live", icon=":material/play_circle:"),
]
page = st.navigation(pages)
widgets.sidebar()
page.run()
