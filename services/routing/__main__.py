"""`python -m services.routing`: run the routing service on 127.0.0.1:8001."""
from services.routing.app import build
from shared.settings import get_settings

if __name__ == "__main__":
    runtime, app = build(get_settings().for_service("routing"))  # its own Kafka principal
    runtime.serve(app)
