"""The CAP corpus table: parse-level answers hold without a stack, and docs/api.md shows the same table."""
from __future__ import annotations

import re

import pytest

from shared.cap import CapError, parse_cap
from shared.settings import REPO
from tests.cap_corpus import ACCEPTED, CORPUS, DIR

PARSE_CODES = ("xml_", "cap_")


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.file)
def test_the_mapping_gives_the_tables_answer(case):
    data = (DIR / case.file).read_bytes()
    if case.live.startswith(PARSE_CODES):
        with pytest.raises(CapError) as err:
            parse_cap(data)
        assert err.value.code == case.live == case.replay
    else:
        assert parse_cap(data).alert.sender_agency == case.agency


def test_the_readme_names_every_file_and_docs_api_has_the_table():
    readme = (DIR / "README.md").read_text()
    doc = (REPO / "docs" / "api.md").read_text()
    for case in CORPUS:
        assert f"`{case.file}`" in readme, case.file
        row = re.search(rf"^\| `{re.escape(case.file)}` \|[^|]*\| (.+?) \| (.+?) \| (.+) \| (.+?) \|$", doc, re.M)
        assert row, f"docs/api.md has no row for {case.file}"
        answers = [re.sub(r"[`*]|\s*\(\d{3}\)", "", c) for c in (row.group(1), row.group(2), row.group(4))]
        signature = case.signature if ACCEPTED in (case.live, case.replay) else "—"
        assert [*answers[:2], row.group(3), answers[2]] == [case.live, case.replay, case.reason, signature], case.file
