"""The training loop shared by the teacher and the students, and the measure of the RKD loss's cost per step.

One call of :func:`run_stage` trains one model for its epochs, evaluating and
checkpointing after each, and picks up where a previous call left off when its
checkpoint exists. All randomness after model initialisation comes from
generators derived from ``(seed, epoch, rank)``, and the global RNG states are
checkpointed too, so a resumed run computes exactly what an uninterrupted one
does (the loss's measured cost aside: timings are of the moment).
"""
import os
import signal
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import rkd_ext
from rkd_ext import _torch_private as private, reference
from rkd_ext.distributed import gather_student_teacher

from . import checkpoint
from .data import augment, generator, iterate_batches, normalize, shard_indices

__all__ = ["Runtime", "init_runtime", "RKDObjective", "LossCost", "COST_STEPS_PER_EPOCH", "evaluate", "steps_per_epoch",
           "kill_hook_from_env", "run_stage", "summarise_cost"]

# Fault injection for the resume tests, read by kill_hook_from_env().
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
    batches of all processes instead of each process's own: ``"shard"`` splits
    the work by anchor across the processes (the kernel only), ``"gather"`` has
    every process compute the whole global-batch loss; None: each process's own.
    """

    def __init__(self, distance_weight=25.0, angle_weight=50.0, impl="kernel", l2_norm=True, global_batch=None):
        super().__init__()
        if impl not in ("kernel", "reference"):
            raise ValueError(f"RKDObjective: impl must be 'kernel' or 'reference', got {impl!r}")
        if global_batch not in (None, "shard", "gather"):
            raise ValueError(f"RKDObjective: global_batch must be None, 'shard' or 'gather', got {global_batch!r}")
        if global_batch == "shard" and impl == "reference":
            raise ValueError("RKDObjective: the sharded global batch needs impl='kernel' (the reference formulation "
                             "has no sharded form); use global_batch='gather' with the reference")
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.impl = impl
        self.l2_norm = l2_norm
        self.global_batch = global_batch
        if impl == "kernel":
            self.loss = rkd_ext.RKDLoss(distance_weight, angle_weight, gather_distributed=global_batch is not None,
                                        shard=global_batch == "shard")

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


# Steps of each epoch of an RKD student at which LossCost measures the loss (spread over the epoch, the first
# included): enough for a stable median over a run, few enough to cost a second or two of the default run.
COST_STEPS_PER_EPOCH = 3


class LossCost:
    """Wall time and peak memory of RKD objectives' forward + backward, measured on a training step's features.

    Each measurement calls an objective apart from the training step, on a
    detached copy of that step's student features (a leaf that requires grad)
    and its teacher features, then backpropagates to the copy: the whole cost of
    the loss in a step (float cast, L2 normalisation, the weighted RKD terms,
    their backward to the student features), on the run's own batch shapes and
    device, while the training computes exactly what it computes without it.

    * time: from the call to the end of the backward, after synchronising the
      device before and after on CUDA. At each measured step every objective
      is timed, in alternating order, so that the machine's load (other
      processes, a warming device) weighs on all of them alike.
    * peak memory: the most memory the call's own tensors (intermediates, saved
      tensors, the gradient it returns) held at once, beyond what was allocated
      before it. On CUDA: ``torch.cuda.max_memory_allocated`` after resetting
      the peak, minus ``memory_allocated`` before the call. The CPU allocator
      keeps no peak, and the process's RSS is neither per call nor per tensor
      (freed memory stays mapped), so on the CPU it is the maximum of the
      running sum of the allocations and frees that torch.profiler records
      (``profile_memory=True``) during the call. Once per epoch and objective,
      in a call of its own, as the profiler slows the call it records.
    """

    def __init__(self, objectives, device):
        self.objectives = dict(objectives)  # implementation -> RKDObjective
        self.device = device
        self._start_epoch()

    def _start_epoch(self):
        self.ms = {impl: [] for impl in self.objectives}
        self.peak_bytes = {}
        self.features = None

    def measure(self, student, teacher):
        """Time (and, the first time in the epoch, the peak memory of) each objective on these features."""
        student, teacher = student.detach(), teacher.detach()
        self.features = [list(student.shape), list(teacher.shape)]
        order = list(self.objectives)
        if len(self.ms[order[0]]) % 2:
            order.reverse()
        for impl in order:
            objective = self.objectives[impl]
            if impl not in self.peak_bytes:
                self.peak_bytes[impl] = self._peak_bytes(self._call(objective, student, teacher))
            self.ms[impl].append(1e3 * self._seconds(self._call(objective, student, teacher)))

    def take(self):
        """This epoch's measurements, as a history row keeps them (lists and numbers); then start a new epoch."""
        taken = {"features": self.features,
                 **{impl: {"ms": self.ms[impl], "peak_bytes": self.peak_bytes.get(impl)} for impl in self.objectives}}
        self._start_epoch()
        return taken

    @staticmethod
    def _call(objective, student, teacher):
        leaf = student.clone().requires_grad_()  # allocated before the measured call

        def call():
            objective(leaf, teacher).backward()
        return call

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _seconds(self, call):
        self._sync()
        start = time.perf_counter()
        call()
        self._sync()
        return time.perf_counter() - start

    def _peak_bytes(self, call):
        if self.device.type == "cuda":
            self._sync()
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            call()
            self._sync()
            return torch.cuda.max_memory_allocated(self.device) - before
        if self.device.type != "cpu":
            call()
            return None
        return _profiled_peak_bytes(call)


def _profiled_peak_bytes(call):
    """The most bytes that tensors allocated during ``call()`` held at once, from torch.profiler's memory records.

    None when this torch's profiler result does not expose its records (rkd_ext._torch_private.profiler_records):
    the run then reports no peak rather than failing.
    """
    # Kineto logs a line on stderr at each start and stop of the profiler in some torch builds; this is a
    # measurement, not a trace, so it keeps quiet unless the user set a level. Read when kineto starts logging.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    results = private.profiler_records(prof)
    if results is None:
        return None
    # Each "[memory]" record is one allocation (+bytes) or free (-bytes) of the CPU allocator.
    records = sorted((e for e in results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    held = peak = 0
    for record in records:
        held += record.nbytes()
        peak = max(peak, held)
    return peak


def summarise_cost(rows):
    """Per implementation, the median and quartiles of the times and the largest peak over ``rows``' measurements.

    Args:
        rows: history rows of RKD students; those with a ``loss_cost`` entry (LossCost.take()) count.

    Returns:
        ``{impl: {"ms_median", "ms_quartiles", "steps", "peak_bytes"}, "features": [[N, Ds], [N, Dt]]}``, or None
        when no row holds a measurement (a run recorded before the loss's cost was measured).
    """
    ms, peaks, features = {}, {}, None
    for row in rows:
        cost = row.get("loss_cost")
        if not cost:
            continue
        features = cost.get("features") or features
        for impl, measured in cost.items():
            if impl == "features":
                continue
            ms.setdefault(impl, []).extend(measured["ms"])
            if measured["peak_bytes"] is not None:
                peaks[impl] = max(peaks.get(impl, 0), measured["peak_bytes"])
    if not any(ms.values()):
        return None
    summary = {"features": features}
    for impl in sorted(ms):
        times = sorted(ms[impl])
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        summary[impl] = {"ms_median": statistics.median(times), "ms_quartiles": [quartiles[0], quartiles[2]],
                         "steps": len(times), "peak_bytes": peaks.get(impl)}
    return summary


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


def steps_per_epoch(train_size, batch_size, world_size):
    """Full batches per epoch and process: the shards are padded to equal length and the last partial batch dropped."""
    per_rank = len(shard_indices(train_size, 0, world_size, shuffle=False))
    steps = per_rank // batch_size
    if steps == 0:
        raise ValueError(f"--batch-size {batch_size} is larger than the {per_rank} training samples each process "
                         "gets: no full batch to train on")
    return steps


def kill_hook_from_env():
    """The resume tests' fault injection as an epoch hook, or None when ``RKD_DISTILL_SIGKILL_AFTER`` is unset.

    ``RKD_DISTILL_SIGKILL_AFTER=<stage>:<epoch>`` makes the process SIGKILL
    itself once that epoch's checkpoint is written: the harshest interruption,
    with no chance to clean up.
    """
    spec = os.environ.get(KILL_AFTER_ENV)
    if not spec:
        return None

    def kill(name, history):
        if f"{name}:{len(history)}" == spec:
            os.kill(os.getpid(), signal.SIGKILL)
    return kill


def arch_info(model):
    return {"class": type(model).__name__, "neck_dim": model.neck_dim, "num_classes": model.num_classes}


class _Optimisation:
    """SGD, its per-epoch schedule and the fp16 gradient scaler of one stage: what a checkpoint restores."""

    def __init__(self, model, args, device, epochs):
        self.optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        if args.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
        else:
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=args.milestones,
                                                                  gamma=args.gamma)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class _Step:
    """One optimisation step: cross-entropy, plus ``objective(student neck, teacher neck)`` when distilling."""

    def __init__(self, model, opt, args, rt, teacher=None, objective=None):
        self.opt, self.amp, self.device, self.objective = opt, args.amp, rt.device, objective
        self.features = None  # the last step's student and teacher features, when distilling
        self.student = _NeckAndLogits(model)
        if rt.distributed:
            self.student = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.teacher = None
        if teacher is not None:
            teacher.to(rt.device).eval().requires_grad_(False)
            self.teacher = _NeckAndLogits(teacher)
        if args.compile:
            self.student = torch.compile(self.student)
            if self.teacher is not None:
                self.teacher = torch.compile(self.teacher)

    def __call__(self, x, labels):
        """Update the model on one batch; return its loss, cross-entropy, RKD term and correct predictions."""
        with _autocast(self.device, self.amp):
            neck, logits = self.student(x)
            ce = F.cross_entropy(logits, labels)
        if self.teacher is not None:
            with torch.no_grad(), _autocast(self.device, self.amp):
                teacher_neck, _ = self.teacher(x)
            rkd = self.objective(neck, teacher_neck)
            loss = ce + rkd
            self.features = (neck.detach(), teacher_neck.detach())  # for LossCost
        else:
            rkd = torch.zeros((), device=self.device)
            loss = ce
        self.opt.optimizer.zero_grad(set_to_none=True)
        self.opt.scaler.scale(loss).backward()
        self.opt.scaler.step(self.opt.optimizer)
        self.opt.scaler.update()
        return torch.stack([loss.detach().double(), ce.detach().double(), rkd.detach().double(),
                            (logits.detach().argmax(dim=1) == labels).sum().double()])


def _train_epoch(step, train_set, args, rt, *, seed, epoch, steps, desc, cost=None):
    """One epoch in the order and augmentation drawn from ``(seed, epoch)``; per-step means of the step's sums.

    With ``cost`` (a LossCost), the loss's cost is measured after COST_STEPS_PER_EPOCH of the steps.
    """
    every = -(-steps // COST_STEPS_PER_EPOCH)
    indices = shard_indices(len(train_set), rt.rank, rt.world_size, shuffle=True, seed=seed, epoch=epoch)
    gen = generator("augment", seed, epoch, rt.rank)
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)
    # A bar redraws its line with carriage returns: only a terminal shows that as one line.
    show = rt.is_main and not args.no_progress and sys.stderr is not None and sys.stderr.isatty()
    batches = iterate_batches(train_set, indices, args.batch_size, drop_last=True, workers=args.workers,
                              pin_memory=rt.device.type == "cuda")
    # As a context, the bar clears its line even when the epoch is interrupted.
    with tqdm(total=steps, desc=desc, leave=False, disable=not show, dynamic_ncols=True) as bar:
        for i, (images, labels) in enumerate(batches):
            images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
            x = normalize(augment(images, gen, args.crop_padding), train_set.mean, train_set.std)
            step_sums = step(x, labels)
            if cost is not None and i % every == 0:
                cost.measure(*step.features)
            sums += step_sums
            bar.update()
            if show and i % 10 == 0:
                bar.set_postfix(loss=f"{step_sums[0].item():.3f}")
    if rt.distributed:
        dist.all_reduce(sums)
    return (sums / (steps * rt.world_size)).tolist()


def _resume(ckpt_path, model, opt, epochs):
    """Restore a stage from its checkpoint (weights, optimiser, RNG); return the epochs' history so far."""
    state = checkpoint.load_stage(ckpt_path)
    if state["arch"] != arch_info(model) or state["epochs"] != epochs:
        raise checkpoint.CheckpointError(f"{ckpt_path} holds a {state['arch']} trained for {state['epochs']} "
                                         f"epochs, not the {arch_info(model)} for {epochs} epochs this run asks for")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state)
    checkpoint.set_rng_state(state["rng"])
    return list(state["history"])


def run_stage(name, model, train_set, val_set, args, rt, ckpt_path, *, epochs, seed, teacher=None, objective=None,
              cost_objectives=None, hooks=()):
    """Train ``model`` (in place) for ``epochs`` epochs; return its history, one dict of metrics per epoch.

    With ``teacher`` and ``objective`` the loss is cross-entropy plus
    ``objective(student neck, teacher neck)``; otherwise cross-entropy alone.
    With ``cost_objectives`` too (implementation -> RKDObjective), each
    epoch's row holds, under ``loss_cost``, their cost measured by LossCost
    on this stage's features.
    The data order and augmentation come from ``seed``. When ``ckpt_path``
    exists the stage continues from it (a finished stage just reloads its
    weights). Each of ``hooks`` is called as ``hook(name, history)`` on the
    main process after every epoch's checkpoint is written.
    """
    model.to(rt.device)
    opt = _Optimisation(model, args, rt.device, epochs)
    history = _resume(ckpt_path, model, opt, epochs) if os.path.exists(ckpt_path) else []
    if len(history) == epochs:
        return history
    step = _Step(model, opt, args, rt, teacher, objective)
    cost = LossCost(cost_objectives, rt.device) if teacher is not None and cost_objectives else None
    steps = steps_per_epoch(len(train_set), args.batch_size, rt.world_size)
    for epoch in range(len(history), epochs):
        start = time.perf_counter()
        model.train()
        lr = opt.lr
        loss, ce, rkd, correct = _train_epoch(step, train_set, args, rt, seed=seed, epoch=epoch, steps=steps,
                                              desc=f"{name} {epoch + 1}/{epochs}", cost=cost)
        opt.scheduler.step()
        top1, top5 = evaluate(model, val_set, rt, batch_size=args.eval_batch_size, amp=args.amp,
                              workers=args.workers)
        history.append({"stage": name, "epoch": epoch + 1, "lr": lr, "loss": loss, "ce": ce, "rkd": rkd,
                        "train_top1": 100 * correct / args.batch_size, "val_top1": top1, "val_top5": top5,
                        "seconds": time.perf_counter() - start})
        if cost is not None:
            history[-1]["loss_cost"] = cost.take()
        if rt.is_main:
            checkpoint.save_atomic({"stage": name, "arch": arch_info(model), "epochs": epochs,
                                    "model": model.state_dict(), **opt.state_dict(), "rng": checkpoint.rng_state(),
                                    "history": history}, ckpt_path)
            for hook in hooks:
                hook(name, history)
    return history
