"""One distillation job: its data, the teacher, the two students, and what the run writes."""
import json
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..models import build_model
from . import checkpoint, data, report
from .options import PRESETS
from .train import RKDObjective, Runtime, evaluate, kill_hook_from_env, run_stage

__all__ = ["run_job"]


def run_job(args, rt):
    """Train (or load) the teacher, then the baseline and the RKD student; print and write the results."""
    _configure_determinism(args.deterministic)
    job = Job(args, rt, _prepare_out_dir(args, rt))
    job.say(f"rkd-distill: {'resuming' if args.resume else 'writing'} {job.out_dir}  (log {job.log_path}, "
            f"checkpoints {job.ckpt_dir}{os.sep})")
    _note_preset_batch(job)
    job.train_set, job.val_set = _load_data(args)
    job.say(f"data: {args.data}, {len(job.train_set)} training / {len(job.val_set)} validation images of "
            f"{args.image_size}x{args.image_size}, {job.num_classes} classes; device {rt.device}"
            + (f", {rt.world_size} processes" if rt.distributed else ""))
    teacher, teacher_acc = _teacher(job)
    baseline = job.build(args.student, args.student_width, "student")
    baseline_acc = job.stage("baseline", baseline)
    student = job.build(args.student, args.student_width, "student")
    objective = RKDObjective(args.distance_weight, args.angle_weight, args.rkd_impl, not args.no_l2_norm,
                             args.rkd_global_batch)
    rkd_acc = job.stage("rkd", student, teacher=teacher, objective=objective)
    if rt.is_main:
        _report(job, {"teacher": (teacher, teacher_acc), "baseline": (baseline, baseline_acc),
                      "rkd": (student, rkd_acc)})


@dataclass
class Job:
    """A run's options, runtime, output directory and data, and the histories of its stages so far."""

    args: object
    rt: Runtime
    out_dir: str
    train_set: object = None
    val_set: object = None
    histories: dict = field(default_factory=dict)

    @property
    def ckpt_dir(self):
        return os.path.join(self.out_dir, "checkpoints")

    @property
    def log_path(self):
        return os.path.join(self.out_dir, "log.csv")

    @property
    def num_classes(self):
        return self.train_set.num_classes

    def say(self, text):
        if self.rt.is_main:
            print(text)

    def build(self, arch, width, role):
        # Both students start from the same weights: only the loss differs.
        torch.manual_seed(data.derive_seed(self.args.seed, "init", role))
        return build_model(arch, self.num_classes, width, self.args.stem)

    def stage(self, name, model, **kwargs):
        """Train (or resume) one stage; return its final validation top-1 and top-5."""
        hooks = [self._on_epoch] + list(filter(None, [kill_hook_from_env()]))
        history = run_stage(name, model, self.train_set, self.val_set, self.args, self.rt,
                            os.path.join(self.ckpt_dir, f"{name}.pt"), epochs=self._epochs(name),
                            seed=self.args.seed, hooks=hooks, **kwargs)
        self.histories[name] = history
        return history[-1]["val_top1"], history[-1]["val_top5"]

    def _epochs(self, name):
        return self.args.teacher_epochs if name == "teacher" else self.args.epochs

    def _on_epoch(self, name, history):
        self.histories[name] = history
        report.write_log(self.log_path, self.histories)
        row = history[-1]
        rkd = f" (ce {row['ce']:.3f} + rkd {row['rkd']:.3f})" if name == "rkd" else ""
        tqdm.write(f"{name:8} epoch {row['epoch']:>3}/{self._epochs(name)}  lr {row['lr']:.4g}  "
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


def _default_out_dir():
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _prepare_out_dir(args, rt):
    """Pick and create the output directory on the main process; every process gets its path or its error."""
    result = [None, None]
    if rt.is_main:
        out_dir = args.out_dir or _default_out_dir()
        config_path = os.path.join(out_dir, "config.json")
        if args.resume is None and os.path.exists(config_path):
            result[1] = (f"--out-dir {out_dir} already holds a run: continue it with --resume {out_dir}, "
                         "or choose another --out-dir")
        else:
            os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
            if args.resume is None:
                with open(config_path, "w") as f:
                    json.dump({**vars(args), "out_dir": out_dir}, f, indent=2, sort_keys=True)
            result[0] = out_dir
    if rt.distributed:
        dist.broadcast_object_list(result, src=0)
    if result[1] is not None:
        raise SystemExit(f"rkd-distill: error: {result[1]}")
    return result[0]


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
    if args.data == "cifar100":
        return data.load_cifar100(args.data_dir)
    return data.load_image_folder(args.data_dir, args.image_size)


def _describe(arch, width, stem):
    return f"{arch} x{width:g}" + (f" {stem}-stem" if arch.startswith("resnet") else "")


def _teacher(job):
    """The trained teacher and its validation (top-1, top-5): loaded from --teacher-checkpoint, or trained."""
    args = job.args
    teacher = job.build(args.teacher, args.teacher_width, "teacher")
    if args.teacher_checkpoint is None:
        return teacher, job.stage("teacher", teacher)
    state = checkpoint.load(args.teacher_checkpoint)
    try:
        teacher.load_state_dict(state.get("model", state))
    except RuntimeError as e:
        raise SystemExit(f"rkd-distill: error: --teacher-checkpoint {args.teacher_checkpoint} does not fit "
                         f"{_describe(args.teacher, args.teacher_width, args.stem)} with {job.num_classes} "
                         f"classes: {e}") from None
    teacher.to(job.rt.device)
    acc = evaluate(teacher, job.val_set, job.rt, batch_size=args.eval_batch_size, amp=args.amp, workers=args.workers)
    job.say(f"teacher loaded from {args.teacher_checkpoint}: val top-1 {acc[0]:.2f}")
    return teacher, acc


def _report(job, models):
    """Write results.json, the final log and the plot; print where they are, the table and the difference."""
    args = job.args
    rows = []
    for key, (model, acc) in models.items():
        arch, width = (args.teacher, args.teacher_width) if key == "teacher" else (args.student, args.student_width)
        rows.append({"key": key, "model": report.STAGE_LABELS[key], "arch": _describe(arch, width, args.stem),
                     "params": sum(p.numel() for p in model.parameters()), "top1": acc[0], "top5": acc[1]})
    results_path = os.path.join(job.out_dir, "results.json")
    with open(results_path, "w") as f:
        json.dump({r["key"]: {"top1": r["top1"], "top5": r["top5"], "params": r["params"], "arch": r["arch"]}
                   for r in rows}, f, indent=2)
    report.write_log(job.log_path, job.histories)
    plot_path = os.path.join(job.out_dir, "curves.png")
    why_not = report.plot_curves(plot_path, job.histories)
    print(f"\nlog          {job.log_path}")
    print(f"plot         {plot_path}" if why_not is None else f"plot         skipped: {why_not}")
    print(f"checkpoints  {job.ckpt_dir}{os.sep}")
    print(f"results      {results_path}\n")
    print(report.format_table(rows))
    (b1, b5), (r1, r5) = models["baseline"][1], models["rkd"][1]
    print(f"\nRKD vs baseline: {r1 - b1:+.2f} top-1, {r5 - b5:+.2f} top-5")
