#!/usr/bin/env bash
# Builds the CUDA binaries (`bipo` with --features cuda, and the CUDA test binary
# crates/bipo/tests/cuda.rs) on a machine with no CUDA toolkit and no GPU, to compile-
# check the backend or to copy the binaries to a GPU machine. With a real toolkit
# installed, `cargo build --release --features cuda` is all you need.
#
# usage: scripts/build-cuda.sh [COMPUTE_CAP]   (default 90: Hopper; 80 Ampere, 89 Ada)
#
# It fetches NVIDIA's CUDA 13.0 compiler wheels from PyPI (nvcc, nvvm, crt, runtime
# headers, cccl) into the ignored .cuda/ folder, and links against stub libraries
# named like the driver, cuBLAS and cuRAND (their real versions load at run time on
# the GPU machine: put them on LD_LIBRARY_PATH there). Outputs:
#   target-cuda/release/bipo and target-cuda/cuda-tests (run with BIPO_ROOT=<repo>).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cap=${1:-90}
root=$PWD/.cuda
tk=$root/toolkit
if [ ! -x "$tk/bin/nvcc" ]; then
    mkdir -p "$root/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 \
        -d "$root/wheels" nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    rm -rf "$root/unpacked" && mkdir -p "$root/unpacked"
    for w in "$root"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$root/unpacked"
    done
    rm -rf "$tk" && cp -r "$root/unpacked/nvidia/cu13" "$tk"
    chmod +x "$tk"/bin/* "$tk"/nvvm/bin/*
    ln -sf libcudart.so.13 "$tk/lib/libcudart.so"
fi
export PATH=$tk/bin:$PATH CUDA_ROOT=$tk CUDA_PATH=$tk CUDA_COMPUTE_CAP=$cap
target=$PWD/target-cuda
# Stub libraries: every cu*/cublas*/curand*/nvrtc* symbol the Rust crates reference,
# as empty functions, under the real libraries' sonames.
if [ ! -f "$tk/lib/libcublas.so" ]; then
    # The symbol list comes from cudarc's compiled code: build it first (the link of
    # the binary fails until the stubs exist, which is expected).
    cargo build --release -p bipo-cli --features cuda --target-dir "$target" 2>/dev/null || true
    syms=$(nm -u --format=posix "$target"/release/deps/libcudarc-*.rlib \
        "$target"/release/deps/libcandle_core-*.rlib 2>/dev/null |
        awk '{print $1}' | grep -E '^(cu[A-Z]|cublas|curand|nvrtc)' | sort -u)
    stub() { # NAME SONAME REGEX
        grep -E "$3" <<<"$syms" | awk '{print "void " $1 "(void) {}"}' >"$root/$1.c"
        cc -shared -fPIC -o "$tk/lib/$1.so" -Wl,-soname,"$2" "$root/$1.c"
    }
    stub libcuda libcuda.so.1 '^cu[A-Z]'
    stub libnvrtc libnvrtc.so.13 '^nvrtc'
    stub libcurand libcurand.so.10 '^curand'
    stub libcublasLt libcublasLt.so.13 '^cublasLt'
    stub libcublas libcublas.so.13 '^cublas([^L]|L[^t])'
fi
cargo build --release -p bipo-cli --features cuda --target-dir "$target"
test_bin=$(cargo test --release -p bipo --features cuda --test cuda --no-run \
    --target-dir "$target" --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')
cp "$test_bin" "$target/cuda-tests"
echo "built $target/release/bipo and $target/cuda-tests (compute capability $cap)"
echo "on the GPU machine: BIPO_ROOT=<repo with models/> $target/cuda-tests --test-threads 1"
echo "                    scripts/gpu-check.sh $target/release/bipo <model.gguf> <data dir> <out dir>"
