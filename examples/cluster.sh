#!/usr/bin/env bash
# Run: examples/cluster.sh
# A sluice cluster on this machine, in one command: a Kafka-protocol broker (librdkafka's mock
# cluster, the tests' helper), ClickHouse (Debian's clickhouse-server), Redis (Debian's
# redis-server), two capture nodes (examples/cluster/capture.toml, --role capture) and two
# worker nodes that also load, schedule and export (examples/cluster/worker.toml,
# --role worker,loader,scheduler,exporter). Prints where to send events and how to read them back; stops
# everything on Ctrl-C. Everything it writes is under examples/data/cluster/ (cleared at each
# start). See examples/cluster/README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
clickhouse=${SLUICE_CLICKHOUSE:-/usr/sbin/clickhouse-server}
if [ ! -x "$clickhouse" ]; then
  echo "clickhouse-server is missing: install it (Debian: apt-get install clickhouse-server) or set SLUICE_CLICKHOUSE" >&2
  exit 1
fi
redis_server=${SLUICE_REDIS_SERVER:-/usr/bin/redis-server}
if [ ! -x "$redis_server" ]; then
  echo "redis-server is missing: install it (Debian: apt-get install redis-server) or set SLUICE_REDIS_SERVER" >&2
  exit 1
fi
plugins/build.sh examples/plugins
cargo build --release --locked -p sluice -p sluice-test-broker
target=${CARGO_TARGET_DIR:-target}
sluice="$(cd "$target" && pwd)/release/sluice"

run=examples/data/cluster
rm -rf "$run" && mkdir -p "$run"
pids=()
cleanup() { # the nodes first (they finish their rounds on the engines), then the engines
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The broker: it prints its address, then waits for commands on its stdin (kept open by a FIFO).
mkfifo "$run/broker.in"
"$target/release/sluice-test-broker" sluice_ingest:4 sluice_events:4 sluice_recordings:2 \
  sluice_dead_letters:2 sluice_plugin_logs:2 <"$run/broker.in" >"$run/broker.out" &
pids+=($!)
exec 3>"$run/broker.in"
until grep -q '^brokers ' "$run/broker.out" 2>/dev/null; do sleep 0.1; done
brokers=$(sed -n 's/^brokers //p' "$run/broker.out")

# ClickHouse, with its data under the run folder.
ch_http=$(free_port)
ch_tcp=$(free_port)
mkdir -p "$run/clickhouse"
ch="$root/$run/clickhouse"
cat >"$ch/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$ch/log/server.log</log><errorlog>$ch/log/error.log</errorlog></logger>
  <http_port>$ch_http</http_port>
  <tcp_port>$ch_tcp</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$ch/data/</path>
  <tmp_path>$ch/tmp/</tmp_path>
  <user_files_path>$ch/user_files/</user_files_path>
  <format_schema_path>$ch/format_schemas/</format_schema_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
XML
"$clickhouse" --config-file="$ch/config.xml" >"$ch/stdout.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$ch_http/ping" >/dev/null; do sleep 0.2; done

# Redis, with its append-only file (fsync on every write) under the run folder.
redis_port=$(free_port)
mkdir -p "$run/redis"
"$redis_server" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes \
  --appendfsync always --dir "$root/$run/redis" >"$run/redis/stdout.log" 2>&1 &
pids+=($!)
until (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; do sleep 0.1; done

# Each node: its config with the real addresses, its own data folder, its own port.
node() { # name template roles port
  local dir="$root/$run/$1"
  mkdir -p "$dir"
  ln -s "$root/examples/plugins" "$dir/plugins"
  sed -e "s|127.0.0.1:9092|$brokers|" -e "s|http://127.0.0.1:8123|http://127.0.0.1:$ch_http|" \
    -e "s|redis://127.0.0.1:6379|redis://127.0.0.1:$redis_port|" \
    -e "s|^listen = .*|listen = \"127.0.0.1:$4\"|" "examples/cluster/$2.toml" >"$dir/sluice.toml"
  # Each node's admin API (sluice reload, /admin/v1/...) on its port plus 100.
  SLUICE_ADMIN_LISTEN="127.0.0.1:$(($4 + 100))" \
    "$sluice" serve --role "$3" --config "$dir/sluice.toml" >"$dir/stdout.log" 2>"$dir/stderr.log" &
  pids+=($!)
}
node capture-1 capture capture 8000
node capture-2 capture capture 8001
node worker-1 worker worker,loader,scheduler,exporter 8010
node worker-2 worker worker,loader,scheduler,exporter 8011
for port in 8000 8001 8010 8011; do
  until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do
    sleep 0.2
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a node stopped; its stderr.log under $run/ says why" >&2; exit 1; }
    done
  done
done

cat <<TXT
sluice cluster running: broker $brokers, ClickHouse http://127.0.0.1:$ch_http, Redis redis://127.0.0.1:$redis_port
  capture nodes: http://127.0.0.1:8000 and http://127.0.0.1:8001 (token phc_cluster)
  worker+loader+scheduler+exporter nodes: http://127.0.0.1:8010 and http://127.0.0.1:8011 (/ready, /metrics)
Send events (any PostHog SDK with host http://127.0.0.1:8000 works too):
  curl -s -X POST http://127.0.0.1:8000/batch -d '{"api_key":"phc_cluster","batch":[{"event":"signed_up","distinct_id":"ann","properties":{"email":"a@example.com","plan":"pro"}}]}'
Read them back from ClickHouse (about a second later; downsampling keeps half of the users):
  $sluice events --config $run/worker-1/sluice.toml
The export writes every stored event to $run/lake/events/ (one node at a time; which one, its
cursor and its lag): $sluice exports --config $run/worker-1/sluice.toml
Recording retention runs daily on one node; run it now: $sluice tasks run --config $run/worker-1/sluice.toml --installation team-1/retention --task retain
Logs of each node: $run/<node>/stderr.log. Ctrl-C stops everything.
TXT
wait -n "${pids[@]}" || true
echo "a process of the cluster stopped; stopping the rest (see $run/*/stderr.log)" >&2
