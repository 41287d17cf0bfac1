#!/usr/bin/env bash
# Build, here, everything the GPU check needs, into gpu-carry/ (git-ignored):
# the CLI, the CUDA test binaries and the decode bench, stripped. The GPU
# machine has no Rust toolchain and no registry, and the binaries load CUDA
# at run time (cudarc's dynamic loading), so the same files run there.
#
#   tools/gpu_prepare.sh      # then, on the GPU machine: tools/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
cargo test --release --test cuda --test cuda_cublas --test cuda_split_attention --no-run
cargo bench --bench decode --no-run
rm -rf gpu-carry && mkdir gpu-carry
newest() { ls -t $1 | grep -v '\.d$' | head -1; }
strip -o gpu-carry/layerskip target/release/layerskip
strip -o gpu-carry/cuda-tests "$(newest 'target/release/deps/cuda-*')"
strip -o gpu-carry/cuda-cublas-tests "$(newest 'target/release/deps/cuda_cublas-*')"
strip -o gpu-carry/cuda-split-tests "$(newest 'target/release/deps/cuda_split_attention-*')"
strip -o gpu-carry/decode-bench "$(newest 'target/release/deps/decode-*')"
# The test binaries find fixtures under the path they were built in.
pwd >gpu-carry/manifest-dir
du -sh gpu-carry/*
