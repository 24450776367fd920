"""Tests of avictl.aliases: the CLI's short kind names and values expand to wire values."""

from __future__ import annotations

from typing import Any

import pytest

from avictl.aliases import CLI_ALIASES, expand_alias
from cluster.schema import KINDS


@pytest.mark.parametrize(
    ("kind", "field", "value", "expected"),
    [
        ("pool", "lb_algorithm", "round_robin", "LB_ALGORITHM_ROUND_ROBIN"),
        ("pool", "lb_algorithm", "least_connections", "LB_ALGORITHM_LEAST_CONNECTIONS"),
        ("pool", "lb_algorithm", "consistent-hash", "LB_ALGORITHM_CONSISTENT_HASH"),
        ("pool", "lb_algorithm", "LB_ALGORITHM_ROUND_ROBIN", "LB_ALGORITHM_ROUND_ROBIN"),
        ("segroup", "ha_mode", "active_standby", "HA_MODE_LEGACY_ACTIVE_STANDBY"),
        ("segroup", "ha_mode", "active_active", "HA_MODE_SHARED_PAIR"),
        ("segroup", "ha_mode", "n_plus_m", "HA_MODE_SHARED"),
        ("hm", "type", "tcp", "HEALTH_MONITOR_TCP"),
        ("hm", "type", "HTTP", "HEALTH_MONITOR_HTTP"),
        ("hm", "type", "ping", "HEALTH_MONITOR_PING"),
        ("hm", "http_monitor.http_response_code", "2xx,3xx", ["HTTP_2XX", "HTTP_3XX"]),
        ("se", "enable_state", "disabled_for_placement", "SE_STATE_DISABLED_FOR_PLACEMENT"),
        ("cloud", "vcenter_configuration.privilege", "read", "READ_ACCESS"),
        ("segroup", "auto_rebalance_criteria", "cpu,open_conns", ["SE_AUTO_REBALANCE_CPU", "SE_AUTO_REBALANCE_OPEN_CONNS"]),
        ("vs", "application_profile_name", "l4", "System-L4-Application"),
        ("vs", "enabled", "false", False),
        ("pool", "servers[0].ratio", "5", 5),
        ("pool", "lb_algorithm", "fastest", "fastest"),
        ("pool", "no_such_field", "x", "x"),
    ],
)
def test_expand_alias(kind: str, field: str, value: Any, expected: Any) -> None:
    """CLI shorthands expand to wire values; unknown ones pass through for normalize to report."""
    assert expected == expand_alias(kind, field, value)


def test_cli_kind_aliases() -> None:
    """The CLI's short kind names map to API kinds that exist."""
    assert {"vs": "virtualservice", "hm": "healthmonitor", "segroup": "serviceenginegroup", "se": "serviceengine"}.items() <= (
        CLI_ALIASES.items())
    assert set(CLI_ALIASES.values()) <= set(KINDS)
