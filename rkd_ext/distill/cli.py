"""Command line of the reference distillation: ``python -m rkd_ext.distill`` / ``rkd-distill``."""
import torch.distributed as dist

from .job import RunError, run_job
from .options import PRESETS, build_parser, parse_args
from .train import init_runtime

__all__ = ["PRESETS", "build_parser", "parse_args", "main"]


def main(argv=None):
    """Run the distillation described by ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad options end in argparse's usage and error line (status 2); bad files or
    folders in one line ``rkd-distill: error: ...`` (status 1).
    """
    args = parse_args(argv)
    rt = init_runtime(args.device)
    try:
        run_job(args, rt)
    except RunError as e:
        raise SystemExit(f"rkd-distill: error: {e}") from None
    finally:
        if rt.distributed:
            dist.destroy_process_group()
    return 0
