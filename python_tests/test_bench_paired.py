"""benchmarks/paired.py, the interleaved speed-up measurement: it covers every requested case, checks
each implementation against the float64 oracle before timing it, and its statistics are those of
its rounds. No timing is asserted (timing belongs to the benchmarks, not to unit tests)."""
import json
import math
import os
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import impls, paired, report  # noqa: E402


def test_every_case_measured_with_consistent_statistics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RKD_BENCH_N", "8,12")
    monkeypatch.setenv("RKD_BENCH_D", "16")
    out = tmp_path / "p.json"
    md = tmp_path / "p.md"
    rc = paired.main(["--ops", "pairwise_distance,distance_loss,angle_loss", "--rounds", "3", "--block-ms", "1",
                      "--json", str(out), "--md", str(md)])
    assert rc == 0
    got = json.loads(out.read_text())
    cases = {(r["op"], r["mode"], r["n"], r["d"]) for r in got["results"]}
    sizes = [(8, 16), (12, 16)]
    want = {(op, mode, n, d) for op in ("pairwise_distance", "distance_loss", "angle_loss")
            for mode in impls.MODES for n, d in sizes}
    assert cases == want
    for r in got["results"]:
        assert r["rounds"] == 3
        assert math.isfinite(r["speedup"]) and r["speedup"] > 0
        assert r["p10"] <= r["speedup"] <= r["p90"]
        assert r["impl_s"] > 0 and r["base_s"] > 0
    text = md.read_text()
    assert "## distance_loss, forward+backward" in text and "speed-up" in text
    assert not os.path.exists(str(out) + ".tmp")
    # --table: one column per op, each cell the case's median round.
    capsys.readouterr()
    assert paired.main(["--table", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ops = ("pairwise_distance", "distance_loss", "angle_loss")
    for mode, title in ((impls.FORWARD, "forward"), (impls.FORWARD_BACKWARD, "forward+backward")):
        start = lines.index(f"cpu, float32, {title}: speed-up of ours over the reference")
        assert lines[start + 2] == "| N | D | " + " | ".join(ops) + " |"
        for row, (n, d) in zip(lines[start + 4:], sizes):
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[:2] == [str(n), str(d)]
            want = {r["op"]: r["speedup"] for r in got["results"] if (r["mode"], r["n"], r["d"]) == (mode, n, d)}
            assert cells[2:] == [report.fmt_ratio(want[op]) for op in ops]


def test_speedup_is_the_median_round(monkeypatch):
    # Blocks with known medians: the base takes 3 units, ours 1, 2, 4 in turn -> rounds 3, 1.5, 0.75.
    times = iter([1.0, 3.0, 3.0, 2.0, 4.0, 3.0])  # round 0: ours, base; round 1: base, ours; round 2: ours, base
    monkeypatch.setattr(paired, "_block", lambda run, calls, device, gap_s=0.0: next(times))
    r = paired.measure("pairwise_distance", "ours", "reference", impls.FORWARD, 8, 4, rounds=3)
    assert r["speedup"] == pytest.approx(1.5)
    assert r["p10"] == pytest.approx(0.75) and r["p90"] == pytest.approx(3.0)
    assert r["impl_s"] == pytest.approx(2.0) and r["base_s"] == pytest.approx(3.0)


def test_a_wrong_implementation_is_refused_before_timing(monkeypatch):
    monkeypatch.setitem(impls.IMPLS["pairwise_distance"], "ours", lambda x: torch.cdist(x, x) * 1.01)
    with pytest.raises(AssertionError, match="refusing to time a wrong result"):
        paired.measure("pairwise_distance", "ours", "reference", impls.FORWARD, 8, 16, rounds=1)


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        paired.main(["--ops", "no_such_op"])
    with pytest.raises(SystemExit):
        paired.main(["--ops", "pairwise_distance", "--impl", "ours_separate"])
    with pytest.raises(SystemExit):
        paired.main(["--rounds", "0"])


def test_idle_gap_sleeps_before_every_call_untimed(monkeypatch):
    # A fake clock: a call takes 1 unit, a sleep 10; the block's median must be the call's alone, and a sleep
    # must precede every call.
    clock, events = [0.0], []

    def sleep(s):
        events.append("sleep")
        clock[0] += 10 * s

    def run():
        events.append("call")
        clock[0] += 1.0

    monkeypatch.setattr(paired.time, "sleep", sleep)
    monkeypatch.setattr(paired.time, "perf_counter", lambda: clock[0])
    assert paired._block(run, 4, "cpu", gap_s=0.01) == pytest.approx(1.0)
    assert events == ["sleep", "call"] * 4
    events.clear()
    assert paired._block(run, 3, "cpu") == pytest.approx(1.0) and events == ["call"] * 3


def spy_on_busy(monkeypatch):
    """The busy processes each case starts, recorded (and checked running while the rounds run)."""
    started = []
    real = paired._busy

    @paired.contextlib.contextmanager
    def spy(count):
        with real(count) as procs:
            started.extend(procs)
            assert all(p.poll() is None for p in procs)
            yield procs

    monkeypatch.setattr(paired, "_busy", spy)
    return started


def test_gap_and_busy_cases_are_labelled_and_the_busy_process_is_gone(monkeypatch):
    started = spy_on_busy(monkeypatch)
    r = paired.measure("pairwise_distance", "ours", "reference", impls.FORWARD, 8, 4, rounds=3, gap_s=0.001, busy=1)
    assert r["gap_ms"] == pytest.approx(1.0) and r["busy"] == 1 and r["rounds"] == 3
    assert max(r["calls"].values()) <= paired.GAP_CALLS
    assert len(started) == 1 and started[0].poll() is not None  # stopped and reaped


def test_busy_process_stopped_when_a_round_fails(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("planted")

    started = spy_on_busy(monkeypatch)
    monkeypatch.setattr(paired, "_block", boom)
    with pytest.raises(RuntimeError, match="planted"):
        paired.measure("pairwise_distance", "ours", "reference", impls.FORWARD, 8, 4, rounds=3, busy=1)
    assert len(started) == 1 and started[0].poll() is not None


def test_negative_gap_or_busy_refused():
    with pytest.raises(SystemExit):
        paired.main(["--gap-ms", "-1"])
    with pytest.raises(SystemExit):
        paired.main(["--busy", "-2"])


def test_slowdown_table_pairs_the_cases_of_two_runs():
    meta = {"impl": "ours", "base": "reference"}
    case = dict(op="distance_loss", mode=impls.FORWARD_BACKWARD, n=16, d=512)
    idle = dict(meta=meta, results=[dict(case, impl_s=1e-3, base_s=4e-3, speedup=4.0),
                                    dict(case, n=32, skipped="memory")])
    loaded = dict(meta=meta, results=[dict(case, impl_s=3e-3, base_s=6e-3, speedup=2.0)])
    lines = paired.slowdown_table(idle, loaded).splitlines()
    assert len(lines) == 3  # header, rule, the one case both runs measured
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["distance_loss", "16", "512", "1 ms", "3 ms", "3.00x", "4 ms", "6 ms", "1.50x", "2.00x"]


def test_table_of_a_busy_run_grids_both_slowdowns(tmp_path, capsys):
    # A saved --busy run of two ops at two sizes: the slowdown grid puts each side's slowdown in the op's
    # column, bolds the cases where ours slows more, and counts them; a run without busy processes has none.
    def case(op, n, ours, ref):
        return dict(op=op, impl="ours", base="reference", mode=impls.FORWARD_BACKWARD, n=n, d=16, device="cpu",
                    dtype="float32", busy=1, rounds=3, speedup=2.0, p10=1.5, p90=2.5, impl_s=1e-3, base_s=2e-3,
                    impl_idle_s=1e-3, base_idle_s=2e-3, impl_slowdown=ours, base_slowdown=ref)
    saved = dict(meta=dict(impl="ours", base="reference", busy=1),
                 results=[case("distance_loss", 8, 1.25, 1.5), case("distance_loss", 16, 2.0, 1.75),
                          case("angle_loss", 8, 3.0, 1.125), case("angle_loss", 16, 1.0, 1.0)])
    path = tmp_path / "busy.json"
    path.write_text(json.dumps(saved))
    assert paired.main(["--table", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("1 busy process(es), forward+backward: slowdown (loaded / idle), ours / reference; "
                        "bold where ours slows more")
    assert lines[start + 2] == "| N | D | distance_loss | angle_loss |"
    assert lines[start + 4:start + 7] == ["| 8 | 16 | 1.25 / 1.50 | **3.00 / 1.12** |",
                                          "| 16 | 16 | **2.00 / 1.75** | 1.00 / 1.00 |",
                                          "| ours slows more | | 1 of 2 | 1 of 2 |"]
    for r in saved["results"]:
        for key in ("busy", "impl_slowdown", "base_slowdown", "impl_idle_s", "base_idle_s"):
            r.pop(key)
    path.write_text(json.dumps(saved))
    assert paired.main(["--table", str(path)]) == 0
    assert "slowdown" not in capsys.readouterr().out


def test_loaded_blocks_follow_the_settling_calls(monkeypatch):
    # Each loaded block starts only after settle_s of untimed calls with the busy process running; idle
    # blocks start without them. A round with the settle skipped fails this.
    events = []
    real_load, real_block = paired._load, paired._block

    def load(procs, on):
        real_load(procs, on)
        events.append(("load", on, time.perf_counter()))

    def block(run, calls, device, gap_s=0.0):
        events.append(("block", None, time.perf_counter()))
        return real_block(run, calls, device, gap_s)

    monkeypatch.setattr(paired, "_load", load)
    monkeypatch.setattr(paired, "_block", block)
    settle = 0.05
    r = paired.measure("pairwise_distance", "ours", "reference", impls.FORWARD, 8, 4, rounds=6, busy=1,
                       settle_s=settle)
    assert r["settle_ms"] == pytest.approx(50.0) and r["rounds"] == 3
    loads = [i for i, e in enumerate(events) if e[0] == "load"]
    assert [events[i][1] for i in loads] == [False, True, True, False, False, True]
    for i in loads:
        assert [e[0] for e in events[i + 1:i + 3]] == ["block", "block"]
        waited = events[i + 1][2] - events[i][2]
        if events[i][1]:
            assert waited >= settle
        else:
            assert waited < settle


def test_settle_calls_at_least_once_and_for_the_time_given():
    count = [0]

    def run():
        count[0] += 1
        time.sleep(0.004)

    assert paired._settle(run, 0.0) == 1 and count[0] == 1
    assert paired._settle(run, 0.03) >= 5
