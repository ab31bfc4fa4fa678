#!/usr/bin/env bash
# Guest instructions per frame of `fer-edge bench` on an emulated ARM core, for
# each model given: the network's cost on a Pi's CPU, measured where no Pi is.
# Wall time under qemu means nothing; the count of executed instructions is a
# fair proxy for the relative cost of two models on the same core (it ignores
# memory stalls and that a NEON instruction may take more cycles than another).
#
#   scripts/arm-insn-count.sh [-cpu cortex-a76] MODEL.onnx...
#
# Needs qemu-user, gcc and an aarch64 build:
#   cargo build --release --target aarch64-unknown-linux-gnu
# Counts one thread (--threads 1): the plugin's counter is not atomic.
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=cortex-a76
if [[ ${1:-} == -cpu ]]; then cpu=$2; shift 2; fi
binary=target/aarch64-unknown-linux-gnu/release/fer-edge
[[ -x $binary ]] || { echo "no $binary: cargo build --release --target aarch64-unknown-linux-gnu" >&2; exit 1; }
plugin=target/insn_count.so
gcc -O2 -shared -fPIC -o "$plugin" scripts/insn_count.c

# instructions of a bench run of $2 frames of model $1 (after 1 warm-up frame)
count() {
    qemu-aarch64 -cpu "$cpu" -plugin "$plugin" -L /usr/aarch64-linux-gnu "$binary" \
        bench --device cpu --threads 1 --warmup 1 --frames "$2" --model "$1" 2>&1 >/dev/null |
        sed -n 's/^instructions //p'
}

echo "qemu-aarch64 -cpu $cpu, fer-edge bench --threads 1 ($(git rev-parse --short HEAD))"
printf '%-50s %18s\n' model "instructions/frame"
for model in "$@"; do
    one=$(count "$model" 1)
    three=$(count "$model" 3)
    printf '%-50s %18d\n' "$model" $(((three - one) / 2))
done
