#!/usr/bin/env bash
# The machine-level setup behind the README's two commands: the Debian packages BLOnet needs.
#
# Usage: deploy/setup.sh {run|test}
#   run   what `make run` needs: Python 3.11 with venv, Java 17+, Maven (fetches the Kafka jars
#         once), PostgreSQL's server binaries
#   test  all of that, plus what the test suite needs: Chromium (the console's browser tests),
#         promtool (the Prometheus rules' tests), a compose parser (docker-compose.yml's test),
#         Go (builds the audit log's independent verifier) and systemd-analyze (deploy/systemd)
# Only what is missing is installed, so a second call costs a few milliseconds. As root it
# installs with apt-get; as anyone else it prints, for each missing package, one line naming it
# and the command to run, and fails. Nothing it installs is left running as a daemon.
set -euo pipefail

mode=${1:-}
[[ $mode == run || $mode == test ]] || { echo "usage: $0 {run|test}" >&2; exit 2; }

missing=()   # Debian packages to install
why=()       # what each one is for, same index

need() { missing+=("$1"); why+=("$2"); }

has_python() {
  command -v python3 >/dev/null && python3 -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11)' 2>/dev/null
}
java_major() {
  local ver
  ver=$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
  [[ $ver == 1.* ]] && ver=${ver#1.}
  echo "${ver%%.*}"
}
has_go() { command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]]; }
has_compose() {
  command -v docker-compose >/dev/null || { command -v docker >/dev/null && docker compose version >/dev/null 2>&1; }
}

has_python || need python3-venv "Python 3.11 with venv (the services and tests)"
if ! command -v java >/dev/null || (( $(java_major || echo 0) < 17 )); then
  need openjdk-17-jre-headless "Java 17 (the local Kafka broker)"
fi
command -v mvn >/dev/null || need maven "Maven (fetches the Kafka jars from Maven Central once)"
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need postgresql "PostgreSQL's server (the local database)"
if [[ $mode == test ]]; then
  command -v chromium >/dev/null || need chromium "Chromium (the console's browser tests)"
  command -v promtool >/dev/null || need prometheus "promtool (the Prometheus rules' tests)"
  has_compose || need docker-compose "a compose parser (the docker-compose.yml test)"
  has_go || need golang-go "Go (builds the audit log's independent verifier)"
  command -v systemd-analyze >/dev/null || need systemd "systemd-analyze (checks the units in deploy/systemd)"
fi

(( ${#missing[@]} )) || exit 0

if [[ $(id -u) != 0 ]]; then
  for i in "${!missing[@]}"; do
    echo "setup: missing ${missing[i]}, for ${why[i]}: run 'sudo apt-get install ${missing[i]}'" >&2
  done
  exit 1
fi

echo "setup: installing ${missing[*]} (apt-get, one-time)"
export DEBIAN_FRONTEND=noninteractive
# A package such as prometheus starts its daemon on install; policy-rc.d answering 101 is Debian's
# own way to say "start nothing" (honoured by invoke-rc.d and deb-systemd-invoke).
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# Written by BLOnet deploy/setup.sh for one install; removed after it.\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
log=$(mktemp)
# Fonts so the console renders text; nothing else a desktop would recommend.
extra=()
[[ " ${missing[*]} " == *" chromium "* ]] && extra+=(fonts-liberation)
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}" "${extra[@]}"; } >"$log" 2>&1; then
  echo "setup: apt-get install ${missing[*]} failed; its last lines:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
rm -f "$log"
# On a systemd machine the package may still have enabled its service for the next boot.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "setup: installed ${missing[*]}"
