"""Signing keys: loading, decrypting, publishing and rotating."""

from sidecar.keys.keyset import KeySet, SigningKey, load_keyset

__all__ = ["KeySet", "SigningKey", "load_keyset"]
