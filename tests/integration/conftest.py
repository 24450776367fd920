from __future__ import annotations

from typing import Iterator

import pytest

from simulations.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three real controller processes shared by the tests of one module."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster3"), nodes=3)
    try:
        cluster.start_all(timeout=30)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def fresh_cluster3(tmp_path) -> Iterator[LocalCluster]:  # type: ignore[no-untyped-def]
    """Three real controller processes for one test that kills or restarts them."""
    cluster = LocalCluster(tmp_path / "cluster", nodes=3)
    try:
        cluster.start_all(timeout=30)
        yield cluster
    finally:
        cluster.close()
