import gc
import os
import shlex
import sys

import pytest
import torch

# Never time the pure-PyTorch fallback by accident.
os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")

import rkd_ext  # noqa: E402  (it reads the environment set above)

from . import common  # noqa: E402


_LOAD_AT_START = pytest.StashKey()


@pytest.fixture(params=common.DEVICES)
def device(request):
    return request.param


def pytest_sessionstart(session):
    # A busy CPU (other jobs) slows every parallel op: the report shows the load beside the times.
    session.config.stash[_LOAD_AT_START] = os.getloadavg()


def pytest_collection_finish(session):
    # Every case runs a full garbage collection before measuring memory; with torch and
    # the collected modules frozen out of the collector's view, that takes microseconds.
    gc.freeze()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["rkd_ext"] = {
        "build": rkd_ext.build_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "quick": common.QUICK,
        "loadavg": {"start": config.stash.get(_LOAD_AT_START, None), "end": os.getloadavg()},
        "command": "python -m pytest " + shlex.join(sys.argv[1:]),
        "env": {k: v for k, v in os.environ.items() if k.startswith("RKD_BENCH_")},
        "skipped": common.SKIPPED,
    }
