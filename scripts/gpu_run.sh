#!/usr/bin/env bash
# The device check: on a GPU machine, builds rkd_ext with its CUDA kernels,
# runs the GPU tests, compute-sanitizer over every op, and the benchmark
# targets, writing the results to the folder $1. Each stage is sized to end
# well inside 6 minutes on an H200 and is cut off at RKD_STAGE_TIMEOUT, so that
# the stages fit calls of at most 10 minutes and a device budget of 15 in all:
#
#   build      first choice, a CUDA build carried in, so that no GPU time goes to
#              compiling (scripts/carried_build.py): RKD_WHEEL, a cp39-abi3
#              wheel such as scripts/check_cuda_build.sh leaves, whose library
#              goes into rkd_ext/, or an rkd_ext/_C.abi3.so already in the tree;
#              used when it loads under this torch (stable ABI: any torch from
#              its floor on with the same CUDA major version) with kernels for
#              this GPU. Otherwise pip install -e . for this GPU's architecture
#              (no network: no dependencies are fetched). Then python -m
#              rkd_ext.info                                         build.log
#   test       the GPU tests only (pytest -m cuda), each cut off after
#              RKD_TEST_TIMEOUT seconds (pytest-timeout)          tests.xml, tests.log
#   sanitize   compute-sanitizer's memcheck, racecheck, synccheck and
#              initcheck, each over scripts/emulate_cuda.py's quick case set
#              run through torch.ops.rkd_ext on the GPU (every op, every
#              dtype, the float32-product kernels too), each cut off after
#              RKD_SANITIZE_TIMEOUT seconds                       sanitize_<tool>.log, sanitize.json
#   bench      scripts/gpu_targets.py, then pytest-benchmark's CUDA cases
#              until RKD_BENCH_TIMEOUT                            targets.json, benchmarks.json, *.log
#   stages.json, summary.json, summary.md   each stage's status and time; GPU, torch, commit and every
#                                           result in one place (summary.md is also printed)
#
# Usage: scripts/gpu_run.sh OUT [build] [test] [sanitize] [bench]     (no stage: all four)
# The stages can run in separate calls: the build stays in place in the tree.
#
# Without a GPU each stage runs up to the point where it needs one and says so
# ("needs a GPU" in stages.json and summary.md): the build compiles (name the
# architectures in TORCH_CUDA_ARCH_LIST), the GPU tests are collected and
# skip, the sanitizer's case list runs through torch.ops.rkd_ext on the CPU,
# the targets stop at their device check. That is how the stages are
# rehearsed on a machine without one.
# Exit status 0 when no stage failed (a stage that needs a GPU it lacks has not failed).
#
# Environment:
#   PYTHON                 the interpreter whose torch builds and runs rkd_ext (default python3)
#   TORCH_CUDA_ARCH_LIST   architectures to build (default: this GPU's, e.g. 9.0)
#   CUDA_HOME              the CUDA toolkit (default: found from nvcc, scripts/cuda_home.sh)
#   MAX_JOBS               parallel compile jobs (default: all cores)
#   RKD_WHEEL              a CUDA build of rkd_ext to carry in instead of compiling (see build)
#   RKD_GIT_COMMIT         the commit to record when the tree carries no .git
#   RKD_STAGE_TIMEOUT      seconds any stage may run (default 330)
#   RKD_TEST_TIMEOUT       seconds one GPU test may run (default 90)
#   RKD_SANITIZE_TIMEOUT   seconds one compute-sanitizer tool may run (default 75)
#   RKD_BENCH_TIMEOUT      seconds the benchmark suite may run after the targets (default 180)
#   PYTEST_ARGS            extra arguments for the GPU tests (e.g. "-x" or "-k angle")
#   RKD_BENCH_*            benchmark selection (benchmarks/common.py); defaults here: RKD_BENCH_DEVICES=cuda,
#                          RKD_BENCH_GRID=training, RKD_BENCH_IMPLS=ours,reference, RKD_BENCH_DTYPES=float32
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/gpu_run.sh OUT [build] [test] [sanitize] [bench]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)
export RKD_EXT_REQUIRE_EXT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STAGE_TIMEOUT=${RKD_STAGE_TIMEOUT:-330}
status=0

gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
# shellcheck source=cuda_home.sh
source scripts/cuda_home.sh

record() {  # record STAGE STATUS SECONDS NOTE: one line of stages.json
  $PY - "$out/stages.json" "$@" <<'EOF'
import json, os, sys
path, stage, status, seconds, note = sys.argv[1:6]
rows = json.load(open(path)) if os.path.exists(path) else []
rows = [r for r in rows if r["stage"] != stage] + [{"stage": stage, "status": status, "seconds": int(seconds),
                                                     "note": note}]
json.dump(rows, open(path, "w"), indent=1)
EOF
  printf '== %s: %s (%s s)%s\n' "$1" "$2" "$3" "${4:+: $4}"
  [ "$2" = failed ] && status=1
  return 0
}

build() {
  local arch home
  arch=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" \
                                 2>/dev/null)}
  if $PY scripts/carried_build.py ${RKD_WHEEL:+--wheel "$RKD_WHEEL"} --arch "${arch%%;*}" >"$out/build.log" 2>&1; then
    cat "$out/build.log"
    $PY -m rkd_ext.info | tee -a "$out/build.log"
    [ "$gpu" = 1 ] || { echo "carried build in place; no GPU here to run it on" >"$out/build.note"; return 3; }
    return 0
  fi
  cat "$out/build.log"
  rm -f rkd_ext/_C.abi3.so
  [ -n "$arch" ] || { echo "needs a GPU (or TORCH_CUDA_ARCH_LIST) to choose the architecture"; return 3; }
  home=$(cuda_home) || { echo "no CUDA toolkit with nvcc and libcudart (set CUDA_HOME)"; return 1; }
  CUDA_HOME=$home TORCH_CUDA_ARCH_LIST=$arch FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    $PY -m pip install --no-build-isolation --no-deps -v -e . >>"$out/build.log" 2>&1 &&
  $PY -m rkd_ext.info | tee -a "$out/build.log" &&
  $PY -c "import rkd_ext, sys; sys.exit(0 if rkd_ext.build_info()['with_cuda'] else 'no CUDA kernels built')" ||
  { tail -n 30 "$out/build.log"; return 1; }
  [ "$gpu" = 1 ] || { echo "built for $arch; no GPU here to load it on" >"$out/build.note"; return 3; }
}

tests() {
  local extra=()
  eval "extra=(${PYTEST_ARGS:-})"  # shell words, so that quoted -m/-k expressions survive
  $PY -m pytest python_tests -m cuda -q -p no:cacheprovider -rfE --durations=15 \
    --timeout="${RKD_TEST_TIMEOUT:-90}" --junitxml="$out/tests.xml" "${extra[@]}" 2>&1 | tee "$out/tests.log" |
    tail -n 30
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || return 1
  [ "$gpu" = 1 ] || { echo "the GPU tests were collected and skipped: no CUDA device" >"$out/tests.note"; return 3; }
}

sanitize() {
  local cs tool rc t0 results=()
  cs=$(command -v compute-sanitizer || ls "$(cuda_home)/bin/compute-sanitizer" 2>/dev/null || true)
  if [ "$gpu" != 1 ]; then
    # The case list the tools would run, through torch.ops.rkd_ext on the CPU.
    $PY scripts/emulate_cuda.py --quick --device cpu 2>&1 | tee "$out/sanitize_cpu.log" | tail -n 3
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    echo "the case list ran through torch.ops.rkd_ext on the CPU; compute-sanitizer (${cs:-not found}) needs a GPU" \
      >"$out/sanitize.note"
    return 3
  fi
  [ -n "$cs" ] || { echo "compute-sanitizer not found"; return 1; }
  for tool in memcheck racecheck synccheck initcheck; do
    t0=$SECONDS
    # The caching allocator off: memcheck and initcheck then see each tensor's own bounds and first write.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${RKD_SANITIZE_TIMEOUT:-75}" "$cs" --tool "$tool" --error-exitcode 9 \
      --kernel-name kns=rkd --print-limit 20 $PY scripts/emulate_cuda.py --quick --device cuda \
      >"$out/sanitize_$tool.log" 2>&1
    rc=$?
    results+=("$tool $rc $((SECONDS - t0))")
    printf '  %-9s exit %s, %s s: %s\n' "$tool" "$rc" "$((SECONDS - t0))" \
      "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|checks passed' "$out/sanitize_$tool.log" | tr '\n' ' ')"
  done
  printf '%s\n' "${results[@]}" | $PY -c "import json, sys; json.dump([dict(zip(('tool', 'exit', 'seconds'), \
(l.split()[0], int(l.split()[1]), int(l.split()[2])))) for l in sys.stdin], open('$out/sanitize.json', 'w'), indent=1)"
  for r in "${results[@]}"; do [ "$(cut -d' ' -f2 <<<"$r")" = 0 ] || return 1; done
}

bench() {
  if [ "$gpu" != 1 ]; then
    $PY scripts/gpu_targets.py "$out/targets.json" 2>&1 | tail -n 1 >"$out/bench.note"
    return 3
  fi
  $PY scripts/gpu_targets.py "$out/targets.json" 2>&1 | tee "$out/targets.log"
  [ "${PIPESTATUS[0]}" = 0 ] || return 1
  RKD_BENCH_DEVICES=${RKD_BENCH_DEVICES:-cuda} RKD_BENCH_GRID=${RKD_BENCH_GRID:-training} \
    RKD_BENCH_IMPLS=${RKD_BENCH_IMPLS:-ours,reference} RKD_BENCH_DTYPES=${RKD_BENCH_DTYPES:-float32} \
    timeout "${RKD_BENCH_TIMEOUT:-180}" $PY -m pytest benchmarks \
    --benchmark-only -q -p no:cacheprovider --benchmark-json="$out/benchmarks.json" 2>&1 |
    tee "$out/benchmarks.log" | tail -n 20
  case ${PIPESTATUS[0]} in
    0) ;;
    124) echo "benchmarks stopped after ${RKD_BENCH_TIMEOUT:-180} s (RKD_BENCH_TIMEOUT)"; return 1 ;;
    *) return 1 ;;
  esac
}

export out PY gpu
export -f build tests sanitize bench cuda_home

for stage in "${stages[@]}"; do
  case $stage in build | test | sanitize | bench) ;; *)
    echo "unknown stage '$stage' (build, test, sanitize, bench)" >&2
    exit 2 ;;
  esac
  echo "== $stage"
  t0=$SECONDS
  fn=$stage
  [ "$stage" = test ] && fn=tests
  # timeout stops the stage and everything it started at the stage limit.
  timeout "$STAGE_TIMEOUT" bash -uo pipefail -c "$fn"
  rc=$?
  took=$((SECONDS - t0))
  case $rc in
    0) record "$stage" passed $took "" ;;
    3) record "$stage" needs-gpu $took "$(cat "$out/$fn.note" 2>/dev/null)" ;;
    124) record "$stage" failed $took "stopped at the stage limit of $STAGE_TIMEOUT s (RKD_STAGE_TIMEOUT)" ;;
    *) record "$stage" failed $took "exit status $rc" ;;
  esac
done

$PY scripts/gpu_report.py "$out" || status=1
exit $status
