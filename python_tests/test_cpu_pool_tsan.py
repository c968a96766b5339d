"""The CPU kernels' worker pool (csrc/cpu/cpu_pool.h) under ThreadSanitizer: cpu_pool_stress.cpp, built against
the header with -fsanitize=thread, runs thousands of regions and must finish clean; built against copies of the
header with a synchronisation bug planted, it must not. The plants: the region's fields published with a relaxed
store (a worker may read the closure before it is written; on x86 no functional check sees it), and the caller
returning without waiting for the chunks that workers have claimed."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "cpu", "cpu_pool.h")
DRIVER = os.path.join(ROOT, "python_tests", "cpu_pool_stress.cpp")
CXX = os.environ.get("CXX", "g++")
FLAGS = ["-std=c++17", "-O1", "-g", "-fsanitize=thread", "-pthread"]
ENV = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:exitcode=66")

PLANTS = {
    "relaxed publish": ("state_.store(pack(epoch, 0, chunks), std::memory_order_seq_cst);",
                        "state_.store(pack(epoch, 0, chunks), std::memory_order_relaxed);"),
    "no wait for claimed chunks": ("    wait_done(chunks, start);\n", "\n"),
}

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX})")


def _build_and_run(tmp_path, name, header_dir, source=DRIVER):
    exe = str(tmp_path / name)
    subprocess.run([CXX, *FLAGS, f"-I{header_dir}", source, "-o", exe], check=True, capture_output=True, text=True)
    return subprocess.run([exe], capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def tsan(tmp_path_factory):
    """Skips where this compiler's thread sanitizer cannot build or run a plain threaded program."""
    tmp = tmp_path_factory.mktemp("tsan")
    src = tmp / "canary.cpp"
    src.write_text("#include <thread>\nint main() { std::thread t([] {}); t.join(); return 0; }\n")
    try:
        run = _build_and_run(tmp, "canary", tmp, str(src))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"{CXX} cannot build with -fsanitize=thread: {e.stderr.strip()[-300:]}")
    if run.returncode != 0:
        pytest.skip(f"the thread sanitizer's runtime does not run here: {run.stderr.strip()[-300:]}")
    return tmp


def test_the_pool_is_race_free_under_stress(tsan):
    run = _build_and_run(tsan, "stress", os.path.dirname(HEADER))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ThreadSanitizer" not in run.stderr
    worker_chunks = int(run.stdout.split(" regions, ")[1].split()[0])
    assert worker_chunks > 0  # the workers took part: the races above had a chance to happen


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_race_is_caught(tsan, plant):
    old, new = PLANTS[plant]
    with open(HEADER) as f:
        text = f.read()
    assert text.count(old) == 1, f"the plant {plant!r} no longer matches cpu_pool.h"
    planted = tsan / plant.replace(" ", "_")
    (planted / "cpu").mkdir(parents=True)
    (planted / "core").mkdir()
    (planted / "cpu" / "cpu_pool.h").write_text(text.replace(old, new))
    shutil.copy(os.path.join(ROOT, "csrc", "core", "serial_work.h"), planted / "core" / "serial_work.h")
    run = _build_and_run(tsan, "stress_" + planted.name, planted / "cpu")
    assert run.returncode != 0, "the planted bug went unnoticed:\n" + run.stdout
    assert "ThreadSanitizer: data race" in run.stderr or "cpu_pool_stress:" in run.stderr
