"""Signing keys: loading, decrypting, publishing and rotating."""

from sidecar.keys.keyset import KeyError_, KeySet, SigningKey, load_keyset

__all__ = ["KeyError_", "KeySet", "SigningKey", "load_keyset"]
