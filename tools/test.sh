#!/usr/bin/env bash
# Runs every test of the project, first installing what the tests need:
# - C and C++ compilers, Go, CMake, pkg-config, valgrind, cpp-httplib and
#   nlohmann-json (the C, C++ and Go integrations and the example server).
#   Debian/Ubuntu packages, installed with apt-get when run as root; otherwise
#   it stops and prints the install line to run.
# - NVRTC and the CUDA headers from PyPI, in a virtual environment under
#   $TMPDIR, so that the CUDA kernels' compile check really compiles them
#   (no GPU needed).
# - The Python package (`pip install ./python`), pytest and Ray Serve, in a
#   virtual environment under $TMPDIR.
# Then it runs `cargo test --release` with every such test required: a test
# that would skip for want of one of these fails instead, and, when given no
# arguments, the Python tests (the package's, and the Ray Serve example's,
# which starts a local Ray cluster). Arguments go to cargo test alone (e.g.
# `tools/test.sh --test batch`).
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
have cargo || { echo "tools/test.sh: cargo is required (a Rust toolchain, https://rustup.rs)" >&2; exit 1; }

missing=()
have cc || missing+=(gcc)
have c++ || missing+=(g++)
have go || missing+=(golang-go)
have cmake || missing+=(cmake)
have pkg-config || missing+=(pkg-config)
have valgrind || missing+=(valgrind)
[ -f /usr/include/httplib.h ] || missing+=(libcpp-httplib-dev)
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "tools/test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tools/test.sh: missing system packages. Install them, then run this again:" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# NVRTC and the CUDA headers, for the kernels' compile check.
NV="${TMPDIR:-/tmp}/layerskip-nvrtc-venv"
if [ ! -f "$NV/.installed" ]; then
  echo "tools/test.sh: installing NVRTC and the CUDA headers into $NV"
  python3 -m venv "$NV"
  "$NV/bin/pip" install -q nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79
  touch "$NV/.installed"
fi
SITE=$("$NV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LD_LIBRARY_PATH="$SITE/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LAYERSKIP_CUDA_INCLUDE="$SITE/nvidia/cuda_runtime/include"
export LAYERSKIP_REQUIRE_NVRTC=1
export LAYERSKIP_REQUIRE_TOOLS=1

echo "toolchains: $(cargo --version); $(cc --version | head -1); $(go version); $(valgrind --version)"
# The C, C++ and Go tests link the cdylib in target/release/deps, which a
# plain `cargo test` does not always relink after a change: build it first.
cargo build --release
cargo test --release "$@"
[ $# -eq 0 ] || exit 0

# The Python package, built from this checkout, and its tests.
PY="${TMPDIR:-/tmp}/layerskip-py-venv"
if [ ! -f "$PY/.installed" ]; then
  echo "tools/test.sh: installing pytest and Ray Serve into $PY"
  python3 -m venv "$PY"
  "$PY/bin/pip" install -q pytest "ray[serve]"
  touch "$PY/.installed"
fi
"$PY/bin/pip" install -q ./python
rm -rf python/build python/*.egg-info
"$PY/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning python/tests examples/ray_serve
