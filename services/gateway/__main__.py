"""`python -m services.gateway`: run the gateway on 127.0.0.1:8000."""
from services.gateway.app import build

if __name__ == "__main__":
    runtime, app = build()
    runtime.serve(app)
