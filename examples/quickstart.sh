#!/usr/bin/env bash
# Run: examples/quickstart.sh
# Builds the wasm plugins and sluice, then serves the quickstart chain on 127.0.0.1:8000
# (override with SLUICE_LISTEN). Stop with Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
plugins/build.sh examples/plugins
cargo build --release --locked -p sluice
exec "${CARGO_TARGET_DIR:-target}/release/sluice" serve --config examples/quickstart.toml
