"""Privacy rules: what must never leave the cabinet from streams that observe people.

A stream rule may say ``privacy = "count"`` or ``privacy = "strict"``:

``count`` (presence, occupancy, Wi-Fi/Bluetooth probe counters)
    Raw events never leave: each event, whatever its value, only adds one to the count of
    its window, sent as ``<name>/count`` (window from the rule's ``aggregate.window``, else
    :data:`DEFAULT_COUNT_WINDOW`). Values are not kept, not even in memory. Events whose
    value looks like an identifier (below) are still counted as events, and also counted
    as ``identifiers`` so the operator learns that a source sends them.

``strict`` (any stream that might carry an identifier)
    The stream's other rules (deadband, aggregate) apply, but a record whose value looks
    like an identifier is refused and counted, never stored.

Streams without one of these markers are not inspected (the check costs a regex search;
most streams are meter numbers). A value "looks like an identifier" when it is:

* bytes of any kind: raw captures (images, audio, radio frames) are refused whole;
* text longer than :data:`MAX_TEXT` characters: free text can carry anything, and a
  privacy stream carries states and counts, not prose;
* text holding a hardware address: six or eight hex octets separated by ``:`` or ``-``
  (MAC-48, Bluetooth BD_ADDR, EUI-64) or three dotted groups of four hex digits;
* text holding a run of 12 or more hex digits, at least one a letter: a bare MAC or
  EUI-64, a UUID's tail, a hash of an address (hashing a MAC pseudonymises it, it does not
  anonymise it); a run of decimal digits only falls under the next rule;
* text holding 9 or more digits, each optionally separated from the next by one space, dot
  or dash: IMSI and IMEI (15), ICCID (19-20), phone numbers (``06 12 34 56 78``), card
  numbers, IPv4 addresses of at least 9 digits;
* text holding an e-mail address.

False positives are possible on purpose (a long timestamp string has 9+ digits): they are
refused and counted, so they show in the health state instead of leaking silently.
Numbers and booleans never match: a count or a level identifies no one.
"""

from __future__ import annotations

import re

from ..model import Value

DEFAULT_COUNT_WINDOW = 900  # 15 min: coarse enough that one count rarely pins one passer-by
MAX_TEXT = 64

_ADDRESS = re.compile(
    r"[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}"
)
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{12,}")
_HEX_LETTER = re.compile(r"[A-Fa-f]")
_DIGITS = re.compile(r"\d(?:[ .\-]?\d){8}")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")


def identifier_kind(value: Value) -> str | None:
    """Why ``value`` may identify a person or a device (``bytes``, ``text``, ``address``,
    ``hex``, ``digits``, ``email``), or None if it does not look like an identifier."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if not isinstance(value, str):
        return None
    if len(value) > MAX_TEXT:
        return "text"
    if _ADDRESS.search(value):
        return "address"
    # A run of digits only is reported as "digits" below (an IMSI is not hex to anyone).
    if any(_HEX_LETTER.search(m[0]) for m in _HEX_RUN.finditer(value)):
        return "hex"
    if _DIGITS.search(value):
        return "digits"
    if _EMAIL.search(value):
        return "email"
    return None


__all__ = ["DEFAULT_COUNT_WINDOW", "MAX_TEXT", "identifier_kind"]
