"""The local demo: agency inboxes that verify signatures, the exercise scenario, a supervisor."""
