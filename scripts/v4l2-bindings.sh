#!/usr/bin/env bash
# Regenerates the committed V4L2 bindings of vendor/v4l2-sys-mit (one file per
# target architecture) from linux/videodev2.h with bindgen 0.65.1, the version
# the upstream crate's build script uses. With --check, writes nothing and
# fails when a committed file differs from what the headers give now.
#
# Needs libclang and the target headers (Debian: libclang-dev,
# libc6-dev-arm64-cross, libc6-dev-armhf-cross); bindgen-cli is installed
# into target/tools on first use. Builds never run this: only a change of the
# kernel headers or of the supported architectures calls for it.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

bindgen=target/tools/bin/bindgen
if ! "$bindgen" --version 2>/dev/null | grep -q "bindgen 0.65.1"; then
    cargo install --quiet --root target/tools --locked bindgen-cli --version 0.65.1
fi

crate=vendor/v4l2-sys-mit
drift=0
# Rust target_arch -> clang target triple
for pair in x86_64:x86_64-linux-gnu aarch64:aarch64-linux-gnu arm:arm-linux-gnueabihf; do
    arch=${pair%%:*}
    triple=${pair#*:}
    generated=$(mktemp)
    "$bindgen" "$crate/wrapper.h" --no-layout-tests -o "$generated" -- --target="$triple"
    if $check; then
        if ! cmp -s "$generated" "$crate/src/$arch.rs"; then
            echo "v4l2 bindings: $crate/src/$arch.rs differs from what bindgen gives now:" >&2
            diff -u "$crate/src/$arch.rs" "$generated" | head -20 >&2 || true
            drift=1
        fi
        rm -f "$generated"
    else
        chmod 0644 "$generated"
        mv "$generated" "$crate/src/$arch.rs"
        echo "wrote $crate/src/$arch.rs"
    fi
done
if $check; then
    if [ "$drift" -ne 0 ]; then
        echo "run scripts/v4l2-bindings.sh and commit the result" >&2
        exit 1
    fi
    echo "v4l2 bindings: up to date"
fi
