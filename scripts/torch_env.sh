# Helpers for the scripts that build or test rkd_ext in environments of their own
# (check_cuda_build.sh, torch_matrix.sh). Source it; $py must name the environment's python.

# pip on the package registry alone: no configuration file, no local wheel folder, no constraint.
registry_pip() {
  env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$py" -m pip "$@"
}

# The test tools the suite needs (pyproject.toml's test extras), for an environment that installs a wheel --no-deps.
TEST_TOOLS=("pytest>=7" "pytest-benchmark>=4" pytest-timeout numpy mmengine-lite tqdm "matplotlib>=3.5")

# copy_tree ROOT DEST [suite]: the tree as git sees it (tracked and untracked files, not ignored ones). With
# "suite", without the package and its build script: tests run there import the rkd_ext that is installed.
copy_tree() {
  local root=$1 dest=$2 mode=${3:-}
  rm -rf "$dest"
  mkdir -p "$dest"
  (cd "$root" && git ls-files -z -c -o --exclude-standard | while IFS= read -r -d '' f; do
     [ -e "$f" ] || continue
     [ "$mode" = suite ] && case $f in rkd_ext/*|setup.py) continue ;; esac
     printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -C "$dest" -xf -
}

# junit_counts XML: "passed failed skipped" of a pytest JUnit report.
junit_counts() {
  "$py" - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
cases = list(ET.parse(sys.argv[1]).iter("testcase"))
failed = sum(c.find("failure") is not None or c.find("error") is not None for c in cases)
skipped = sum(c.find("skipped") is not None for c in cases)
print(len(cases) - failed - skipped, failed, skipped)
EOF
}

# wheel_cuda_major WHEEL: the CUDA runtime major version the wheel's library needs (libcudart.so.N), or "none".
wheel_cuda_major() {
  "$py" - "$1" <<'EOF'
import re, subprocess, sys, tempfile, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, tempfile.TemporaryDirectory() as d:
    lib = next(n for n in z.namelist() if re.match(r"rkd_ext/_C\..*so$", n))
    path = z.extract(lib, d)
    needed = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
m = re.search(r"libcudart\.so\.(\d+)", needed)
print(m.group(1) if m else "none")
EOF
}
