"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings and plain containers: model,
optimizer, scheduler and grad-scaler state dicts, the global RNG states (as
uint8 tensors), the number of finished epochs and the metrics history.
"""
import contextlib
import os
import re

import torch

__all__ = ["CheckpointError", "WriteError", "STAGE_KEYS", "atomic_file", "save_atomic", "remove_temporaries", "load",
           "load_stage", "rng_state", "set_rng_state"]

# What run_stage writes; a resumed stage needs all of it.
STAGE_KEYS = ("stage", "arch", "epochs", "model", "optimizer", "scheduler", "scaler", "rng", "history")

# atomic_file's temporary names: the target's name, ".tmp" and the writer's process id.
_TEMPORARY = re.compile(r".+\.tmp\d+")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and says why, on one line."""


class WriteError(OSError):
    """A file that could not be written (no space left, no permission...); ``filename`` is the file meant, not the
    temporary file the data was going to."""

    def __str__(self):
        return f"{self.filename}: cannot write it: {self.strerror}"


def _os_error(error):
    """The OSError behind ``error``: itself, or the one a write raised inside ``torch.save``, which reports it as a
    RuntimeError ("unexpected pos ...") raised while handling it."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


@contextlib.contextmanager
def atomic_file(path, mode="wb", **open_kwargs):
    """Open a temporary file that replaces ``path`` when the block ends, so that ``path`` is never half written.

    The data goes to a temporary file in the same directory, is flushed to disk,
    then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows): a
    reader, or a run killed at any moment, sees the old file or the new one. A
    block that fails or is interrupted (KeyboardInterrupt) removes the temporary
    file and leaves ``path`` as it was; one killed outright leaves it for
    :func:`remove_temporaries`.

    Raises:
        WriteError: writing failed (a full disk, say); the message names ``path`` and the cause.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = _os_error(e) if isinstance(e, Exception) else None
        if cause is None or isinstance(cause, WriteError):
            raise
        raise WriteError(cause.errno, cause.strerror or str(cause), os.fspath(path)) from e


def save_atomic(obj, path):
    """``torch.save(obj)`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def remove_temporaries(folder):
    """Delete the temporary files that writes killed mid-way (SIGKILL, power loss) left in ``folder``.

    Returns:
        The paths removed.
    """
    stale = sorted(os.path.join(folder, name) for name in os.listdir(folder) if _TEMPORARY.fullmatch(name))
    for path in stale:
        os.unlink(path)
    return stale


def load(path):
    """The object saved in ``path``, on the CPU, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: the file is empty, truncated or not a torch checkpoint.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file fails in the unpickler or the zip reader, with many exception types
        if isinstance(e, OSError) and e.filename is not None:  # opening failed (missing, no permission...)
            raise CheckpointError(f"{path}: cannot read it: {e.strerror}") from None
        raise CheckpointError(f"{path} is not a readable checkpoint: {_why_unreadable(path, e)}") from None


def _why_unreadable(path, error):
    if os.path.getsize(path) == 0:
        return "the file is empty"
    # torch's weights-only unpickler puts the cause after a long preamble, and the documentation link after it.
    detail = str(error).split("WeightsUnpickler error:")[-1].strip().split("\n\n")[0]
    detail = " ".join(detail.split())[:200] or type(error).__name__
    return f"the file is truncated or corrupt ({detail})"


def load_stage(path):
    """A checkpoint written by a training stage, with every key a resumed stage needs.

    Raises:
        CheckpointError: the file cannot be read, or holds something else (a bare state_dict, say).
    """
    state = load(path)
    missing = [k for k in STAGE_KEYS if k not in state] if isinstance(state, dict) else list(STAGE_KEYS)
    if missing:
        raise CheckpointError(f"{path} is not the checkpoint of a training stage: it lacks "
                              + ", ".join(repr(k) for k in missing))
    return state


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
