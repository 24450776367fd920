"""Authentication: bearer tokens, and session cookies with CSRF as the real product issues them.

Sessions are stateless: the cookie carries user and expiry signed with a key derived from the
cluster secret, so a session obtained from one node is accepted by every node.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import NamedTuple, Optional

from cluster.config import NodeConfig, verify_password, verify_token

__all__ = [
    "Authenticator", "LoginThrottle", "RateLimit", "SESSION_SECONDS", "SeIdentity", "Session",
    "cloud_enrolment_for", "enrolment_hash", "new_enrolment_token",
]

SESSION_SECONDS = 8 * 3600


class Session(NamedTuple):
    user: str
    session_id: str
    expires: int


# Service Engine tokens, each good only for the SE routes, bound to one identity:
#   avse1.<se uuid>.<mac>      an SE's own credential (its slice and its status), issued at registration
#   avenrol1.<se name>.<mac>   what the cloud hands an SE it starts: registers that one name, once
#   avenrol2.<random>          an enrolment token an operator made (POST /api/serviceengine/enrolment):
#                              registers one new SE, once, before it expires (the view holds its hash)
SE_CREDENTIAL, CLOUD_ENROLMENT, ISSUED_ENROLMENT = "avse1", "avenrol1", "avenrol2"


class SeIdentity(NamedTuple):
    #: "se" (value: the SE's uuid), "cloud" (value: the SE name), "issued" (value: the token's sha256)
    kind: str
    value: str


def _se_key(cluster_secret: str) -> bytes:
    return hashlib.sha256(b"avictl-se\0" + cluster_secret.encode()).digest()


def cloud_enrolment_for(cluster_secret: str, se_name: str) -> str:
    """What the cloud driver hands the SE ``se_name`` it starts: it registers that name, once."""
    mac = hmac.new(_se_key(cluster_secret), b"enrol\0" + se_name.encode(), hashlib.sha256).hexdigest()
    return f"{CLOUD_ENROLMENT}.{se_name}.{mac}"


def new_enrolment_token() -> tuple[str, str]:
    """A new operator enrolment token and the hash the log keeps of it."""
    token = f"{ISSUED_ENROLMENT}.{secrets.token_urlsafe(32)}"
    return token, enrolment_hash(token)


def enrolment_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        self._key = hashlib.sha256(b"avictl-session\0" + config.cluster_secret.encode()).digest()
        self.internal_token = hashlib.sha256(b"avictl-internal\0" + config.cluster_secret.encode()).hexdigest()
        self._se_key = _se_key(config.cluster_secret)

    def check_credentials(self, username: str, password: Optional[str], token: Optional[str]) -> bool:
        if not hmac.compare_digest(username.encode(), self._config.admin_user.encode()):
            return False
        if password is not None:
            return verify_password(password, self._config.admin_password_hash)
        if token is not None:
            return verify_token(token, self._config.admin_token_hash)
        return False

    def check_bearer(self, token: str) -> Optional[str]:
        if verify_token(token, self._config.admin_token_hash):
            return self._config.admin_user
        return None

    def se_credential(self, se_uuid: str) -> str:
        """The SE ``se_uuid``'s own bearer token: its slice and its status routes, nothing else."""
        mac = hmac.new(self._se_key, b"se\0" + se_uuid.encode(), hashlib.sha256).hexdigest()
        return f"{SE_CREDENTIAL}.{se_uuid}.{mac}"

    def read_se_token(self, token: str) -> Optional[SeIdentity]:
        """Who an SE token names, when its mac holds (an issued enrolment token is checked against the view)."""
        kind, _, rest = token.partition(".")
        if kind == ISSUED_ENROLMENT:
            return SeIdentity("issued", enrolment_hash(token)) if rest else None
        value, _, mac = rest.rpartition(".")
        if kind == SE_CREDENTIAL and value:
            expected = self.se_credential(value)
            return SeIdentity("se", value) if hmac.compare_digest(expected.encode(), token.encode()) else None
        if kind == CLOUD_ENROLMENT and value:
            expected = f"{CLOUD_ENROLMENT}.{value}." + hmac.new(self._se_key, b"enrol\0" + value.encode(), hashlib.sha256).hexdigest()
            return SeIdentity("cloud", value) if hmac.compare_digest(expected.encode(), token.encode()) else None
        return None

    def is_internal(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.internal_token.encode())

    def issue_session(self, username: str, now: Optional[float] = None) -> tuple[str, str]:
        """A new session cookie for ``username`` and its CSRF token. The cookie carries the user,
        the expiry and a random session id (what ``/logout`` ends), signed with the session key."""
        expiry = int((now or time.time()) + SESSION_SECONDS)
        payload = f"{username}:{expiry}:{secrets.token_hex(16)}".encode()
        sig = hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        session = base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + sig
        return session, self.csrf_for(session)

    def csrf_for(self, session: str) -> str:
        return hmac.new(self._key, b"csrf\0" + session.encode(), hashlib.sha256).hexdigest()[:32]

    def check_session(self, session: str, now: Optional[float] = None) -> Optional[Session]:
        """The session a cookie carries when its signature holds and it has not expired (whether it
        was ended by ``/logout`` is the view's to say: ``ConfigView.session_ended``)."""
        try:
            encoded, sig = session.rsplit(".", 1)
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            return None
        expected = hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            return None
        try:
            username, expiry, session_id = payload.decode().rsplit(":", 2)
            expires = int(expiry)
        except (UnicodeDecodeError, ValueError):
            return None
        if expires < (now or time.time()) or not session_id:
            return None
        return Session(username, session_id, expires)


class LoginThrottle:
    """Backoff on failed logins, per source address and per user name. Pure: callers pass ``now``.

    A source gets ``FREE_BY_SOURCE`` wrong guesses, a user name ``FREE_BY_USER`` (more, so one
    guesser cannot lock an operator out as fast); each failure past that doubles the wait before
    the next attempt is even checked, up to ``MAX_WAIT`` seconds. A success clears both; a key
    nobody failed on for ``FORGET_AFTER`` seconds is forgotten. At most ``MAX_KEYS`` keys are kept
    (the oldest go first), so a flood of sources cannot grow memory without bound.
    """

    FREE_BY_SOURCE = 5
    FREE_BY_USER = 20
    MAX_WAIT = 60.0
    FORGET_AFTER = 900.0
    MAX_KEYS = 10_000

    def __init__(self) -> None:
        # key -> (failures, time of the last failure, no attempt before)
        self._keys: dict[tuple[str, str], tuple[int, float, float]] = {}

    def retry_after(self, user: str, source: str, now: float) -> float:
        """Seconds before this user may try from this source again (0: try now)."""
        wait = 0.0
        for key in (("source", source), ("user", user)):
            entry = self._keys.get(key)
            if entry is not None:
                if now - entry[1] > self.FORGET_AFTER:
                    del self._keys[key]
                else:
                    wait = max(wait, entry[2] - now)
        return wait

    def failed(self, user: str, source: str, now: float) -> None:
        for key, free in ((("source", source), self.FREE_BY_SOURCE), (("user", user), self.FREE_BY_USER)):
            failures = self._keys.pop(key, (0, now, now))[0] + 1
            wait = min(self.MAX_WAIT, 2.0 ** (failures - free)) if failures >= free else 0.0
            self._keys[key] = (failures, now, now + wait)
        while len(self._keys) > self.MAX_KEYS:
            del self._keys[next(iter(self._keys))]

    def succeeded(self, user: str, source: str) -> None:
        self._keys.pop(("source", source), None)
        self._keys.pop(("user", user), None)


class RateLimit:
    """A token bucket per key: ``rate`` a second on average, ``burst`` at once. Pure: callers pass ``now``."""

    MAX_KEYS = 10_000

    def __init__(self, rate: float, *, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when last counted)

    def wait(self, key: str, now: float) -> float:
        """0 and one token taken when ``key`` may act now; else the seconds until it may."""
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.MAX_KEYS:
            del self._buckets[next(iter(self._buckets))]
        return (1.0 - tokens) / self.rate
