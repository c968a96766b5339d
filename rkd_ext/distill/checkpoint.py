"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings and plain containers: model,
optimizer, scheduler and grad-scaler state dicts, the global RNG states (as
uint8 tensors), the number of finished epochs and the metrics history.
"""
import os

import torch

__all__ = ["save_atomic", "load", "rng_state", "set_rng_state"]


def save_atomic(obj, path):
    """Write ``obj`` to ``path`` so that a reader, or a run killed at any moment, sees the old file or the new one.

    The data goes to a temporary file in the same directory, is flushed to disk,
    then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
