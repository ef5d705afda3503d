"""An alert's story in causal order."""
from __future__ import annotations

import random
import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.audit.trail import causal_order


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


def test_a_forged_cycle_still_lists_every_entry():
    a, b = uuid.UUID(int=1), uuid.UUID(int=2)
    assert sorted(causal_order([(0, a, b), (1, b, a)])) == [0, 1]
