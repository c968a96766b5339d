"""One distillation job: its data, the teacher, each seed's students, and what the run writes."""
import errno
import json
import os
import pickle
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..models import build_model
from . import checkpoint, data, report, stats
from .options import PRESETS
from .train import RKDObjective, Runtime, evaluate, kill_hook_from_env, run_stage, steps_per_epoch, summarise_cost

__all__ = ["RunError", "Interrupted", "run_job", "student_roles", "impl_of"]


def student_roles(args):
    """Each seed's students, in training order: the baseline, the RKD student on --rkd-impl's loss, and with
    --compare-impl a third on the other implementation's ("rkd-reference" or "rkd-kernel")."""
    roles = ["baseline", "rkd"]
    if args.compare_impl:
        roles.append("rkd-" + ("reference" if args.rkd_impl == "kernel" else "kernel"))
    return tuple(roles)


def impl_of(role, args):
    """The implementation of the RKD loss a student role trains with; None for the baseline."""
    if role == "baseline" or role == "teacher":
        return None
    return args.rkd_impl if role == "rkd" else role.split("-", 1)[1]


class RunError(Exception):
    """A run that cannot start or go on (bad data, checkpoint or output directory); the message is one line.

    ``run_dir`` is the run's directory when the run is recorded there, so that ``--resume`` continues it once the
    cause is fixed (``fix``: what to do first, e.g. "make room"); None when nothing resumable was written.
    """

    def __init__(self, message, run_dir=None, fix=None):
        super().__init__(message)
        self.run_dir, self.fix = run_dir, fix


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with ``run_dir`` as for :class:`RunError`."""

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.run_dir = run_dir


def run_job(args, rt):
    """Check all the run needs, then create its directory, train the teacher and each seed's students, report.

    Raises:
        RunError: bad input, found before the run's directory is created where it can be; or a failure mid-run
            (a full disk, a corrupt image) after which ``--resume`` can go on.
        Interrupted: Ctrl-C.
    """
    _configure_determinism(args.deterministic)
    job = _prepare(args, rt)
    # Every finished epoch is checkpointed and every write atomic: whatever stops the run, what it wrote is whole
    # and --resume goes on from there.
    try:
        _create_run_dir(job)
        _train_and_report(job)
    except KeyboardInterrupt:
        raise Interrupted(_resumable(job)) from None
    except checkpoint.WriteError as e:
        fix = "make room" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        raise RunError(str(e), _resumable(job), fix) from None
    except data.UnreadableImage as e:
        raise RunError(str(e), _resumable(job), "replace or remove it") from None


def _resumable(job):
    """The run's directory once its options are recorded there (what --resume needs), else None."""
    return job.out_dir if os.path.isfile(os.path.join(job.out_dir, "config.json")) else None


def _train_and_report(job):
    """Train (or load) the teacher and each seed's students; the main process reports."""
    rt = job.rt
    teacher_acc = _train_teacher(job)
    objectives = _objectives(job.args)
    per_seed = [_train_students(job, seed, objectives) for seed in job.seeds]
    if rt.is_main:
        _report(job, teacher_acc, per_seed)


def _prepare(args, rt):
    """What can fail on bad input, with nothing written yet: the output path, the data, the checkpoints to load."""
    out_dir = _on_main(rt, lambda: _choose_out_dir(args))
    train_set, val_set = _load_data(args)
    try:
        steps_per_epoch(len(train_set), args.batch_size, rt.world_size)
    except ValueError as e:
        raise RunError(str(e)) from None
    job = Job(args, rt, out_dir, train_set, val_set)
    job.teacher = job.build(args.teacher, args.teacher_width, "teacher", args.seed)
    if args.teacher_checkpoint is not None:
        _load_teacher(job)
    if args.resume is not None:
        for stage in job.stages:
            _check_resumable(job, stage.name)
    return job


def _objectives(args):
    """The RKD objective of each implementation the run's students train with: --rkd-impl's, and with
    --compare-impl the other's, in the order kernel, reference."""
    impls = {impl_of(role, args) for role in student_roles(args)} - {None}
    objectives = {}
    for impl in ("kernel", "reference"):
        if impl in impls:
            # The reference has no sharded form; gathering the global batch gives the same loss and gradients.
            global_batch = "gather" if impl == "reference" and args.rkd_global_batch == "shard" else \
                args.rkd_global_batch
            objectives[impl] = RKDObjective(args.distance_weight, args.angle_weight, impl, not args.no_l2_norm,
                                            global_batch)
    return objectives


def _train_students(job, seed, objectives):
    """One seed's students, from the same initialisation and data order; their final metrics.

    Each RKD student's epochs also measure the loss of every implementation the run trains with (LossCost),
    on that student's features.
    """
    args, result = job.args, {"seed": seed}
    for role in job.student_roles:
        student = job.build(args.student, args.student_width, "student", seed)
        impl = impl_of(role, args)
        distil = dict(teacher=job.teacher, objective=objectives[impl], cost_objectives=objectives) if impl else {}
        result[role] = job.train(Stage.of(role, seed, args.seed), student, **distil)
    result["params"] = sum(p.numel() for p in student.parameters())
    return result


@dataclass(frozen=True)
class Stage:
    """One model a run trains: the teacher, or one seed's baseline or RKD student (or other-implementation one)."""

    name: str  # its checkpoint is checkpoints/<name>.pt; its rows in log.csv carry the name
    role: str  # "teacher", "baseline", "rkd", or "rkd-reference" / "rkd-kernel" (student_roles)
    seed: int  # of its initialisation, data order and augmentation

    @classmethod
    def of(cls, role, seed, first_seed):
        # The first seed's stages keep the names a one-seed run (and a run from before --seeds) gives them.
        return cls(role if seed == first_seed else f"{role}-seed{seed}", role, seed)


@dataclass
class Job:
    """A run's options, runtime, output directory and data, and the histories of its stages so far."""

    args: object
    rt: Runtime
    out_dir: str
    train_set: object
    val_set: object
    teacher: torch.nn.Module = None
    histories: dict = field(default_factory=dict)

    @property
    def seeds(self):
        return range(self.args.seed, self.args.seed + self.args.seeds)

    @property
    def student_roles(self):
        return student_roles(self.args)

    @property
    def stages(self):
        """What this run trains, in order: the teacher (unless loaded), then each seed's students."""
        roles = [("teacher", self.args.seed)] if self.args.teacher_checkpoint is None else []
        roles += [(role, seed) for seed in self.seeds for role in self.student_roles]
        return [Stage.of(role, seed, self.args.seed) for role, seed in roles]

    @property
    def ckpt_dir(self):
        return os.path.join(self.out_dir, "checkpoints")

    @property
    def log_path(self):
        return os.path.join(self.out_dir, "log.csv")

    @property
    def num_classes(self):
        return self.train_set.num_classes

    def ckpt_path(self, name):
        return os.path.join(self.ckpt_dir, f"{name}.pt")

    def say(self, text):
        if self.rt.is_main:
            print(text)

    def build(self, arch, width, kind, seed):
        # A seed's students start from the same weights: only the loss differs.
        torch.manual_seed(data.derive_seed(seed, "init", kind))
        return build_model(arch, self.num_classes, width, self.args.stem)

    def train(self, stage, model, **kwargs):
        """Train (or resume) one stage; return its final validation top-1 and top-5."""
        hooks = [self._on_epoch] + list(filter(None, [kill_hook_from_env()]))
        try:
            history = run_stage(stage.name, model, self.train_set, self.val_set, self.args, self.rt,
                                self.ckpt_path(stage.name), epochs=self._epochs(stage.role), seed=stage.seed,
                                hooks=hooks, **kwargs)
        except checkpoint.CheckpointError as e:
            raise RunError(str(e)) from None
        self.histories[stage.name] = history
        return {"top1": history[-1]["val_top1"], "top5": history[-1]["val_top5"]}

    def _epochs(self, role):
        return self.args.teacher_epochs if role == "teacher" else self.args.epochs

    def _on_epoch(self, name, history):
        self.histories[name] = history
        report.write_log(self.log_path, self.histories)
        role = {s.name: s.role for s in self.stages}[name]
        width = max(8, *(len(s.name) for s in self.stages))
        row = history[-1]
        rkd = f" (ce {row['ce']:.3f} + rkd {row['rkd']:.3f})" if impl_of(role, self.args) else ""
        tqdm.write(f"{name:{width}} epoch {row['epoch']:>3}/{self._epochs(role)}  lr {row['lr']:.4g}  "
                   f"loss {row['loss']:.3f}{rkd}  train top-1 {row['train_top1']:5.1f}  "
                   f"val top-1 {row['val_top1']:5.2f}  top-5 {row['val_top5']:5.2f}  {row['seconds']:.1f}s")


def _configure_determinism(deterministic):
    if deterministic:
        # cuBLAS reads this before its first call; nothing has called it yet.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _on_main(rt, fn):
    """``fn()`` run on the main process only; every process returns its result, or raises its RunError."""
    result = [None, None]
    if rt.is_main:
        try:
            result[0] = fn()
        except RunError as e:
            result[1] = str(e)
    if rt.distributed:
        dist.broadcast_object_list(result, src=0)
    if result[1] is not None:
        raise RunError(result[1])
    return result[0]


def _default_out_dir():
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _choose_out_dir(args):
    """The run's directory, checked to be creatable (a resumed run's is its own, checked by parse_args)."""
    if args.resume is not None:
        return args.out_dir
    out_dir = args.out_dir or _default_out_dir()
    if os.path.exists(os.path.join(out_dir, "config.json")):
        raise RunError(f"--out-dir {out_dir} already holds a run: continue it with --resume {out_dir}, "
                       "or choose another --out-dir")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    where = "" if existing == os.path.abspath(out_dir) else f": {existing}"
    if not os.path.isdir(existing):
        raise RunError(f"--out-dir {out_dir}{where} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"--out-dir {out_dir}{where} is not writable")
    return out_dir


def _create_run_dir(job):
    """Create the run's directory and record its options; a resumed run's interrupted writes are cleared."""
    def create():
        try:
            os.makedirs(job.ckpt_dir, exist_ok=True)
            if job.args.resume is not None:
                return checkpoint.remove_temporaries(job.out_dir) + checkpoint.remove_temporaries(job.ckpt_dir)
            with checkpoint.atomic_file(os.path.join(job.out_dir, "config.json"), "w") as f:
                json.dump({**vars(job.args), "out_dir": job.out_dir}, f, indent=2, sort_keys=True)
            return []
        except checkpoint.WriteError as e:
            raise RunError(str(e)) from None
        except OSError as e:
            raise RunError(f"--out-dir {job.out_dir}: cannot write there: {e}") from None

    removed = _on_main(job.rt, create)
    job.say(f"rkd-distill: {'resuming' if job.args.resume else 'writing'} {job.out_dir}  (log {job.log_path}, "
            f"checkpoints {job.ckpt_dir}{os.sep})")
    if removed:
        job.say(f"removed what interrupted writes left: {', '.join(removed)}")
    _note_preset_batch(job)
    job.say(f"data: {job.args.data}, {len(job.train_set)} training / {len(job.val_set)} validation images of "
            f"{job.args.image_size}x{job.args.image_size}, {job.num_classes} classes; device {job.rt.device}"
            + (f", {job.rt.world_size} processes" if job.rt.distributed else ""))


def _note_preset_batch(job):
    args, world = job.args, job.rt.world_size
    if args.preset is None:
        return
    recipe_batch = PRESETS[args.preset]["global_batch"]
    if args.batch_size * world != recipe_batch:
        job.say(f"note: preset {args.preset} is tuned for a global batch of {recipe_batch}; this run's is "
                f"{world} x {args.batch_size} = {world * args.batch_size} at --lr {args.lr:g} "
                f"(linear scaling would be --lr {args.lr * world * args.batch_size / recipe_batch:g})")


def _load_data(args):
    if args.data == "synthetic":
        return data.synthetic(args.num_classes, args.train_size, args.val_size, args.image_size, args.data_seed)
    try:
        if args.data == "cifar100":
            return data.load_cifar100(args.data_dir)
        return data.load_image_folder(args.data_dir, args.image_size)
    except data.UnreadableImage as e:
        raise RunError(f"{e}; replace or remove it") from None
    # What the loaders raise for missing, unreadable or malformed files; the messages name the file.
    except (OSError, ValueError, ImportError, pickle.UnpicklingError) as e:
        raise RunError(_one_line(str(e))) from None


def _one_line(text, limit=300):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(arch, width, stem):
    return f"{arch} x{width:g}" + (f" {stem}-stem" if arch.startswith("resnet") else "")


def _load_teacher(job):
    """Load --teacher-checkpoint (a run's checkpoint or a bare state_dict) into the teacher."""
    path, args = job.args.teacher_checkpoint, job.args
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise RunError(f"--teacher-checkpoint: {e}") from None
    if not isinstance(state, dict):
        raise RunError(f"--teacher-checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    try:
        job.teacher.load_state_dict(state.get("model", state))
    except RuntimeError as e:
        raise RunError(f"--teacher-checkpoint {path} does not fit "
                       f"{_describe(args.teacher, args.teacher_width, args.stem)} with {job.num_classes} classes: "
                       f"{_one_line(str(e))}") from None


def _check_resumable(job, name):
    path = job.ckpt_path(name)
    if os.path.exists(path):
        try:
            checkpoint.load_stage(path)
        except checkpoint.CheckpointError as e:
            raise RunError(f"--resume {job.args.resume}: {e}; delete it to train that stage again") from None


def _train_teacher(job):
    """The teacher's validation (top-1, top-5): trained here, or evaluated as loaded from --teacher-checkpoint."""
    args = job.args
    if args.teacher_checkpoint is None:
        return job.train(Stage.of("teacher", args.seed, args.seed), job.teacher)
    job.teacher.to(job.rt.device)
    top1, top5 = evaluate(job.teacher, job.val_set, job.rt, batch_size=args.eval_batch_size, amp=args.amp,
                          workers=args.workers)
    job.say(f"teacher loaded from {args.teacher_checkpoint}: val top-1 {top1:.2f}")
    return {"top1": top1, "top5": top5}


def _results(job, teacher_acc, per_seed):
    """What results.json holds: each model's top-1/top-5 (the students' as means over seeds), every seed's, the
    paired RKD - baseline difference, with --compare-impl the paired rkd_ext - reference difference, and the
    RKD loss's measured cost per training step (None in a run recorded before it was measured)."""
    args, roles = job.args, job.student_roles
    mean = {role: {m: sum(r[role][m] for r in per_seed) / len(per_seed) for m in ("top1", "top5")} for role in roles}
    student = {"params": per_seed[0]["params"], "arch": _describe(args.student, args.student_width, args.stem)}
    results = {
        "teacher": {**teacher_acc, "params": sum(p.numel() for p in job.teacher.parameters()),
                    "arch": _describe(args.teacher, args.teacher_width, args.stem)},
        **{role: {**mean[role], **student} for role in roles},
        "seeds": [{k: r[k] for k in ("seed", *roles)} for r in per_seed],
        "difference": _paired(per_seed, "rkd", "baseline"),
    }
    if len(roles) > 2:
        kernel, ref = _impl_roles(job)
        results["impl_difference"] = {"rkd_ext": kernel, "reference": ref, **_paired(per_seed, kernel, ref)}
    cost = summarise_cost(row for stage in job.stages if impl_of(stage.role, args)
                          for row in job.histories.get(stage.name, []))
    results["loss_cost"] = None if cost is None else {"device": str(job.rt.device), **cost}
    return results


def _paired(per_seed, treated, control):
    return {m: stats.paired_difference([r[treated][m] for r in per_seed], [r[control][m] for r in per_seed])
            for m in ("top1", "top5")}


def _impl_roles(job):
    """The roles of the students on rkd_ext's loss and on the reference's, in a run with --compare-impl."""
    by_impl = {impl_of(role, job.args): role for role in job.student_roles[1:]}
    return by_impl["kernel"], by_impl["reference"]


def _report(job, teacher_acc, per_seed):
    """Write results.json, the final log and the plot; print where they are, the tables and the differences."""
    results = _results(job, teacher_acc, per_seed)
    roles, seeds = job.student_roles, len(per_seed)
    impl_roles = _impl_roles(job) if len(roles) > 2 else None  # (rkd_ext's student, the reference's)
    results_path = os.path.join(job.out_dir, "results.json")
    with checkpoint.atomic_file(results_path, "w") as f:
        json.dump(results, f, indent=2)
    report.write_log(job.log_path, job.histories)
    plot_path = os.path.join(job.out_dir, "curves.png")
    panels = [("CE + RKD\n- CE", [r["rkd"]["top1"] - r["baseline"]["top1"] for r in per_seed],
               results["difference"]["top1"])]
    if impl_roles:
        kernel, ref = impl_roles
        panels.append(("rkd_ext RKD\n- reference RKD", [r[kernel]["top1"] - r[ref]["top1"] for r in per_seed],
                       results["impl_difference"]["top1"]))
    why_not = report.plot_curves(plot_path, job.histories, {s.name: s.role for s in job.stages}, panels)
    print(f"\nlog          {job.log_path}")
    print(f"plot         {plot_path}" if why_not is None else f"plot         skipped: {why_not}")
    print(f"checkpoints  {job.ckpt_dir}{os.sep}")
    print(f"results      {results_path}\n")
    print(report.format_table([{"model": report.STAGE_LABELS[key], **results[key]} for key in ("teacher", *roles)]))
    notes = [f"students: means over the {seeds} seeds below"] if seeds > 1 else []
    if impl_roles:
        kernel, ref = (report.LOSS_LABELS[role] for role in impl_roles)
        notes.append(f"a seed's students share initialisation and data order;\n {kernel} trains on rkd_ext's RKD "
                     f"loss, {ref} on the reference implementation's")
    if notes:
        print("(" + "; ".join(notes) + ")")
    if seeds > 1:
        print("\n" + report.format_seeds(results["seeds"]))
    print("\n" + report.format_difference(results["difference"], seeds))
    if impl_roles:
        kernel, ref = impl_roles
        if seeds > 1:
            print("\n" + report.format_seeds(results["seeds"], treated=kernel, control=ref,
                                             names=("reference", "rkd_ext")))
        print("\n" + report.format_difference(results["impl_difference"], seeds, label="rkd_ext vs reference RKD loss",
                                              same_loss=True))
    if results["loss_cost"] is not None:
        print("\n" + report.format_cost(results["loss_cost"]))
