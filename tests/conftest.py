import os

import pytest
import torch
from hypothesis import settings

# specs compile their loops in the background by default (inference.compile: auto); the suite
# runs eagerly unless a test asks for a compiled loop (tests/solver/test_aot.py)
os.environ.setdefault("PCGRAPH_COMPILE", "0")

# CI runs the same generated examples every time (no flaky reds); locally they vary.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """Programs compiled ahead of time go to a folder of this session, not the user's cache."""
    os.environ["PCGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("aot"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need a CUDA device: skipped (not failed) without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
