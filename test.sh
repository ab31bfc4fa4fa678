#!/usr/bin/env bash
# The whole fer-edge test suite: formatting and lints, the Rust tests on
# x86_64 and on aarch64 under qemu (as a Raspberry Pi 4 and a Pi 5 CPU), and
# the Python tests of training/.
#
# Needs: the aarch64-unknown-linux-gnu Rust target, gcc-aarch64-linux-gnu,
# qemu-user, and the venv .venv (see .ci/run, which installs all of them);
# also the armv7-unknown-linux-gnueabihf target with gcc-arm-linux-gnueabihf,
# mosquitto, systemd-analyze (systemd/check.sh), and libclang for the check
# of the committed V4L2 bindings (builds never need it).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-.venv/bin/python}
# Each phase's heading says when it starts, so a slow run shows where its time went.
phase() { echo "== $* [$(date -u +%T), ${SECONDS} s in]"; }

phase "rustfmt, clippy, rustdoc (broken intra-doc links fail)"
cargo fmt --check
cargo clippy --all-targets --features cuda -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --document-private-items

phase "V4L2 bindings: the committed ones match linux/videodev2.h; no bindgen in any build"
scripts/v4l2-bindings.sh --check
for crate in bindgen clang-sys; do
    if cargo tree --target x86_64-unknown-linux-gnu --target aarch64-unknown-linux-gnu \
        --target armv7-unknown-linux-gnueabihf --features cuda -e normal,build -i "$crate" \
        >/dev/null 2>&1; then
        echo "$crate is in the dependency tree again: builds would need libclang" >&2
        exit 1
    fi
done
# The V4L2 crates from an empty target directory with libclang out of reach.
mkdir -p target/no-libclang/bin
printf '#!/bin/sh\necho "no clang here" >&2; exit 1\n' > target/no-libclang/bin/clang
chmod +x target/no-libclang/bin/clang
cp target/no-libclang/bin/clang target/no-libclang/bin/llvm-config
rm -rf target/no-libclang/build
LIBCLANG_PATH=/nonexistent PATH="$PWD/target/no-libclang/bin:$PATH" \
    cargo build --quiet -p v4l --target-dir target/no-libclang/build --target aarch64-unknown-linux-gnu

phase "Rust tests, x86_64 (with the cuda feature: its GPU test skips without a GPU)"
cargo test --release --features cuda

phase "Rust tests, aarch64 under qemu -cpu cortex-a72 (Raspberry Pi 4)"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu" \
    cargo test --release --target aarch64-unknown-linux-gnu
# The Pi 5 CPU picks other tract kernels: rerun what depends on the CPU
# (scan kernels, the whole network, on-device accuracy of the f32 and int8
# models: the A76 has the dot-product instructions tract's int8 kernels use), not
# the I/O tests.
phase "Rust tests, aarch64 under qemu -cpu cortex-a76 (Raspberry Pi 5): kernels, network, accuracy"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu" \
    cargo test --release --target aarch64-unknown-linux-gnu --test scan_kernels --test cross_scan --test runtime --test accuracy --test real_photo

phase "systemd unit: systemd-analyze verify and security (systemd/check.sh)"
systemd/check.sh

phase "armv7 (32-bit Pi OS): release build, one detect under qemu-arm"
cargo build --release --target armv7-unknown-linux-gnueabihf --bin fer-edge
qemu-arm -L /usr/arm-linux-gnueabihf target/armv7-unknown-linux-gnueabihf/release/fer-edge \
    detect samples/obama.jpg | grep '"faces"'

phase "ruff, pytest"
"$PY" -m ruff check training
"$PY" -m ruff format --check training
"$PY" -m pytest training -q
phase "done"
