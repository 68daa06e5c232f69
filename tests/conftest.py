import os

import pytest
import torch
from hypothesis import settings

# CI runs the same generated examples every time (no flaky reds); locally they vary.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
