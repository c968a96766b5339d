"""``python -m rkd_ext.info``: how rkd_ext was built and whether it can be used."""
import sys

import torch

from ._ext import build_info


def main():
    info = build_info()
    rows = [
        ("rkd_ext", __import__("rkd_ext").__version__),
        ("running torch", f"{info['running_torch']} (CUDA {info['running_cuda'] or 'none'})"),
    ]
    if "torch_version" in info:
        rows += [
            ("built against torch", info["torch_full_version"]),
            ("serves torch", f">= {info['stable_abi_floor']} (stable ABI)"),
            ("compiler", info["compiler"]),
            ("CUDA kernels", (f"yes, CUDA {info['cuda_version']}, archs {info['cuda_arch_list']}"
                              + (" (not used with this torch)" if info["cuda_fallback_reason"] else ""))
             if info["with_cuda"] else "no (CPU-only build)"),
        ]
    rows += [
        ("compiled kernels in use", "yes" if info["extension_loaded"] else "NO"),
        ("CUDA device visible", torch.cuda.is_available()),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if info["fallback_reason"]:
        print(f"\nfalling back to the pure-PyTorch reference because {info['fallback_reason']}")
        return 1
    if info["cuda_fallback_reason"]:
        print(f"\nCUDA tensors fall back to the pure-PyTorch reference because {info['cuda_fallback_reason']}")
        return 1
    if info.get("with_cuda") is False and torch.version.cuda:
        print("\nnote: this torch has CUDA but the extension was built without it; "
              "CUDA tensors use the pure-PyTorch reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
