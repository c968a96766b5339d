"""The distillation CLI under hostile conditions: corrupt images, a full disk, Ctrl-C, output that is not a terminal.

Each ends in one line, leaves nothing half-written, and a run it stopped goes on with the --resume it names.
"""
import builtins
import csv
import errno
import importlib.util
import io
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rkd_ext.distill import checkpoint, cli, data, train
from conftest import interrupt_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_PIL = importlib.util.find_spec("PIL") is not None

# A run of a second or two: 4 classes of 8x8 images, 3 steps per epoch, narrow ResNet-18s, one seed, the
# baseline and RKD students only.
TINY_ARGS = ["--num-classes", "4", "--train-size", "48", "--val-size", "16", "--image-size", "8",
             "--teacher-width", "0.125", "--student-width", "0.0625", "--epochs", "2", "--batch-size", "16",
             "--eval-batch-size", "64", "--seeds", "1", "--no-compare-impl", "--device", "cpu"]
STAGES = ("teacher", "baseline", "rkd")


pytestmark = pytest.mark.usefixtures("distill_torch_state")


def _error_line(argv):
    """The message of a run that must stop with an error, checked to be one ``rkd-distill: error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    message = exit_info.value.code
    # SystemExit with a string: the interpreter prints exactly it to stderr and exits with status 1.
    assert isinstance(message, str) and message.startswith("rkd-distill: error: ") and "\n" not in message, message
    return message


def _resume_argv(line):
    """The arguments of the command ``line`` says to continue with, checked to be an ``rkd-distill --resume``."""
    assert "continue with: " in line, line
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[:2] == ["rkd-distill", "--resume"], command
    return command[1:]


def _temporaries(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if ".tmp" in f]


def _assert_finished(run):
    assert (run / "results.json").is_file() and (run / "curves.png").is_file()
    for stage in STAGES:
        assert len(checkpoint.load_stage(run / "checkpoints" / f"{stage}.pt")["history"]) == 2, stage
    with open(run / "log.csv") as f:
        assert [(r["stage"], r["epoch"]) for r in csv.DictReader(f)] == [(s, e) for s in STAGES for e in "12"]
    assert _temporaries(run) == []


def _call_main(argv):
    """``cli.main(argv)``, failing the test (not ending the session, as pytest does) when Ctrl-C escapes it."""
    try:
        return cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped cli.main")


# ---------------------------------------------------------------------------- corrupt images

def _image_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return ["--data", "imagefolder", "--data-dir", str(root), "--image-size", "8", "--teacher-width", "0.125",
            "--student-width", "0.0625", "--epochs", "1", "--batch-size", "4", "--eval-batch-size", "8",
            "--seeds", "1", "--device", "cpu", "--no-progress"]


def _spoil(path, how):
    if how == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    else:  # the header decodes, the pixels do not: only a full decode finds it
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow")
@pytest.mark.parametrize("how", ["garbage", "truncated"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_corrupt_image_is_refused_before_the_run_folder(tmp_path, monkeypatch, split, how):
    argv = _image_folder(tmp_path / "images") + ["--workers", "0"]
    bad = tmp_path / "images" / split / "b" / "1.png"
    _spoil(bad, how)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    message = _error_line(argv)
    assert f"{bad} is not an image Pillow can decode" in message, message
    assert "--resume" not in message
    # The default runs/<date-time>/ was never created.
    assert os.listdir(cwd) == []


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow")
def test_a_corrupt_image_found_mid_run_stops_cleanly_and_the_run_resumes(tmp_path, monkeypatch):
    # A data set too large to decode up front: the bad image is met in a decoding worker, mid-epoch.
    monkeypatch.setattr(data, "VERIFY_LIMIT", 0, raising=False)
    run = tmp_path / "run"
    argv = _image_folder(tmp_path / "images") + ["--workers", "2", "--out-dir", str(run)]
    bad = tmp_path / "images" / "train" / "b" / "3.png"
    good = bad.read_bytes()
    _spoil(bad, "garbage")
    message = _error_line(argv)
    assert f"{bad} is not an image Pillow can decode" in message and "replace or remove it" in message, message
    assert "Traceback" not in message and "worker process" not in message
    assert _temporaries(run) == [] and not (run / "results.json").exists()
    bad.write_bytes(good)
    assert _resume_argv(message) == ["--resume", str(run), "--device", "cpu", "--no-progress"]
    assert cli.main(_resume_argv(message)) == 0
    assert (run / "results.json").is_file() and _temporaries(run) == []


# ---------------------------------------------------------------------------- a full disk

class _FullDisk:
    """A replacement for ``open``: the ``nth`` file opened for writing under ``folder`` whose name starts with
    ``name`` gets half of its first write, then ENOSPC, as a disk that fills up mid-file does; until ``full``
    is cleared."""

    def __init__(self, folder, name, nth):
        self.folder, self.name, self.nth = str(folder), name, nth
        self.opened, self.full = 0, True
        self.real_open = builtins.open

    def __call__(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        path = os.path.abspath(os.fsdecode(file)) if isinstance(file, (str, bytes, os.PathLike)) else ""
        if (self.full and any(c in mode for c in "wax") and path.startswith(self.folder + os.sep)
                and os.path.basename(path).startswith(self.name)):
            self.opened += 1
            if self.opened == self.nth:
                return _FillingFile(f)
        return f


class _FillingFile:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


# Where the disk fills: the config before training, the teacher's second checkpoint, the first log, the plot.
@pytest.mark.parametrize("name, nth, stage_epochs", [
    ("config.json", 1, {}),
    ("teacher.pt", 2, {"teacher": 1}),
    ("log.csv", 1, {"teacher": 1}),
    ("curves.png", 1, {"teacher": 2, "baseline": 2, "rkd": 2}),
])
def test_a_full_disk_ends_in_one_line_and_the_run_resumes_once_there_is_room(tmp_path, monkeypatch, name, nth,
                                                                             stage_epochs):
    run = tmp_path / "run"
    argv = TINY_ARGS + ["--out-dir", str(run), "--no-progress"]
    disk = _FullDisk(run, name, nth)
    monkeypatch.setattr(builtins, "open", disk)
    message = _error_line(argv)
    target = run / "checkpoints" / name if name.endswith(".pt") else run / name
    assert f"{target}: cannot write it: No space left on device" in message, message
    # Nothing half-written: no temporary file, no partial target, every checkpoint whole.
    assert _temporaries(run) == []
    assert not target.exists() or name.endswith(".pt")
    for stage in STAGES:
        path = run / "checkpoints" / f"{stage}.pt"
        if stage in stage_epochs:
            assert len(checkpoint.load_stage(path)["history"]) == stage_epochs[stage], stage
        else:
            assert not path.exists(), stage
    disk.full = False
    if name == "config.json":
        # No run was recorded: the same command starts it again.
        assert "--resume" not in message
        assert cli.main(argv) == 0
    else:
        assert _resume_argv(message) == ["--resume", str(run), "--device", "cpu", "--no-progress"]
        assert cli.main(_resume_argv(message)) == 0
    _assert_finished(run)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, where every write fails with ENOSPC")
@pytest.mark.parametrize("what", ["checkpoint", "text"])
def test_a_write_to_a_full_device_names_the_file_and_leaves_nothing(tmp_path, what):
    path = tmp_path / "target"
    # The data goes to the temporary file first: made here a link to a device that is always full.
    os.symlink("/dev/full", f"{path}.tmp{os.getpid()}")
    with pytest.raises(OSError) as info:
        if what == "checkpoint":
            checkpoint.save_atomic({"weight": torch.zeros(100_000)}, path)
        else:
            with checkpoint.atomic_file(path, "w") as f:
                f.write("x" * 100)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"{path}: cannot write it: No space left on device"
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- Ctrl-C



def _interrupted_line(capsys):
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and err.count("\n") == 1, err
    assert err.startswith("rkd-distill: interrupted"), err
    return err.strip()


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    # In the teacher's second epoch (3 steps per epoch).
    interrupt_step(monkeypatch, 5)
    assert _call_main(TINY_ARGS + ["--out-dir", str(run), "--no-progress"]) == 130
    line = _interrupted_line(capsys)
    assert _resume_argv(line) == ["--resume", str(run), "--device", "cpu", "--no-progress"]
    assert _temporaries(run) == [] and len(checkpoint.load_stage(run / "checkpoints" / "teacher.pt")["history"]) == 1

    # Interrupted again in the RKD student, resumed with a runtime option of its own: the command keeps it.
    interrupt_step(monkeypatch, 3 + 6 + 2)
    assert _call_main(["--resume", str(run), "--workers=0", "--no-progress", "--device", "cpu"]) == 130
    line = _interrupted_line(capsys)
    assert _resume_argv(line) == ["--resume", str(run), "--workers", "0", "--device", "cpu", "--no-progress"]
    monkeypatch.undo()
    assert cli.main(_resume_argv(line)) == 0
    _assert_finished(run)


def test_ctrl_c_in_a_run_with_the_default_out_dir_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupt_step(monkeypatch, 1)
    assert _call_main(TINY_ARGS) == 130
    (run,) = os.listdir(tmp_path / "runs")
    assert _resume_argv(_interrupted_line(capsys)) == ["--resume", os.path.join("runs", run), "--device", "cpu"]


def test_ctrl_c_before_the_run_folder_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "synthetic", interrupted)
    assert _call_main(TINY_ARGS) == 130
    assert _interrupted_line(capsys) == "rkd-distill: interrupted before the run started; nothing was written"
    assert os.listdir(tmp_path) == []


def test_sigint_to_a_running_process(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    # Many epochs, so that it is still training when the signal comes; progress bars not switched off.
    # Python turns SIGINT into KeyboardInterrupt only where the parent left it at its default: a test run started
    # in the background by a script inherits it ignored.
    proc = subprocess.Popen([sys.executable, "-m", "rkd_ext.distill", *TINY_ARGS, "--epochs", "500",
                             "--out-dir", str(run)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "teacher.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    # stderr is a pipe: no progress bar, just the one line.
    assert "\r" not in err and err.count("\n") == 1, err
    assert err.startswith("rkd-distill: interrupted"), err
    assert _resume_argv(err.strip()) == ["--resume", str(run), "--device", "cpu"]
    assert _temporaries(run) == []
    checkpoint.load_stage(run / "checkpoints" / "teacher.pt")


# ---------------------------------------------------------------------------- progress bars

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    argv = TINY_ARGS + ["--epochs", "1"]
    # capsys's stderr is not a terminal, as a redirected or piped one is not.
    assert cli.main(argv + ["--out-dir", str(tmp_path / "piped")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "\r" not in out
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(argv + ["--out-dir", str(tmp_path / "terminal")]) == 0
    assert "\r" in terminal.getvalue() and "teacher 1/1" in terminal.getvalue()
    # --no-progress still switches them off there.
    terminal.truncate(0)
    assert cli.main(argv + ["--out-dir", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert terminal.getvalue() == ""
