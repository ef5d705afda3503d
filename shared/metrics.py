"""Every Prometheus metric of BLOnet, declared in one place; docs/observability.md is the catalogue.

The convention (tests/unit/test_metrics.py holds every registered metric to it):
- names are snake_case and start with `blonet_`;
- a counter ends in `_total`; any other name ends in its unit, a base unit (`_seconds`,
  `_bytes`) or the thing counted (`_records`, `_entries`), or in `_state` for a one-hot enum
  gauge (1 for the current state, 0 for the others); times of day are `_timestamp_seconds`;
- label names are snake_case, and label values come from bounded sets: services, route
  templates, reason and denial codes, outcomes, endpoint and agency ids from the network
  directory, consumer groups, topics, partitions. Never an alert, delivery, event or trace
  id, a URL or a free-text reason: each value is a time series kept for ever.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --- every service ------------------------------------------------------------------------------

EVENTS_HANDLED = Counter("blonet_events_handled_total", "Events handled by a consumer", ["service", "type"])
EVENTS_REJECTED = Counter("blonet_events_rejected_total", "Records a consumer could not use and moved to its dead-letter topic", ["group", "topic"])
CONSUMER_RETRIES = Counter(
    "blonet_consumer_retries_total", "Batches a consumer's handler failed on (database or broker trouble) and retries",
    ["group"],
)
CONSUMER_LAG = Gauge(
    "blonet_consumer_lag_records", "Records on a partition the group has not consumed yet (high watermark minus position)",
    ["group", "topic", "partition"],
)
HTTP_REQUESTS = Histogram(
    "blonet_http_request_seconds", "HTTP request latency", ["service", "method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# --- gateway ------------------------------------------------------------------------------------

ALERTS_ACCEPTED = Counter("blonet_alerts_accepted_total", "Alerts accepted: answered 202 once Kafka held them (acks=all)")
ALERTS_REJECTED = Counter(
    "blonet_alerts_rejected_total", "Alert submissions refused, by the code of the Problem answered", ["reason"],
)

# --- routing ------------------------------------------------------------------------------------

ROUTING_DECISIONS = Counter(
    "blonet_routing_decisions_total", "Routing decisions made, by what was decided on and whether anyone receives",
    ["kind", "outcome"],
)
ROUTING_RECIPIENTS = Counter("blonet_routing_recipients_total", "Recipients chosen by routing, by view profile", ["profile"])
ROUTING_DENIALS = Counter("blonet_routing_denials_total", "Candidates routing denied, by denial code", ["code"])

# --- notifier -----------------------------------------------------------------------------------

DELIVERIES = Counter(
    "blonet_deliveries_total", "Delivery outcomes recorded, one per delivery.status event (failed: dead letter)",
    ["outcome", "endpoint"],
)
DEAD_LETTERS = Counter(
    "blonet_dead_letters_total", "Deliveries dead-lettered: refused on arrival, retry schedule exhausted, or endpoint gone (410)",
    ["endpoint", "cause"],
)
ACCEPT_TO_DELIVERY = Histogram(
    "blonet_accept_to_delivery_seconds", "From the gateway accepting an alert (or forward) to an endpoint's 2xx answer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
)
ENDPOINT_CIRCUIT = Gauge(
    "blonet_endpoint_circuit_state", "An endpoint's circuit breaker in this notifier instance: 1 for its state, 0 for the others",
    ["endpoint", "state"],
)

# --- audit --------------------------------------------------------------------------------------

AUDIT_TREE_SIZE = Gauge("blonet_audit_tree_entries", "Entries in the audit log (the Merkle tree's size)")
AUDIT_CHECKPOINT_SIZE = Gauge("blonet_audit_checkpoint_entries", "Tree size of the latest signed checkpoint")
AUDIT_CHECKPOINT_TIME = Gauge(
    "blonet_audit_checkpoint_timestamp_seconds", "When the latest checkpoint was signed (Unix time); age = time() - this",
)
