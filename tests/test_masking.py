"""The log masker: every kind of personal data replaced, look-alikes that fail their checksum left alone."""

from __future__ import annotations

import pytest

from peftstd.serve.masking import cn_id_valid, iban_valid, luhn_valid, mask


@pytest.mark.parametrize(("text", "expected"), [
    ("write to jane.doe+news@example.co.uk today", "write to <email> today"),
    ("call +1 (415) 555-2671 now", "call <phone> now"),
    ("or 020 7946 0958", "or <phone>"),
    ("card 4111 1111 1111 1111 ok", "card <card> ok"),
    ("card 5500-0000-0000-0004", "card <card>"),
    ("IBAN GB82 WEST 1234 5698 7654 32.", "IBAN <iban>."),
    ("iban DE89370400440532013000", "iban <iban>"),
    ("id 11010519491231002X here", "id <id> here"),
    ("from 192.168.1.20 and 2001:db8::ff00:42:8329", "from <ip> and <ip>"),
    ("Authorization: Bearer abcdefghijklmnop123", "Authorization: <key>"),
    ("key pst_abcdefghijklmnopqrstu and sk-abcdefghijklmnopqrstuvwx", "key <key> and <key>"),
])
def test_each_kind_is_masked(text, expected):
    assert mask(text) == expected


@pytest.mark.parametrize("text", [
    "the movie from 2026 was great, 10/10, 4.5 out of 5",
    "order 12345 shipped on 2026-11-30",
    "card-like 4111 1111 1111 1112 fails Luhn",
    "GB82WEST12345698765433 fails mod 97",
    "110105194912310021 has the wrong check digit",
    "999.1.1.1 is no address",
    "a bearer of bad news",
])
def test_look_alikes_are_left_alone(text):
    assert mask(text) == text


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82WEST12345698765433")
    assert cn_id_valid("11010519491231002X") and not cn_id_valid("110105194912310021")
