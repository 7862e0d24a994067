#!/usr/bin/env bash
# The GPU checks for a machine with a real GPU but no Rust toolchain, in one
# prepared run: the GPU test suites, `wgcnn check` (every kernel against the
# CPU reference), `check --against` the PyTorch fixtures, `bench gemm` (with
# the adapter's multiply-add peak and each product's share of it, and each
# GEMM kernel alone at the largest size), `bench train` and `bench
# layers`, and the side-by-side table against PyTorch (CUDA when it sees a
# GPU).
#
#   bash examples/device_check.sh pack   # here: build, strip and bundle the binaries
#   bash examples/device_check.sh run    # there (or here, on lavapipe): run everything
#   bash examples/device_check.sh split-k WGCNN_BINARY LOG   # the split-K rounds alone
#
# `pack` writes .device/bundle.tar.gz (the release `wgcnn` and the test
# binaries that use the GPU, stripped) and .gl (the Vulkan loader's packages);
# both are git-ignored, so name both in the device tool's `carry`. Test
# binaries carry their build's absolute paths (fixtures, the `wgcnn` binary),
# so `run` extracts the bundle into this checkout and, where the checkout
# sits elsewhere, links the build's path to it.
#
# `run` uses wgcnn's default (best) adapter, prints everything and, where
# $OUT is set, keeps a log and the JSON figures there. Set
# WGCNN_DEVICE_CHECK_QUICK=1 for fewer benchmark sizes.
set -uo pipefail
cd "$(dirname "$0")/.."

# Test suites that run on the GPU (tests/*.rs).
GPU_TESTS="gpu_ops gpu_resident gpu_timer gpu_subgroups gpu_subgroup_sizes gpu_precompile gpu_peak gpu_webgpu_limits gemm_tune network training robustness resume against portability"

pack() {
    set -e
    local json
    json="$(mktemp)"
    cargo build --release --bins
    cargo test --release --no-run --message-format=json >"$json"
    rm -rf .device && mkdir -p .device/tests target/release
    python3 - "$json" "$GPU_TESTS" <<'PY'
import json, shutil, sys
wanted = set(sys.argv[2].split())
found = {}
for line in open(sys.argv[1]):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    if "test" in target["kind"] and target["name"] in wanted:
        found[target["name"]] = msg["executable"]
missing = wanted - found.keys()
if missing:
    sys.exit(f"test binaries not built: {sorted(missing)}")
for name, path in sorted(found.items()):
    shutil.copy(path, f".device/tests/{name}")
PY
    cp target/release/wgcnn .device/wgcnn
    strip .device/wgcnn .device/tests/*
    pwd >.device/manifest_dir
    tar -czf .device/bundle.tar.gz -C .device wgcnn tests manifest_dir
    rm -rf .device/wgcnn .device/tests
    # The Vulkan loader for a machine without one (amd64 packages, whatever
    # this machine is), as the device tool's README gives it.
    if [ ! -d .gl ]; then
        mkdir -p .gl /tmp/amd64/partial
        local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
        apt-get "${o[@]}" update -qq
        (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    fi
    ls -l .device/bundle.tar.gz
    du -sh .gl
    echo "carry .device and .gl"
}

# Runs one stage under a time limit (seconds), logging its output and exit
# status; a failing or overrunning stage does not stop the others, so a lease
# that runs short still returns the stages before it.
FAILED=""
stage() {
    local name="$1" seconds="$2"
    shift 2
    echo "== [$(date +%T)] $name: $*"
    if ! timeout --kill-after=5 "$seconds" "$@"; then
        FAILED="$FAILED $name"
        echo "== $name FAILED"
    fi
}

# Split-K against none (WGCNN_SPLIT_K=0), alternating, two rounds: the
# products it splits (fashion-cnn's first fully connected layer's forward
# at batch 128 and 256, and 1024³) and training the models whose such
# layer it splits. JSON lines gain "split_k": 0 or 1.
split_k_rounds() {
    local wgcnn="$1" log="$2"
    local tag
    for round in 1 2; do
        for split in 0 1; do
            echo "-- round $round, WGCNN_SPLIT_K=$split"
            tag="s/^{/{\"split_k\":$split,/"
            WGCNN_SPLIT_K=$split "$wgcnn" bench gemm --shape 128x256x3136 \
                --shape 256x256x3136 --shape 1024x1024x1024 --runs 5 --json | sed "$tag" | tee -a "$log"
            WGCNN_SPLIT_K=$split "$wgcnn" bench train --model fashion-cnn --model cifar-cnn \
                --batch-size 128 --batch-size 256 --runs 3 --json | sed "$tag" | tee -a "$log"
        done
    done
}

run() {
    local log_dir="${OUT:-.device/out}"
    mkdir -p "$log_dir"
    exec > >(tee "$log_dir/device_check.log") 2>&1

    # The Vulkan loader, where the machine lacks one (.gl holds its packages).
    if ! ldconfig -p | grep -q libvulkan && [ -d .gl ]; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
    export WGCNN_REQUIRE_GPU=1

    if [ -f .device/bundle.tar.gz ]; then
        tar -xzf .device/bundle.tar.gz -C .device
        local built_in
        built_in="$(cat .device/manifest_dir)"
        if [ "$built_in" != "$PWD" ] && [ ! -e "$built_in" ]; then
            mkdir -p "$(dirname "$built_in")"
            ln -s "$PWD" "$built_in"
        fi
        # A build already here (this machine built the bundle) stays.
        if [ ! -x target/release/wgcnn ]; then
            mkdir -p target/release
            cp .device/wgcnn target/release/wgcnn
        fi
    fi
    local wgcnn=target/release/wgcnn
    [ -x "$wgcnn" ] || { echo "no $wgcnn: run 'pack' first (or cargo build --release)"; exit 1; }

    stage devices 20 "$wgcnn" devices
    if ! "$wgcnn" devices 2>/dev/null | grep -qE "DiscreteGpu|IntegratedGpu" && [ -d /usr/local/nvidia ]; then
        # The NVIDIA driver's Vulkan ICD lives outside the loader's search path.
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
        stage devices-nvidia 20 "$wgcnn" devices
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv

    # Most wanted first: correctness, then the figures, then the suites.
    local sizes=(--size 1024 --size 2048 --size 4096)
    local batches=(--batch-size 64 --batch-size 128 --batch-size 256)
    if [ -n "${WGCNN_DEVICE_CHECK_QUICK:-}" ]; then
        sizes=(--size 1024)
        batches=(--batch-size 64)
    fi
    # First, with empty caches: the cold first step of each model.
    stage bench-train-cold 120 bash -o pipefail -c "XDG_CACHE_HOME=\$(mktemp -d) $wgcnn bench train --batch-size 64 --runs 3 --json | tee $log_dir/train_cold.jsonl"
    stage check 150 "$wgcnn" check
    stage check-against 60 "$wgcnn" check --against tests/fixtures/pytorch
    stage bench-peak 30 "$wgcnn" bench peak
    stage bench-gemm 120 bash -o pipefail -c "$wgcnn bench gemm ${sizes[*]} --json | tee $log_dir/gemm.jsonl"
    # Each GPU GEMM kernel alone on the same sizes and the models' conv
    # shapes (the largest size is the fp32-peak target's).
    for kernel in gemm_tiled gemm_tiled_64 gemm_8x16 gemm_32x16; do
        stage "bench-gemm-$kernel" 60 bash -o pipefail -c \
            "$wgcnn bench gemm ${sizes[*]} --kernel $kernel --runs 3 --json | tee -a $log_dir/gemm_kernels.jsonl"
    done

    local torch_device=cpu
    if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        torch_device=cuda
    fi
    stage side-by-side 180 python3 examples/side_by_side.py --wgcnn "$wgcnn" \
        --torch-device "$torch_device" ${batches[*]} --runs 3
    stage split-k 150 bash "$0" split-k "$wgcnn" "$log_dir/split_k.jsonl"
    stage bench-kernels 60 "$wgcnn" bench kernels --model lenet5 --batch-size 64
    stage bench-kernels-fashion 60 "$wgcnn" bench kernels --model fashion-cnn --batch-size 128
    stage bench-layers 60 "$wgcnn" bench layers --model fashion-cnn --batch-size 128

    for t in $GPU_TESTS; do
        if [ -x ".device/tests/$t" ]; then
            stage "test-$t" 120 ".device/tests/$t" --test-threads 1 -q
        fi
    done

    # The README's training command, on the built-in synthetic set where no
    # data set is installed.
    stage train 120 "$wgcnn" train --epochs 2

    if [ -n "$FAILED" ]; then
        echo "== failed stages:$FAILED"
        exit 1
    fi
    echo "== every stage passed"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    split-k) split_k_rounds "$2" "$3" ;;
    *)
        echo "usage: $0 pack|run|split-k WGCNN_BINARY LOG" >&2
        exit 2
        ;;
esac
