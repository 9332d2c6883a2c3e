"""Picking up `sidecar keys rotate` without a restart.

In generated-key mode the key file is the source of truth; a running sidecar
checks its modification time every few seconds and, when it changed, loads the
keys again and swaps them into the one KeySet every part holds. The new key
signs from then on; older keys stay published until their tokens expire.
"""

from __future__ import annotations

import dataclasses

import structlog

from sidecar.config import Settings
from sidecar.expiring import watch_files
from sidecar.keys.keyset import KeySet, keys_file, load_keyset

log = structlog.get_logger("sidecar.keys")
CHECK_EVERY = 2.0  # seconds


async def watch_key_file(settings: Settings, keyset: KeySet, on_change: object = None) -> None:
    def reload() -> None:
        try:
            fresh = load_keyset(settings)
        except Exception as exc:  # a half-written or broken file: keep the keys we have
            log.warning("signing keys not reloaded", error=str(exc))
            return
        for field in dataclasses.fields(KeySet):
            if field.name != "generated_now":
                setattr(keyset, field.name, getattr(fresh, field.name))
        log.info(
            "signing keys reloaded", signing_kid=keyset.signing.kid, published=len(keyset.published)
        )
        if callable(on_change):
            on_change()

    await watch_files([keys_file(settings)], reload, CHECK_EVERY)
