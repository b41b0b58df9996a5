#!/usr/bin/env bash
# Builds llama.cpp from its public source as a peer for the GGUF benchmarks (never committed).
# The source comes from PyPI (llama-cpp-python's sdist vendors the whole llama.cpp tree, so this
# works where only PyPI is reachable); it is unpacked and built under $LLAMACPP_DIR (default
# /tmp/quiver-llamacpp), CPU only, -O3 with the host's ISA (GGML_NATIVE), like a user's build.
# Prints the build directory holding bin/llama-bench and bin/llama-batched-bench.
set -euo pipefail
VERSION=${LLAMACPP_PY_VERSION:-0.3.36}
DIR=${LLAMACPP_DIR:-/tmp/quiver-llamacpp}
JOBS=${JOBS:-2}
mkdir -p "$DIR"
cd "$DIR"
if [ ! -d "llama_cpp_python-$VERSION/vendor/llama.cpp" ]; then
  python3 -m pip download --no-deps --no-binary :all: -q -d . "llama-cpp-python==$VERSION" >&2
  tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
SRC=$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -x build/bin/llama-bench ] || [ ! -x build/bin/llama-batched-bench ]; then
  cmake -S "$SRC" -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >&2
  cmake --build build -j "$JOBS" --target llama-bench llama-batched-bench >&2
fi
echo "$DIR/build"
