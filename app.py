"""diffusion-explorer: explore diffusion-model checkpoints visually.

    streamlit run app.py

A thin router. First the page list and the page's title, before anything imports torch, so that a
visitor sees the app at once, whatever the load of the machine; then torch and the core, the
settings in the sidebar, those a shared link carries (``explorer_ui/shared.py``), and the page:
one file of ``app_pages/`` per task, titled here from its ``st.Page`` (Home by the app's name).
(The folder is not called ``pages/``: Streamlit would list the files of a ``pages/`` folder by
name as a page menu of its own until this script's ``st.navigation`` runs.)

Checkpoints come from ``checkpoints/`` (or ``$DIFFUSION_EXPLORER_CHECKPOINTS``) and any folder
named in the sidebar.
"""

import streamlit as st

st.set_page_config(page_title="diffusion-explorer", page_icon=":material/blur_on:", layout="wide")
page = st.navigation([
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/experiments.py", title="Experiments", icon=":material/table_chart:"),
    st.Page("app_pages/sample.py", title="Sample", icon=":material/grid_view:"),
    st.Page("app_pages/trajectory.py", title="Trajectory", icon=":material/timeline:"),
    st.Page("app_pages/interpolation.py", title="Interpolation", icon=":material/swap_horiz:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("app_pages/live.py", title="Live", icon=":material/play_circle:"),
    st.Page("app_pages/xy_grid.py", title="XY grid", icon=":material/grid_on:"),
    st.Page("app_pages/branch.py", title="Branch", icon=":material/call_split:"),
    st.Page("app_pages/neighbourhood.py", title="Neighbourhood", icon=":material/scatter_plot:"),
    st.Page("app_pages/edit.py", title="Edit", icon=":material/auto_fix_high:"),
    st.Page("app_pages/geometry.py", title="Geometry", icon=":material/insights:"),
    st.Page("app_pages/inversion.py", title="Inversion", icon=":material/undo:"),
    st.Page("app_pages/timeline.py", title="Timeline", icon=":material/movie:"),
], expanded=True)  # every page listed: collapsed, Streamlit would hide the last ones behind "View more"
st.title("diffusion-explorer" if page.title == "Home" else page.title)

# Only now the heavy part: torch and the core (explorer_ui's __init__ sets torch's thread policy first).
from explorer_ui import compute, shared, widgets  # noqa: E402

compute.configure_torch()
widgets.sidebar()
shared.read_url(lambda: [e.label for e in widgets.checkpoints()[0] if e.usable])  # a shared link's settings, once
shared.write_url()
link_notes = st.empty()  # filled after the page, which may have replaced the link's settings
try:
    page.run()
finally:
    shared.show_notes(link_notes)
