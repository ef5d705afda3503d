#!/usr/bin/env bash
# `make run`: the local stack, the four services and the demo in the foreground.
# Ctrl-C reaches `blonet run`, which stops the services; then this script stops Kafka and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/stack.sh start
trap 'deploy/stack.sh stop' EXIT
trap ':' INT TERM  # let blonet run handle the signal and finish its clean-up
.venv/bin/blonet run "$@" || status=$?  # e.g. make run RUN_ARGS="--instances 2"
exit "${status:-0}"
