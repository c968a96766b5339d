"""The options of the reference distillation: presets, parsing, and the checks on the options themselves."""
import argparse
import json
import os
import shlex

import torch

from ..models import ARCHS, STEMS

__all__ = ["PRESETS", "RUNTIME_OPTIONS", "build_parser", "parse_args", "resume_command"]

# The seed experiments' recipes (mmrazor's RKD configs). Batch sizes are per
# process; the learning rate is the recipe's for its global batch of 8 processes.
PRESETS = {
    "in1k-r34-r18": {
        "about": "ImageNet-1k, ResNet-34 -> ResNet-18 (ImageNet stems), 8 x 32 images, SGD 0.1, "
                 "x0.1 at epochs 30/60/90 of 100",
        "global_batch": 256,
        "options": dict(data="imagefolder", image_size=224, crop_padding=28, teacher="resnet34",
                        student="resnet18", teacher_width=1.0, student_width=1.0, stem="imagenet", epochs=100,
                        batch_size=32, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="multistep",
                        milestones=[30, 60, 90], gamma=0.1, distance_weight=25.0, angle_weight=50.0, seeds=1,
                        compare_impl=False),
    },
    "c100-r50-vgg11bn": {
        "about": "CIFAR-100, ResNet-50 (CIFAR stem) -> VGG-11-BN, 8 x 16 images, SGD 0.1, "
                 "x0.2 at epochs 60/120/160 of 200",
        "global_batch": 128,
        "options": dict(data="cifar100", image_size=32, crop_padding=4, teacher="resnet50", student="vgg11_bn",
                        teacher_width=1.0, student_width=1.0, stem="cifar", epochs=200, batch_size=16, lr=0.1,
                        momentum=0.9, weight_decay=5e-4, schedule="multistep", milestones=[60, 120, 160],
                        gamma=0.2, distance_weight=25.0, angle_weight=50.0, seeds=1,
                        compare_impl=False),
    },
}

# Seeds of the students in a run without a preset: the demonstration's gain is of the size of its seed noise, so
# one seed proves nothing, and five give a 95% interval 1.24 paired standard deviations wide on either side of
# the mean (four: 1.59, three: 2.48).
DEFAULT_SEEDS = 5
# Epochs of each model in a run without a preset (the teacher's too, unless --teacher-epochs). With a third
# student per seed (--compare-impl), eight took 3 min 35 s on an idle 2-core CPU (about 38 s a seed, 16 s the
# teacher), and six 2 min 5 s in one run and 2 min 52 s in another on the same idle machine: five keep the
# default run under 3 minutes with margin and all five seeds. Fewer seeds instead would widen the intervals that
# answer "does RKD help".
DEFAULT_EPOCHS = 5

# Options that do not change what a run computes: a resumed run may change them.
RUNTIME_OPTIONS = frozenset({"device", "workers", "no_progress", "resume", "out_dir", "compile", "eval_batch_size",
                             "data_dir"})
# Of those, the ones a resumed run does not inherit: they belong to the machine or the session, not the run.
NOT_INHERITED = frozenset({"device", "no_progress", "resume", "out_dir"})

DESCRIPTION = """\
Relational Knowledge Distillation of a ResNet teacher into a student.

Trains (or loads) the teacher, then students from the same initialisation and
data order: a baseline on cross-entropy alone, and one on cross-entropy +
distance_weight * RKD-distance + angle_weight * RKD-angle between the
L2-normalised global-average-pooled ("neck") features of student and teacher,
computed by rkd_ext (--rkd-impl). With --compare-impl (the default without a
preset) a third student trains on the same loss from the other implementation,
the pure-PyTorch reference, to show whether rkd_ext can replace it: the paired
difference between the two students, and each loss's time and peak memory per
training step, measured in the run. Evaluates top-1 / top-5 of every model and
prints tables.

With no arguments it runs a small demonstration on generated 16x16 images
(ResNet-18 x0.25 -> ResNet-18 x0.125): the teacher once, the three students
over several seeds (--seeds), in under 3 minutes on an idle 2-core CPU.
Multi-GPU / multi-process: launch with torchrun, e.g.
  torchrun --nproc_per_node 8 -m rkd_ext.distill --preset c100-r50-vgg11bn --data-dir DIR
"""


def _epilog():
    lines = ["presets (each sets the options of a seed experiment; explicit options override them):"]
    lines += [f"  {name:18} {p['about']}" for name, p in PRESETS.items()]
    lines += ["",
              "outputs, in --out-dir: config.json, log.csv (one row per epoch of each model), curves.png,",
              "results.json, checkpoints/{teacher,baseline,rkd,rkd-reference}.pt and",
              "{baseline,rkd,rkd-reference}-seed<S>.pt for each further seed S (rkd-kernel instead of",
              "rkd-reference with --rkd-impl reference; none without --compare-impl), every epoch; load them",
              "with torch.load(path, weights_only=True). Resume an interrupted run with --resume OUT_DIR."]
    return "\n".join(lines)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser():
    p = argparse.ArgumentParser(prog="rkd-distill", description=DESCRIPTION, epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="use the recipe of a seed experiment (see below); other options override its values")
    for add_group in (_data_options, _model_options, _optimisation_options, _rkd_options, _run_options):
        add_group(p)
    return p


def _data_options(p):
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic", "cifar100", "imagefolder"), default="synthetic",
                   help="synthetic: a class-structured image set generated in memory from --data-seed (no "
                        "download); cifar100: the CIFAR-100 'python' files in --data-dir; imagefolder: "
                        "--data-dir/train/<class>/* and --data-dir/val/<class>/* (needs Pillow) "
                        "(default: %(default)s)")
    g.add_argument("--data-dir", metavar="DIR", help="where the cifar100 or imagefolder data lies")
    g.add_argument("--image-size", type=_positive_int, metavar="PX",
                   help="image side: synthetic images are generated at this size, imagefolder images resized "
                        "and centre-cropped to it (default: 16 synthetic, 32 cifar100, 224 imagefolder)")
    g.add_argument("--num-classes", type=_positive_int, default=10, help="synthetic classes (default: %(default)s)")
    g.add_argument("--train-size", type=_positive_int, default=2560,
                   help="synthetic training images (default: %(default)s)")
    g.add_argument("--val-size", type=_positive_int, default=512,
                   help="synthetic validation images (default: %(default)s)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    g.add_argument("--crop-padding", type=_non_negative_int, metavar="PX",
                   help="training augmentation: zero padding of the random crop, before a random horizontal "
                        "flip (default: image size / 8, i.e. 4 for 32 px)")
    g.add_argument("--workers", type=_non_negative_int, default=4,
                   help="image-decoding worker processes for imagefolder (default: %(default)s)")


def _model_options(p):
    g = p.add_argument_group("models")
    g.add_argument("--teacher", choices=ARCHS, default="resnet18", help="teacher architecture (default: %(default)s)")
    g.add_argument("--student", choices=ARCHS, default="resnet18", help="student architecture (default: %(default)s)")
    g.add_argument("--teacher-width", type=_positive_float, default=0.25,
                   help="teacher channel multiplier; its neck has 512*width features (2048*width for resnet50) "
                        "(default: %(default)s)")
    g.add_argument("--student-width", type=_positive_float, default=0.125,
                   help="student channel multiplier (default: %(default)s)")
    g.add_argument("--stem", choices=("auto",) + STEMS, default="auto",
                   help="ResNet stem: cifar (3x3 conv, for ~32 px images), imagenet (7x7/2 conv + max-pool, for "
                        "64 px and up), auto: cifar below 64 px (default: %(default)s)")
    g.add_argument("--teacher-checkpoint", metavar="PATH",
                   help="load the teacher from this file instead of training it: a checkpoints/teacher.pt of an "
                        "earlier run or a state_dict of the same architecture")


def _optimisation_options(p):
    g = p.add_argument_group("optimisation (the same for all three models)")
    g.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                   help="epochs of each student (default: %(default)s)")
    g.add_argument("--teacher-epochs", type=_positive_int, help="epochs of the teacher (default: --epochs)")
    g.add_argument("--batch-size", type=_positive_int, default=64,
                   help="training images per step and process; at least 3, as RKD's angle term needs triplets "
                        "(default: %(default)s)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=256,
                   help="evaluation images per step and process (default: %(default)s)")
    g.add_argument("--lr", type=_positive_float, default=0.05, help="SGD learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=_non_negative_float, default=5e-4,
                   help="SGD weight decay (default: %(default)s)")
    g.add_argument("--schedule", choices=("cosine", "multistep"), default="cosine",
                   help="learning-rate schedule, stepped per epoch: cosine annealing to 0, or multiplied by "
                        "--gamma at each of --milestones (default: %(default)s)")
    g.add_argument("--milestones", type=_positive_int, nargs="+", default=[], metavar="EPOCH",
                   help="multistep schedule: epochs after which the rate is multiplied by --gamma")
    g.add_argument("--gamma", type=_positive_float, default=0.1, help="multistep decay factor (default: %(default)s)")


def _rkd_options(p):
    g = p.add_argument_group("RKD")
    g.add_argument("--distance-weight", type=_non_negative_float, default=25.0,
                   help="weight of the distance-wise term, 0 to skip it (default: %(default)s)")
    g.add_argument("--angle-weight", type=_non_negative_float, default=50.0,
                   help="weight of the angle-wise term, 0 to skip it (default: %(default)s)")
    g.add_argument("--no-l2-norm", action="store_true",
                   help="feed the raw neck features to RKD instead of L2-normalising each first")
    g.add_argument("--rkd-impl", choices=("kernel", "reference"), default="kernel",
                   help="kernel: rkd_ext's compiled ops; reference: the pure-PyTorch reference formulation, for "
                        "comparison (default: %(default)s)")
    g.add_argument("--compare-impl", action=argparse.BooleanOptionalAction, default=True,
                   help="train a third student per seed on the same RKD loss from the other implementation (the "
                        "reference, or with --rkd-impl reference rkd_ext's kernel), from the same initialisation "
                        "and data order, and report the paired difference between the rkd_ext and reference "
                        "students, and each loss's time and peak memory per training step, measured in the run "
                        "(default: on; off with --preset, and in a resumed run recorded before this option)")
    g.add_argument("--rkd-global-batch", nargs="?", const="shard", choices=("shard", "gather"), default=None,
                   metavar="{shard,gather}",
                   help="with several processes, compute the relations over the batches of all processes "
                        "together instead of each process's own: 'shard' (the default with the flag alone) "
                        "splits the work by anchor across the processes, 'gather' has every process compute "
                        "the whole global-batch loss; the same loss and gradients either way")


def _run_options(p):
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N; under torchrun each process takes cuda:LOCAL_RANK "
                        "(default: %(default)s)")
    g.add_argument("--amp", choices=("bf16", "fp16"),
                   help="mixed precision for the models (RKD is always computed in float32); fp16 adds a "
                        "gradient scaler (default: off, float32)")
    g.add_argument("--compile", action="store_true", help="torch.compile the models")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation, data order and augmentation of the teacher and of the first "
                        "seed's students (default: %(default)s)")
    g.add_argument("--seeds", type=_positive_int, default=DEFAULT_SEEDS, metavar="K",
                   help="train the teacher once (from --seed), then the students K times, from seeds --seed, "
                        "--seed + 1, ..., --seed + K - 1 (one initialisation and data order per seed, shared by "
                        "its students), and report the mean paired differences with their 95%% intervals "
                        "(default: %(default)s; 1 with --preset)")
    g.add_argument("--deterministic", action="store_true",
                   help="use only deterministic algorithms (slower on GPU): the same seed gives the same weights")
    g.add_argument("--out-dir", metavar="DIR", help="where outputs go (default: runs/<date-time>)")
    g.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last checkpoints, with its recorded options; only "
                        "--device, --workers, --compile, --eval-batch-size, --data-dir and --no-progress may "
                        "change")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none anyway when stderr is not a terminal)")


def parse_args(argv=None):
    """Options after applying, in increasing priority: defaults, the preset or the resumed run's, the command line."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    recorded = None
    if first.resume is not None:
        recorded = _read_config(first.resume, parser)
        parser.set_defaults(**recorded)
    elif first.preset is not None:
        parser.set_defaults(**PRESETS[first.preset]["options"])
    args = parser.parse_args(argv)
    _resolve(args)
    _validate(args, parser)
    if recorded is not None:
        if args.out_dir is not None and os.path.abspath(args.out_dir) != os.path.abspath(args.resume):
            parser.error(f"--out-dir {args.out_dir} conflicts with --resume {args.resume}: a run resumes in place")
        changed = [k for k in sorted(recorded) if k not in RUNTIME_OPTIONS and recorded[k] != getattr(args, k)]
        if changed:
            parser.error("--resume: a resumed run keeps its recorded options, but "
                         + ", ".join(f"--{k.replace('_', '-')} is {getattr(args, k)!r} instead of {recorded[k]!r}"
                                     for k in changed))
        args.out_dir = args.resume
    return args


def _read_config(run_dir, parser):
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        parser.error(f"--resume {run_dir}: no config.json there, so it is not a run directory")
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        parser.error(f"--resume {run_dir}: {path} is not a readable JSON file ({' '.join(str(e).split())})")
    if not isinstance(recorded, dict):
        parser.error(f"--resume {run_dir}: {path} must hold a JSON object of options, got "
                     f"{type(recorded).__name__} {json.dumps(recorded)[:40]}")
    # A run recorded before --seeds existed trained one pair of students.
    recorded.setdefault("seeds", 1)
    # A run recorded before --compare-impl existed trained no student on the other implementation's loss.
    recorded.setdefault("compare_impl", False)
    # A run recorded when --rkd-global-batch was a flag gathered the global batch.
    if isinstance(recorded.get("rkd_global_batch"), bool):
        recorded["rkd_global_batch"] = "gather" if recorded["rkd_global_batch"] else None
    actions = {a.dest: a for a in parser._actions
               if a.dest in recorded and a.dest not in NOT_INHERITED and a.default is not argparse.SUPPRESS}
    for dest, action in actions.items():
        if not _is_valid_value(action, recorded[dest]):
            parser.error(f"--resume {run_dir}: {path} records {dest} = {json.dumps(recorded[dest])[:60]}, which "
                         f"{'/'.join(action.option_strings)} does not accept")
    return {dest: recorded[dest] for dest in actions}


def _is_valid_value(action, value):
    """Whether ``value`` is ``action``'s default or what parsing some text for it gives."""
    if type(value) is type(action.default) and value == action.default:
        return True
    if action.nargs == 0:  # a flag
        return isinstance(value, bool)
    if action.nargs == "+":
        return isinstance(value, list) and len(value) > 0 and all(_parses_to(action, v) for v in value)
    return _parses_to(action, value)


def _parses_to(action, value):
    try:
        parsed = action.type(str(value)) if action.type is not None else str(value)
    except (ValueError, argparse.ArgumentTypeError):
        return False
    same_type = type(parsed) is type(value) or (type(parsed) is float and type(value) is int)
    return same_type and parsed == value and (action.choices is None or value in action.choices)


def resume_command(argv, run_dir):
    """The command line that continues the run in ``run_dir``: ``--resume`` and the runtime options ``argv`` gives.

    The run's other options come back from its config.json. Of the runtime ones given, those a resumed run does
    not inherit (--device, --no-progress) are repeated, and when ``argv`` resumed a run itself, all: there they
    may differ from what the run recorded.
    """
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # what parsing sets, then, is what argv gives
    given = vars(parser.parse_known_args(argv)[0])
    keep = (RUNTIME_OPTIONS if "resume" in given else NOT_INHERITED) - {"resume", "out_dir"}
    words = ["rkd-distill", "--resume", run_dir]
    for action in parser._actions:
        if action.dest in given and action.dest in keep:
            words.append(action.option_strings[0])
            if action.nargs != 0:
                words.append(str(given[action.dest]))
    return shlex.join(words)


def _resolve(args):
    if args.image_size is None:
        args.image_size = {"synthetic": 16, "cifar100": 32, "imagefolder": 224}[args.data]
    if args.stem == "auto":
        args.stem = "cifar" if args.image_size < 64 else "imagenet"
    if args.crop_padding is None:
        args.crop_padding = args.image_size // 8
    if args.teacher_epochs is None:
        args.teacher_epochs = args.epochs


def _validate(args, parser):
    if args.data == "synthetic":
        if args.data_dir is not None:
            parser.error("--data-dir is only used with --data cifar100 or --data imagefolder")
        if args.num_classes < 2:
            parser.error(f"--num-classes must be at least 2, got {args.num_classes}")
    elif args.data_dir is None:
        parser.error(f"--data {args.data} needs --data-dir")
    elif not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.data == "cifar100" and args.image_size != 32:
        parser.error(f"--image-size must be 32 for cifar100 (its images are 32x32), got {args.image_size}")
    if args.image_size < 8:
        parser.error(f"--image-size must be at least 8, got {args.image_size}")
    if args.batch_size < 3:
        parser.error(f"--batch-size must be at least 3 (RKD's angle term needs triplets), got {args.batch_size}")
    if args.schedule == "multistep" and args.milestones != sorted(set(args.milestones)):
        parser.error(f"--milestones must be strictly increasing, got {args.milestones}")
    if args.gamma > 1:
        parser.error(f"--gamma must be at most 1, got {args.gamma}")
    if args.rkd_global_batch == "shard" and args.rkd_impl == "reference":
        parser.error("--rkd-global-batch shard needs --rkd-impl kernel (the reference formulation has no sharded "
                     "form); use --rkd-global-batch gather with --rkd-impl reference")
    if args.momentum >= 1:
        parser.error(f"--momentum must be below 1, got {args.momentum}")
    if args.distance_weight == 0 and args.angle_weight == 0:
        parser.error("--distance-weight and --angle-weight are both 0: the RKD student would be the baseline")
    if args.teacher_checkpoint is not None and not os.path.isfile(args.teacher_checkpoint):
        parser.error(f"--teacher-checkpoint {args.teacher_checkpoint}: no such file")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        parser.error(f"--device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
