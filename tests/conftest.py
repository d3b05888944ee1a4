import os
import sys
from pathlib import Path

# idle OpenMP threads sleep instead of spinning, as in the CLI and the app (diffusion_core/threads.py)
from diffusion_core.threads import apply_thread_policy  # noqa: E402 (imports nothing heavy)

apply_thread_policy()
# Triton kernels (diffusion_core/fused/conv.py) run under Triton's interpreter in the tests: CI
# has no GPU. Triton reads this when it is first imported, so it is set before anything imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data sets (../shared/data beside the checkout, or $DIFFUSION_EXPLORER_DATA)."""
    return Path(os.environ.get("DIFFUSION_EXPLORER_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def no_speed_from_earlier_tests():
    """The app estimates time from the speed this process measured; a speed left by an earlier
    test (on a busy machine) would gate a later test's action behind its Generate button. Every
    test starts from the calibrated constant."""
    compute = sys.modules.get("explorer_ui.compute")
    if compute is not None:
        compute._speed.clear()
    yield


@pytest.fixture(autouse=True)
def keep_main_module():
    """AppTest leaves the app's script as ``sys.modules["__main__"]``, which processes spawned by a
    later test (torch.multiprocessing) would then run; the real one is put back after every test."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
