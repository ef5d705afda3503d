"""Each endpoint's last success and last failure, as a batch of attempts records them."""
from datetime import datetime, timedelta, timezone

from services.notifier.delivery import endpoint_outcomes

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)


def attempt(endpoint: str, seconds: float, state: str = "delivered", reason: str | None = None) -> dict:
    return {"row": {"endpoint": endpoint}, "started_at": T0 + timedelta(seconds=seconds), "state": state, "reason": reason}


def test_the_latest_success_and_failure_of_each_endpoint():
    found = endpoint_outcomes([attempt("a", 1), attempt("a", 3), attempt("a", 2, "pending", "HTTP 503"),
                               attempt("b", 1, "failed", "HTTP 410 Gone"), attempt("b", 0, "pending", "HTTP 500")], {})
    assert sorted(found, key=lambda o: o["endpoint"]) == [
        {"endpoint": "a", "last_success_at": T0 + timedelta(seconds=3), "last_failure_at": T0 + timedelta(seconds=2),
         "last_error": "HTTP 503"},
        {"endpoint": "b", "last_success_at": None, "last_failure_at": T0 + timedelta(seconds=1), "last_error": "HTTP 410 Gone"},
    ]


def test_a_success_within_a_second_of_the_last_recorded_one_is_not_written_again():
    recorded = {"a": T0}
    assert endpoint_outcomes([attempt("a", 0.5)], recorded) == []
    assert endpoint_outcomes([attempt("a", 1.5)], recorded)[0]["last_success_at"] == T0 + timedelta(seconds=1.5)
    with_failure = endpoint_outcomes([attempt("a", 0.4, "pending", "HTTP 500"), attempt("a", 0.5)], recorded)
    assert with_failure[0]["last_success_at"] == T0 + timedelta(seconds=0.5), "after a failure, a success always counts"
