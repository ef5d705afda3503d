"""`python -m services.routing`: run the routing service on 127.0.0.1:8001."""
from services.routing.app import build

if __name__ == "__main__":
    runtime, app = build()
    runtime.serve(app)
