"""Summarises a scripts/gpu_run.sh results folder: summary.json and summary.md.

Reads what the stages left in the folder (stages.json, build.log, tests.xml,
sanitize.json, targets.json, benchmarks.json; any may be missing) and the environment, and writes
summary.json (everything) and summary.md (a short table).

Usage: python scripts/gpu_report.py OUT
"""
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment():
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "host_cpus": os.cpu_count()}
    commit = os.environ.get("RKD_GIT_COMMIT") or _run(["git", "rev-parse", "HEAD"])
    env["git_commit"] = commit or "unknown"
    if not os.environ.get("RKD_GIT_COMMIT") and commit:
        env["git_dirty"] = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    env["nvcc"] = next((line for line in _run(["nvcc", "--version"]).splitlines() if "release" in line), "")
    env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).split("\n")[0]
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
        if torch.cuda.is_available():
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            env["gpu_capability"] = "%d.%d" % torch.cuda.get_device_capability()
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        import rkd_ext

        env["rkd_ext_build"] = {k: v for k, v in rkd_ext.build_info().items() if k != "fallback_reason"}
    except Exception as exc:  # the report must still be written when the build failed
        env["import_error"] = f"{type(exc).__name__}: {exc}"
    return env


def tests(path):
    if not os.path.exists(path):
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    out = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    out["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    out["problems"], out["cuda_skipped"] = [], 0
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or node.text or "").strip().splitlines()
                out["problems"].append({"test": name, "kind": kind, "message": message[0][:300] if message else ""})
        if case.find("skipped") is not None and "test_cuda" in name:
            out["cuda_skipped"] += 1
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    return out


def benchmarks(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        rows.append({k: info.get(k) for k in ("op", "impl", "device", "dtype", "mode", "n", "d", "peak_mb")}
                    | {"median_ms": b["stats"]["median"] * 1e3, "group": b.get("group")})
    return rows


def build(path):
    if not os.path.exists(path):
        return None
    text = open(path, errors="replace").read()
    carried = re.search(r"^carried build: .*: used$", text, re.M) is not None
    ok = carried or re.search(r"Successfully installed|Successfully built", text) is not None
    return {"ok": ok, "how": "carried in" if carried else "compiled here",
            "log_tail": text.splitlines()[-15:] if not ok else []}


def markdown(s):
    env = s["environment"]
    lines = [f"# rkd_ext on {', '.join(env.get('gpus', ['(no GPU)']))}", "",
             f"commit `{env['git_commit'][:12]}`{' (dirty)' if env.get('git_dirty') else ''}, "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), {env.get('nvcc', '')}, "
             f"driver {env.get('driver') or '?'}, {env['date']}", ""]
    if s.get("stages"):
        lines += ["| stage | status | seconds | note |", "|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['status'].upper() if r['status'] == 'failed' else r['status']} | "
                  f"{r['seconds']} | {r['note']} |" for r in s["stages"]]
        lines.append("")
    lines += ["| stage | result |", "|---|---|"]
    b = s.get("build")
    if b is not None:
        cuda = env.get("rkd_ext_build", {}).get("with_cuda")
        lines.append(f"| build | {'ok' if b['ok'] else 'FAILED'} ({b.get('how', 'compiled here')}); CUDA kernels: "
                     f"{cuda}, arch "
                     f"{env.get('rkd_ext_build', {}).get('cuda_arch_list')} |")
    t = s.get("tests")
    if t is not None:
        lines.append(f"| tests | {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped ({t['cuda_skipped']} of them CUDA tests), {t['time_s']} s |")
    tg = s.get("targets")
    if tg is not None:
        checks = [c for r in tg.get("cases", []) for c in r["targets"]]
        lines.append(f"| targets | {sum(c['ok'] for c in checks)} of {len(checks)} met |")
    if s.get("sanitize") is not None:
        # gpu_run.sh runs compute-sanitizer with --error-exitcode 9; timeout's 124 is a tool cut off.
        verdict = {0: "clean", 9: "FOUND ERRORS", 124: "CUT OFF"}
        lines.append("| sanitize | " + ", ".join(f"{r['tool']} {verdict.get(r['exit'], 'exit %d' % r['exit'])} "
                                                  f"({r['seconds']} s)" for r in s["sanitize"]) + " |")
    if s.get("benchmarks") is not None:
        lines.append(f"| benchmarks | {len(s['benchmarks'])} cases timed |")
    if t and t["problems"]:
        lines += ["", "## Failing tests", ""] + [f"- `{p['test']}` ({p['kind']}): {p['message']}"
                                                  for p in t["problems"][:40]]
    if tg is not None:
        lines += ["", "## Targets (float32, forward + backward, median)", "",
                  "| case | N | D | ours ms | reference ms | speedup | peak MiB | errors (value, grad) | targets |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in tg.get("cases", []):
            marks = ", ".join(f"{c['metric']} {'<=' if c['kind'] == 'max' else '>='} {c['bound']:g}: "
                              f"{'met' if c['ok'] else 'MISSED'}" for c in r["targets"]) or "-"
            ref = f"{r['reference_ms']:.3f}" if "reference_ms" in r else "-"
            speed = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
            lines.append(f"| {r['case']} | {r['n']} | {r['d']} | {r['ours_ms']:.3f} | {ref} | {speed} | "
                         f"{r['ours_peak_mib']:.0f} | {r['value_err']:.1e}, {r['grad_err']:.1e} | {marks} |")
    rows = s.get("benchmarks")
    if rows:
        lines += ["", "## Benchmarks (median ms)", "", "| group | impl | ms | peak MB |", "|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (str(r["group"]), str(r["impl"]))):
            peak = f"{r['peak_mb']:.0f}" if isinstance(r.get("peak_mb"), (int, float)) else "-"
            lines.append(f"| {r['group']} | {r['impl']} | {r['median_ms']:.3f} | {peak} |")
    return "\n".join(lines) + "\n"


def main(out):
    summary = {"environment": environment(), "build": build(os.path.join(out, "build.log")),
               "tests": tests(os.path.join(out, "tests.xml")), "benchmarks": benchmarks(
                   os.path.join(out, "benchmarks.json"))}
    for key in ("targets", "stages", "sanitize"):
        path = os.path.join(out, f"{key}.json")
        summary[key] = json.load(open(path)) if os.path.exists(path) else None
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = markdown(summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    failed = any(r["status"] == "failed" for r in summary["stages"] or []) or (
        summary["build"] is not None and not summary["build"]["ok"]) or (
        summary["tests"] is not None and (summary["tests"]["failures"] or summary["tests"]["errors"])) or (
        summary["targets"] is not None and not all(c["ok"] for r in summary["targets"]["cases"]
                                                   for c in r["targets"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
