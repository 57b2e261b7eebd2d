#!/usr/bin/env bash
# Builds every wasm plugin (first-party plugins and test guests) once for wasm32-wasip2 and copies
# the components into the folder given as $1, named after their crate without the prefix
# (sluice_plugin_downsample.wasm -> downsample.wasm, sluice_plugin_s3_export.wasm ->
# s3-export.wasm, sluice_guest_adversary.wasm -> adversary.wasm).
# Honours CARGO_TARGET_DIR. Usage: plugins/build.sh OUT_DIR
set -euo pipefail
out=${1:?usage: plugins/build.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
packages=()
for manifest in plugins/*/Cargo.toml tests/guests/*/Cargo.toml; do
  packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n1)")
done
cargo build --release --locked --target wasm32-wasip2 "${packages[@]}"
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$out"
# The fix of the guest with a bug, for failure bundles: built apart (only that crate rebuilds),
# kept under its own name before the main build's copy is taken.
cargo build --release --locked --target wasm32-wasip2 -p sluice-guest-wobbly --features fixed
cp "$target/wasm32-wasip2/release/sluice_guest_wobbly.wasm" "$out/wobbly-fixed.wasm"
cargo build --release --locked --target wasm32-wasip2 -p sluice-guest-wobbly
for wasm in "$target"/wasm32-wasip2/release/sluice_plugin_*.wasm "$target"/wasm32-wasip2/release/sluice_guest_*.wasm; do
  name=$(basename "$wasm" .wasm)
  name=${name#sluice_plugin_}
  name=${name#sluice_guest_}
  name=${name//_/-}
  cp "$wasm" "$out/$name.wasm"
done
echo "plugins built into $out: $(cd "$out" && ls | tr '\n' ' ')"
