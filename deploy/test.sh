#!/usr/bin/env bash
# `make test`: start the test stack, run pytest, and stop again whatever this run started
# (pass, fail or Ctrl-C). A stack that was already running is left as it was; KEEP_STACK=1
# keeps the one this run started, for fast reruns.
set -uo pipefail
cd "$(dirname "$0")/.."
started=()
for c in postgres kafka; do
  deploy/stack.sh status "$c" >/dev/null 2>&1 || started+=("$c")
done
stop_started() {
  (( ${#started[@]} )) || return 0
  if [[ ${KEEP_STACK:-0} == 1 ]]; then
    echo "test stack: kept running (KEEP_STACK=1); make stop stops it"
    return 0
  fi
  echo "test stack: stopping what this run started (${started[*]}; KEEP_STACK=1 keeps it)"
  if (( ${#started[@]} == 2 )); then
    deploy/stack.sh clean >/dev/null  # all of it was ours: no database left behind outside the checkout
  else
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do deploy/stack.sh stop "${started[i]}" >/dev/null; done
  fi
}
trap stop_started EXIT
trap 'exit 130' INT TERM
deploy/stack.sh start || exit 1
.venv/bin/pytest "$@"
