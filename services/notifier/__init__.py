"""Notifier: delivers each routed alert to agency endpoints as signed webhooks, with retries."""
