#!/usr/bin/env bash
# Local native stack for BLOnet: Kafka (KRaft, one node or a 3-node cluster) + a private PostgreSQL.
# No Docker. Several stacks can run side by side: everything an instance owns lives
# under BLONET_STACK_DIR, and every port comes from the environment.
#
# Usage: deploy/stack.sh {start|stop|clean|status|bootstrap|secrets|restart} [--brokers 1|3] [kafka|postgres|all]
#   --brokers 3                    a 3-node Kafka cluster (also BLONET_KAFKA_BROKERS); a stack keeps
#                                  the size it was first started with
#   BLONET_STACK_DIR               data, logs, pid files   (default <repo>/var/stack)
#   BLONET_CACHE_DIR               Kafka jars, shared      (default <repo>/var/cache)
#   BLONET_KAFKA_PORT              broker, 127.0.0.1       (default 9092; node i: +2(i-1))
#   BLONET_KAFKA_CONTROLLER_PORT   KRaft controller        (default 9093; node i: +2(i-1))
#   BLONET_PG_PORT                 PostgreSQL, 127.0.0.1   (default 5433)
#   BLONET_KAFKA_PROXY_PORT        optional: node i also listens on this +2(i-1)+1 and advertises it
#                                  at this +2(i-1), where a TCP proxy forwards to it (fault tests)
# Kafka authenticates every client with SASL/SCRAM-SHA-512 and authorises it with ACLs: the
# principals (admin, one per service) and their passwords are generated once, at format time, into
# $BLONET_STACK_DIR/kafka/secrets.json (mode 0600), which BLONET_SECRETS_FILE points the clients at.
# A data folder formatted before (PLAINTEXT, no credentials) is reformatted, its topics deleted.
# status exits 0 if every requested component is running, 3 otherwise; bootstrap prints the
# brokers' addresses for BLONET_KAFKA_BOOTSTRAP; secrets prints the credentials file's path; `restart postgres` is a fast restart that keeps data;
# clean stops the stack and deletes a PostgreSQL kept outside the checkout (and the Kafka data with it).
set -euo pipefail

args=()
BROKERS=${BLONET_KAFKA_BROKERS:-}
while (( $# )); do
  case $1 in
    --brokers) BROKERS=${2:-}; shift 2 || { echo "stack: --brokers needs a number" >&2; exit 1; } ;;
    --brokers=*) BROKERS=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$DEPLOY_DIR")
STACK_DIR=${BLONET_STACK_DIR:-$REPO_DIR/var/stack}
CACHE_DIR=${BLONET_CACHE_DIR:-$REPO_DIR/var/cache}
KPORT=${BLONET_KAFKA_PORT:-9092}
CPORT=${BLONET_KAFKA_CONTROLLER_PORT:-9093}
PGPORT=${BLONET_PG_PORT:-5433}
PROXY_PORT=${BLONET_KAFKA_PROXY_PORT:-}
for p in "$KPORT" "$CPORT" "$PGPORT" ${PROXY_PORT:+"$PROXY_PORT"}; do
  if ! [[ $p =~ ^[0-9]+$ ]] || (( p < 1 || p > 65535 )); then
    echo "stack: bad port number '$p'" >&2; exit 1
  fi
done
# Paths end up in config files read by other processes, and identify our own servers by their
# command line: make them absolute and canonical, so a stack reached through a symlink is the same.
STACK_DIR=$(realpath -m "$STACK_DIR")
CACHE_DIR=$(realpath -m "$CACHE_DIR")

KDIR=$STACK_DIR/kafka
SECRETS=$KDIR/secrets.json
# Kafka principals: admin (super user: setup, tests, benches, the CLI) and one per service, whose
# ACLs `blonet setup` grants (shared/acls.py holds the same list).
PRINCIPALS=(admin gateway routing notifier audit)
KLIBS=$CACHE_DIR/kafka-libs
START_TIMEOUT=${BLONET_START_TIMEOUT:-120}  # seconds; a loaded 2-core box can take a minute

# die REASON [LOG...]: one-line reason, then the tail of each given log.
die() {
  echo "$1" >&2
  shift
  for f in "$@"; do
    [[ -s $f ]] || continue
    echo "--- last lines of $f:" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# ---------------------------------------------------------------- kafka
#
# One broker by default, or a cluster of BROKERS combined broker+controller nodes (`--brokers 3`):
# node i listens on KPORT+2(i-1) and its controller on CPORT+2(i-1) (9092/9093, 9094/9095,
# 9096/9097 by default), keeps its data in kafka (node 1) or kafka-i, and the cluster's internal
# topics get three replicas with two in sync. A stack keeps the size it was formatted with.

node_dir() { if (( $1 == 1 )); then echo "$STACK_DIR/kafka"; else echo "$STACK_DIR/kafka-$1"; fi; }
node_port() { echo $((KPORT + 2 * ($1 - 1))); }
node_cport() { echo $((CPORT + 2 * ($1 - 1))); }

# The cluster size: as formatted (remembered in kafka/brokers), else as asked, else 1.
stack_brokers() {
  local f=$STACK_DIR/kafka/brokers
  if [[ -f $f ]]; then cat "$f"; else echo "${BROKERS:-1}"; fi
}

# Is $2 node $1's broker? Checking the command line (not just kill -0) guards against
# recycled pids and zombies, and against another stack's broker.
is_our_kafka() {
  [[ $2 =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null </proc/"$2"/cmdline | grep -qF "kafka.Kafka $(node_dir "$1")/server.properties"
}

kafka_pid() {  # kafka_pid NODE: prints the pid of that running broker, fails if there is none
  local pid f
  f=$(node_dir "$1")/kafka.pid
  [[ -f $f ]] && pid=$(<"$f") && is_our_kafka "$1" "$pid" && echo "$pid"
}

any_kafka_running() {
  local i
  for ((i = 1; i <= $(stack_brokers); i++)); do kafka_pid "$i" >/dev/null && return 0; done
  return 1
}

check_java() {
  command -v java >/dev/null || die "kafka: java not found (need Java 17+)"
  local ver major
  ver=$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
  major=${ver%%.*}
  [[ $major == 1 ]] && major=$(cut -d. -f2 <<<"$ver")  # old "1.8.0" style
  if ! [[ $major =~ ^[0-9]+$ ]] || (( major < 17 )); then
    die "kafka: java ${ver:-of unknown version} is too old (need Java 17+)"
  fi
}

# Resolve the broker jars once into the shared cache. The stamp holds the pom's
# checksum, so editing the pom re-resolves.
ensure_kafka_libs() {
  local pom=$DEPLOY_DIR/kafka/pom.xml sum tmp
  sum=$(sha256sum "$pom" | cut -d' ' -f1)
  [[ -f $KLIBS/.complete && $(<"$KLIBS/.complete") == "$sum" ]] && return 0
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/kafka-libs.lock"
  flock 9  # another stack may be resolving into the same cache right now
  if [[ ! -f $KLIBS/.complete || $(<"$KLIBS/.complete") != "$sum" ]]; then
    command -v mvn >/dev/null || die "kafka: mvn not found (needed once to fetch the Kafka jars)"
    echo "kafka: fetching jars into $KLIBS (one-time)"
    tmp=$KLIBS.tmp.$$
    rm -rf "$tmp"
    if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" >"$CACHE_DIR/mvn.log" 2>&1; then
      rm -rf "$tmp"
      die "kafka: mvn could not fetch the Kafka jars" "$CACHE_DIR/mvn.log"
    fi
    echo "$sum" >"$tmp/.complete"
    rm -rf "$KLIBS"
    mv "$tmp" "$KLIBS"
  fi
  exec 9>&-  # don't leak the lock into the broker
}

write_kafka_config() {  # write_kafka_config NODE BROKERS
  local i=$1 n=$2 dir quorum j replicas=1 isr=1
  dir=$(node_dir "$i")
  # One node: a dynamic quorum of itself (formatted --standalone). A cluster: static voters.
  quorum=controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
  if (( n > 1 )); then
    local voters=()
    for ((j = 1; j <= n; j++)); do voters+=("$j@127.0.0.1:$(node_cport "$j")"); done
    quorum=controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
    replicas=3 isr=2
  fi
  # A client that bootstraps from a proxy must be told the proxy's address, or it goes around it
  # after its first metadata request: a PROXIED listener advertised at the proxy's port.
  local listen= advertise=
  if [[ -n $PROXY_PORT ]]; then
    listen=,PROXIED://127.0.0.1:$((PROXY_PORT + 2 * (i - 1) + 1))
    advertise=,PROXIED://127.0.0.1:$((PROXY_PORT + 2 * (i - 1)))
  fi
  local admin
  admin=$(secret_of admin)
  # Rewritten on every start so port changes take effect; the data dir is kept. It holds the
  # admin password (inter-broker and controller logins): owner-only, like secrets.json.
  rm -f "$dir/server.properties"
  (umask 077; cat >"$dir/server.properties") <<EOF
# Generated by deploy/stack.sh on every start; edits are lost.
process.roles=broker,controller
node.id=$i
# Clients authenticate with SCRAM-SHA-512 (credentials in the cluster metadata, added at format
# time); brokers talk to each other the same way, as admin. The controller listener, which keeps
# the metadata (SCRAM credentials included), cannot use SCRAM: PLAIN with a static admin login.
listeners=SASL_PLAINTEXT://127.0.0.1:$(node_port "$i"),CONTROLLER://127.0.0.1:$(node_cport "$i")$listen
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$(node_port "$i")$advertise
controller.listener.names=CONTROLLER
$quorum
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,PROXIED:SASL_PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
# The fault harness's proxied listener (a service partitioned through a TCP proxy) logs in the same way.
listener.name.proxied.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin" user_admin="$admin";
# Every request is authorised: admin may do anything, a service only what its ACLs allow.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
log.dirs=$dir/data
# Internal topics: one replica on a single node, three (two in sync) on a cluster.
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$isr
default.replication.factor=$replicas
min.insync.replicas=$isr
# Fewer internal partitions than the default 50: the first consumer group and the
# first transaction come up much faster on a 2-core dev box.
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
share.coordinator.state.topic.num.partitions=6
group.initial.rebalance.delay.ms=0
# The application creates its topics explicitly.
auto.create.topics.enable=false
num.partitions=6
EOF
}

# The credentials file: {"kafka": {"<principal>": "<password>", …}}, created once with O_EXCL
# (noclobber) and mode 0600 before any byte is written; the passwords are 32 random hex digits.
ensure_secrets() {
  [[ -f $SECRETS ]] && return 0
  mkdir -p "$KDIR"
  local body= who sep=
  for who in "${PRINCIPALS[@]}"; do
    body+="$sep\"$who\": \"$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')\""
    sep=", "
  done
  (umask 077; set -o noclobber; printf '{"kafka": {%s}}\n' "$body" >"$SECRETS") \
    || die "kafka: could not create $SECRETS"
}

secret_of() {  # secret_of PRINCIPAL: its password from the credentials file
  local pw
  pw=$(sed -n "s/.*\"$1\": \"\([0-9a-f]*\)\".*/\1/p" "$SECRETS" 2>/dev/null)
  [[ -n $pw ]] || die "kafka: no password for $1 in $SECRETS (delete $STACK_DIR/kafka* to start afresh)"
  echo "$pw"
}

# A data folder formatted before the brokers authenticated (no credentials file beside it) has no
# SCRAM users, so no client could log in: it is deleted and formatted again, with a clear line.
forget_plaintext() {  # forget_plaintext BROKERS
  local i found=()
  [[ -f $SECRETS ]] && return 0
  for ((i = 1; i <= $1; i++)); do [[ -f $(node_dir "$i")/data/meta.properties ]] && found+=("$(node_dir "$i")"); done
  (( ${#found[@]} )) || return 0
  echo "kafka: ${found[*]} was formatted without SASL (PLAINTEXT, before issue 13): deleting its topics and offsets and formatting it again with SCRAM credentials"
  rm -rf "${found[@]/%//data}" "$KDIR/cluster.id"
}

# A cluster id is 16 random bytes in base64url; a leading '-' would be read as a
# CLI option, so draw again in that case.
new_cluster_id() {
  local id=-
  while [[ $id == -* ]]; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  echo "$id"
}

# Up = the port accepts connections AND KafkaRaftServer logged "Kafka Server started" (logged
# after the broker has caught up with metadata and is unfenced) after byte $2 of its log.
wait_kafka() {  # wait_kafka NODE LOG_OFFSET [ours]: "ours" (we launched it) stops the brokers on failure
  local i=$1 off=$2 ours=${3:-} dir port pid size t
  dir=$(node_dir "$i") port=$(node_port "$i")
  for ((t = 0; t < START_TIMEOUT * 4; t++)); do
    pid=$(cat "$dir/kafka.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && ! is_our_kafka "$i" "$pid"; then
      rm -f "$dir/kafka.pid"
      [[ $ours ]] && kafka_stop >/dev/null
      die "kafka: broker $i exited during startup" "$dir/server.log" "$dir/console.log"
    fi
    size=$(stat -c %s "$dir/server.log" 2>/dev/null || echo 0)
    (( size < off )) && off=0  # log rolled over meanwhile
    if port_open "$port" && tail -c +$((off + 1)) "$dir/server.log" 2>/dev/null | grep 'Kafka Server started' >/dev/null; then  # no -q: an early exit would SIGPIPE tail, which pipefail counts
      return 0
    fi
    sleep 0.25
  done
  if [[ $ours ]]; then
    kafka_stop >/dev/null
    die "kafka: broker $i not ready after ${START_TIMEOUT}s, stopped the stack's brokers" "$dir/server.log" "$dir/console.log"
  fi
  die "kafka: broker $i (already running, not started by us) not ready after ${START_TIMEOUT}s; left as it is" "$dir/server.log"
}

kafka_start() {
  local n i pid p dir id t0=$SECONDS heap=1g started=() offs=()
  n=$(stack_brokers)
  if [[ -n ${BROKERS:-} && $BROKERS != "$n" ]]; then
    die "kafka: this stack was formatted with $n broker(s), not $BROKERS; 'deploy/stack.sh stop' and delete $STACK_DIR/kafka* to change"
  fi
  [[ $n == 1 || $n == 3 ]] || die "kafka: --brokers takes 1 or 3, not $n"
  local ports=()
  for ((i = 1; i <= n; i++)); do ports+=("$(node_port "$i")" "$(node_cport "$i")"); done
  [[ $(printf '%s\n' "${ports[@]}" | sort -u | wc -l) == "${#ports[@]}" ]] \
    || die "kafka: ports ${ports[*]} overlap; with --brokers $n the controller port must not be the broker port plus an even number"
  (( n > 1 )) && heap=512m
  for ((i = 1; i <= n; i++)); do
    if pid=$(kafka_pid "$i"); then
      grep -q '^listeners=SASL_PLAINTEXT' "$(node_dir "$i")/server.properties" \
        || die "kafka: broker $i (pid $pid) runs without SASL (started before issue 13); stop it ('deploy/stack.sh stop kafka' with this stack's settings) and start again: its data folder is then reformatted with SCRAM credentials"
      wait_kafka "$i" 0
      echo "kafka: already running on 127.0.0.1:$(node_port "$i") (pid $pid)"
      continue
    fi
    started+=("$i")
  done
  (( ${#started[@]} )) || return 0
  for i in "${started[@]}"; do
    rm -f "$(node_dir "$i")/kafka.pid"
    for p in "$(node_port "$i")" "$(node_cport "$i")"; do
      port_open "$p" && die "kafka: port $p is taken by another process"
    done
  done
  check_java
  ensure_kafka_libs
  forget_plaintext "$n"
  ensure_secrets
  id=$(new_cluster_id)
  local scram=() who
  for who in "${PRINCIPALS[@]}"; do scram+=(--add-scram "SCRAM-SHA-512=[name=$who,password=$(secret_of "$who")]"); done
  for i in "${started[@]}"; do
    dir=$(node_dir "$i")
    mkdir -p "$dir/data"
    write_kafka_config "$i" "$n"
    if [[ ! -f $dir/data/meta.properties ]]; then
      [[ -f $STACK_DIR/kafka/cluster.id ]] && id=$(<"$STACK_DIR/kafka/cluster.id")
      local how=(--standalone)
      (( n > 1 )) && how=()  # a cluster's voters are in its config: controller.quorum.voters
      # umask: the log lists each SCRAM credential's salted keys.
      (umask 077; java -cp "$KLIBS/*" -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/log4j2.xml" \
        -Dkafka.logs.dir="$dir" kafka.tools.StorageTool format "${how[@]}" "${scram[@]}" \
        -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1) \
        || die "kafka: formatting $dir/data failed" "$dir/format.log"
      echo "$id" >"$STACK_DIR/kafka/cluster.id"
      echo "$n" >"$STACK_DIR/kafka/brokers"
    fi
  done
  for i in "${started[@]}"; do
    dir=$(node_dir "$i")
    offs[i]=$(stat -c %s "$dir/server.log" 2>/dev/null || echo 0)  # readiness is judged on later lines only
    # setsid: own session (no terminal, no SIGHUP, not in our process group), so the
    # broker outlives this script. The inner bash records its own pid and then execs
    # java, so the pid file holds the JVM's pid.
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner bash
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
      java -Xms256m -Xmx$heap -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/log4j2.xml" -Dkafka.logs.dir="$dir" \
      -cp "$KLIBS/*" kafka.Kafka "$dir/server.properties" \
      >"$dir/console.log" 2>&1 </dev/null 8>&- &
  done
  # A cluster's nodes wait for each other's quorum: all are launched before any is waited for.
  for i in "${started[@]}"; do
    wait_kafka "$i" "${offs[i]}" ours
    echo "kafka: started on 127.0.0.1:$(node_port "$i") (pid $(kafka_pid "$i"), $((SECONDS - t0))s)"
  done
}

kafka_stop_node() {
  local i=$1 pid t f
  f=$(node_dir "$i")/kafka.pid
  if ! pid=$(kafka_pid "$i"); then
    rm -f "$f"
    (( $(stack_brokers) == 1 )) && echo "kafka: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((t = 0; t < 150; t++)); do  # a clean shutdown takes a few seconds
    is_our_kafka "$i" "$pid" || break
    sleep 0.2
  done
  if is_our_kafka "$i" "$pid"; then
    echo "kafka: broker $i still up after 30s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while is_our_kafka "$i" "$pid"; do sleep 0.2; done
  fi
  rm -f "$f"
  echo "kafka: stopped (pid $pid)"
}

kafka_stop() {
  local i
  # Brokers first, controllers' majority last: the last nodes to go find no quorum, so stop
  # them together rather than one by one waiting each out.
  for ((i = $(stack_brokers); i >= 1; i--)); do kafka_stop_node "$i" & done
  wait
}

kafka_status() {
  local i pid rc=0 port
  for ((i = 1; i <= $(stack_brokers); i++)); do
    port=$(node_port "$i")
    if pid=$(kafka_pid "$i"); then
      if port_open "$port"; then
        echo "kafka: running on 127.0.0.1:$port (pid $pid)"
        continue
      fi
      echo "kafka: not answering on 127.0.0.1:$port (pid $pid alive; starting or hung)"
    else
      echo "kafka: stopped (port $port)"
    fi
    rc=3
  done
  return "$rc"
}

# ------------------------------------------------------------- postgres

IS_ROOT=0
[[ $(id -u) == 0 ]] && IS_ROOT=1
PGBIN=

# Binaries: the version the data dir was made with if installed, else the highest.
find_pg_bin() {
  local v
  if [[ -f $PGDATA/PG_VERSION ]]; then
    v=$(<"$PGDATA/PG_VERSION")
    [[ -x /usr/lib/postgresql/$v/bin/postgres ]] && { PGBIN=/usr/lib/postgresql/$v/bin; return 0; }
  fi
  v=$(cd /usr/lib/postgresql 2>/dev/null && printf '%s\n' */bin/initdb | cut -d/ -f1 | sort -V | tail -n 1) || true
  [[ -n $v && -x /usr/lib/postgresql/$v/bin/initdb ]] && PGBIN=/usr/lib/postgresql/$v/bin
}

# Where the cluster lives. As root the server runs as 'postgres', which must be able to reach
# its data folder; a checkout under a private folder (a 0700 home, any `mktemp -d`) is out of its
# reach, and we never change the user's folders. Then the cluster lives in a folder of its own
# under /var/lib/blonet, one per stack folder (named by a hash of its path), and `clean` removes it.
# `stop` keeps it, like any cluster; `clean` (what `make stop` runs) deletes it.
PG_OUTSIDE=/var/lib/blonet
pg_locate() {
  PGBASE=$STACK_DIR/postgres
  if (( IS_ROOT )) && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$STACK_DIR/." 2>/dev/null; then
    PGBASE=$PG_OUTSIDE/pg-$(printf %s "$STACK_DIR" | sha256sum | cut -c1-12)
  fi
  PGDATA=$PGBASE/data
  PGLOG=$PGBASE/postgres.log
}
pg_outside() { [[ $PGBASE == "$PG_OUTSIDE"/* ]]; }

# initdb/pg_ctl/postgres refuse to run as root: as root, run them as 'postgres'.
# cd first so the server's cwd is somewhere that user can read.
as_pg() {
  if (( IS_ROOT )); then
    (cd "$PGBASE" && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_running() {  # our postmaster is alive (pg_ctl checks postmaster.pid)
  [[ -n $PGBIN && -f $PGDATA/PG_VERSION ]] && as_pg "$PGBIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

pg_ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -t 5; }

pg_pid() { head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || echo '?'; }

# sun_path is only 108 bytes, so a deep STACK_DIR (e.g. a pytest tmp dir) gets its
# socket in a short per-instance dir under /tmp instead. Clients use TCP anyway.
pg_socket_dir() {
  local d=$PGBASE/run
  (( ${#d} <= 80 )) || d=/tmp/blonet-pg-$(printf %s "$PGBASE" | sha256sum | cut -c1-12)
  echo "$d"
}

write_pg_config() {
  local f=$PGDATA/blonet.conf
  cat >"$f" <<EOF
# Generated by deploy/stack.sh on every start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCKDIR'
max_connections = 200
shared_buffers = 128MB
fsync = on
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
EOF
  # superuser postgres may connect over TCP without a password (the app bootstraps
  # roles and databases with it); every other role needs its scram password.
  cat >"$PGDATA/pg_hba.conf" <<EOF
# Generated by deploy/stack.sh on every start; edits are lost.
local all all                trust
host  all postgres 127.0.0.1/32 trust
host  all all      127.0.0.1/32 scram-sha-256
EOF
  (( IS_ROOT )) && chown postgres: "$f" "$PGDATA/pg_hba.conf"
  return 0
}

pg_start() {
  if (( IS_ROOT )) && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home postgres
  fi
  pg_locate
  find_pg_bin || die "postgres: no server binaries under /usr/lib/postgresql (deploy/setup.sh run installs them)"
  if pg_running; then
    pg_ready && { echo "postgres: already running on 127.0.0.1:$PGPORT (pid $(pg_pid))"; return 0; }
    die "postgres: pid $(pg_pid) is alive but 127.0.0.1:$PGPORT does not answer (stop it first; see $PGLOG)"
  fi
  port_open "$PGPORT" && die "postgres: port $PGPORT is taken by another process"

  SOCKDIR=$(pg_socket_dir)
  mkdir -p "$PGBASE" "$SOCKDIR"
  if (( IS_ROOT )); then
    pg_outside && chmod 755 "$PG_OUTSIDE"
    chown postgres: "$PGBASE" "$SOCKDIR"
    chmod 700 "$PGBASE"
    runuser -u postgres -- test -w "$PGBASE" \
      || die "postgres: user postgres cannot reach $PGBASE (a parent directory is not traversable)"
  fi

  local t0=$SECONDS
  if [[ ! -f $PGDATA/PG_VERSION ]]; then
    local locale=C
    locale -a 2>/dev/null | grep -qix 'c.utf-\?8' && locale=C.UTF-8
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale="$locale" \
      --auth-local=trust --auth-host=scram-sha-256 >"$PGBASE/initdb.log" 2>&1 \
      || die "postgres: initdb failed" "$PGBASE/initdb.log"
    # Our settings go last so they override what initdb wrote.
    echo "include_if_exists = 'blonet.conf'" >>"$PGDATA/postgresql.conf"
  fi
  write_pg_config

  # setsid: the postmaster gets its own session, like the broker.
  as_pg setsid -w "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$PGLOG" -w -t "$START_TIMEOUT" -s 8>&- \
    || die "postgres: failed to start" "$PGLOG"
  pg_ready || die "postgres: started but 127.0.0.1:$PGPORT does not answer" "$PGLOG"
  local where=
  pg_outside && where=", data in $PGBASE since user postgres cannot reach $STACK_DIR; 'make stop' deletes it"
  echo "postgres: started on 127.0.0.1:$PGPORT (pid $(pg_pid), $((SECONDS - t0))s$where)"
}

pg_stop() {
  pg_locate
  find_pg_bin || true
  if pg_running; then
    local pid
    pid=$(pg_pid)
    as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 -s \
      || die "postgres: pg_ctl stop failed (see $PGLOG)"
    echo "postgres: stopped (pid $pid)"
  else
    echo "postgres: not running"
  fi
  return 0
}

# `clean`: after stopping, forget a cluster kept outside the checkout (nothing would ever delete
# it otherwise), and the Kafka data with it so that the two never disagree.
forget_outside() {
  pg_locate
  pg_outside && [[ -d $PGBASE ]] || return 0
  rm -rf "$PGBASE"
  echo "postgres: deleted its data in $PGBASE"
  if [[ -d $KDIR ]]; then
    rm -rf "$STACK_DIR"/kafka "$STACK_DIR"/kafka-[0-9]*
    echo "kafka: deleted its data in $STACK_DIR/kafka*, to stay in step with the database"
  fi
}

# A fast restart that keeps the data wherever it lives.
pg_restart() {
  pg_locate
  find_pg_bin || die "postgres: no server binaries under /usr/lib/postgresql"
  pg_running || die "postgres: not running"
  as_pg "$PGBIN/pg_ctl" restart -D "$PGDATA" -m fast -w -t "$START_TIMEOUT" -s -l "$PGLOG" 8>&- \
    || die "postgres: restart failed" "$PGLOG"
  echo "postgres: restarted (pid $(pg_pid))"
}

pg_status() {
  pg_locate
  find_pg_bin || true
  if pg_running; then
    if pg_ready; then
      echo "postgres: running on 127.0.0.1:$PGPORT (pid $(pg_pid))"
      return 0
    fi
    echo "postgres: not answering on 127.0.0.1:$PGPORT (pid $(pg_pid) alive)"
    return 3
  fi
  echo "postgres: stopped (port $PGPORT)"
  return 3
}

# ----------------------------------------------------------------- main

usage() { die "usage: $0 {start|stop|clean|status|bootstrap|secrets|restart} [--brokers 1|3] [kafka|postgres|all]"; }

case ${2:-all} in
  kafka) comps=(kafka) ;;
  postgres) comps=(pg) ;;
  all) comps=(pg kafka) ;;
  *) usage ;;
esac

case ${1:-} in
  start | stop | clean | restart)
    # One start/stop at a time per stack (e.g. parallel test workers). The servers
    # are launched with this fd closed, so they never hold the lock.
    mkdir -p "$STACK_DIR"
    exec 8>"$STACK_DIR/.lock"
    flock 8 ;;
esac
case ${1:-} in
  start) for c in "${comps[@]}"; do "${c}_start"; done ;;
  stop)  for ((n = ${#comps[@]} - 1; n >= 0; n--)); do "${comps[n]}_stop"; done ;;
  clean)
    [[ ${comps[*]} == "pg kafka" ]] || die "stack: clean takes the whole stack"
    kafka_stop
    pg_stop
    forget_outside ;;
  restart)
    [[ ${comps[*]} == pg ]] || die "stack: restart is for postgres only (a broker restarts by stop and start)"
    pg_restart ;;
  secrets) echo "$SECRETS" ;;
  bootstrap)
    for ((i = 1; i <= $(stack_brokers); i++)); do printf '%s127.0.0.1:%s' "${sep:-}" "$(node_port "$i")"; sep=,; done
    echo ;;
  status)
    rc=0
    for c in "${comps[@]}"; do "${c}_status" || rc=3; done
    exit "$rc" ;;
  *) usage ;;
esac
