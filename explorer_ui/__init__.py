"""Helpers of the Streamlit app (``app.py`` and ``app_pages/``).

Map: ``catalog`` finds checkpoints and reads their descriptions and logs (no streamlit);
``plans`` holds the limits and the model-size-dependent defaults (no streamlit); ``charts``
builds plotly figures from plain data (no streamlit); ``neighbours`` finds a sample's nearest
training images in FID-Inception feature space (no streamlit); ``requests`` holds what a page asks
for, as frozen records validated once (no streamlit); ``compute`` configures torch threads and
owns the inference locks (taken per sampling step), the per-request compute budget and the
measured speed that time estimates use (no streamlit); ``cache`` is the one place with ``st.cache_resource`` (models) and
``st.cache_data`` (arrays, keyed on the requests); ``widgets`` holds the sidebar, pickers, the
inputs that end in a request, image display and the error guard that every page action runs under;
``settings`` reads the switches an operator sets in the environment (no streamlit).
``shared`` keeps the settings pages share (checkpoint, sampler, steps, seed) and mirrors them in the URL.

Nothing here is imported before ``app.py`` has drawn the page list and title (see ``app.py``).
"""

from diffusion_core.threads import apply_thread_policy as _apply_thread_policy

# Before anything here imports torch: idle OpenMP threads sleep instead of spinning (the CLI's
# policy too; see diffusion_core/threads.py). An explicit setting in the environment wins.
_apply_thread_policy()
