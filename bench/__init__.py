"""Throughput/latency benchmark of the alert pipeline: see bench/README.md."""
