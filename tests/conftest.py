"""Checks that hold for every test."""

from __future__ import annotations

from typing import Iterator

import pytest

from simulations.local_cluster import LocalCluster


@pytest.fixture(autouse=True)
def _no_internal_errors_in_controller_logs() -> Iterator[None]:
    """A reconcile round that raised or an unhandled API error, logged by any controller a test
    started, fails that test: such a line is a bug even when the test's own assertions pass."""
    yield
    found = [line for cluster in list(LocalCluster.instances) for line in cluster.new_internal_errors()]
    if found:
        pytest.fail("controllers logged internal errors:\n" + "\n".join(found[:10]), pytrace=False)
