"""rkd-distill's third student: the same RKD loss from the other implementation, the paired rkd_ext - reference
difference, and the loss's cost per training step measured in the run."""
import csv
import json
import math
import os
import signal
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from rkd_ext.distill import checkpoint, cli, data, job, train
from rkd_ext.distill.train import KILL_AFTER_ENV, LossCost, RKDObjective
from rkd_ext.models import build_model
from conftest import assert_identical, interrupt_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As test_distill.py's tiny run (4 classes of 8x8 images, narrow ResNet-18s, 6 steps per epoch), with the default
# --compare-impl: three students per seed.
TINY = dict(num_classes=4, train_size=96, val_size=45, image_size=8, seed=1)
TINY_ARGS = ["--num-classes", "4", "--train-size", "96", "--val-size", "45", "--image-size", "8", "--data-seed", "1",
             "--teacher-width", "0.125", "--student-width", "0.0625", "--epochs", "2", "--batch-size", "16",
             "--eval-batch-size", "64", "--seeds", "1", "--no-progress"]
STUDENT_DIM, TEACHER_DIM = 32, 64  # neck features: 512 x 0.0625 and 512 x 0.125


pytestmark = pytest.mark.usefixtures("distill_torch_state")


def _subprocess_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


def _run_cli(args, **env):
    return subprocess.Popen([sys.executable, "-m", "rkd_ext.distill", *args], cwd=REPO, env=_subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _accuracy(state_dict, val):
    """Top-1 / top-5 (%) of a checkpointed student on ``val``, computed without the script's evaluation code."""
    model = build_model("resnet18", TINY["num_classes"], 0.0625, "cifar")
    model.load_state_dict(state_dict)
    model.eval()
    mean, std = torch.tensor(val.mean).view(1, 3, 1, 1), torch.tensor(val.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((val.images.float() / 255 - mean) / std)
    rank = (logits > logits.gather(1, val.labels[:, None])).sum(1)
    return 100 * (rank == 0).double().mean().item(), 100 * (rank < 5).double().mean().item()




def test_options_and_roles(tmp_path, capsys):
    args = cli.parse_args([])
    assert args.compare_impl is True and job.student_roles(args) == ("baseline", "rkd", "rkd-reference")
    assert [job.impl_of(r, args) for r in job.student_roles(args)] == [None, "kernel", "reference"]
    # With the reference as the main loss, the third student is rkd_ext's.
    args = cli.parse_args(["--rkd-impl", "reference"])
    assert job.student_roles(args) == ("baseline", "rkd", "rkd-kernel")
    assert [job.impl_of(r, args) for r in job.student_roles(args)] == [None, "reference", "kernel"]
    assert job.student_roles(cli.parse_args(["--no-compare-impl"])) == ("baseline", "rkd")
    # Presets train one seed of two students unless told (a third student is half as much training again).
    assert cli.parse_args(["--preset", "c100-r50-vgg11bn", "--data-dir", str(tmp_path)]).compare_impl is False
    assert cli.parse_args(["--preset", "in1k-r34-r18", "--data-dir", str(tmp_path), "--compare-impl"]).compare_impl
    # The reference has no sharded form: beside a sharded rkd_ext student its objective gathers the global batch.
    objectives = job._objectives(cli.parse_args(["--rkd-global-batch"]))
    assert {impl: o.global_batch for impl, o in objectives.items()} == {"kernel": "shard", "reference": "gather"}
    assert list(job._objectives(cli.parse_args(["--no-compare-impl"]))) == ["kernel"]
    # A run recorded before the option resumes without the third student, and cannot gain one.
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 2}))
    assert cli.parse_args(["--resume", str(run)]).compare_impl is False
    with pytest.raises(SystemExit):
        cli.parse_args(["--resume", str(run), "--compare-impl"])
    assert "--compare-impl is True instead of False" in capsys.readouterr().err


def test_the_third_student_shares_initialisation_and_data_order(tmp_path):
    # One step per epoch and one epoch: the RKD students' first step, on the same weights and batch, with losses
    # that compute the same numbers, must give the same loss, BatchNorm statistics and weights, within rounding.
    out = tmp_path / "run"
    assert cli.main(TINY_ARGS + ["--train-size", "16", "--epochs", "1", "--out-dir", str(out)]) == 0
    states = {n: checkpoint.load(out / "checkpoints" / f"{n}.pt") for n in ("baseline", "rkd", "rkd-reference")}
    kernel, ref = states["rkd"], states["rkd-reference"]
    for key in ("loss", "ce", "rkd", "train_top1"):
        assert kernel["history"][0][key] == pytest.approx(ref["history"][0][key], rel=1e-5, abs=1e-6), key
    assert kernel["history"][0]["rkd"] > 0
    assert kernel["model"].keys() == ref["model"].keys()
    for name, tensor in kernel["model"].items():
        torch.testing.assert_close(tensor, ref["model"][name], rtol=1e-4, atol=1e-6, msg=name)
    # The same cross-entropy on the first step: the baseline started from the same weights and batch too; RKD's
    # gradient, which reaches every layer below the neck, moved the RKD students' first convolution away from it.
    assert states["baseline"]["history"][0]["ce"] == pytest.approx(kernel["history"][0]["ce"], rel=1e-6)
    first_conv = "backbone.0.weight"
    assert not torch.allclose(states["baseline"]["model"][first_conv], kernel["model"][first_conv], atol=1e-6)


def test_two_seeds_report_the_paired_rkd_ext_vs_reference_difference_and_the_loss_cost(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(TINY_ARGS + ["--seeds", "2", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    roles = ("baseline", "rkd", "rkd-reference")
    names = [r if seed == 0 else f"{r}-seed1" for seed in (0, 1) for r in roles]
    assert sorted(os.listdir(out / "checkpoints")) == sorted(f"{n}.pt" for n in ["teacher"] + names)
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["stage"] for r in rows] == [n for n in ["teacher"] + names for _ in range(2)]
    assert all(float(r["rkd"]) > 0 for r in rows if r["stage"].startswith("rkd"))

    # Every seed's accuracies are those of its checkpoints; the means and the paired difference are recomputed
    # here, the t quantile from its closed form for 1 degree of freedom (a Cauchy distribution).
    results = json.loads((out / "results.json").read_text())
    _, val = data.synthetic(**TINY)
    assert [r["seed"] for r in results["seeds"]] == [0, 1]
    for r in results["seeds"]:
        for role in roles:
            name = role if r["seed"] == 0 else f"{role}-seed1"
            top1, top5 = _accuracy(checkpoint.load(out / "checkpoints" / f"{name}.pt")["model"], val)
            assert (r[role]["top1"], r[role]["top5"]) == (pytest.approx(top1, abs=1e-9), pytest.approx(top5, abs=1e-9))
    assert results["impl_difference"]["rkd_ext"] == "rkd" and results["impl_difference"]["reference"] == "rkd-reference"
    t975 = math.tan(math.pi * (0.975 - 0.5))
    for metric in ("top1", "top5"):
        kernel = np.array([r["rkd"][metric] for r in results["seeds"]])
        ref = np.array([r["rkd-reference"][metric] for r in results["seeds"]])
        d = kernel - ref
        got = results["impl_difference"][metric]
        assert results["rkd-reference"][metric] == pytest.approx(ref.mean(), abs=1e-9)
        assert got["mean"] == pytest.approx(d.mean(), abs=1e-9) and got["std"] == pytest.approx(d.std(ddof=1), abs=1e-9)
        half = t975 * d.std(ddof=1) / math.sqrt(2)
        assert got["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-3)
        assert got["within_noise"] == (d.mean() - half <= 0 <= d.mean() + half)

    # The printed tables and verdicts say what results.json holds.
    table = printed[printed.index("model "):]
    assert "student (CE + reference RKD)" in table and f"{results['rkd-reference']['top1']:.2f}" in table
    assert "CE + RKD trains on rkd_ext's RKD loss, CE + reference RKD on the reference" in printed
    seed_rows = printed[printed.index("seed  reference top-1  rkd_ext top-1"):].splitlines()[2:4]
    for row, r in zip(seed_rows, results["seeds"]):
        assert row.split()[:4] == [str(r["seed"]), f"{r['rkd-reference']['top1']:.2f}", f"{r['rkd']['top1']:.2f}",
                                   f"{r['rkd']['top1'] - r['rkd-reference']['top1']:+.2f}"]
    lines = printed[printed.index("rkd_ext vs reference RKD loss, paired over 2 seeds"):].splitlines()[1:4]
    for line, metric in zip(lines, ("top1", "top5")):
        assert ("within noise" in line) == results["impl_difference"][metric]["within_noise"], line
    both = all(results["impl_difference"][m]["within_noise"] for m in ("top1", "top5"))
    assert lines[2].strip().startswith("both within noise" if both else "not within noise"), lines[2]

    # The loss's cost: both implementations, at 3 steps of each of the 2 epochs of the 4 RKD students.
    cost = results["loss_cost"]
    assert cost["device"] == "cpu" and cost["features"] == [[16, STUDENT_DIM], [16, TEACHER_DIM]]
    for impl in ("kernel", "reference"):
        c = cost[impl]
        assert c["steps"] == 3 * 2 * 4 and 0 < c["ms_quartiles"][0] <= c["ms_median"] <= c["ms_quartiles"][1]
        assert c["peak_bytes"] > 0
    # The reference holds N x N x D difference vectors for its angles, the kernel does not.
    assert cost["reference"]["peak_bytes"] > cost["kernel"]["peak_bytes"]
    rows = {line.split()[0]: line for line in printed[printed.index("RKD loss per training step"):].splitlines()[4:6]}
    assert f"{cost['kernel']['ms_median']:.3g} ms" in rows["rkd_ext"]
    assert f"{cost['reference']['ms_median']:.3g} ms" in rows["reference"]
    ratio = cost["reference"]["ms_median"] / cost["kernel"]["ms_median"]
    assert f"reference / rkd_ext: {ratio:.1f}x the time" in printed
    # Each RKD student's checkpoint keeps the measurements of its epochs.
    for name in ("rkd", "rkd-reference-seed1"):
        for row in checkpoint.load(out / "checkpoints" / f"{name}.pt")["history"]:
            assert len(row["loss_cost"]["kernel"]["ms"]) == len(row["loss_cost"]["reference"]["ms"]) == 3

    # The plot has the panel of paired differences: three panels side by side.
    image = matplotlib.image.imread(out / "curves.png")
    assert image.shape[1] > 3.5 * image.shape[0], image.shape
    # Resuming the finished run changes nothing and reprints the same report.
    assert cli.main(["--resume", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.endswith(table)


def test_loss_cost_measures_time_and_the_peak_of_the_loss_own_tensors():
    torch.manual_seed(0)
    student, teacher = torch.randn(24, 16), torch.randn(24, 40)
    cost = LossCost({"kernel": RKDObjective(impl="kernel"), "reference": RKDObjective(impl="reference")},
                    torch.device("cpu"))
    for _ in range(3):
        cost.measure(student, teacher)
    taken = cost.take()
    assert taken["features"] == [[24, 16], [24, 40]]
    for impl in ("kernel", "reference"):
        assert len(taken[impl]["ms"]) == 3 and min(taken[impl]["ms"]) > 0
        # At least the gradient it returns to the student features, and it is measured once per epoch.
        assert taken[impl]["peak_bytes"] >= student.numel() * 4
    # The reference's angles alone hold two 24 x 24 x 16 tensors of differences and a 24 x 24 x 24 of cosines.
    assert taken["reference"]["peak_bytes"] >= 4 * (2 * 24 * 24 * 16 + 24 ** 3)
    assert cost.take()["kernel"] == {"ms": [], "peak_bytes": None}  # a new epoch starts empty
    # The peak is that of the tensors the call allocates, not of what exists before it or what it keeps.
    kept = []

    def call():
        a = torch.ones(2 ** 18)  # 1 MiB
        b = torch.ones(2 ** 17)  # 0.5 MiB, both held at once
        del a
        kept.append(torch.ones(2 ** 16) + b[:2 ** 16])
    assert train._profiled_peak_bytes(call) == 2 ** 20 + 2 ** 19
    # The summary: medians and quartiles over every measured step, the largest peak.
    rows = [{"loss_cost": {"features": [[8, 4], [8, 6]], "kernel": {"ms": [1.0, 3.0], "peak_bytes": 10}}},
            {"val_top1": 50.0},
            {"loss_cost": {"features": [[8, 4], [8, 6]], "kernel": {"ms": [2.0, 9.0, 4.0], "peak_bytes": 12}}}]
    summary = train.summarise_cost(rows)
    assert summary["kernel"]["ms_median"] == 3.0 and summary["kernel"]["steps"] == 5
    assert summary["kernel"]["peak_bytes"] == 12 and summary["features"] == [[8, 4], [8, 6]]
    assert summary["kernel"]["ms_quartiles"] == pytest.approx(list(np.percentile([1, 2, 3, 4, 9], [25, 75],
                                                                                method="weibull")))
    assert train.summarise_cost([{"val_top1": 1.0}]) is None




def _make_old_format(run):
    """Make ``run`` look recorded before the third student and the loss's cost: no compare_impl in its config, no
    loss_cost in its checkpoints' histories."""
    config = json.loads((run / "config.json").read_text())
    config.pop("compare_impl", None)
    (run / "config.json").write_text(json.dumps(config))
    for name in os.listdir(run / "checkpoints"):
        state = checkpoint.load(run / "checkpoints" / name)
        state["history"] = [{k: v for k, v in row.items() if k != "loss_cost"} for row in state["history"]]
        torch.save(state, run / "checkpoints" / name)


def test_a_run_recorded_before_the_third_student_resumes_and_reports(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    # Interrupted in the RKD student's second epoch (6 steps per epoch: the teacher's 12, the baseline's 12, 8).
    interrupt_step(monkeypatch, 12 + 12 + 8)
    assert cli.main(TINY_ARGS + ["--no-compare-impl", "--out-dir", str(run)]) == 130
    monkeypatch.undo()
    assert len(checkpoint.load(run / "checkpoints" / "rkd.pt")["history"]) == 1
    _make_old_format(run)
    capsys.readouterr()
    assert cli.main(["--resume", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(run / "checkpoints")) == ["baseline.pt", "rkd.pt", "teacher.pt"]
    results = json.loads((run / "results.json").read_text())
    assert "rkd-reference" not in results and "impl_difference" not in results
    assert "reference" not in printed and "RKD vs baseline: " in printed
    # The resumed epoch measured the cost of the run's one loss; the epoch before the resume had no measure.
    cost = results["loss_cost"]
    assert set(cost) == {"device", "features", "kernel"} and cost["kernel"]["steps"] == 3
    assert "  rkd_ext " in printed[printed.index("RKD loss per training step"):]
    # A finished run recorded before any measure reports without one.
    _make_old_format(run)
    assert cli.main(["--resume", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["loss_cost"] is None
    assert "RKD loss per training step" not in printed and "RKD vs baseline: " in printed


def test_a_sigkilled_run_resumes_the_third_student_to_the_same_weights(tmp_path):
    args = TINY_ARGS + ["--deterministic", "--seed", "3", "--seeds", "2"]
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    uninterrupted = _run_cli(args + ["--out-dir", whole])
    killed = _run_cli(args + ["--out-dir", broken], **{KILL_AFTER_ENV: "rkd-reference:1"})
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stdout.read()
    assert sorted(os.listdir(os.path.join(broken, "checkpoints"))) == [
        "baseline.pt", "rkd-reference.pt", "rkd.pt", "teacher.pt"]
    killed = _run_cli(["--resume", broken, "--no-progress"], **{KILL_AFTER_ENV: "rkd-reference-seed4:2"})
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stdout.read()
    assert not os.path.exists(os.path.join(broken, "results.json"))
    resumed = _run_cli(["--resume", broken, "--no-progress"])
    assert resumed.wait(timeout=120) == 0, resumed.stdout.read()
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stdout.read()
    names = [f"{r}{s}" for s in ("", "-seed4") for r in ("baseline", "rkd", "rkd-reference")]
    for name in ["teacher"] + names:
        a = checkpoint.load(os.path.join(broken, "checkpoints", f"{name}.pt"))
        assert_identical(a, checkpoint.load(os.path.join(whole, "checkpoints", f"{name}.pt")), name)
        if name.startswith("rkd"):
            assert all(set(row["loss_cost"]) == {"features", "kernel", "reference"} for row in a["history"]), name
    with open(os.path.join(broken, "results.json")) as f, open(os.path.join(whole, "results.json")) as g:
        resumed_results, whole_results = json.load(f), json.load(g)
    assert_identical(resumed_results, whole_results, "results")
    assert resumed_results["loss_cost"]["reference"]["steps"] == whole_results["loss_cost"]["reference"]["steps"]


def test_torchrun_shards_rkd_ext_and_gathers_for_the_reference(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rkd_ext.distill", *TINY_ARGS, "--batch-size", "8", "--rkd-global-batch", "--device", "cpu",
         "--out-dir", str(out)],
        cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("rkd_ext vs reference RKD loss") == 1
    results = json.loads((out / "results.json").read_text())
    _, val = data.synthetic(**TINY)
    for role in ("rkd", "rkd-reference"):
        top1, _ = _accuracy(checkpoint.load(out / "checkpoints" / f"{role}.pt")["model"], val)
        assert results[role]["top1"] == pytest.approx(top1, abs=1e-9), role
    # Each process's features: 8 of the 16 the loss relates across the two.
    assert results["loss_cost"]["features"] == [[8, STUDENT_DIM], [8, TEACHER_DIM]]
    assert all(results["loss_cost"][impl]["peak_bytes"] > 0 for impl in ("kernel", "reference"))
