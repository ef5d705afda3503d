"""The adversarial suite uses the integration fixtures (registered once, in tests/conftest.py)."""
