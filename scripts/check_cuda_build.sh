#!/usr/bin/env bash
# Builds rkd_ext with its CUDA kernels exactly as a user with a CUDA build of
# torch does, and checks that build on a machine without a GPU:
#
#   env      a virtual environment of its own (never the one the README's
#            commands use) with the CUDA build of torch from the package
#            registry, torchvision, torchdistill, the test tools, cuobjdump and
#            nvdisasm.
#            pip's configuration files are ignored: a machine's may point
#            torch at a local CPU wheel.
#   build    `pip wheel --no-build-isolation` of a copy of this tree, FORCE_CUDA=1,
#            for TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), with CUDA_HOME the
#            toolkit's own folder (an `nvcc` on PATH may be a wrapper outside
#            it, from which torch would guess a root without libcudart); the
#            wheel (cp39-abi3: the stable ABI and the limited API) is installed
#            with its test extras. It stays in $RKD_CUDA_ENV/wheels for
#            scripts/torch_matrix.sh and for carrying to a GPU machine.
#   info     `python -m rkd_ext.info` must report the CUDA kernels built and
#            the compiled kernels in use.
#   sass     the .so holds SASS for each architecture and every kernel the op
#            layer launches on the emulated case set, with the registers and
#            shared memory of docs/gpu.md's table (scripts/kernel_resources.py
#            --so), and the counted triplet and product loops no dearer per unit than
#            docs/gpu_kernel_loops.json (scripts/kernel_loops.py --check).
#   abi      the library imports nothing outside the stable ABI and the limited
#            API (scripts/abi_check.py).
#   tests    the whole test suite in that environment, against the installed
#            wheel (the GPU tests skip for want of a device), torchdistill's own
#            registry and RKDLoss included.
#   gpu_run  the device check's stages with this wheel carried in
#            (scripts/gpu_run.sh build test sanitize bench, RKD_WHEEL), each up
#            to the point where it needs a GPU.
#
# Usage: scripts/check_cuda_build.sh   (exit status 0 when every step passes)
# Environment:
#   RKD_CUDA_ENV          a folder for the environment and the copy of the tree,
#                         kept and reused (default: a temporary one, removed after)
#   CUDA_HOME             the CUDA toolkit (default: found from nvcc)
#   TORCH_CUDA_ARCH_LIST  architectures to build (default "8.0;9.0")
#   MAX_JOBS              parallel compile jobs (default: all cores)
#   PYTEST_ARGS           extra arguments for the test suite
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# Pinned: the CUDA torch this stage proves, and the framework stack that installs beside it.
TORCH=torch==2.13.0
STACK=(torchvision==0.28.0 torchdistill==1.1.5)
TOOLS=("nvidia-cuda-cuobjdump>=13.0,<14" "nvidia-cuda-nvdisasm>=13.0,<14" ninja setuptools wheel)
# shellcheck source=torch_env.sh
source "$root/scripts/torch_env.sh"

if [ -n "${RKD_CUDA_ENV:-}" ]; then
  work=$RKD_CUDA_ENV
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
venv=$work/venv src=$work/src suite=$work/suite
py=$venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 RKD_EXT_REQUIRE_EXT=1 PYTHONUNBUFFERED=1

# shellcheck source=cuda_home.sh
source "$root/scripts/cuda_home.sh"

declare -a stage_names stage_secs
step() {  # step NAME CMD...: run CMD (with errexit, in a subshell), time it, stop the script on failure
  local name=$1 t0=$SECONDS rc
  shift
  echo "== $name"
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  if [ $rc != 0 ]; then
    echo "== $name: FAILED after $((SECONDS - t0)) s"
    exit 1
  fi
  stage_names+=("$name") stage_secs+=($((SECONDS - t0)))
}

make_env() {
  [ -x "$py" ] || python3 -m venv "$venv"
  registry_pip install -q "$TORCH" "${STACK[@]}" "${TOOLS[@]}"
  "$py" -c "import torch; assert torch.version.cuda, 'not a CUDA build: ' + torch.__version__; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
  "$py" -c "import torchvision, torchdistill; print('torchvision', torchvision.__version__, \
'torchdistill', torchdistill.__version__)"
}

copy_trees() {  # the tree to build, and the tree the tests run in (without the package)
  copy_tree "$root" "$src"
  copy_tree "$root" "$suite" suite
}

build() {
  local home
  home=$(cuda_home) || { echo "no CUDA toolkit with nvcc and libcudart (set CUDA_HOME)"; return 1; }
  echo "CUDA_HOME=$home"
  rm -rf "$work/wheels"
  (cd "$src" && CUDA_HOME=$home FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0} \
     MAX_JOBS=${MAX_JOBS:-$(nproc)} registry_pip wheel -q --no-build-isolation --no-deps -w "$work/wheels" .)
  wheel=$(ls "$work"/wheels/rkd_ext-*-cp39-abi3-*.whl)
  echo "$(basename "$wheel"): $(du -h "$wheel" | cut -f1)"
  # The test extras too; the torch above satisfies the dependency and stays.
  registry_pip install -q --force-reinstall --no-deps "$wheel" && registry_pip install -q "$wheel[test]"
  "$py" -c "import torch; assert torch.version.cuda, 'torch was replaced: ' + torch.__version__"
}

library() { (cd "$suite" && "$py" -c "import rkd_ext._C as m; print(m.__file__)"); }

abi() { (cd "$suite" && "$py" scripts/abi_check.py "$(library)"); }

info() {
  local out
  out=$(cd "$suite" && "$py" -m rkd_ext.info) || { echo "$out"; return 1; }
  echo "$out"
  grep -q "^CUDA kernels *yes" <<<"$out" && grep -q "^compiled kernels in use *yes" <<<"$out"
}

sass() {
  local archs
  archs=$(tr ';' '\n' <<<"${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" | sed 's/\.//; s/+PTX//' | paste -sd, -)
  (cd "$suite" && CUDA_HOME=$(cuda_home) "$py" scripts/emulate_cuda.py --quick --build plain --kernels "$work/kernels.json" |
     tail -n 1 &&
   NVCC=$(cuda_home)/bin/nvcc "$py" scripts/kernel_resources.py --archs "$archs" --launches "$work/kernels.json" \
     --so "$(library)" --check | grep -v '^|' &&
   if [[ ",$archs," == *",90,"* ]]; then "$py" scripts/kernel_loops.py --arch 90 --obj "$(library)" --check; fi)
}

tests() {
  eval "extra=(${PYTEST_ARGS:-})"
  (cd "$suite" && CUDA_HOME=$(cuda_home) "$py" -m pytest python_tests -q -p no:cacheprovider -rs \
     --junitxml="$work/tests.xml" "${extra[@]}" | tail -n 25) || return 1
  # torchdistill's own registry must have been tested, not skipped.
  "$py" - "$work/tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "torchdistill_real_registry" in c.get("name", "")]
ran = [c for c in cases if c.find("skipped") is None and c.find("failure") is None and c.find("error") is None]
print(f"torchdistill's own registry: {len(ran)}/{len(cases)} cases passed")
sys.exit(0 if cases and len(ran) == len(cases) else 1)
EOF
}

gpu_run() {
  # PYTEST_ARGS here are the suite's (tests above); gpu_run.sh reads its own for the GPU tests, and a -m
  # there would replace its -m cuda with a run of the whole suite.
  (cd "$src" && PYTHON=$py RKD_WHEEL=$(ls "$work"/wheels/rkd_ext-*.whl) PYTEST_ARGS= \
     RKD_GIT_COMMIT=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown) \
     bash scripts/gpu_run.sh "$work/gpu_run" build test sanitize bench | grep -E '^(==|\|)')
}

step env make_env
step copy copy_trees
step build build
step abi abi
step info info
step sass sass
step tests tests
step gpu_run gpu_run
echo "== CUDA build checked (no GPU here: the GPU tests skipped)"
for i in "${!stage_names[@]}"; do printf '  %-7s %5d s\n' "${stage_names[$i]}" "${stage_secs[$i]}"; done
