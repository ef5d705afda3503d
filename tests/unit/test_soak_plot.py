"""The soak's plot: one PNG with a panel per measure, whatever samples are missing (a killed process)."""
from __future__ import annotations

from bench.soak import plot


def test_the_plot_is_a_png_and_survives_gaps(tmp_path):
    samples = [{"t_s": 60 * i, "lag": i % 3, "db_mib": 10.0 + i,
                "gateway.rss_mib": 100.0 + i, "gateway.cpu_pct": 12.5, "gateway.fds": 40,
                "table.audit.entries.mib": 0.5 * i} for i in range(6)]
    del samples[3]["gateway.rss_mib"]  # the gateway was being restarted at that sample
    samples[4]["lag"] = None  # Kafka was away
    path = tmp_path / "soak.png"
    plot(samples, path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
