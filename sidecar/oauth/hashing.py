"""The one hash the OAuth rooms store instead of a secret."""

from __future__ import annotations

import hashlib


def digest(text: str) -> str:
    """SHA-256 in hex. Codes, refresh tokens and client secrets are stored
    hashed (they are 256 random bits: no dictionary to fear), so a store dump
    holds none of them; a user id is hashed where it would be a key."""
    return hashlib.sha256(text.encode()).hexdigest()
