#!/usr/bin/env bash
# The whole fer-edge test suite: formatting and lints, the Rust tests on
# x86_64 and on aarch64 under qemu (as a Raspberry Pi 4 and a Pi 5 CPU), and
# the Python tests of training/.
#
# Needs: the aarch64-unknown-linux-gnu Rust target, gcc-aarch64-linux-gnu,
# qemu-user, and the venv .venv (see .ci/run, which installs all of them).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-.venv/bin/python}

echo "== rustfmt, clippy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== Rust tests, x86_64"
cargo test --release

for cpu in cortex-a72 cortex-a76; do
    echo "== Rust tests, aarch64 under qemu -cpu $cpu"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
        cargo test --release --target aarch64-unknown-linux-gnu
done

echo "== ruff, pytest"
"$PY" -m ruff check training
"$PY" -m ruff format --check training
"$PY" -m pytest training -q
