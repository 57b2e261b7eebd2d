#!/usr/bin/env bash
# Run: examples/quickstart.sh [full]
# Builds the wasm plugins and sluice, then serves examples/quickstart.toml (downsampling and an
# export), or with `full` examples/full.toml (GeoIP from a demo database it also builds, an
# export, recording retention), on 127.0.0.1:8000 (override with SLUICE_LISTEN). No external
# services. Stop with Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
example=${1:-quickstart}
if [ "$example" != quickstart ] && [ "$example" != full ]; then
  echo "usage: examples/quickstart.sh [full]" >&2
  exit 2
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
plugins/build.sh examples/plugins
cargo build --release --locked -p sluice
target=${CARGO_TARGET_DIR:-target}
if [ "$example" = full ]; then
  cargo build --release --locked -p sluice-demo-geoip
  "$target/release/sluice-demo-geoip" examples/data/full/demo-city.mmdb
fi
exec "$target/release/sluice" serve --config "examples/$example.toml"
