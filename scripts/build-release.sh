#!/usr/bin/env bash
# Builds the deployable fer-edge binaries (--profile dist: thin LTO, stripped)
# for the kiosk boards and prints the newest glibc symbol version each needs.
#
#   scripts/build-release.sh                    # both targets
#   TARGETS=armv7-unknown-linux-gnueabihf scripts/build-release.sh
#   USE_ZIG=0 scripts/build-release.sh          # force the Debian cross gcc
#
# Targets: aarch64-unknown-linux-gnu (Pi 3/4/5 with 64-bit Pi OS, Jetson) and
# armv7-unknown-linux-gnueabihf (32-bit Pi OS).
#
# With cargo-zigbuild and zig the binaries link against glibc $GLIBC
# (default 2.31), so they run on Pi OS bullseye and JetPack 5 as well as on
# bookworm / JetPack 6. Without them, the Debian 12 cross gcc of
# .cargo/config.toml is used and the binaries need GLIBC_2.35 (hypot), so
# bookworm / JetPack 6 only. To get them:
#   cargo install --locked cargo-zigbuild
#   python3 -m venv ~/.cache/fer-edge/zig && ~/.cache/fer-edge/zig/bin/pip install ziglang
# (or any `zig` on PATH). Keep zig OUTSIDE this repository, not in .venv:
# zig 0.17 prints its include directories relative to the current directory
# when they lie under it, cargo-zigbuild hands them to bindgen as they are,
# and bindgen (run from the v4l2-sys-mit build directory) then cannot find
# linux/videodev2.h.
# Either way bindgen (the V4L2 bindings of the v4l crate) needs libclang.
# zig brings its own C compiler and target headers; the Debian cross gcc path
# needs the cross packages (bindgen reads linux/videodev2.h from
# /usr/<triple>/include, hence the --sysroot below):
#   apt-get install libclang-dev clang gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
#       gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
#   rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=${TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
GLIBC=${GLIBC:-2.31}
PROFILE=${PROFILE:-dist}
USE_ZIG=${USE_ZIG:-auto}

# cargo-zigbuild finds zig as `python3 -m ziglang` or as `zig` on PATH:
# putting the zig venv first makes its python3 (with the ziglang wheel) the one.
ZIG_VENV=${ZIG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fer-edge/zig}
if [ -x "$ZIG_VENV/bin/python3" ]; then
    export PATH="$ZIG_VENV/bin:$PATH"
fi
have_zig() {
    cargo zigbuild --help >/dev/null 2>&1 &&
        { command -v zig >/dev/null || python3 -c 'import ziglang' 2>/dev/null; }
}
case "$USE_ZIG" in
auto) if have_zig; then USE_ZIG=1; else USE_ZIG=0; fi ;;
1) have_zig || { echo "USE_ZIG=1 but cargo-zigbuild or zig is missing" >&2; exit 1; } ;;
esac

sysroot() {
    case "$1" in
    aarch64-unknown-linux-gnu) echo /usr/aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo /usr/arm-linux-gnueabihf ;;
    *) echo "unknown target $1" >&2; return 1 ;;
    esac
}

# Newest GLIBC_x.y the binary's dynamic symbols ask for. readelf reads any
# ELF whatever the host; objdump -T needs the target's binutils.
max_glibc() {
    local syms
    if syms=$(readelf --dyn-syms --wide "$1" 2>/dev/null) && [ -n "$syms" ]; then :;
    else syms=$(objdump -T "$1"); fi
    printf '%s\n' "$syms" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -u -V | tail -n 1
}

summary=()
for target in $TARGETS; do
    root=$(sysroot "$target")
    # bindgen (v4l2-sys-mit) must parse the target's headers, not the host's.
    triple_var=${target//-/_}
    export "BINDGEN_EXTRA_CLANG_ARGS_${triple_var}=--sysroot=$root"
    start=$(date +%s)
    if [ "$USE_ZIG" = 1 ]; then
        echo "== cargo zigbuild --profile $PROFILE --target $target.$GLIBC"
        cargo zigbuild --profile "$PROFILE" --target "$target.$GLIBC" --bin fer-edge
        how="cargo-zigbuild, glibc $GLIBC"
    else
        echo "== cargo build --profile $PROFILE --target $target (Debian cross gcc)"
        cargo build --profile "$PROFILE" --target "$target" --bin fer-edge
        how="Debian cross gcc"
    fi
    bin=${CARGO_TARGET_DIR:-target}/$target/$PROFILE/fer-edge
    need=$(max_glibc "$bin")
    summary+=("$bin: $(du -h "$bin" | cut -f1), needs $need ($how, $(($(date +%s) - start)) s)")
done

echo "== built"
printf '%s\n' "${summary[@]}"
