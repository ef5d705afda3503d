"""BCP 47 tags as CAP's xs:language allows them, and RFC 4647 lookup over them."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.langtag import PATTERN, lookup

VALID = ["ru", "en-US", "en-us", "es-419", "zh-TW", "zh-tw", "zh-Hant", "zh-Hant-TW", "fil", "uz-Latn-UZ", "de-CH-1901",
         "sl-rozaj-biske", "x-private", "i-klingon", "en-a-bbb-x-a-ccc", "abcdefgh"]
INVALID = ["", "en_US", "en-", "-en", "en--us", "abcdefghi", "en-US-abcdefghi", "1en", "ru RU", "ру", "en-US\n"]


@pytest.mark.parametrize("tag", VALID)
def test_xs_language_tags_are_accepted(tag):
    assert re.fullmatch(PATTERN, tag)


@pytest.mark.parametrize("tag", INVALID)
def test_what_xs_language_refuses_is_refused(tag):
    assert not re.fullmatch(PATTERN.removesuffix("$") + r"\Z", tag)


@pytest.mark.parametrize("available, wanted, found", [
    (["ru", "en"], "ru-RU", "ru"),
    (["ru", "en"], "RU-ru", "ru"),
    (["ru-RU", "en"], "ru", None),  # a range never matches a longer tag
    (["en-US", "en"], "en-us", "en-US"),
    (["es", "en"], "es-419", "es"),
    (["zh-Hant", "zh"], "zh-Hant-TW", "zh-Hant"),
    (["zh-hant", "zh"], "ZH-HANT-tw", "zh-hant"),
    (["zh"], "zh-Hant-CN-x-private1-private2", "zh"),
    (["zh-Hant-CN"], "zh-Hant-CN-x-private1-private2", "zh-Hant-CN"),
    (["zh-Hant-CN-x-private1"], "zh-Hant-CN-x-private1-private2", "zh-Hant-CN-x-private1"),
    (["fil"], "fil-PH", "fil"),
    (["ru"], "uk", None),
    (["ru"], "*", None),
    (["ru"], "", None),
    (["ru"], None, None),
    (["ru"], "ru--RU", None),
    ([], "ru", None),
    (["EN", "en"], "en-GB", "EN"),  # equal tags: the first wins
])
def test_lookup_examples(available, wanted, found):
    assert lookup(available, wanted) == found


subtag = st.from_regex(r"[a-zA-Z0-9]{1,8}", fullmatch=True)
tag = st.builds(lambda first, rest: "-".join([first, *rest]), st.from_regex(r"[a-zA-Z]{2,8}", fullmatch=True),
                st.lists(subtag, max_size=4))


def _is_prefix(found: str, wanted: str) -> bool:
    f, w = found.lower().split("-"), wanted.lower().split("-")
    return w[: len(f)] == f


@given(st.lists(tag, max_size=6), tag)
def test_lookup_returns_an_available_tag_that_prefixes_the_range(available, wanted):
    found = lookup(available, wanted)
    assert found is None or (found in available and _is_prefix(found, wanted))


@given(st.lists(tag, max_size=6), tag)
def test_lookup_ignores_case_and_prefers_the_longest_match(available, wanted):
    found = lookup(available, wanted)
    assert lookup([t.swapcase() for t in available], wanted.upper()) == (found and found.swapcase())
    longer = [t for t in available if _is_prefix(t, wanted) and len(t) > len(found or "")]
    # only a range ending in a singleton's subtag can skip a prefix (RFC 4647 drops the singleton too)
    assert all(len(t.split("-")[-1]) == 1 for t in longer)


@given(tag, st.lists(subtag, max_size=3))
def test_a_tag_is_found_by_itself_and_by_any_longer_range(t, more):
    assert lookup([t], t) == t
    if not any(len(s) == 1 for s in [t.split("-")[-1], *more][: len(more)]):  # a singleton goes with what follows
        assert lookup(["xx-never", t], "-".join([t, *more])) == t
