"""Audit: an append-only, hash-chained record of every event, queried by auditors."""
