"""Personal data masked out of text before it is logged: e-mail addresses, phone numbers, payment card numbers
(Luhn-checked), IBANs (ISO 13616 mod-97), Chinese resident ID numbers (GB 11643 check digit), IP addresses, and API
keys or bearer tokens.

Regular expressions plus checksums, written here because presidio, the library for this, needs a spaCy model that
cannot be installed offline. Numbers that fail their checksum are left alone: a 16-digit order id is not a card.
"""

from __future__ import annotations

import ipaddress
import re

KEY = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}|\bpst_[A-Za-z0-9_-]{16,}|\b(?:sk|pk|api|key|token)[-_][A-Za-z0-9]{16,}")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
CN_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])")
CARD = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}(?![\w])")
CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def cn_id_valid(text: str) -> bool:
    total = sum(int(d) * w for d, w in zip(text[:17], CN_ID_WEIGHTS))
    return "10X98765432"[total % 11] == text[17].upper()


def ip_valid(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def masked(pattern: re.Pattern, label: str, valid=None):
    def replace(text: str) -> str:
        return pattern.sub(lambda m: f"<{label}>" if valid is None or valid(m.group(0)) else m.group(0), text)
    return replace


STEPS = (  # keys and e-mails first (they contain digits), then the checksummed numbers, then what is left
    masked(KEY, "key"),
    masked(EMAIL, "email"),
    masked(IBAN, "iban", iban_valid),
    masked(CN_ID, "id", cn_id_valid),
    masked(CARD, "card", lambda s: luhn_valid(re.sub(r"[ -]", "", s))),
    masked(IPV4, "ip", ip_valid),
    masked(IPV6, "ip", ip_valid),
    masked(PHONE, "phone", lambda s: (8 if s.startswith("+") else 9) <= sum(ch.isdigit() for ch in s) <= 15),  # a date has 8
)


def mask(text: str) -> str:
    """`text` with every piece of personal data above replaced by its kind in angle brackets."""
    for step in STEPS:
        text = step(text)
    return text
