"""The training loop shared by the teacher, the baseline student and the RKD student.

One call of :func:`run_stage` trains one model for its epochs, evaluating and
checkpointing after each, and picks up where a previous call left off when its
checkpoint exists. All randomness after model initialisation comes from
generators derived from ``(seed, epoch, rank)``, and the global RNG states are
checkpointed too, so a resumed run computes exactly what an uninterrupted one
does.
"""
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import rkd_ext
from rkd_ext import reference
from rkd_ext.distributed import gather_student_teacher

from . import checkpoint
from .data import augment, generator, iterate_batches, normalize, shard_indices

__all__ = ["Runtime", "init_runtime", "RKDObjective", "evaluate", "run_stage"]

# Fault injection for the resume tests: "<stage>:<epoch>" makes the process
# SIGKILL itself right after writing that epoch's checkpoint.
KILL_AFTER_ENV = "RKD_DISTILL_SIGKILL_AFTER"


@dataclass
class Runtime:
    """Where this process runs: its device and its place in the process group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def init_runtime(device):
    """Join the torchrun process group when there is one (nccl on CUDA, gloo on CPU) and pick the device.

    Under torchrun a CUDA ``device`` becomes ``cuda:<LOCAL_RANK>``.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return Runtime(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, dist.get_rank(), dist.get_world_size())


class RKDObjective(nn.Module):
    """``distance_weight * RKD-D + angle_weight * RKD-A`` between student and teacher features.

    As in mmrazor's recipe (``with_l2_norm=True``) both feature batches are
    L2-normalised per sample first, unless ``l2_norm`` is False. ``impl`` is
    ``"kernel"`` (:class:`rkd_ext.RKDLoss`) or ``"reference"`` (the same sum
    from :mod:`rkd_ext.reference`). With ``global_batch`` the relations span the
    batches of all processes instead of each process's own.
    """

    def __init__(self, distance_weight=25.0, angle_weight=50.0, impl="kernel", l2_norm=True, global_batch=False):
        super().__init__()
        if impl not in ("kernel", "reference"):
            raise ValueError(f"RKDObjective: impl must be 'kernel' or 'reference', got {impl!r}")
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.impl = impl
        self.l2_norm = l2_norm
        self.global_batch = global_batch
        if impl == "kernel":
            self.loss = rkd_ext.RKDLoss(distance_weight, angle_weight, gather_distributed=global_batch)

    def forward(self, student, teacher):
        # The relations are computed in float32 even under autocast.
        student, teacher = student.float(), teacher.float()
        if self.l2_norm:
            student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
        if self.impl == "kernel":
            return self.loss(student, teacher)
        if self.global_batch:
            student, teacher = gather_student_teacher(student, teacher)
        loss = student.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * reference.distance_loss(student, teacher)
        if self.angle_weight:
            loss = loss + self.angle_weight * reference.angle_loss(student, teacher)
        return loss

    def extra_repr(self):
        return (f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, impl={self.impl!r}, "
                f"l2_norm={self.l2_norm}, global_batch={self.global_batch}")


class _NeckAndLogits(nn.Module):
    # DDP and torch.compile wrap forward(); this makes forward() the call the
    # training step needs.
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.neck_and_logits(x)


def _autocast(device, amp):
    if amp is None:
        return nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


@torch.no_grad()
def evaluate(model, dataset, rt, *, batch_size=256, amp=None, workers=0):
    """Top-1 and top-5 accuracy (%) of ``model`` on ``dataset``, every sample counted once across processes."""
    if rt.distributed:
        # DDP broadcast rank 0's BatchNorm statistics before the last training
        # step, which then updated each copy on its own shard.
        for buf in model.buffers():
            dist.broadcast(buf, 0)
    was_training = model.training
    model.eval()
    indices = shard_indices(len(dataset), rt.rank, rt.world_size, shuffle=False, pad=False)
    counts = torch.zeros(3, dtype=torch.float64, device=rt.device)
    for images, labels in iterate_batches(dataset, indices, batch_size, drop_last=False, workers=workers,
                                          pin_memory=rt.device.type == "cuda"):
        images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
        with _autocast(rt.device, amp):
            logits = model(normalize(images, dataset.mean, dataset.std))
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(labels), device=rt.device)])
    if rt.distributed:
        dist.all_reduce(counts)
    model.train(was_training)
    return (100 * counts[0] / counts[2]).item(), (100 * counts[1] / counts[2]).item()


def make_scheduler(optimizer, args, epochs):
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=args.gamma)


def arch_info(model):
    return {"class": type(model).__name__, "neck_dim": model.neck_dim, "num_classes": model.num_classes}


def run_stage(name, model, train_set, val_set, args, rt, ckpt_path, *, epochs, teacher=None, objective=None,
              on_epoch=None):
    """Train ``model`` (in place) for ``epochs`` epochs; return its history, one dict of metrics per epoch.

    With ``teacher`` and ``objective`` the loss is cross-entropy plus
    ``objective(student neck, teacher neck)``; otherwise cross-entropy alone.
    When ``ckpt_path`` exists the stage continues from it (a finished stage
    just reloads its weights). ``on_epoch(name, history)`` runs on the main
    process after every epoch's checkpoint is written.
    """
    model.to(rt.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args, epochs)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=args.amp == "fp16")
    history = []
    if os.path.exists(ckpt_path):
        state = checkpoint.load(ckpt_path)
        if state["arch"] != arch_info(model) or state["epochs"] != epochs:
            raise ValueError(f"{ckpt_path} holds a {state['arch']} trained for {state['epochs']} epochs, "
                             f"not the {arch_info(model)} for {epochs} epochs this run asks for")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        history = list(state["history"])
    if len(history) == epochs:
        return history

    train_model = _NeckAndLogits(model)
    if rt.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    teacher_model = None
    if teacher is not None:
        teacher.to(rt.device).eval().requires_grad_(False)
        teacher_model = _NeckAndLogits(teacher)
    if args.compile:
        train_model = torch.compile(train_model)
        if teacher_model is not None:
            teacher_model = torch.compile(teacher_model)

    padding = args.crop_padding
    indices_per_rank = len(shard_indices(len(train_set), rt.rank, rt.world_size, shuffle=False))
    steps = indices_per_rank // args.batch_size
    if steps == 0:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {indices_per_rank} training samples "
                         "each process gets: no full batch to train on")
    show = rt.is_main and not args.no_progress
    for epoch in range(len(history), epochs):
        start = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        indices = shard_indices(len(train_set), rt.rank, rt.world_size, shuffle=True, seed=args.seed, epoch=epoch)
        gen = generator("augment", args.seed, epoch, rt.rank)
        # Sums of the per-step loss, cross-entropy and RKD term, and correct predictions.
        sums = torch.zeros(4, dtype=torch.float64, device=rt.device)
        bar = tqdm(total=steps, desc=f"{name} {epoch + 1}/{epochs}", leave=False, disable=not show,
                   dynamic_ncols=True)
        for step, (images, labels) in enumerate(iterate_batches(
                train_set, indices, args.batch_size, drop_last=True, workers=args.workers,
                pin_memory=rt.device.type == "cuda")):
            images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
            x = normalize(augment(images, gen, padding), train_set.mean, train_set.std)
            with _autocast(rt.device, args.amp):
                neck, logits = train_model(x)
                ce = F.cross_entropy(logits, labels)
            if teacher_model is not None:
                with torch.no_grad(), _autocast(rt.device, args.amp):
                    teacher_neck, _ = teacher_model(x)
                rkd = objective(neck, teacher_neck)
                loss = ce + rkd
            else:
                rkd = torch.zeros((), device=rt.device)
                loss = ce
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sums += torch.stack([loss.detach().double(), ce.detach().double(), rkd.detach().double(),
                                 (logits.detach().argmax(dim=1) == labels).sum().double()])
            bar.update()
            if show and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        if rt.distributed:
            dist.all_reduce(sums)
        sums = (sums / (steps * rt.world_size)).tolist()
        scheduler.step()
        top1, top5 = evaluate(model, val_set, rt, batch_size=args.eval_batch_size, amp=args.amp,
                              workers=args.workers)
        history.append({"stage": name, "epoch": epoch + 1, "lr": lr, "loss": sums[0], "ce": sums[1],
                        "rkd": sums[2], "train_top1": 100 * sums[3] / args.batch_size, "val_top1": top1,
                        "val_top5": top5, "seconds": time.perf_counter() - start})
        if rt.is_main:
            checkpoint.save_atomic({
                "stage": name, "arch": arch_info(model), "epochs": epochs, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": checkpoint.rng_state(), "history": history,
            }, ckpt_path)
            if on_epoch is not None:
                on_epoch(name, history)
            if os.environ.get(KILL_AFTER_ENV) == f"{name}:{epoch + 1}":
                os.kill(os.getpid(), signal.SIGKILL)
    return history
