"""Which offsets the notifier may commit (services/notifier/offsets.py): never past an unfinished record."""
from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.offsets import Offsets

TP = TopicPartition("deliveries.requested", 0)


@given(st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=60), st.randoms())
def test_the_committed_offset_never_passes_an_open_record_and_never_goes_back(records, rng):
    offsets = Offsets()
    taken = sorted({o for o, _ in records})
    for o in taken:
        offsets.take(TP, o)
    offsets.polled({TP: (taken[-1] + 1) if taken else 0})
    finishing = sorted({o for o, done in records if done})
    rng.shuffle(finishing)
    last, still_open = -1, set(taken)
    for o in finishing:
        offsets.finish(TP, o)
        still_open.discard(o)
        moved = offsets.ready().get(TP)
        if moved is not None:
            assert moved > last
            last = moved
        at = offsets.committable(TP)
        assert all(at <= x for x in still_open), (at, still_open)
    if set(taken) <= set(finishing):
        assert offsets.committable(TP) == (taken[-1] + 1 if taken else 0)


def test_a_poll_with_nothing_taken_moves_past_it_and_ready_reports_each_move_once():
    offsets = Offsets()
    offsets.take(TP, 5)
    offsets.polled({TP: 8})  # 6 and 7 were skipped (already done) or dead-lettered
    assert offsets.ready() == {TP: 5}
    assert offsets.ready() == {}
    offsets.finish(TP, 5)
    assert offsets.ready() == {TP: 8}
    assert offsets.open_count() == 0


def test_forgetting_a_partition_returns_where_its_next_owner_starts():
    offsets = Offsets()
    for o in (3, 4):
        offsets.take(TP, o)
    offsets.polled({TP: 5})
    offsets.finish(TP, 4)
    assert offsets.forget({TP}) == {TP: 3}, "the open record 3 is read again by the next owner"
    assert offsets.ready() == {} and offsets.committable(TP) is None
