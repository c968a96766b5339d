"""Command line of the reference distillation: ``python -m rkd_ext.distill`` / ``rkd-distill``."""
import os
import sys

import torch.distributed as dist

from .job import RunError, run_job
from .options import PRESETS, build_parser, parse_args, resume_command
from .train import init_runtime

__all__ = ["PRESETS", "build_parser", "parse_args", "main"]

# The shell's status for a process ended by SIGINT (128 + 2).
INTERRUPTED_STATUS = 130


def main(argv=None):
    """Run the distillation described by ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad options end in argparse's usage and error line (status 2); bad files or
    folders, or a run that cannot go on (a full disk), in one line
    ``rkd-distill: error: ...`` (status 1), with the ``--resume`` command that
    continues the run once the cause is fixed; Ctrl-C in one line with that
    command (status 130).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        rt = init_runtime(args.device)
        try:
            run_job(args, rt)
        finally:
            if rt.distributed:
                dist.destroy_process_group()
    except RunError as e:
        raise SystemExit(_error_line(e, argv)) from None
    except KeyboardInterrupt as e:
        # Not a traceback: what the user needs is whether there is a run to continue, and how. Under torchrun
        # every process gets the Ctrl-C; the first says it.
        if int(os.environ.get("RANK", "0")) == 0:
            print(_interrupted_line(getattr(e, "run_dir", None), argv), file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0


def _error_line(error, argv):
    line = f"rkd-distill: error: {error}"
    if error.run_dir is not None:
        then = f"{error.fix}, then " if error.fix else ""
        line += f"; {then}continue with: {resume_command(argv, error.run_dir)}"
    return line


def _interrupted_line(run_dir, argv):
    if run_dir is None:
        return "rkd-distill: interrupted before the run started; nothing was written"
    return f"rkd-distill: interrupted; continue with: {resume_command(argv, run_dir)}"
