"""BLOnet's common code: event contracts, settings, Kafka/DB plumbing, identity."""
