import os

import pytest
import torch

# Never time the pure-PyTorch fallback by accident.
os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_benchmark_update_json(config, benchmarks, output_json):
    import rkd_ext

    output_json["rkd_ext"] = {
        "build": {k: v for k, v in rkd_ext.build_info().items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
