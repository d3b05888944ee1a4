import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data sets (../shared/data beside the checkout, or $DIFFUSION_EXPLORER_DATA)."""
    return Path(os.environ.get("DIFFUSION_EXPLORER_DATA", ROOT.parent / "shared" / "data"))
