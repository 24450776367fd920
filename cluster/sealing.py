"""Secrets at rest: write-only field values sealed before they enter the log.

A secret (today a vCenter password; soon private keys) is stored in the event log, the Raft
journal and the view snapshots only in sealed form: ``$sealed$1$`` and the URL-safe base64 of an
AES-SIV ciphertext (RFC 5297) under a key derived from the cluster secret, with the object kind
and field path as associated data, so a sealed value opened under another field fails.

AES-SIV is deterministic on purpose: the same secret in the same field seals to the same text,
so re-applying an unchanged object writes nothing (it reveals only that two values are equal).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

__all__ = ["SEALED_PREFIX", "SealError", "Sealer", "is_sealed"]

SEALED_PREFIX = "$sealed$1$"


class SealError(ValueError):
    """A sealed value that does not open with this cluster's key in this field."""


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


class Sealer:
    def __init__(self, cluster_secret: str) -> None:
        key = hashlib.sha512(b"avictl-sealing\0" + cluster_secret.encode()).digest()  # 512 bits: AES-256-SIV
        self._aead = AESSIV(key)

    def seal(self, plain: str, context: str) -> str:
        """``plain`` sealed for the field ``context`` (``<kind>:<field path>``)."""
        sealed = self._aead.encrypt(plain.encode("utf-8"), [context.encode("utf-8")])
        return SEALED_PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def unseal(self, sealed: str, context: str) -> str:
        """The secret in ``sealed`` (for the field ``context``); SealError when it does not open."""
        if not is_sealed(sealed):
            raise SealError(f"{context}: not a sealed value")
        body = sealed[len(SEALED_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return self._aead.decrypt(raw, [context.encode("utf-8")]).decode("utf-8")
        except (InvalidTag, ValueError) as exc:
            raise SealError(f"{context}: the sealed value does not open with this cluster's key") from exc
