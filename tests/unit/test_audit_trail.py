"""The audit hash chain and causal ordering."""
from __future__ import annotations

import random
import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.audit.chain import GENESIS, ChainEntry, causal_order, entry_hash, first_break


def build(payloads: list[bytes]) -> list[ChainEntry]:
    out, prev = [], GENESIS
    for i, p in enumerate(payloads):
        h = entry_hash(prev, i, p)
        out.append(ChainEntry(i, p, prev, h))
        prev = h
    return out


payload_lists = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30)


@given(payload_lists)
def test_an_untouched_chain_verifies(payloads):
    assert first_break(build(payloads)) is None


@given(payload_lists, st.data())
def test_any_changed_payload_is_found(payloads, data):
    chain = build(payloads)
    i = data.draw(st.integers(0, len(chain) - 1))
    e = chain[i]
    chain[i] = ChainEntry(e.index, e.payload + b"x", e.prev_hash, e.entry_hash)
    assert first_break(chain) == i


@given(payload_lists.filter(lambda p: len(p) > 1), st.data())
def test_a_removed_entry_is_found(payloads, data):
    chain = build(payloads)
    i = data.draw(st.integers(0, len(chain) - 2))
    del chain[i]
    assert first_break(chain) == chain[i].index


def test_a_chain_can_be_checked_from_the_middle():
    chain = build([b"a", b"b", b"c"])
    assert first_break(chain[1:], prev=chain[0].entry_hash, start=1) is None
    assert first_break(chain[1:], prev=GENESIS, start=1) == 1


@given(st.integers(1, 40), st.randoms(use_true_random=False))
def test_causes_always_precede_effects(n, rnd: random.Random):
    ids = [uuid.UUID(int=i + 1) for i in range(n)]
    causes = [None] + [ids[rnd.randrange(i)] if rnd.random() < 0.8 else None for i in range(1, n)]
    entries = list(zip(range(n), ids, causes))
    rnd.shuffle(entries)  # arrival order (log index) need not be causal order
    entries = [(i, e, c) for i, (_, e, c) in enumerate(entries)]
    order = causal_order(entries)
    assert sorted(order) == list(range(n))
    position = {entries[i][1]: k for k, i in enumerate(order)}
    for _, event_id, cause in entries:
        if cause is not None:
            assert position[cause] < position[event_id]
