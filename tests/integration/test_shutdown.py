"""A controller stops promptly on SIGTERM, even with a watcher connected."""

from __future__ import annotations

import http.client
import signal
import time
import urllib.parse
from pathlib import Path

import pytest

from simulations.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


def test_sigterm_with_an_open_watch_stops_within_five_seconds(tmp_path: Path) -> None:
    """An open /api/watch stream does not hold a stopping node up."""
    with LocalCluster(tmp_path, nodes=1) as cluster:
        cluster.start_all()
        url = urllib.parse.urlsplit(cluster.api("n1"))
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", "/api/watch?since=1", headers={"Authorization": f"Bearer {cluster.token}"})
        assert conn.getresponse().status == 200
        started = time.monotonic()
        cluster.kill("n1", signal.SIGTERM)
        stopped_after = time.monotonic() - started
        assert cluster.procs["n1"].returncode == 0
        assert stopped_after < 5.0
        conn.close()
