"""`python -m services.audit`: run the audit service on 127.0.0.1:8003."""
from services.audit.app import build
from shared.settings import get_settings

if __name__ == "__main__":
    runtime, app = build(get_settings().for_service("audit"))  # its own Kafka principal
    runtime.serve(app)
