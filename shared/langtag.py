"""Language tags as CAP carries them: `xs:language` (BCP 47), matched by RFC 4647 lookup. Pure.

A tag is stored exactly as sent (`es-419`, `zh-Hant`, `en-us`); matching never changes it.
"""
from __future__ import annotations

from collections.abc import Iterable

# The lexical space of xs:language (XML Schema Part 2, 3.3.3): what CAP 1.2 <language> accepts.
PATTERN = r"^[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*$"


def lookup(available: Iterable[str], wanted: str | None) -> str | None:
    """Return the tag of `available` that RFC 4647 lookup (section 3.4) picks for the range `wanted`.

    Case-insensitive. The range is shortened from the end, one subtag at a time (a single-letter
    subtag such as the private-use `x` goes with the subtag after it), until one tag equals it:
    `ru-RU` finds `ru`, `zh-Hant-TW` finds `zh-Hant`, `es-419` finds `es`. A range never matches a
    longer tag (`ru` does not find `ru-RU`). None when nothing matches or `wanted` is empty or `*`:
    the caller then uses its default. The first of equal tags wins, in `available`'s order.
    """
    tags: dict[str, str] = {}
    for tag in available:
        tags.setdefault(tag.lower(), tag)
    subtags = (wanted or "").lower().split("-")
    while subtags and subtags != ["*"] and all(subtags):
        found = tags.get("-".join(subtags))
        if found is not None:
            return found
        subtags.pop()
        if len(subtags) >= 2 and len(subtags[-1]) == 1:
            subtags.pop()
    return None
