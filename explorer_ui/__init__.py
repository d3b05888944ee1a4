"""Helpers of the Streamlit app (``app.py`` and ``app_pages/``).

Map: ``catalog`` finds checkpoints and reads their descriptions and logs (no streamlit);
``plans`` holds the limits and the model-size-dependent defaults (no streamlit); ``charts``
builds plotly figures from plain data (no streamlit); ``neighbours`` finds a sample's nearest
training images in FID-Inception feature space (no streamlit); ``requests`` holds what a page asks
for, as frozen records validated once (no streamlit); ``compute`` configures torch threads and
owns the inference locks; ``cache`` is the one place with ``st.cache_resource`` (models) and
``st.cache_data`` (arrays, keyed on the requests); ``widgets`` holds the sidebar, pickers, the
inputs that end in a request, image display and the error guard that every page action runs under;
``shared`` keeps the settings pages share (checkpoint, sampler, steps, seed) and mirrors them in the URL.

Nothing here is imported before ``app.py`` has drawn the page list and title (see ``app.py``).
"""

import os as _os

# Before anything here imports torch (and with it OpenMP, which reads this once, at load): let
# idle OpenMP threads sleep instead of spinning. On a CPU shared with other sessions or other
# processes, spinning threads of a 2-thread torch pool can make each step 10-20x slower; sleeping
# ones cost next to nothing when the machine is idle. An explicit setting in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
