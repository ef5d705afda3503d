"""`python -m services.gateway`: run the gateway on 127.0.0.1:8000."""
from services.gateway.app import build
from shared.settings import get_settings

if __name__ == "__main__":
    runtime, app = build(get_settings().for_service("gateway"))  # its own Kafka principal
    runtime.serve(app)
