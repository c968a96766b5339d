#!/usr/bin/env bash
# Checks the CUDA code on machines without a GPU, so it cannot rot between GPU
# runs. The steps run in parallel:
#
# 1. kernels: csrc/cuda/standalone/compile_check.cu, every kernel the op layer
#    can launch, compiled by nvcc (every warning an error) with the flags of
#    PyTorch's extension build for each architecture in RKD_CUDA_ARCHS
#    (default "80 90"); then scripts/kernel_resources.py --check prints each
#    kernel's registers, spills, shared memory and occupancy and fails on a new
#    spill or shared memory past what a launch may use without an opt-in.
# 2. headers_link: two translation units that include every header, linked
#    together as the extension's .cu files are: a non-inline definition in a
#    header would be a duplicate symbol.
# 3. bindings: the torch bindings (csrc/cuda/*.cu) as one translation unit
#    against the installed torch's headers (host code and PTX), with the
#    stable ABI's flags, when torch is importable (a CPU-only torch's headers
#    hold all of the stable ABI). RKD_CHECK_BINDINGS=0 skips this step.
# 4. emulation: scripts/emulate_cuda.py, the op layer on the GPU backend with
#    its kernels run on the host, against the CPU ops, on the quick case set, in
#    four builds: with the detectors (racecheck, synccheck, initcheck,
#    memcheck, launch limits; docs/gpu.md); plain, with the blocks of every
#    launch in grid order, reversed and shuffled (bitwise-equal outputs); with
#    floating-point contraction as nvcc compiles (within the tolerances, and
#    bitwise reproducible run to run); with AddressSanitizer and
#    UndefinedBehaviorSanitizer. Needs an installed rkd_ext; RKD_EMULATE=0
#    skips it.
#
# NVCC selects the compiler (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export NVCC
ARCHS=${RKD_CUDA_ARCHS:-"80 90"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$NVCC" --version | tail -n 2

# The defines and options of torch.utils.cpp_extension's CUDA build, every warning an error.
mapfile -t common < <(python scripts/kernel_resources.py --print-nvcc-flags)

jobs=() names=()
start() {  # start NAME CMD...: run CMD in the background, output to $out/NAME.log
  local name=$1; shift
  "$@" >"$out/$name.log" 2>&1 &
  jobs+=($!) names+=("$name")
}

archs=$(tr ' ' ',' <<<"$ARCHS")
start kernels python scripts/kernel_resources.py --archs "$archs" --ptxas-logs "$out" --compile-only

for f in csrc/cuda/*.cuh; do echo "#include \"$PWD/$f\""; done >"$out/headers.cu"
odr() {
  "$NVCC" -std=c++17 -O0 "${common[@]}" -Xcompiler -fPIC -gencode arch=compute_90,code=sm_90 \
    -c "$out/headers.cu" -o "$out/headers_a.o" &&
  cp "$out/headers_a.o" "$out/headers_b.o" &&
  "$NVCC" -shared "$out/headers_a.o" "$out/headers_b.o" -o "$out/headers.so"
}
start headers_link odr

if [ "${RKD_CHECK_BINDINGS:-1}" = 1 ] && torch_inc=$(python -c \
    "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))" 2>/dev/null); then
  incs=()
  while read -r dir; do incs+=(-isystem "$dir"); done <<<"$torch_inc"
  incs+=(-isystem "$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')")
  for f in csrc/cuda/*.cu; do echo "#include \"$PWD/$f\""; done >"$out/bindings.cu"
  # The C++ standard torch builds extensions with.
  std=$(python -c "import inspect, re, torch.utils.cpp_extension as c; \
print(max(re.findall(r'-std=c\+\+(\d+)', inspect.getsource(c)), key=int, default='17'))")
  # setup.py's flags for the stable ABI (rkd_ext/_floor.py): with them torch's unstable headers refuse to compile.
  read -r -a abi <<<"$(python -c "import runpy; print(' '.join(runpy.run_path('rkd_ext/_floor.py')['compile_flags']()))")"
  start bindings "$NVCC" -std=c++"$std" -O0 "${common[@]}" "${abi[@]}" "${incs[@]}" \
    -gencode arch=compute_90,code=compute_90 \
    -c "$out/bindings.cu" -o "$out/bindings.o"
else
  echo "== bindings: skipped (RKD_CHECK_BINDINGS=0 or no importable torch)"
fi

launches=none
if [ "${RKD_EMULATE:-1}" = 1 ] && python -c "import rkd_ext" 2>/dev/null; then
  emulate="python scripts/emulate_cuda.py --quick"
  # Two jobs, for two cores: the detectors and the contraction build; the block orders and the sanitizers.
  start emulation_detect_contract sh -c "$emulate --kernels $out/kernels.json && \
    $emulate --build contract --orders forward,forward"
  start emulation_orders_asan sh -c "$emulate --build plain --orders forward,reverse,shuffle:2026 && \
    $emulate --build asan"
  launches=$out/kernels.json
else
  echo "== emulation: skipped (RKD_EMULATE=0 or rkd_ext not importable)"
fi

status=0
for n in "${!jobs[@]}"; do
  name=${names[$n]}
  if wait "${jobs[$n]}"; then echo "== $name: passed"; else status=1; echo "== $name: FAILED"; fi
  cat "$out/$name.log"
done
[ $status = 0 ] || exit 1
echo "== kernel resources (docs/gpu.md): a new spill or too much shared memory fails"
python scripts/kernel_resources.py --archs "$archs" --ptxas-logs "$out" --launches "$launches" --check
