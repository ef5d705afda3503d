"""What a handler's failure means, and how to name it without quoting the data that caused it.

Pure functions: the consumer uses `transient` to tell an outage from a poison record, and
`describe` for log lines, dead-letter headers and audit entries, which must never carry alert
bytes (a pydantic or PostgreSQL message can quote the offending value, so neither is copied).
"""
from __future__ import annotations

import json
from collections.abc import Iterator

from aiokafka.errors import (
    CorruptRecordException, InvalidProducerEpoch, InvalidTimestampError, KafkaError, KafkaTimeoutError,
    MessageSizeTooLargeError, OutOfOrderSequenceNumber, ProducerFenced, RecordListTooLargeError, RecordTooLargeError,
    UnsupportedForMessageFormatError,
)
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLSTATE classes that say "the server or the connection", never "this row": connection
# exceptions, insufficient resources, operator intervention (shutdown), system errors, and
# transaction rollbacks (serialization failure, deadlock).
TRANSIENT_SQLSTATE_CLASSES = {"08", "40", "53", "57", "58"}
TRANSIENT_SQLSTATES = {"55P03"}  # lock_not_available
MAX_DESCRIPTION = 500
# The Kafka errors a record itself causes. Any other Kafka error is about the cluster or this
# client (a leader moving, a lost producer sequence, a missing ACL): an outage to wait out, never
# a reason to dead-letter the record that happened to be in hand.
KAFKA_DATA_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, CorruptRecordException,
                     InvalidTimestampError, UnsupportedForMessageFormatError)
# An idempotent producer that got one of these has a gap in a partition's sequence (a batch failed
# after its sequence was taken, e.g. across a whole-cluster restart): every later batch there fails
# the same way until the producer is replaced.
PRODUCER_BROKEN = (OutOfOrderSequenceNumber, InvalidProducerEpoch, ProducerFenced)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver error it wraps, and its causes (a few levels)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__]


def sqlstate(exc: BaseException) -> str | None:
    for e in _chain(exc):
        code = getattr(e, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def transient(exc: BaseException) -> bool:
    """Return whether a failure is about reaching a dependency (retry it) rather than about the data."""
    for e in _chain(exc):
        if isinstance(e, (OSError, TimeoutError, DisconnectionError, PoolTimeout, KafkaTimeoutError)):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, KafkaError) and (e.retriable or not isinstance(e, KAFKA_DATA_ERRORS)):
            return True
        if type(e).__name__ in ("InterfaceError", "ConnectionDoesNotExistError", "InternalClientError"):
            return True  # asyncpg: the connection itself is unusable
    code = sqlstate(exc)
    return bool(code) and (code[:2] in TRANSIENT_SQLSTATE_CLASSES or code in TRANSIENT_SQLSTATES)


def producer_broken(exc: BaseException) -> bool:
    """Return whether a failure says the producer must be replaced before it can send again."""
    return any(isinstance(e, PRODUCER_BROKEN) for e in _chain(exc))


def error_class(exc: BaseException) -> str:
    """The most telling class name: the driver's (e.g. asyncpg's UntranslatableCharacterError) if wrapped."""
    if isinstance(exc, DBAPIError):
        inner = [e for e in _chain(exc) if not isinstance(e, DBAPIError)]
        if inner:  # the deepest: SQLAlchemy's adapter error wraps the driver's own
            return type(inner[-1]).__name__
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    """Say what went wrong in words that quote no input: field paths, codes, positions."""
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors(include_url=False)[:5])
    elif isinstance(exc, DBAPIError) or sqlstate(exc):  # SQLAlchemy's or the driver's own (COPY)
        text = f"{error_class(exc)} (SQLSTATE {sqlstate(exc) or 'none'})"  # the message may quote the value
    elif isinstance(exc, UnicodeError):
        text = f"{getattr(exc, 'encoding', '')} {getattr(exc, 'reason', '')} at byte {getattr(exc, 'start', '?')}".strip()
    elif isinstance(exc, json.JSONDecodeError):  # orjson's is one too
        text = f"{exc.msg} at character {exc.pos}"
    elif getattr(exc, "quotes_no_input", False):  # a message built to be safe (e.g. shared.kafka.ForeignEvent)
        text = str(exc)
    elif isinstance(exc, (KafkaError, OSError, TimeoutError)):
        text = str(exc) or type(exc).__name__
    else:  # an unknown message may quote data: say where it was raised instead
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" in {tb.tb_frame.f_code.co_name} ({tb.tb_frame.f_code.co_filename.rsplit('/', 2)[-1]}:{tb.tb_lineno})" if tb else ""
        text = f"{type(exc).__name__}{where}"
    return text[:MAX_DESCRIPTION]
