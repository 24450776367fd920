"""What a Service Engine serves: its slice of the config, as frozen data.

The controller computes a slice from its views (the virtual services placed on one SE, with their
pools and monitors) and sends it as JSON; ``SliceConfig.from_dict`` validates it and raises
``SliceError`` naming the field, which the SE reports as a NACK while it keeps its last good
config. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

import attrs

__all__ = [
    "ALGORITHMS",
    "HA_MODES",
    "HttpLimits",
    "MonitorConfig",
    "PlacementConfig",
    "PoolConfig",
    "ServerConfig",
    "SliceConfig",
    "SliceError",
    "VirtualServiceConfig",
    "read_slice",
]

ALGORITHMS = ("LB_ALGORITHM_ROUND_ROBIN", "LB_ALGORITHM_LEAST_CONNECTIONS", "LB_ALGORITHM_CONSISTENT_HASH")
MONITOR_TYPES = ("HEALTH_MONITOR_TCP", "HEALTH_MONITOR_HTTP", "HEALTH_MONITOR_PING")
HA_MODES = ("HA_MODE_SHARED", "HA_MODE_SHARED_PAIR", "HA_MODE_LEGACY_ACTIVE_STANDBY")


class SliceError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _get(doc: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = attrs.NOTHING) -> Any:
    if key not in doc or doc[key] is None:
        if default is attrs.NOTHING:
            raise SliceError(f"{path}{key}", "is required")
        return default
    value = doc[key]
    if isinstance(value, bool) and kind in (int, float):
        raise SliceError(f"{path}{key}", f"must be {kind.__name__}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SliceError(f"{path}{key}", f"must be {names}")
    return value


def _ip(value: str, field: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise SliceError(field, f"{value!r} is not an IPv4 address") from None


def _port(value: int, field: str) -> int:
    if not 1 <= value <= 65535:
        raise SliceError(field, "must be a port, 1-65535")
    return value


@attrs.frozen
class ServerConfig:
    ip: str
    port: int
    ratio: int = 1
    enabled: bool = True

    @property
    def key(self) -> str:
        return f"{self.ip}:{self.port}"


@attrs.frozen
class MonitorConfig:
    name: str
    type: str
    send_interval: float
    receive_timeout: float
    successful_checks: int
    failed_checks: int
    http_request: str = "GET / HTTP/1.0"
    http_response_codes: tuple[str, ...] = ("HTTP_2XX",)


@attrs.frozen
class PoolConfig:
    uuid: str
    name: str
    lb_algorithm: str
    servers: tuple[ServerConfig, ...]
    monitors: tuple[MonitorConfig, ...] = ()
    graceful_disable_timeout: float = 60.0


@attrs.frozen
class PlacementConfig:
    """Where the controller placed a VS: its SEs by name, primary (active) first, and the epoch.

    ``epoch`` is the log revision of the VS's last placement; it only grows.
    """

    ha_mode: str
    epoch: int
    ses: tuple[str, ...]
    #: seconds established connections may finish on this SE once the VS leaves it (scale-in, migrate)
    scalein_timeout: Optional[float] = None


@attrs.frozen
class HttpLimits:
    """What an HTTP VS accepts of a client's request head, in bytes and seconds (the real product's
    ``http_profile`` fields, converted by the controller; the defaults are that profile's).

    ``max_header_size``: one header field (name and value), and the request line, as nginx's
    ``large_client_header_buffers`` bounds both (``client_max_header_size``). ``max_request_size``:
    the whole head (``client_max_request_size``; a smaller value than ``max_header_size`` counts as
    that, as the product documents). ``max_header_count``: fields in the head, 0 for no limit.
    ``header_timeout``: from the first read of a head until it is complete
    (``client_header_timeout``).
    """

    max_header_size: int = 12 * 1024
    max_request_size: int = 48 * 1024
    max_header_count: int = 256
    header_timeout: float = 10.0

    @property
    def head_size(self) -> int:
        """The whole head's limit: ``max_request_size`` unless ``max_header_size`` is larger."""
        return max(self.max_request_size, self.max_header_size)


@attrs.frozen
class VirtualServiceConfig:
    uuid: str
    name: str
    vip: str
    ports: tuple[int, ...]
    application: str  # "http" (L7) or "l4"
    pool: Optional[PoolConfig]
    enabled: bool = True
    placement: Optional[PlacementConfig] = None
    http_limits: HttpLimits = HttpLimits()

    @property
    def listeners(self) -> list[tuple[str, int]]:
        return [(self.vip, port) for port in self.ports]


@attrs.frozen
class SliceConfig:
    revision: int
    se_name: str
    virtual_services: tuple[VirtualServiceConfig, ...]

    @classmethod
    def from_dict(cls, doc: Any) -> "SliceConfig":
        if not isinstance(doc, dict):
            raise SliceError("slice", "must be an object")
        revision = _get(doc, "revision", "", int)
        se_name = _get(doc, "se_name", "", str)
        vss = []
        for i, raw in enumerate(_get(doc, "virtual_services", "", list)):
            vss.append(_vs(raw, f"virtual_services[{i}]."))
        seen: dict[tuple[str, int], str] = {}
        for vs in vss:
            for listener in vs.listeners:
                if listener in seen:
                    raise SliceError(f"virtual_services[{vs.name}].services", f"{listener[0]}:{listener[1]} is also used by {seen[listener]}")
                seen[listener] = vs.name
        return cls(revision=revision, se_name=se_name, virtual_services=tuple(vss))


def read_slice(doc: Any, previous: Optional[SliceConfig] = None) -> tuple[SliceConfig, dict[str, str]]:
    """A slice read per virtual service, as xDS applies per resource: ``(what to serve, {vs name:
    why it is not served as sent})``.

    A VS that does not validate, or that would listen where another VS of the slice already does,
    is refused alone: the SE keeps serving its last good version (from ``previous``), or does not
    serve it at all; every other VS is served as sent. A VS served before claims its listeners
    first. Only a slice whose own fields are wrong (revision, se_name, the list itself) raises
    ``SliceError``: that is a NACK of the whole slice, and the last good slice stays.
    """
    if not isinstance(doc, dict):
        raise SliceError("slice", "must be an object")
    revision = _get(doc, "revision", "", int)
    se_name = _get(doc, "se_name", "", str)
    raws = _get(doc, "virtual_services", "", list)
    last_good = {vs.uuid: vs for vs in previous.virtual_services} if previous is not None else {}
    refused: dict[str, str] = {}
    candidates: list[tuple[int, VirtualServiceConfig, Optional[VirtualServiceConfig]]] = []  # (order, as sent, last good)
    for i, raw in enumerate(raws):
        given = raw.get("name") if isinstance(raw, dict) else None
        name = given if isinstance(given, str) else f"virtual_services[{i}]"
        uuid = raw.get("uuid") if isinstance(raw, dict) else None
        try:
            vs = _vs(raw, f"virtual_services[{i}].")
        except SliceError as exc:
            refused[name] = str(exc)
            kept = last_good.get(uuid) if isinstance(uuid, str) else None
            if kept is not None:
                candidates.append((i, kept, None))
            continue
        candidates.append((i, vs, last_good.get(vs.uuid)))
    # Listeners go to VSs served before first (so a newcomer cannot take a VS's port away), then in slice order.
    candidates.sort(key=lambda c: (c[1].uuid not in last_good, c[0]))
    claimed: dict[tuple[str, int], str] = {}
    served: list[tuple[int, VirtualServiceConfig]] = []
    for order, vs, fallback in candidates:
        for version in (vs, fallback):
            if version is None:
                continue
            clash = next((listener for listener in version.listeners if listener in claimed), None)
            if clash is None:
                for listener in version.listeners:
                    claimed[listener] = version.name
                served.append((order, version))
                break
            refused.setdefault(vs.name, f"{clash[0]}:{clash[1]} is also served by {claimed[clash]}")
    served.sort(key=lambda item: item[0])
    return SliceConfig(revision=revision, se_name=se_name, virtual_services=tuple(vs for _order, vs in served)), refused


def _vs(raw: Any, path: str) -> VirtualServiceConfig:
    if not isinstance(raw, dict):
        raise SliceError(path.rstrip("."), "must be an object")
    application = _get(raw, "application", path, str)
    if application not in ("http", "l4"):
        raise SliceError(f"{path}application", "must be http or l4")
    ports = tuple(_port(_get({"p": p}, "p", f"{path}ports", int), f"{path}ports") for p in _get(raw, "ports", path, list))
    if not ports:
        raise SliceError(f"{path}ports", "needs at least one port")
    pool_doc = raw.get("pool")
    return VirtualServiceConfig(
        uuid=_get(raw, "uuid", path, str),
        name=_get(raw, "name", path, str),
        vip=_ip(_get(raw, "vip", path, str), f"{path}vip"),
        ports=ports,
        application=application,
        pool=None if pool_doc is None else _pool(pool_doc, f"{path}pool."),
        enabled=_get(raw, "enabled", path, bool, True),
        placement=None if raw.get("placement") is None else _placement(raw["placement"], f"{path}placement."),
        http_limits=_http_limits(raw.get("http_limits"), f"{path}http_limits."),
    )


_DEFAULT_LIMITS = HttpLimits()


def _http_limits(raw: Any, path: str) -> HttpLimits:
    """Absent (a controller older than the limits) means the defaults."""
    if raw is None:
        return _DEFAULT_LIMITS
    if not isinstance(raw, dict):
        raise SliceError(path.rstrip("."), "must be an object")
    sizes = {}
    for key, lo in (("max_header_size", 1), ("max_request_size", 1), ("max_header_count", 0)):
        value = _get(raw, key, path, int, getattr(_DEFAULT_LIMITS, key))
        if value < lo:
            raise SliceError(f"{path}{key}", f"must be at least {lo}")
        sizes[key] = value
    timeout = float(_get(raw, "header_timeout", path, (int, float), _DEFAULT_LIMITS.header_timeout))
    if not timeout > 0:
        raise SliceError(f"{path}header_timeout", "must be positive")
    return HttpLimits(header_timeout=timeout, **sizes)


def _placement(raw: Any, path: str) -> PlacementConfig:
    if not isinstance(raw, dict):
        raise SliceError(path.rstrip("."), "must be an object")
    mode = _get(raw, "ha_mode", path, str, "HA_MODE_SHARED")
    if mode not in HA_MODES:
        raise SliceError(f"{path}ha_mode", f"unknown HA mode {mode!r}; this SE knows {', '.join(HA_MODES)}")
    epoch = _get(raw, "epoch", path, int, 0)
    if epoch < 0:
        raise SliceError(f"{path}epoch", "must not be negative")
    ses = []
    for i, name in enumerate(_get(raw, "ses", path, list, [])):
        if not isinstance(name, str) or not name:
            raise SliceError(f"{path}ses[{i}]", "must be a non-empty string")
        if name in ses:
            raise SliceError(f"{path}ses[{i}]", f"{name!r} is listed twice")
        ses.append(name)
    scalein = _get(raw, "scalein_timeout", path, (int, float), None) if raw.get("scalein_timeout") is not None else None
    if scalein is not None and scalein < 0:
        raise SliceError(f"{path}scalein_timeout", "must not be negative")
    return PlacementConfig(ha_mode=mode, epoch=epoch, ses=tuple(ses), scalein_timeout=None if scalein is None else float(scalein))


def _pool(raw: Any, path: str) -> PoolConfig:
    if not isinstance(raw, dict):
        raise SliceError(path.rstrip("."), "must be an object")
    algorithm = _get(raw, "lb_algorithm", path, str)
    if algorithm not in ALGORITHMS:
        raise SliceError(f"{path}lb_algorithm", f"unknown algorithm {algorithm!r}; this SE knows {', '.join(ALGORITHMS)}")
    servers = []
    for i, s in enumerate(_get(raw, "servers", path, list)):
        sp = f"{path}servers[{i}]."
        if not isinstance(s, dict):
            raise SliceError(sp.rstrip("."), "must be an object")
        ratio = _get(s, "ratio", sp, int, 1)
        if not 1 <= ratio <= 20:
            raise SliceError(f"{sp}ratio", "must be 1-20")
        servers.append(ServerConfig(_ip(_get(s, "ip", sp, str), f"{sp}ip"), _port(_get(s, "port", sp, int), f"{sp}port"), ratio, _get(s, "enabled", sp, bool, True)))
    monitors = []
    for i, m in enumerate(_get(raw, "monitors", path, list, [])):
        mp = f"{path}monitors[{i}]."
        if not isinstance(m, dict):
            raise SliceError(mp.rstrip("."), "must be an object")
        mtype = _get(m, "type", mp, str)
        if mtype not in MONITOR_TYPES:
            raise SliceError(f"{mp}type", f"unknown monitor type {mtype!r}")
        monitors.append(
            MonitorConfig(
                name=_get(m, "name", mp, str),
                type=mtype,
                send_interval=float(_get(m, "send_interval", mp, (int, float))),
                receive_timeout=float(_get(m, "receive_timeout", mp, (int, float))),
                successful_checks=_get(m, "successful_checks", mp, int),
                failed_checks=_get(m, "failed_checks", mp, int),
                http_request=_get(m, "http_request", mp, str, "GET / HTTP/1.0"),
                http_response_codes=tuple(_get(m, "http_response_codes", mp, list, ["HTTP_2XX"])),
            )
        )
    return PoolConfig(
        uuid=_get(raw, "uuid", path, str),
        name=_get(raw, "name", path, str),
        lb_algorithm=algorithm,
        servers=tuple(servers),
        monitors=tuple(monitors),
        graceful_disable_timeout=float(_get(raw, "graceful_disable_timeout", path, (int, float), 60.0)),
    )
