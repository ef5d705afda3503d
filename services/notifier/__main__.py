"""`python -m services.notifier`: run the notifier on 127.0.0.1:8002."""
from services.notifier.app import build
from shared.settings import get_settings

if __name__ == "__main__":
    runtime, app = build(get_settings().for_service("notifier"))  # its own Kafka principal
    runtime.serve(app)
