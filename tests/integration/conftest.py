"""The Ray each integration module shares among its tests."""

from __future__ import annotations

import pytest

from raytrain_orch.core.config import RayConfig
from raytrain_orch.ray import session


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the module's tests (a module may override it, as
    test_admission does for logical GPUs)."""
    session.connect(RayConfig(num_cpus=2))
    yield
    session.disconnect()
