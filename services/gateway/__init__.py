"""Gateway: the edge where agency systems submit alerts and read their status."""
