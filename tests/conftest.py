import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tests never download


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic demo file in robomimic's layout (6 demos x 20 steps, 3 views of 32 px)."""
    from data import write_synthetic
    return write_synthetic(str(tmp_path_factory.mktemp("data") / "syn.hdf5"), n_demos=6, T=20, image_size=32)
