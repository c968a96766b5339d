"""The reference distillation script end to end: CLI, outputs, exact resume, torchrun + DDP."""
import csv
import json
import math
import os
import pickle
import runpy
import shutil
import signal
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rkd_ext
from rkd_ext import reference
from rkd_ext.distill import checkpoint, cli, data, stats
from rkd_ext.distill.report import LOG_FIELDS
from rkd_ext.distill.train import KILL_AFTER_ENV, RKDObjective
from rkd_ext.models import build_model
from conftest import assert_identical

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run of a few seconds: 4 classes of 8x8 images, narrow ResNet-18s; the baseline and RKD students only
# (test_distill_reference.py tests the third, on the other implementation's loss).
TINY = dict(num_classes=4, train_size=96, val_size=45, image_size=8, seed=1)
TINY_ARGS = ["--num-classes", "4", "--train-size", "96", "--val-size", "45", "--image-size", "8", "--data-seed", "1",
             "--teacher", "resnet18", "--teacher-width", "0.125", "--student", "resnet18", "--student-width", "0.0625",
             "--epochs", "2", "--teacher-epochs", "2", "--batch-size", "16", "--eval-batch-size", "64",
             "--lr", "0.05", "--seeds", "1", "--no-compare-impl", "--no-progress"]


pytestmark = pytest.mark.usefixtures("distill_torch_state")


def _subprocess_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


def _run_cli(args, **env):
    return subprocess.Popen([sys.executable, "-m", "rkd_ext.distill", *args], cwd=REPO, env=_subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _independent_accuracy(state_dict, arch, width, val):
    """Top-1 / top-5 (%) of a checkpointed model on ``val``, computed without the script's evaluation code."""
    model = build_model(arch, TINY["num_classes"], width, "cifar")
    model.load_state_dict(state_dict)
    model.eval()
    mean = torch.tensor(val.mean).view(1, 3, 1, 1)
    std = torch.tensor(val.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((val.images.float() / 255 - mean) / std)
    rank = (logits > logits.gather(1, val.labels[:, None])).sum(1)
    return 100 * (rank == 0).double().mean().item(), 100 * (rank < 5).double().mean().item()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in cli.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
        assert all(opt in text for opt in action.option_strings)
    for preset in cli.PRESETS:
        assert preset in text


def test_module_entry_point(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rkd-distill", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("rkd_ext.distill", run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage: rkd-distill" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "2"], "--batch-size must be at least 3"),
    (["--epochs", "0"], "--epochs: must be an integer >= 1"),
    (["--teacher-width", "-1"], "--teacher-width: must be a finite number > 0"),
    (["--teacher", "resnet101"], "--teacher: invalid choice: 'resnet101'"),
    (["--data", "cifar100"], "--data cifar100 needs --data-dir"),
    (["--data-dir", "."], "--data-dir is only used with"),
    (["--data", "imagefolder", "--data-dir", "/nonexistent"], "--data-dir /nonexistent is not a directory"),
    (["--data", "cifar100", "--data-dir", ".", "--image-size", "16"], "--image-size must be 32 for cifar100"),
    (["--schedule", "multistep", "--milestones", "5", "3"], "--milestones must be strictly increasing"),
    (["--gamma", "2"], "--gamma must be at most 1"),
    (["--momentum", "1"], "--momentum must be below 1"),
    (["--distance-weight", "0", "--angle-weight", "0"], "both 0"),
    (["--lr", "nan"], "--lr: must be a finite number > 0"),
    (["--teacher-checkpoint", "/nonexistent.pt"], "no such file"),
    (["--resume", "/nonexistent"], "no config.json there"),
    (["--device", "tpu:0"], "--device 'tpu:0'"),
])
def test_bad_options_get_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: rkd-distill" in err and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_presets_set_the_seed_recipes_and_yield_to_explicit_options(tmp_path):
    args = cli.parse_args(["--preset", "c100-r50-vgg11bn", "--data-dir", str(tmp_path)])
    assert (args.data, args.teacher, args.student, args.stem, args.image_size) == (
        "cifar100", "resnet50", "vgg11_bn", "cifar", 32)
    assert (args.batch_size, args.lr, args.momentum, args.weight_decay) == (16, 0.1, 0.9, 5e-4)
    assert (args.schedule, args.milestones, args.gamma, args.epochs, args.teacher_epochs) == (
        "multistep", [60, 120, 160], 0.2, 200, 200)
    assert (args.distance_weight, args.angle_weight, args.no_l2_norm) == (25.0, 50.0, False)
    args = cli.parse_args(["--preset", "in1k-r34-r18", "--data-dir", str(tmp_path), "--epochs", "3"])
    assert (args.data, args.teacher, args.student, args.stem, args.image_size) == (
        "imagefolder", "resnet34", "resnet18", "imagenet", 224)
    assert (args.batch_size, args.lr, args.weight_decay, args.milestones, args.gamma) == (
        32, 0.1, 1e-4, [30, 60, 90], 0.1)
    assert args.epochs == 3


def test_rkd_objective_is_the_weighted_sum_on_normalised_features():
    torch.manual_seed(0)
    s, t = torch.randn(12, 16, dtype=torch.float64) + 3, torch.randn(12, 40, dtype=torch.float64)
    sn, tn = s / s.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    expected = 25 * reference.distance_loss(sn, tn) + 50 * reference.angle_loss(sn, tn)
    for impl in ("kernel", "reference"):
        got = RKDObjective(25.0, 50.0, impl)(s.float(), t.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    raw = 2 * reference.distance_loss(s, t)
    torch.testing.assert_close(RKDObjective(2.0, 0.0, l2_norm=False)(s, t).double(), raw, rtol=1e-5, atol=1e-6)
    # The gradient reaches the student only through the loss's own path.
    student = s.float().requires_grad_()
    RKDObjective()(student, t.float()).backward()
    manual = student.detach().clone().requires_grad_()
    (25 * rkd_ext.rkd_distance_loss(F.normalize(manual, dim=1), F.normalize(t.float(), dim=1))
     + 50 * rkd_ext.rkd_angle_loss(F.normalize(manual, dim=1), F.normalize(t.float(), dim=1))).backward()
    torch.testing.assert_close(student.grad, manual.grad)


def test_end_to_end_tiny_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(TINY_ARGS + ["--out-dir", str(out), "--rkd-impl", "reference"]) == 0
    printed = capsys.readouterr().out
    for name in ("config.json", "log.csv", "results.json", "checkpoints/teacher.pt", "checkpoints/baseline.pt",
                 "checkpoints/rkd.pt"):
        assert (out / name).is_file(), name
    assert f"log          {out / 'log.csv'}" in printed
    # matplotlib is a dependency: the plot is part of every run, and must decode as a real image.
    assert f"plot         {out / 'curves.png'}" in printed
    image = matplotlib.image.imread(out / "curves.png")
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 400, image.shape
    assert image[..., :3].std() > 0.05, "the plot is blank"
    table = printed[printed.index("model "):]
    assert all(label in table for label in ("teacher", "student (CE)", "student (CE + RKD)"))

    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LOG_FIELDS
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [
        ("teacher", 1), ("teacher", 2), ("baseline", 1), ("baseline", 2), ("rkd", 1), ("rkd", 2)]
    assert all(float(r["rkd"]) == 0 for r in rows if r["stage"] != "rkd")
    assert all(float(r["rkd"]) > 0 for r in rows if r["stage"] == "rkd")
    # Cosine annealing over 2 epochs: 0.05, then 0.025.
    assert [float(r["lr"]) for r in rows[:2]] == [0.05, 0.025]

    results = json.loads((out / "results.json").read_text())
    _, val = data.synthetic(**TINY)
    for stage, arch, width in (("teacher", "resnet18", 0.125), ("baseline", "resnet18", 0.0625),
                               ("rkd", "resnet18", 0.0625)):
        state = torch.load(out / "checkpoints" / f"{stage}.pt", weights_only=True)
        assert state["stage"] == stage and len(state["history"]) == 2
        top1, top5 = _independent_accuracy(state["model"], arch, width, val)
        assert results[stage]["top1"] == pytest.approx(top1, abs=1e-9)
        assert results[stage]["top5"] == pytest.approx(top5, abs=1e-9)
        assert f"{top1:.2f}" in table

    # The run directory is now taken, and its recipe is fixed.
    with pytest.raises(SystemExit, match="already holds a run"):
        cli.main(TINY_ARGS + ["--out-dir", str(out)])
    with pytest.raises(SystemExit):
        cli.main(["--resume", str(out), "--lr", "0.5"])
    assert "--lr is 0.5 instead of 0.05" in capsys.readouterr().err
    # Resuming a finished run, by any path to it, changes nothing and reprints the same table.
    before = (out / "checkpoints" / "rkd.pt").read_bytes()
    assert cli.main(["--resume", os.path.relpath(out), "--no-progress"]) == 0
    assert (out / "checkpoints" / "rkd.pt").read_bytes() == before
    assert capsys.readouterr().out.endswith(printed[printed.index("model "):])

    # A trained teacher can be loaded instead of trained.
    second = tmp_path / "second"
    assert cli.main(TINY_ARGS + ["--out-dir", str(second), "--teacher-checkpoint",
                                 str(out / "checkpoints" / "teacher.pt")]) == 0
    assert not (second / "checkpoints" / "teacher.pt").exists()
    assert json.loads((second / "results.json").read_text())["teacher"] == results["teacher"]
    with pytest.raises(SystemExit, match="does not fit resnet34"):
        cli.main(TINY_ARGS + ["--out-dir", str(tmp_path / "third"), "--teacher", "resnet34",
                              "--teacher-checkpoint", str(out / "checkpoints" / "teacher.pt")])


def _final_states(run_dir):
    return {stage: torch.load(os.path.join(run_dir, "checkpoints", f"{stage}.pt"), weights_only=True)
            for stage in ("teacher", "baseline", "rkd")}




def test_sigkilled_runs_resume_to_the_same_weights(tmp_path):
    args = TINY_ARGS + ["--deterministic", "--seed", "3"]
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    uninterrupted = _run_cli(args + ["--out-dir", whole])
    killed = _run_cli(args + ["--out-dir", broken], **{KILL_AFTER_ENV: "teacher:1"})
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stdout.read()
    assert len(checkpoint.load(os.path.join(broken, "checkpoints", "teacher.pt"))["history"]) == 1
    assert not os.path.exists(os.path.join(broken, "checkpoints", "baseline.pt"))
    # Resume, and die again in the middle of the RKD student.
    killed = _run_cli(["--resume", broken, "--no-progress"], **{KILL_AFTER_ENV: "rkd:1"})
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stdout.read()
    assert len(checkpoint.load(os.path.join(broken, "checkpoints", "rkd.pt"))["history"]) == 1
    resumed = _run_cli(["--resume", broken, "--no-progress"])
    assert resumed.wait(timeout=120) == 0, resumed.stdout.read()
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stdout.read()
    # Weights, BatchNorm statistics, momentum buffers, schedules, RNG states and metrics: all bit for bit.
    assert_identical(_final_states(broken), _final_states(whole), "checkpoint")
    with open(os.path.join(broken, "log.csv")) as f, open(os.path.join(whole, "log.csv")) as g:
        drop_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(rows)]
        assert drop_time(f) == drop_time(g)


# The flag alone shards the global batch across the processes; "gather" has each compute all of it.
@pytest.mark.parametrize("mode", [[], ["gather"]], ids=["shard", "gather"])
def test_torchrun_two_process_gloo(tmp_path, mode):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rkd_ext.distill", *TINY_ARGS, "--batch-size", "8", "--rkd-global-batch", *mode, "--device", "cpu",
         "--out-dir", str(out)],
        cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout
    # Only rank 0 reports.
    assert proc.stdout.count("student (CE + RKD)") == 1
    assert "2 processes" in proc.stdout
    # 96 images over 2 processes of 8: 6 steps per epoch. The sharded evaluation (23 + 22 of the 45
    # validation images) must agree with evaluating the checkpoint in one process.
    results = json.loads((out / "results.json").read_text())
    _, val = data.synthetic(**TINY)
    for stage, width in (("teacher", 0.125), ("baseline", 0.0625), ("rkd", 0.0625)):
        state = torch.load(out / "checkpoints" / f"{stage}.pt", weights_only=True)
        top1, top5 = _independent_accuracy(state["model"], "resnet18", width, val)
        assert results[stage]["top1"] == pytest.approx(top1, abs=1e-9), stage
        assert results[stage]["top5"] == pytest.approx(top5, abs=1e-9), stage
        assert state["history"][-1]["val_top1"] == pytest.approx(top1, abs=1e-9)


# ---------------------------------------------------------------------------- bad files and folders

def _cifar_pickle(n):
    rng = np.random.default_rng(n)
    return pickle.dumps({"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                         "fine_labels": [int(v) for v in rng.integers(0, 100, size=n)]}, protocol=2)


def _cifar_dir(root, train, test):
    root.mkdir()
    (root / "train").write_bytes(train)
    (root / "test").write_bytes(test)
    return ["--data", "cifar100", "--data-dir", str(root)]


def _garbage(n=4000):
    return np.random.default_rng(0).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def _start_error(argv, capsys):
    """The message of a run that must fail before it starts, checked to be one line and all that was printed."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    message = exit_info.value.code
    # SystemExit with a string: the interpreter prints exactly it to stderr and exits with status 1.
    assert isinstance(message, str) and message.startswith("rkd-distill: error: ") and "\n" not in message, message
    assert capsys.readouterr() == ("", "")
    return message


def _empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    return ["--teacher-checkpoint", str(tmp_path / "empty.pt")]


def _garbage_file(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(_garbage())
    return ["--teacher-checkpoint", str(tmp_path / "garbage.pt")]


@pytest.mark.parametrize("make, named, why", [
    (lambda d: _cifar_dir(d / "c", b"", _cifar_pickle(3)), "c/train", "the file is empty"),
    (lambda d: _cifar_dir(d / "c", _garbage(), _cifar_pickle(3)), "c/train", "not a CIFAR-100 'python' file"),
    (lambda d: _cifar_dir(d / "c", _cifar_pickle(8), _cifar_pickle(3)[:5000]), "c/test", "a truncated one"),
    (lambda d: (d / "empty").mkdir() or ["--data", "cifar100", "--data-dir", str(d / "empty")], "empty",
     "no CIFAR-100 'train' and 'test' files"),
    (lambda d: (d / "empty").mkdir() or ["--data", "imagefolder", "--data-dir", str(d / "empty")], "empty/train",
     "does not exist"),
    (lambda d: TINY_ARGS + _empty_file(d), "empty.pt", "not a readable checkpoint: the file is empty"),
    (lambda d: TINY_ARGS + _garbage_file(d), "garbage.pt", "truncated or corrupt"),
    (lambda d: TINY_ARGS + ["--train-size", "10"], "--batch-size 16", "no full batch to train on"),
], ids=["cifar-empty", "cifar-garbage", "cifar-truncated", "cifar-empty-dir", "imagefolder-empty-dir",
        "teacher-empty", "teacher-garbage", "batch-too-large"])
def test_bad_input_ends_in_one_line_before_any_run_folder(tmp_path, monkeypatch, capsys, make, named, why):
    argv = make(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    message = _start_error(argv, capsys)
    assert named in message and why in message, message
    # The default runs/<date-time>/ was never created: the run was refused before anything was written.
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("layout, named", [("file", "out"), ("under_file", "out")])
def test_out_dir_that_cannot_be_a_folder_is_refused(tmp_path, capsys, layout, named):
    (tmp_path / "out").write_text("not a folder")
    out_dir = tmp_path / "out" if layout == "file" else tmp_path / "out" / "run"
    message = _start_error(TINY_ARGS + ["--out-dir", str(out_dir)], capsys)
    assert f"{tmp_path / named} is a file, not a directory" in message, message
    assert (tmp_path / "out").read_text() == "not a folder" and os.listdir(tmp_path) == ["out"]


def test_a_failed_start_in_a_fresh_interpreter_prints_one_line(tmp_path):
    args = _cifar_dir(tmp_path / "c", _garbage(), _cifar_pickle(3))
    proc = subprocess.run([sys.executable, "-m", "rkd_ext.distill", *args], cwd=tmp_path, env=_subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"rkd-distill: error: {tmp_path / 'c' / 'train'}: ")
    assert sorted(os.listdir(tmp_path)) == ["c"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(TINY_ARGS + ["--out-dir", str(out)]) == 0
    return out


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def _corrupt(run, name, how):
    path = run / "checkpoints" / f"{name}.pt"
    if how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(_garbage())
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:20000])
    else:  # a bare state_dict, not a stage's checkpoint
        torch.save(checkpoint.load(path)["model"], path)


@pytest.mark.parametrize("name, how, why", [
    ("rkd", "empty", "the file is empty"),
    ("baseline", "garbage", "truncated or corrupt"),
    ("teacher", "truncated", "truncated or corrupt"),
    ("rkd", "state_dict", "is not the checkpoint of a training stage: it lacks 'stage'"),
])
def test_resume_refuses_a_broken_checkpoint_before_training(finished_run, tmp_path, capsys, name, how, why):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _corrupt(run, name, how)
    before = _snapshot(run)
    message = _start_error(["--resume", str(run), "--no-progress"], capsys)
    assert f"{run / 'checkpoints' / name}.pt" in message and why in message, message
    # Found before anything ran: not a byte of the run changed, no temporary file appeared.
    assert _snapshot(run) == before


@pytest.mark.parametrize("content, why", [
    ("", "is not a readable JSON file"),
    ("{\"epochs\": 2,", "is not a readable JSON file"),
    ("[1, 2]", "must hold a JSON object of options, got list"),
    (None, "records epochs = \"many\", which --epochs does not accept"),
    ({"schedule": "linear"}, "records schedule = \"linear\""),
    ({"no_l2_norm": "yes"}, "records no_l2_norm = \"yes\""),
    ({"milestones": 30}, "records milestones = 30"),
], ids=["empty", "truncated", "array", "epochs-string", "bad-choice", "flag-string", "list-scalar"])
def test_resume_refuses_a_broken_config(finished_run, tmp_path, capsys, content, why):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = run / "config.json"
    if content is None or isinstance(content, dict):
        recorded = json.loads(config.read_text())
        recorded.update(content or {"epochs": "many"})
        content = json.dumps(recorded)
    config.write_text(content)
    before = _snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--resume", str(run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"rkd-distill: error: --resume {run}: {config}") and why in last, last
    assert _snapshot(run) == before


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupted_or_failed_save_removes_its_temporary_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "stage.pt"
    checkpoint.save_atomic({"epoch": torch.tensor(1)}, path)
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        assert os.path.exists(f.name) and f.name != str(path)
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(type(failure)):
        checkpoint.save_atomic({"epoch": torch.tensor(2)}, path)
    assert os.listdir(tmp_path) == ["stage.pt"] and path.read_bytes() == before


def test_resume_removes_what_a_killed_save_left(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for stale in ("checkpoints/rkd.pt.tmp4242", "log.csv.tmp77"):
        (run / stale).write_bytes(b"half written")
    (run / "notes.tmp").write_text("the user's own file")
    assert cli.main(["--resume", str(run), "--no-progress"]) == 0
    assert "removed what interrupted writes left" in capsys.readouterr().out
    assert sorted(os.listdir(run / "checkpoints")) == ["baseline.pt", "rkd.pt", "teacher.pt"]
    assert not (run / "log.csv.tmp77").exists() and (run / "notes.tmp").exists()


# ---------------------------------------------------------------------------- several seeds

def _t_cdf(q, df):
    """Student's t CDF at ``q`` > 0 by Simpson's rule on its density: an oracle independent of any table."""
    t = np.linspace(0.0, q, 200001)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
    h = t[1] - t[0]
    return 0.5 + h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())


@pytest.mark.parametrize("df", list(range(1, 41)) + [60, 120, 1000])
def test_t_quantile_is_the_975_quantile(df):
    # The table holds 4 decimals: its error in probability is below the density (< 0.4) times 5e-5.
    assert _t_cdf(stats.t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-5)


def test_paired_difference_interval_is_the_t_test_acceptance_region():
    baseline, rkd = [87.9, 90.1, 85.2, 88.8, 91.0], [90.4, 95.0, 88.1, 91.3, 92.2]
    d = np.subtract(rkd, baseline)
    got = stats.paired_difference(rkd, baseline)
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-12) and got["std"] == pytest.approx(d.std(ddof=1), abs=1e-12)
    low, high = got["ci95"]
    # At either end of the 95% interval the paired t statistic is exactly at the test's critical value.
    for end, sign in ((low, 1), (high, -1)):
        t_stat = (d.mean() - end) / (d.std(ddof=1) / math.sqrt(len(d)))
        assert sign * t_stat > 0 and _t_cdf(abs(t_stat), len(d) - 1) == pytest.approx(0.975, abs=2e-5)
    assert got["within_noise"] is False and low > 0
    assert stats.paired_difference([1.0, 3.0], [2.0, 2.0])["within_noise"] is True
    assert stats.paired_difference([92.0], [90.0]) == {"mean": 2.0, "std": None, "ci95": None, "within_noise": None}
    with pytest.raises(ValueError, match="got 2 and 1"):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_presets_train_one_seed_unless_told(tmp_path):
    assert cli.parse_args(["--preset", "c100-r50-vgg11bn", "--data-dir", str(tmp_path)]).seeds == 1
    assert cli.parse_args(["--preset", "in1k-r34-r18", "--data-dir", str(tmp_path), "--seeds", "3"]).seeds == 3


def test_several_seeds_share_the_teacher_and_report_the_paired_difference(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(TINY_ARGS + ["--out-dir", str(one)]) == 0
    capsys.readouterr()
    assert cli.main(TINY_ARGS + ["--seeds", "2", "--out-dir", str(two)]) == 0
    printed = capsys.readouterr().out
    names = ("teacher", "baseline", "rkd", "baseline-seed1", "rkd-seed1")
    assert sorted(os.listdir(two / "checkpoints")) == sorted(f"{n}.pt" for n in names)
    states = {n: checkpoint.load(two / "checkpoints" / f"{n}.pt") for n in names}
    # The first seed's three models are those of a one-seed run; the second seed's students differ from them.
    for n in ("teacher", "baseline", "rkd"):
        assert_identical(states[n]["model"], checkpoint.load(one / "checkpoints" / f"{n}.pt")["model"], n)
    assert not torch.equal(states["baseline"]["model"]["fc.weight"], states["baseline-seed1"]["model"]["fc.weight"])

    results = json.loads((two / "results.json").read_text())
    _, val = data.synthetic(**TINY)
    assert [r["seed"] for r in results["seeds"]] == [0, 1]
    for r in results["seeds"]:
        for role in ("baseline", "rkd"):
            name = role if r["seed"] == 0 else f"{role}-seed1"
            top1, top5 = _independent_accuracy(states[name]["model"], "resnet18", 0.0625, val)
            assert (r[role]["top1"], r[role]["top5"]) == (pytest.approx(top1, abs=1e-9), pytest.approx(top5, abs=1e-9))
    for metric in ("top1", "top5"):
        per_seed = {role: np.array([r[role][metric] for r in results["seeds"]]) for role in ("baseline", "rkd")}
        d = per_seed["rkd"] - per_seed["baseline"]
        summary = results["difference"][metric]
        assert results["baseline"][metric] == pytest.approx(per_seed["baseline"].mean(), abs=1e-9)
        assert summary["mean"] == pytest.approx(d.mean(), abs=1e-9)
        assert summary["std"] == pytest.approx(d.std(ddof=1), abs=1e-9)
        half = stats.t_quantile_975(1) * d.std(ddof=1) / math.sqrt(2)
        assert summary["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-9)
        assert summary["within_noise"] == (d.mean() - half <= 0 <= d.mean() + half)
    verdicts = printed[printed.index("paired over 2 seeds"):].splitlines()[1:3]
    for line, metric in zip(verdicts, ("top1", "top5")):
        assert ("within noise" in line) == results["difference"][metric]["within_noise"], line
    seed_rows = printed[printed.index("seed  CE top-1"):].splitlines()[2:4]
    assert [int(row.split()[0]) for row in seed_rows] == [0, 1]
    with open(two / "log.csv") as f:
        assert [r["stage"] for r in csv.DictReader(f)] == [n for n in names for _ in range(2)]
    assert matplotlib.image.imread(two / "curves.png").ndim == 3


def test_sigkilled_runs_with_several_seeds_resume_to_the_same_weights(tmp_path):
    args = TINY_ARGS + ["--deterministic", "--seed", "3", "--seeds", "2"]
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    uninterrupted = _run_cli(args + ["--out-dir", whole])
    killed = _run_cli(args + ["--out-dir", broken], **{KILL_AFTER_ENV: "baseline-seed4:1"})
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stdout.read()
    assert sorted(os.listdir(os.path.join(broken, "checkpoints"))) == [
        "baseline-seed4.pt", "baseline.pt", "rkd.pt", "teacher.pt"]
    # Die again after the last epoch of the last student, before the report.
    killed = _run_cli(["--resume", broken, "--no-progress"], **{KILL_AFTER_ENV: "rkd-seed4:2"})
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stdout.read()
    assert not os.path.exists(os.path.join(broken, "results.json"))
    resumed = _run_cli(["--resume", broken, "--no-progress"])
    assert resumed.wait(timeout=120) == 0, resumed.stdout.read()
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stdout.read()
    for name in ("teacher", "baseline", "rkd", "baseline-seed4", "rkd-seed4"):
        assert_identical(checkpoint.load(os.path.join(broken, "checkpoints", f"{name}.pt")),
                          checkpoint.load(os.path.join(whole, "checkpoints", f"{name}.pt")), name)
    with open(os.path.join(broken, "results.json")) as f, open(os.path.join(whole, "results.json")) as g:
        assert_identical(json.load(f), json.load(g), "results")


def test_a_run_recorded_before_seeds_resumes_as_one_seed(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = json.loads((run / "config.json").read_text())
    del config["seeds"]
    (run / "config.json").write_text(json.dumps(config))
    assert cli.main(["--resume", str(run), "--no-progress"]) == 0
    assert sorted(os.listdir(run / "checkpoints")) == ["baseline.pt", "rkd.pt", "teacher.pt"]
    assert "one seed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--resume", str(run), "--seeds", "3"])
    assert "--seeds is 3 instead of 1" in capsys.readouterr().err


def test_rkd_global_batch_modes(tmp_path, capsys):
    assert cli.parse_args([]).rkd_global_batch is None
    assert cli.parse_args(["--rkd-global-batch"]).rkd_global_batch == "shard"
    assert cli.parse_args(["--rkd-global-batch", "gather"]).rkd_global_batch == "gather"
    with pytest.raises(SystemExit):
        cli.parse_args(["--rkd-global-batch", "--rkd-impl", "reference"])
    assert "--rkd-global-batch shard needs --rkd-impl kernel" in capsys.readouterr().err
    assert cli.parse_args(["--rkd-global-batch", "gather", "--rkd-impl", "reference"]).rkd_impl == "reference"
    # Runs recorded when the option was a flag gathered the global batch, and resume so.
    for recorded, mode in ((True, "gather"), (False, None)):
        run = tmp_path / f"old-{recorded}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"rkd_global_batch": recorded}))
        assert cli.parse_args(["--resume", str(run)]).rkd_global_batch == mode
