#!/usr/bin/env bash
# Runs every test of sluice on a fresh Debian machine (as root) or a developer's machine:
#   tests/run.sh
# 1. makes sure the Rust toolchain pinned in rust-toolchain.toml and its wasm32-wasip2 target
#    are installed (rustup installs them from the pin),
# 2. builds every wasm plugin and test guest once (plugins/build.sh),
# 3. installs the real PostHog SDKs the compatibility tests drive (posthog-python from PyPI,
#    posthog-node, posthog-js and playwright-core from npm, Debian's chromium), pinned, and the
#    JavaScript plugin SDK's toolchain (componentize-js, TypeScript), with which it builds the
#    example JS/TS plugins,
# 4. builds the s3s-fs S3-compatible server (crates.io, pinned) the export tests run, and the
#    Kafka-protocol broker helper (tests/broker: librdkafka's mock cluster) the Kafka tests run,
#    and installs Debian's clickhouse-server and redis-server (the tests start their own, on
#    free ports),
# 5. checks formatting and lints, then runs all unit, SDK and end-to-end tests (stopped, and
#    failed, if they run for over 40 minutes).
# Reuses CARGO_TARGET_DIR when it is set (CI keeps one outside the clone); works from nothing.
# Tools are cached outside the clone, keyed by version (SLUICE_TOOLS_DIR, default
# ~/.cache/sluice/tools).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
  echo "tests/run.sh: cargo and rustup are required (install Rust with rustup first)" >&2
  exit 1
fi
if ! command -v cc >/dev/null; then
  echo "tests/run.sh: installing a C compiler (needed to build SQLite and zstd)" >&2
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
rustup show active-toolchain >/dev/null # installs the pinned toolchain if missing
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null

target=${CARGO_TARGET_DIR:-$root/target}
export SLUICE_PLUGIN_DIR="$target/plugins"
plugins/build.sh "$SLUICE_PLUGIN_DIR"

# The real SDKs, installed outside the clone and reused while their pins are unchanged.
sdk="$target/sdk-clients"
need() { command -v "$1" >/dev/null || { echo "tests/run.sh: installing $2" >&2; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 >/dev/null; }; }
need node "nodejs npm"
need python3 "python3 python3-pip"
[ -x /usr/bin/chromium ] || need chromium chromium
if ! cmp -s tests/sdk/requirements.txt "$sdk/python/.installed" 2>/dev/null; then
  rm -rf "$sdk/python"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$sdk/python" -r tests/sdk/requirements.txt
  cp tests/sdk/requirements.txt "$sdk/python/.installed"
fi
if ! cmp -s tests/sdk/package-lock.json "$sdk/node/package-lock.json" 2>/dev/null || [ ! -d "$sdk/node/node_modules" ]; then
  rm -rf "$sdk/node" && mkdir -p "$sdk/node"
  cp tests/sdk/package.json tests/sdk/package-lock.json "$sdk/node/"
  (cd "$sdk/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
export SLUICE_SDK_DIR="$sdk"

# The JavaScript plugin SDK's toolchain (componentize-js and TypeScript from npm, pinned by
# sdk/js/package-lock.json), installed outside the clone and linked in; then the example JS/TS
# plugins and the JS test guests built once (again only when they, the SDK or the contract
# change).
js="$target/js-sdk"
if ! cmp -s sdk/js/package-lock.json "$js/package-lock.json" 2>/dev/null || [ ! -d "$js/node_modules" ]; then
  rm -rf "$js" && mkdir -p "$js"
  cp sdk/js/package.json sdk/js/package-lock.json "$js/"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi
# (A node_modules an author installed in sdk/js stays; a link from an earlier run is renewed.)
if [ -L sdk/js/node_modules ] || [ ! -e sdk/js/node_modules ]; then
  ln -sfn "$js/node_modules" sdk/js/node_modules
fi
export SLUICE_JS_PLUGIN_DIR="$target/js-plugins"
stamp=$(find sdk/js/src sdk/js/bin sdk/js/examples tests/js-guests wit/v1 sdk/js/package-lock.json -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
if [ "$stamp" != "$(cat "$SLUICE_JS_PLUGIN_DIR/.stamp" 2>/dev/null)" ]; then
  rm -rf "$SLUICE_JS_PLUGIN_DIR" && mkdir -p "$SLUICE_JS_PLUGIN_DIR"
  for example in sdk/js/examples/*/ tests/js-guests/*/; do
    name=$(basename "$example")
    node sdk/js/bin/sluice-js.mjs build "$example" --out "$SLUICE_JS_PLUGIN_DIR/$name.wasm"
  done
  echo "$stamp" > "$SLUICE_JS_PLUGIN_DIR/.stamp"
fi

# A real S3-compatible server for the export tests (it verifies SigV4 signatures).
tools=${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}
s3s_version=0.14.1
s3s="$tools/s3s-fs-$s3s_version/bin/s3s-fs"
if [ ! -x "$s3s" ]; then
  echo "tests/run.sh: building the s3s-fs S3 server $s3s_version (once, a few minutes)" >&2
  env -u CARGO_TARGET_DIR cargo install s3s-fs --version "$s3s_version" --features binary --locked \
    --root "$tools/s3s-fs-$s3s_version" --quiet
fi
export SLUICE_S3S_FS="$s3s"

# ClickHouse for the tests of sluice at scale; each test starts its own server on free ports
# with its data in a temp folder (tests/e2e/clickhouse_server.rs). Debian's package starts no
# service of its own.
[ -x /usr/sbin/clickhouse-server ] || need clickhouse-server clickhouse-server
export SLUICE_CLICKHOUSE=/usr/sbin/clickhouse-server

# Redis for the state nodes share; each test starts its own redis-server on a free port with its
# data in a temp folder (tests/e2e/redis_server.rs). Debian's package is not started here.
[ -x /usr/bin/redis-server ] || need redis-server redis-server
export SLUICE_REDIS_SERVER=/usr/bin/redis-server

# A Kafka-protocol broker several sluice processes share (librdkafka's mock cluster).
cargo build --locked -p sluice-test-broker
export SLUICE_TEST_BROKER="$target/debug/sluice-test-broker"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Every test built first, so that the limit below is the tests' own: a test that hangs fails the
# run within it (the harness has named each test running for over 60 s) instead of using up
# CI's time.
cargo test --locked --workspace --no-run
limit=40m
timeout "$limit" cargo test --locked --workspace || {
  status=$?
  [ "$status" -ne 124 ] || echo "tests/run.sh: the tests were still running after $limit and were stopped" >&2
  exit "$status"
}
