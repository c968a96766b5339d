#!/usr/bin/env bash
# On a GPU machine: builds rkd_ext with its CUDA kernels, runs the whole test
# suite and the CUDA benchmarks, and writes the results to the folder $1:
#
#   build.log                    the CUDA build (pip install -e .) and python -m rkd_ext.info
#   tests.xml, tests.log         the test suite (JUnit XML and console)
#   targets.json, targets.log    the performance targets (scripts/gpu_targets.py)
#   benchmarks.json, .log        pytest-benchmark's results for the CUDA device
#   summary.json, summary.md     GPU, torch, git commit, and every result above in one
#                                place; summary.md is the short table (also printed)
#
# Usage: scripts/gpu_run.sh OUT [build] [test] [bench]     (no stage: all three)
# The stages can run in separate calls: the build stays in place in the tree.
# Exit status 0 when the build works, every test passes and every target is met.
#
# Environment:
#   TORCH_CUDA_ARCH_LIST   architectures to build (default: this GPU's, e.g. 9.0)
#   MAX_JOBS               parallel compile jobs (default: all cores)
#   RKD_GIT_COMMIT         the commit to record when the tree carries no .git
#   PYTEST_ARGS            extra arguments for the test suite (e.g. "-x" or "-m 'not slow'")
#   RKD_BENCH_*            benchmark selection (benchmarks/common.py); defaults here: RKD_BENCH_DEVICES=cuda,
#                          RKD_BENCH_GRID=training, RKD_BENCH_IMPLS=ours,reference, RKD_BENCH_DTYPES=float32
#   RKD_BENCH_TIMEOUT      seconds the benchmark suite may run (default 360); the targets run before it
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/gpu_run.sh OUT [build] [test] [bench]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench)
export RKD_EXT_REQUIRE_EXT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

for stage in "${stages[@]}"; do
  echo "== $stage"
  case $stage in
    build)
      arch=${TORCH_CUDA_ARCH_LIST:-$($PY -c \
        "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
      {
        TORCH_CUDA_ARCH_LIST=$arch FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
          $PY -m pip install --no-build-isolation --no-deps -v -e . &&
        $PY -m rkd_ext.info &&
        $PY -c "import rkd_ext, sys; sys.exit(0 if rkd_ext.build_info()['with_cuda'] else 'no CUDA kernels built')"
      } >"$out/build.log" 2>&1 || { status=1; tail -n 30 "$out/build.log"; }
      ;;
    test)
      eval "extra=(${PYTEST_ARGS:-})"  # shell words, so that quoted -m/-k expressions survive
      $PY -m pytest python_tests -q -p no:cacheprovider -rfE --durations=20 \
        --junitxml="$out/tests.xml" "${extra[@]}" 2>&1 | tee "$out/tests.log" | tail -n 40
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
      ;;
    bench)
      $PY scripts/gpu_targets.py "$out/targets.json" 2>&1 | tee "$out/targets.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
      RKD_BENCH_DEVICES=${RKD_BENCH_DEVICES:-cuda} RKD_BENCH_GRID=${RKD_BENCH_GRID:-training} \
        RKD_BENCH_IMPLS=${RKD_BENCH_IMPLS:-ours,reference} RKD_BENCH_DTYPES=${RKD_BENCH_DTYPES:-float32} \
        timeout "${RKD_BENCH_TIMEOUT:-360}" $PY -m pytest benchmarks \
        --benchmark-only -q -p no:cacheprovider --benchmark-json="$out/benchmarks.json" 2>&1 |
        tee "$out/benchmarks.log" | tail -n 40
      case ${PIPESTATUS[0]} in
        0) ;;
        124) status=1; echo "benchmarks stopped after ${RKD_BENCH_TIMEOUT:-360} s (RKD_BENCH_TIMEOUT)" ;;
        *) status=1 ;;
      esac
      ;;
    *)
      echo "unknown stage '$stage' (build, test, bench)" >&2
      exit 2
      ;;
  esac
done

$PY scripts/gpu_report.py "$out" || status=1
exit $status
