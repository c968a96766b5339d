#!/usr/bin/env bash
# Checks the CUDA code on machines without a GPU, so it cannot rot between GPU
# runs: compiles every CUDA source with nvcc (every warning an error) and runs
# the kernels' logic on the host. The three steps run in parallel:
#
# 1. The torch-free GPU backend and kernels (csrc/cuda/*.cuh), every op of the
#    op layer instantiated by csrc/cuda/standalone/compile_check.cu, for each
#    architecture in
#    RKD_CUDA_ARCHS (default "80 90") with the flags of PyTorch's extension
#    build; ptxas's registers, spills and shared memory per kernel are shown.
#    Then two translation units that include every header are linked
#    together, as the extension's .cu files are: a non-inline definition in a
#    header would be a duplicate symbol.
# 2. The torch bindings (csrc/cuda/*.cu), as one translation unit against the
#    installed torch's headers (host code and PTX), when torch is importable.
#    A CPU-only torch wheel ships the c10/cuda headers but not the one CMake
#    generates, c10/cuda/impl/cuda_cmake_macros.h; a stand-in is supplied.
#    RKD_CHECK_BINDINGS=0 skips this step.
# 3. scripts/emulate_cuda.py: the op layer on the GPU backend, its kernels
#    compiled as host C++ with g++ and a fiber-per-thread emulator, compared
#    with the CPU ops for every op, dtype and odd size (--quick here; run it
#    without for all sizes). Needs an installed rkd_ext; RKD_EMULATE=0 skips it.
#
# NVCC selects the compiler (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
ARCHS=${RKD_CUDA_ARCHS:-"80 90"}
FILT=$(command -v c++filt || echo cat)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$NVCC" --version | tail -n 2

# The defines and options of torch.utils.cpp_extension's CUDA build and setup.py.
common=(-lineinfo --expt-relaxed-constexpr
        -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
        -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
        -Werror all-warnings -Xcompiler -Wall,-Wextra)

jobs=() names=()
start() {  # start NAME CMD...: run CMD in the background, output to $out/NAME.log
  local name=$1; shift
  "$@" >"$out/$name.log" 2>&1 &
  jobs+=($!) names+=("$name")
}

for f in csrc/cuda/*.cuh; do echo "#include \"$PWD/$f\""; done >"$out/headers.cu"
odr() {
  "$NVCC" -std=c++17 -O0 "${common[@]}" -Xcompiler -fPIC -gencode arch=compute_90,code=sm_90 \
    -c "$out/headers.cu" -o "$out/headers_a.o" &&
  cp "$out/headers_a.o" "$out/headers_b.o" &&
  "$NVCC" -shared "$out/headers_a.o" "$out/headers_b.o" -o "$out/headers.so"
}
start headers_link odr

for arch in $ARCHS; do
  start "kernels_sm_${arch}" "$NVCC" -std=c++17 -O3 "${common[@]}" -Xptxas -v \
    -gencode "arch=compute_${arch},code=sm_${arch}" \
    -c csrc/cuda/standalone/compile_check.cu -o "$out/sm_${arch}.o"
done

if [ "${RKD_CHECK_BINDINGS:-1}" = 1 ] && torch_inc=$(python -c \
    "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))" 2>/dev/null); then
  incs=()
  while read -r dir; do incs+=(-isystem "$dir"); done <<<"$torch_inc"
  if [ ! -f "$(head -n 1 <<<"$torch_inc")/c10/cuda/impl/cuda_cmake_macros.h" ]; then
    mkdir -p "$out/stub/c10/cuda/impl"
    printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
    incs+=(-isystem "$out/stub")
  fi
  incs+=(-isystem "$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')")
  for f in csrc/cuda/*.cu; do echo "#include \"$PWD/$f\""; done >"$out/bindings.cu"
  # The C++ standard torch builds extensions with.
  std=$(python -c "import inspect, re, torch.utils.cpp_extension as c; \
print(max(re.findall(r'-std=c\+\+(\d+)', inspect.getsource(c)), key=int, default='17'))")
  start bindings "$NVCC" -std=c++"$std" -O0 "${common[@]}" -DTORCH_EXTENSION_NAME=_C \
    -DTORCH_API_INCLUDE_EXTENSION_H "${incs[@]}" -gencode arch=compute_90,code=compute_90 \
    -c "$out/bindings.cu" -o "$out/bindings.o"
else
  echo "== bindings: skipped (RKD_CHECK_BINDINGS=0 or no importable torch)"
fi

if [ "${RKD_EMULATE:-1}" = 1 ] && python -c "import rkd_ext" 2>/dev/null; then
  start emulation python scripts/emulate_cuda.py --quick
else
  echo "== emulation: skipped (RKD_EMULATE=0 or rkd_ext not importable)"
fi

status=0
for n in "${!jobs[@]}"; do
  name=${names[$n]}
  if wait "${jobs[$n]}"; then echo "== $name: passed"; else status=1; echo "== $name: FAILED"; fi
  # Diagnostics in full; ptxas's per-kernel report as one line per kernel.
  grep -v '^ptxas info' "$out/$name.log" | grep -v '^ *[0-9]* bytes stack frame' || true
  [[ $name == kernels_* ]] || continue
  awk '
    /Compiling entry function/ { match($0, /'\''[^'\'']*'\''/); kernel = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { spill = $5 + $9 }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      printf "%s\t%s\t%s\t%s\n", regs, spill, smem, kernel
    }' "$out/$name.log" | "$FILT" |
    sed -E 's/rkd::gpu:://g; s/\([^()]*\)$//; s/^([^\t]*\t[^\t]*\t[^\t]*\t)void /\1/' | sort -t$'\t' -k4 |
    awk -F'\t' 'BEGIN { printf "  %5s %6s %6s  %s\n", "regs", "spill", "smem", "kernel" }
                { printf "  %5s %6s %6s  %s\n", $1, $2, $3, $4 }'
done
exit $status
