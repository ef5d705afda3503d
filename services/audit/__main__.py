"""`python -m services.audit`: run the audit service on 127.0.0.1:8003."""
from services.audit.app import build

if __name__ == "__main__":
    runtime, app = build()
    runtime.serve(app)
