#!/usr/bin/env bash
# `make run`: the local stack, the four services and the demo in the foreground.
# Ctrl-C reaches `blonet run`, which stops the services; then this script stops Kafka and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/stack.sh start
# The services, setup and the demo log in to Kafka with the credentials this stack was formatted with.
export BLONET_SECRETS_FILE=${BLONET_SECRETS_FILE:-$(deploy/stack.sh secrets)}
trap 'deploy/stack.sh stop' EXIT
trap ':' INT TERM  # let blonet run handle the signal and finish its clean-up
.venv/bin/blonet run "$@" || status=$?  # e.g. make run RUN_ARGS="--instances 2"
exit "${status:-0}"
