# One image for the four services and the `blonet` CLI (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Non-root runtime user. /keys, /token-public, /audit-keys and /audit-public are created here, owned by it, so
# the named volumes mounted there start out writable: the gateway writes the dev token key pair,
# audit its dev checkpoint signing key and the public verifier key.
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent blonet \
    && install -d -o blonet -g blonet /keys /token-public /audit-keys /audit-public

COPY . .
# Editable install: the code runs from /app, so settings.REPO is /app and deploy/network and
# the alembic migrations (plain folders, not packages) are found as in a checkout.
# Runtime dependencies only; the tree stays root-owned and read-only for the app user.
RUN pip install --no-cache-dir -e . \
    && python -m compileall -q shared services demo

USER blonet
CMD ["blonet", "--help"]
