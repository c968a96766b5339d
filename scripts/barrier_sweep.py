"""Shows that every __syncthreads() in csrc/cuda is needed: with any one of them removed, the emulation fails.

For each call site of __syncthreads() in csrc/cuda (found in the sources),
scripts/emulate_cuda.py runs the quick case set on the detect build with that
barrier made a no-op, starting at the first case that runs it (a baseline run
records which), and stops at the first finding of the detectors. A site whose
removal goes unnoticed, or that no case runs, fails the sweep: a barrier no
detector can miss is redundant, or the cases do not reach it.

Usage: python scripts/barrier_sweep.py [--jobs J] [--sites FILE:LINE ...] [--json OUT] [--write]
(exit status 1 when a removal is not caught; --write puts the table in docs/gpu.md). Needs what
emulate_cuda.py needs.
"""
import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATE = os.path.join(ROOT, "scripts", "emulate_cuda.py")
# A mutated run that finds nothing runs the whole quick set (about a minute); far past that it hangs.
TIMEOUT_S = 600
DOC = os.path.join(ROOT, "docs", "gpu.md")
BEGIN, END = "<!-- barrier-sweep:begin -->", "<!-- barrier-sweep:end -->"


def function_of(lines, number):
    """The function whose body holds line `number` (1-based): the nearest definition above it."""
    for text in reversed(lines[:number - 1]):
        if text[:1] not in ("", " ", "}", "/", "#", "\n") and "(" in text:
            m = re.search(r"(\w+)\(", re.sub(r"__launch_bounds__\([^)]*\)", "", text))
            if m:
                return m.group(1)
    return "?"


def table(results):
    """Markdown: each site, its function, and the first finding without its byte and threads."""
    lines = ["| barrier | in | its removal is caught by |", "|---|---|---|"]
    for site, r in results.items():
        name, line = site.rsplit(":", 1)
        with open(os.path.join(ROOT, "csrc", "cuda", name)) as f:
            fn = function_of(f.readlines(), int(line))
        finding = r["finding"].split(": ", 1)[-1]  # without the op
        finding = re.sub(r" at byte .*", "", finding).replace("|", "\\|")
        lines.append(f"| `{site}` | `{fn}` | {finding if r['caught'] else 'MISSED: ' + finding} |")
    return "\n".join(lines)


def barrier_sites():
    """"file:line" of every __syncthreads() call in csrc/cuda's headers, in file order."""
    folder = os.path.join(ROOT, "csrc", "cuda")
    sites = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".cuh", ".cu")):
            continue
        with open(os.path.join(folder, name)) as f:
            for number, line in enumerate(f, 1):
                code = line.split("//", 1)[0]
                if re.search(r"\b__syncthreads\(\)", code):
                    sites.append(f"{name}:{number}")
    return sites


def emulate(lib, *extra):
    cmd = [sys.executable, EMULATE, "--quick", "--lib", lib, *extra]
    start = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"no result within {TIMEOUT_S} s", time.time() - start
    return out.returncode, out.stdout + out.stderr, time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutated runs at a time")
    ap.add_argument("--sites", nargs="*", help="only these call sites (default: every one in csrc/cuda)")
    ap.add_argument("--json", help="write each site's result here")
    ap.add_argument("--write", action="store_true", help="put the table in docs/gpu.md")
    args = ap.parse_args()
    sites = args.sites or barrier_sites()
    spec = importlib.util.spec_from_file_location("emulate_cuda", EMULATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results, failed = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        lib = mod.build(tmp, "detect")._name
        coverage = os.path.join(tmp, "sites.json")
        code, text, took = emulate(lib, "--sites", coverage)
        if code != 0:
            print(text)
            print(f"the baseline emulation failed (exit status {code}): nothing to compare the removals with")
            return 1
        with open(coverage) as f:
            first = json.load(f)
        print(f"baseline: every check passed, no findings ({took:.0f} s); removing each of {len(sites)} barriers",
              flush=True)

        def one(site):
            if site not in first:
                return site, None, "no case runs it", 0.0
            code, text, took = emulate(lib, "--skip-barrier", site, "--stop-on-findings", "--start-at",
                                       str(first[site]["first_case"]))
            findings = [line for line in text.splitlines()
                        if line.startswith(("racecheck", "synccheck", "initcheck", "memcheck", "launch"), 
                                            line.find(": ") + 2)]
            if code == 3 and findings:
                return site, True, findings[0], took
            if code == 1:  # wrong results but no finding: caught, though not named
                return site, False, "results wrong but no detector named the hazard", took
            return site, False, text.strip().splitlines()[-1] if text.strip() else "nothing found", took

        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for site, caught, what, took in pool.map(one, sites):
                status = "caught" if caught else "MISSED"
                failed += not caught
                results[site] = {"caught": bool(caught), "finding": what, "seconds": round(took, 1)}
                print(f"{status:7} {site:28} {took:5.0f} s  {what[:300]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.write:
        with open(DOC) as f:
            head, rest = f.read().split(BEGIN, 1)
        with open(DOC, "w") as f:
            f.write(f"{head}{BEGIN}\n{table(results)}\n{END}{rest.split(END, 1)[1]}")
    print(f"{len(sites) - failed}/{len(sites)} barrier removals caught by a named finding")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
