"""The network lab needs root, iproute2 and nftables: without them its tests skip, saying which is missing."""

from __future__ import annotations

import pytest

from simulations.lab import check_lab_support


def require_lab() -> None:
    problem = check_lab_support()
    if problem is not None:
        pytest.skip(f"the network lab needs root, iproute2 and nftables ('make lab-deps' as root installs them): {problem}")
