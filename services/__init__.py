"""The four BLOnet services: gateway, routing, notifier, audit."""
