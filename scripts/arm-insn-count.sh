#!/usr/bin/env bash
# Guest instructions per frame on an emulated ARM core: a network's cost on a
# Pi's CPU, measured where no Pi is. Wall time under qemu means nothing; the
# count of executed instructions is a fair proxy for the relative cost of two
# runs on the same core (it ignores memory stalls and that a NEON instruction
# may take more cycles than another).
#
#   scripts/arm-insn-count.sh [-cpu C[,C...]] MODEL.onnx...
#       `fer-edge bench` (the whole frame: JPEG decode, network, boxes) of each model
#   scripts/arm-insn-count.sh [-cpu C[,C...]] --peers
#       tract against onnxruntime on the same graph: the built-in model with its
#       scan ops replaced by stand-ins (peer_bench.make_standin), the network
#       alone in both; then the built-in model's network and whole frame
#
# C is cortex-a72 (Raspberry Pi 4) or cortex-a76 (Pi 5, the default). Needs
# qemu-user, gcc and an aarch64 build (or FER_EDGE=path to one):
#   cargo build --release --target aarch64-unknown-linux-gnu
# --peers also needs npm (onnxruntime's aarch64 library comes from the npm
# package onnxruntime-node@$ORT_VERSION), the training venv (.venv) and builds
# tools/ort-peer. Counts one thread (--threads 1): the plugin's counter is
# not atomic. One frame is the difference between 3 frames and 1, halved,
# after 1 warm-up frame; fer-edge's network alone is what `--profile` (the
# network run once more a frame, each op timed) adds to that.
set -euo pipefail
shopt -s inherit_errexit # a failed count inside $(...) stops the script
cd "$(dirname "$0")/.."
cpus=cortex-a76
if [[ ${1:-} == -cpu ]]; then cpus=$2; shift 2; fi
binary=${FER_EDGE:-target/aarch64-unknown-linux-gnu/release/fer-edge}
[[ -x $binary ]] || { echo "no $binary: cargo build --release --target aarch64-unknown-linux-gnu" >&2; exit 1; }
ort_version=${ORT_VERSION:-1.30.0}
work=target/arm-insn-count # git-ignored: the plugin, sysroots, onnxruntime, models
mkdir -p "$work"
plugin=$work/insn_count.so
gcc -O2 -shared -fPIC -o "$plugin" scripts/insn_count.c

# A sysroot for qemu's -L: the cross glibc, and the /proc/cpuinfo a Pi shows
# for core $1. qemu 7 shows the guest the host's (x86) file, on which
# onnxruntime's cpuinfo library crashes. (tract reads the "CPU part" too; its
# f32 counts on A72 and A76 are the same with either file, within 0.1%.)
sysroot() {
    local dir=$work/sysroot-$1 part variant revision features p
    case $1 in
    cortex-a72) part=0xd08 variant=0x0 revision=3 features="fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76) part=0xd0b variant=0x4 revision=1
        features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) echo "no /proc/cpuinfo known for $1" >&2; exit 1 ;;
    esac
    mkdir -p "$dir/proc"
    ln -sfn /usr/aarch64-linux-gnu/lib "$dir/lib"
    for ((p = 0; p < $(getconf _NPROCESSORS_CONF); p++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$p" "$features"
        printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %d\n\n' "$variant" "$part" "$revision"
    done >"$dir/proc/cpuinfo"
    echo "$dir"
}

# instructions of one run of the aarch64 program "$@" on $cpu
count() {
    if ! qemu-aarch64 -cpu "$cpu" -plugin "$plugin" -L "$root" "$@" >/dev/null 2>"$work/qemu.log"; then
        cat "$work/qemu.log" >&2
        return 1
    fi
    sed -n 's/^instructions //p' "$work/qemu.log"
}

# the runners: a command line without --frames
fer_edge() { count "$binary" bench --device cpu --threads 1 --warmup 1 "$@"; }
ort_peer() { count "$ort_peer" --lib "$ort_lib" --threads 1 --warmup 1 "$@"; }

# instructions of one frame of runner "$@"
per_frame() {
    local one three
    one=$("$@" --frames 1)
    three=$("$@" --frames 3)
    echo $(((three - one) / 2))
}

# instructions of one frame of fer-edge's network alone, on model args "$@":
# --profile runs the network by itself once more a frame (after decoding the
# image once, which the difference of 3 and 1 frames cancels)
network() {
    local profiled plain
    profiled=$(per_frame fer_edge "$@" --profile)
    plain=$(per_frame fer_edge "$@")
    echo $((profiled - plain))
}

row() { printf '%-58s %14s\n' "$@"; }

# onnxruntime's aarch64 C library (npm), tools/ort-peer, the stand-in graph and its input
prepare_peers() {
    ort_lib=$work/onnxruntime-$ort_version/libonnxruntime.so.1
    if [[ ! -f $ort_lib ]]; then
        (cd "$work" && npm pack --silent "onnxruntime-node@$ort_version" >/dev/null)
        mkdir -p "${ort_lib%/*}"
        tar xzf "$work/onnxruntime-node-$ort_version.tgz" -C "${ort_lib%/*}" --strip-components=5 \
            package/bin/napi-v6/linux/arm64/libonnxruntime.so.1
        rm "$work/onnxruntime-node-$ort_version.tgz"
    fi
    cargo build --quiet --release --target aarch64-unknown-linux-gnu --manifest-path tools/ort-peer/Cargo.toml
    ort_peer=tools/ort-peer/target/aarch64-unknown-linux-gnu/release/ort-peer
    standin=$work/standin.onnx input=$work/input.npy
    [[ -f $standin && -f $input && $standin -nt models/fer-yolo-mamba-nano.onnx ]] ||
        (cd training && ../.venv/bin/python - "../$standin" "../$input") <<'EOF'
import sys

import numpy as np
import onnx

from fer_edge_training.peer_bench import ONE_FACE, make_standin
from fer_edge_training.preprocess import load_rgb, preprocess

model = onnx.load("../models/fer-yolo-mamba-nano.onnx")
size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
onnx.save_model(make_standin(model), sys.argv[1])
np.save(sys.argv[2], preprocess(load_rgb(str(ONE_FACE)), size)[0])
EOF
}

if [[ ${1:-} == --peers ]]; then prepare_peers; fi
for cpu in ${cpus//,/ }; do
    root=$(sysroot "$cpu")
    echo "qemu-aarch64 -cpu $cpu, --threads 1, fer-edge $(git rev-parse --short HEAD)"
    row "" "instructions/frame"
    if [[ ${1:-} == --peers ]]; then
        tract=$(network --model "$standin")
        ort=$(per_frame ort_peer --model "$standin" --input "$input")
        row "dense stand-in graph, network: tract (fer-edge)" "$tract"
        row "dense stand-in graph, network: onnxruntime $ort_version" "$ort"
        row "  tract / onnxruntime" "$(awk "BEGIN { printf \"%.2f\", $tract / $ort }")"
        net=$(network) frame=$(per_frame fer_edge)
        row "built-in model, network: fer-edge (tract + scan ops)" "$net"
        row "built-in model, whole frame: fer-edge bench" "$frame"
    else
        for model in "$@"; do
            frame=$(per_frame fer_edge --model "$model")
            row "$model" "$frame"
        done
    fi
done
