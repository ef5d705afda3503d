"""The documentation names what the code defines."""
import re

from shared.events import EventType
from shared.settings import REPO
from shared.topics import CATALOGUE


def test_events_doc_lists_every_topic_with_its_partitions():
    doc = (REPO / "docs" / "events.md").read_text()
    for topic in CATALOGUE:
        row = re.search(rf"^\| `{re.escape(topic.name)}` \| {topic.key} \| (\d+) \|", doc, re.M)
        assert row, f"docs/events.md has no row for {topic.name}"
        assert int(row.group(1)) == topic.partitions
    for event_type in EventType:
        assert f"`{event_type.value}` v1" in doc
