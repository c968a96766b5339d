# Sourced by the CUDA build scripts: cuda_home prints the CUDA toolkit's own folder, the one that holds
# bin/nvcc and libcudart: CUDA_HOME if set, else the toolkit of the nvcc on PATH (itself, or the nvcc a
# wrapper script runs: torch would guess the wrapper's parent folder, which has no libcudart, and linking
# fails with "cannot find -lcudart"), else /usr/local/cuda or /usr/local/cuda-*. Fails when none qualifies.
cuda_home() {
  local nvcc cands=() c
  [ -n "${CUDA_HOME:-}" ] && cands+=("$CUDA_HOME")
  if nvcc=$(command -v nvcc); then
    nvcc=$(readlink -f "$nvcc")
    cands+=("$(dirname "$(dirname "$nvcc")")")
    if grep -Iq . "$nvcc" 2>/dev/null; then  # a script: the nvcc it runs
      while read -r c; do cands+=("$(dirname "$(dirname "$c")")"); done < <(grep -o '/[^ "]*/bin/nvcc' "$nvcc")
    fi
  fi
  cands+=(/usr/local/cuda /usr/local/cuda-*)
  for c in "${cands[@]}"; do
    if [ -x "$c/bin/nvcc" ] && ls "$c"/lib64/libcudart.so* "$c"/targets/*/lib/libcudart.so* >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 1
}
