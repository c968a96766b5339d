#!/usr/bin/env bash
# One build of rkd_ext, many torch releases: installs the same wheels, unrebuilt,
# into a fresh environment per torch release and runs the whole test suite
# against them, then writes the table docs/install.md shows.
#
#   cpu wheel   built once against the running python's torch (FORCE_ONLY_CPU=1),
#               or RKD_CPU_WHEEL
#   cuda wheel  RKD_CUDA_WHEEL, optional: a CUDA build such as
#               scripts/check_cuda_build.sh leaves in $RKD_CUDA_ENV/wheels. Run
#               where the torch has the wheel's CUDA major version; under any
#               other, importing it with RKD_EXT_REQUIRE_EXT=1 must fail with a
#               message naming the reason (checked, and recorded as "refused").
#               Without RKD_EXT_REQUIRE_EXT its CPU kernels would still serve.
#
# Each environment gets torch from the package registry (pip's configuration
# ignored), except those in RKD_LOCAL_TORCH, which come through this
# machine's own pip configuration, then the test tools, then each wheel with
# --no-deps. The suite runs from a copy of the tree without the package, so it
# imports the installed wheel. GPU tests skip for want of a device.
#
# Usage: scripts/torch_matrix.sh OUT [TORCH_VERSION...]
#        (default versions: 2.10.0 2.11.0 2.13.0 2.14.1 2.15.0)
# Writes OUT/matrix.json and OUT/matrix.md (one row per torch and build) and
# each run's JUnit report and log. Exit status 0 when every row passed.
# Environment:
#   RKD_CPU_WHEEL, RKD_CUDA_WHEEL   the wheels (see above)
#   RKD_LOCAL_TORCH   torch versions to install through the machine's pip configuration (default 2.14.1)
#   RKD_MATRIX_ENVS   a folder to keep the environments in and reuse (default: temporary, each removed after use)
#   PYTEST_ARGS       extra arguments for the test suite
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
out=${1:?usage: scripts/torch_matrix.sh OUT [TORCH_VERSION...]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(2.10.0 2.11.0 2.13.0 2.14.1 2.15.0)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# shellcheck source=torch_env.sh
source "$root/scripts/torch_env.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
envs=${RKD_MATRIX_ENVS:-$tmp/envs}
suite=$tmp/suite
copy_tree "$root" "$suite" suite

py=python3
cpu_wheel=${RKD_CPU_WHEEL:-}
if [ -z "$cpu_wheel" ]; then
  echo "== building the CPU wheel against $(python3 -c 'import torch; print(torch.__version__)')"
  copy_tree "$root" "$tmp/src"
  (cd "$tmp/src" && FORCE_ONLY_CPU=1 python3 -m pip wheel -q --no-build-isolation --no-deps -w "$out/wheels" .)
  cpu_wheel=$(ls "$out"/wheels/rkd_ext-*-cp39-abi3-*.whl)
fi
cuda_wheel=${RKD_CUDA_WHEEL:-}
cuda_major=none
[ -n "$cuda_wheel" ] && cuda_major=$(wheel_cuda_major "$cuda_wheel")
echo "cpu wheel:  $(basename "$cpu_wheel")"
[ -n "$cuda_wheel" ] && echo "cuda wheel: $(basename "$cuda_wheel") (CUDA $cuda_major)"

rows=$out/rows.jsonl
: >"$rows"
status=0
row() {  # row TORCH TORCH_CUDA BUILD RESULT PASSED FAILED SKIPPED SECONDS NOTE
  python3 - "$rows" "$@" <<'EOF'
import json, sys
path, torch, cuda, build, result, p, f, s, secs, note = sys.argv[1:]
with open(path, "a") as fh:
    fh.write(json.dumps(dict(torch=torch, torch_cuda=cuda, build=build, result=result, passed=int(p), failed=int(f),
                             skipped=int(s), seconds=int(secs), note=note)) + "\n")
EOF
  printf '== torch %s, %s build: %s (%s passed, %s failed, %s skipped, %s s)%s\n' "$1" "$3" "$4" "$5" "$6" "$7" "$8" \
    "${9:+; $9}"
  [ "$4" = passed ] || [ "$4" = refused ] || status=1
}

make_env() {  # make_env VERSION DIR
  local v=$1 dir=$2
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  py=$dir/bin/python
  if [[ " ${RKD_LOCAL_TORCH:-2.14.1} " == *" $v "* ]]; then
    "$py" -m pip install -q "torch==$v"
  else
    registry_pip install -q "torch==$v"
  fi
  registry_pip install -q "${TEST_TOOLS[@]}"
  "$py" -c "import torch; assert torch.__version__.split('+')[0] == '$v', torch.__version__"
}

run_suite() {  # run_suite NAME: the suite against the installed wheel; sets passed failed skipped
  local name=$1 extra=()
  eval "extra=(${PYTEST_ARGS:-})"
  (cd "$suite" && RKD_EXT_REQUIRE_EXT=1 "$py" -m pytest python_tests -q -p no:cacheprovider \
     --junitxml="$out/$name.xml" "${extra[@]}" >"$out/$name.log" 2>&1) || true
  tail -n 1 "$out/$name.log"
  read -r passed failed skipped < <(junit_counts "$out/$name.xml" 2>/dev/null || echo "0 1 0")
}

for v in "${versions[@]}"; do
  dir=$envs/torch-$v
  t0=$SECONDS
  echo "== torch $v: environment"
  if ! make_env "$v" "$dir" >"$out/env-$v.log" 2>&1; then
    tail -n 20 "$out/env-$v.log"
    row "$v" "?" cpu failed 0 0 0 $((SECONDS - t0)) "the environment could not be made"
    continue
  fi
  tcuda=$("$py" -c "import torch; print(torch.version.cuda or 'none')")
  echo "torch $("$py" -c 'import torch; print(torch.__version__)') (CUDA $tcuda), $((SECONDS - t0)) s"

  t0=$SECONDS
  "$py" -m pip install -q --force-reinstall --no-deps "$cpu_wheel"
  (cd "$suite" && "$py" -m rkd_ext.info) | tee "$out/info-$v-cpu.txt"
  run_suite "torch-$v-cpu"
  result=passed
  [ "$failed" = 0 ] && [ "$passed" -gt 0 ] && grep -q "^compiled kernels in use *yes" "$out/info-$v-cpu.txt" ||
    result=failed
  row "$v" "$tcuda" cpu $result "$passed" "$failed" "$skipped" $((SECONDS - t0)) ""

  if [ -n "$cuda_wheel" ]; then
    t0=$SECONDS
    "$py" -m pip install -q --force-reinstall --no-deps "$cuda_wheel"
    if [ "${tcuda%%.*}" = "$cuda_major" ]; then
      (cd "$suite" && "$py" -m rkd_ext.info) | tee "$out/info-$v-cuda.txt"
      run_suite "torch-$v-cuda"
      result=passed
      [ "$failed" = 0 ] && [ "$passed" -gt 0 ] && grep -q "^CUDA kernels *yes" "$out/info-$v-cuda.txt" &&
        grep -q "^compiled kernels in use *yes" "$out/info-$v-cuda.txt" || result=failed
      row "$v" "$tcuda" cuda $result "$passed" "$failed" "$skipped" $((SECONDS - t0)) ""
    else
      # Another CUDA major version: the import must refuse, saying why.
      msg=$(cd "$suite" && RKD_EXT_REQUIRE_EXT=1 "$py" -c "import rkd_ext" 2>&1 | tail -n 1) || true
      echo "$msg"
      if grep -q "ImportError.*CUDA major version" <<<"$msg"; then
        row "$v" "$tcuda" cuda refused 0 0 0 $((SECONDS - t0)) "built for CUDA $cuda_major: not loaded, with the reason"
      else
        row "$v" "$tcuda" cuda failed 0 0 0 $((SECONDS - t0)) "expected a clear ImportError, got: ${msg:0:200}"
      fi
    fi
  fi
  [ -n "${RKD_MATRIX_ENVS:-}" ] || rm -rf "$dir"
done

python3 - "$rows" "$out" "$(basename "$cpu_wheel")" "$(basename "${cuda_wheel:-none}")" \
  "$commit" <<'EOF'
import json, os, sys
rows_path, out, cpu_wheel, cuda_wheel, commit = sys.argv[1:]
rows = [json.loads(line) for line in open(rows_path)]
json.dump(dict(commit=commit, cpu_wheel=cpu_wheel, cuda_wheel=cuda_wheel, rows=rows),
          open(os.path.join(out, "matrix.json"), "w"), indent=1)
lines = [f"Wheels: `{cpu_wheel}` (CPU) and `{cuda_wheel}` (CUDA), built once at commit {commit}.", "",
         "| torch | torch's CUDA | build | result | passed | failed | skipped | time |",
         "|---|---|---|---|---:|---:|---:|---:|"]
for r in rows:
    result = r["result"] + (f" ({r['note']})" if r["note"] else "")
    lines.append(f"| {r['torch']} | {r['torch_cuda']} | {r['build']} | {result} | {r['passed']} | {r['failed']} | "
                 f"{r['skipped']} | {r['seconds']} s |")
open(os.path.join(out, "matrix.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit $status
