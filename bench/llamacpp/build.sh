#!/usr/bin/env bash
# Builds llama.cpp from its public source as the peer of the CPU and GGUF benchmarks
# (bench/cpu/vs_llama_cpp.py, bench/gguf_vs_llamacpp.py, bench/gguf_fidelity.py); nothing of it
# is committed. The source comes from PyPI (llama-cpp-python's sdist vendors the whole llama.cpp
# tree, so this works where only PyPI is reachable); it is unpacked and built under $LLAMACPP_DIR
# (default /tmp/quiver-llamacpp), CPU only, -O3 with the host's ISA (GGML_NATIVE), as a user
# builds it. The sdist's Python bindings (llama_cpp/, ctypes over the built libllama) are what
# bench/gguf_fidelity.py reads llama.cpp's logits with.
#
# Prints three lines: the directory holding bin/llama-bench and bin/llama-batched-bench (and the
# shared libraries), the llama.cpp source (convert_hf_to_gguf.py), and the sdist root (the
# Python bindings). LLAMACPP_PREBUILT=SDIST_ROOT reuses an sdist already built in place
# (SDIST_ROOT/vendor/llama.cpp/build) instead of building again.
set -euo pipefail
VERSION=${LLAMACPP_PY_VERSION:-0.3.36}
if [ -n "${LLAMACPP_PREBUILT:-}" ]; then
  ROOT=$LLAMACPP_PREBUILT
  BUILD=$ROOT/vendor/llama.cpp/build
else
  DIR=${LLAMACPP_DIR:-/tmp/quiver-llamacpp}
  JOBS=${JOBS:-2}
  mkdir -p "$DIR"
  cd "$DIR"
  if [ ! -d "llama_cpp_python-$VERSION/vendor/llama.cpp" ]; then
    python3 -m pip download --no-deps --no-binary :all: -q -d . "llama-cpp-python==$VERSION" >&2
    tar xzf "llama_cpp_python-$VERSION.tar.gz"
  fi
  ROOT=$DIR/llama_cpp_python-$VERSION
  BUILD=$DIR/build
  if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-batched-bench" ] || [ ! -e "$BUILD/bin/libllama.so" ]; then
    cmake -S "$ROOT/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
          -DLLAMA_OPENSSL=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
          -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=ON >&2
    cmake --build "$BUILD" -j "$JOBS" --target llama-bench llama-batched-bench llama >&2
  fi
fi
for b in llama-bench llama-batched-bench libllama.so; do
  [ -e "$BUILD/bin/$b" ] || { echo "llamacpp/build.sh: $BUILD/bin/$b missing" >&2; exit 1; }
done
echo "$BUILD"
echo "$ROOT/vendor/llama.cpp"
echo "$ROOT"
