"""`python -m services.notifier`: run the notifier on 127.0.0.1:8002."""
from services.notifier.app import build

if __name__ == "__main__":
    runtime, app = build()
    runtime.serve(app)
