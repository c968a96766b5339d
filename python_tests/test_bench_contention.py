"""benchmarks/contention.py, the defaults of the CPU's parallel regions against the guard off or one equal share
per thread: every requested case and condition is measured, the compared setting is restored afterwards, and the
tables say what was compared. No timing is asserted (timing belongs to the benchmarks, not to unit tests)."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import contention  # noqa: E402

ops = torch.ops.rkd_ext


@pytest.mark.parametrize("compare, off", [("guard", "the contention guard off"),
                                          ("chunks", "one equal share per thread")])
def test_cases_measured_and_settings_restored(tmp_path, compare, off):
    hold, chunks = ops._cpu_contention_hold(), ops._cpu_region_chunks()
    out, md = tmp_path / "c.json", tmp_path / "c.md"
    rc = contention.main(["--compare", compare, "--ops", "distance_loss,rkd_loss", "--n", "8,12", "--d", "16",
                          "--conditions", "idle,gap", "--rounds", "2", "--block-ms", "1", "--gap-ms", "1",
                          "--json", str(out), "--md", str(md)])
    assert rc == 0
    assert (ops._cpu_contention_hold(), ops._cpu_region_chunks()) == (hold, chunks)
    saved = json.loads(out.read_text())
    assert saved["meta"]["compare"] == compare and saved["meta"]["chunks"] == chunks
    cases = {(r["condition"], r["op"], r["n"], r["d"]) for r in saved["results"]}
    assert cases == {(c, o, n, 16) for c in ("idle", "gap") for o in ("distance_loss", "rkd_loss") for n in (8, 12)}
    for r in saved["results"]:
        assert r["compare"] == compare and r["rounds"] == 2
        assert r["p10"] <= r["ratio"] <= r["p90"] and r["on_s"] > 0 and r["off_s"] > 0
    assert off in md.read_text() and not list(tmp_path.glob("*.tmp"))


def test_bad_arguments_name_the_option(capsys):
    for argv, what in ((["--compare", "nothing"], "--compare"), (["--n", "1"], "--n"),
                       (["--conditions", "sunny"], "--conditions")):
        with pytest.raises(SystemExit):
            contention.main(argv)
        assert what in capsys.readouterr().err
