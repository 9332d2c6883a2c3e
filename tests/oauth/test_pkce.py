"""PKCE values are matched whole (RFC 7636 sections 4.1 and 4.2): ``$`` in a
regular expression also matches before a final newline, so a verifier or a
challenge with one must still be refused."""

from __future__ import annotations

import pytest

from sidecar.oauth import pkce

VERIFIER = "a" * 43
CHALLENGE = pkce.s256(VERIFIER)


def test_a_verifier_and_its_challenge_match() -> None:
    assert pkce.valid_challenge(CHALLENGE)
    assert pkce.verify(VERIFIER, CHALLENGE)


@pytest.mark.parametrize("tail", ["\n", "\r\n", " ", "\x00"])
def test_a_verifier_with_anything_after_it_is_refused_even_if_its_challenge_matches(
    tail: str,
) -> None:
    verifier = VERIFIER + tail
    assert not pkce.verify(verifier, pkce.s256(verifier))


@pytest.mark.parametrize("tail", ["\n", "\r\n", " ", "="])
def test_a_challenge_with_anything_after_it_is_refused(tail: str) -> None:
    assert not pkce.valid_challenge(CHALLENGE + tail)


@pytest.mark.parametrize("length", [42, 129])
def test_a_verifier_of_the_wrong_length_is_refused(length: int) -> None:
    verifier = "a" * length
    assert not pkce.verify(verifier, pkce.s256(verifier))
