"""Every torch.ops.rkd_ext operator on a fixed set of cases, hashed: for showing that a change to the bindings or the
build leaves every output bit where it was.

    python scripts/op_digest.py --save before.json      # with the old build
    python scripts/op_digest.py --compare before.json   # with the new one: exit 1 on any difference

Each case runs one operator (forward and backward operators alike, with every flag and reduction) on seeded inputs
in float64, float32, float16 and bfloat16, over batch sizes that take each kernel path (one sample, small, the
split-K Gram kernel, the panel GEMM over one and several slices of features, and batches with duplicate rows that take the exact near-pair path), and hashes
the bytes of every output tensor. Run on the CPU by default; ``--device cuda`` hashes the CUDA kernels.
"""
import argparse
import hashlib
import json
import sys

import torch

import rkd_ext  # noqa: F401  (registers the operators)

OPS = torch.ops.rkd_ext
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# (N, D): one sample, small, the split-K Gram kernel, the panel GEMM (over one slice of features and over
# several, the last one partial), and a case with repeated rows.
SHAPES = ((1, 3), (5, 7), (33, 40), (130, 24), (100, 300))
DUPLICATES = (24, 16)
EPS, BETA = 1e-12, 1.0


def features(n, d, dtype, seed, device, duplicates=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 2
    if duplicates:
        x[n // 2:] = x[: n - n // 2]
    return x.to(dtype).to(device)


def upstream(shape, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def cases(device):
    """(name, thunk) pairs; each thunk returns a tuple of tensors."""
    shapes = [(n, d, False) for n, d in SHAPES] + [(*DUPLICATES, True)]
    for dtype in DTYPES:
        dn = str(dtype).split(".")[-1]
        for si, (n, d, dup) in enumerate(shapes):
            tag = f"{dn} N={n} D={d}{' dup' if dup else ''}"
            s = features(n, d, dtype, 100 + si, device, dup)
            t = features(n, d + 3, dtype, 200 + si, device, dup)
            loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            for name in ("pairwise_distance", "normalized_distance"):
                def fwd(name=name, s=s):
                    return getattr(OPS, name)(s, EPS)

                def bwd(name=name, s=s, n=n):
                    _, d64 = getattr(OPS, name)(s, EPS)
                    return (getattr(OPS, name + "_backward")(upstream((n, n), dtype, 7, device), s, d64, EPS),)

                yield f"{name} {tag}", fwd
                yield f"{name}_backward {tag}", bwd
            for red in ("mean", "sum", "none"):
                for squared, offset in ((False, 0.0), (True, 0.5)):
                    args = (BETA, EPS, red, squared, offset)

                    def dl(s=s, t=t, args=args):
                        return OPS.rkd_distance_loss(s, t, *args)

                    def dlb(s=s, t=t, args=args, red=red, n=n):
                        _, a, b, st = OPS.rkd_distance_loss(s, t, *args)
                        g = upstream((n, n) if red == "none" else (), loss_dtype, 8, device)
                        return OPS.rkd_distance_loss_backward(g, s, t, a, b, st, *args, True, True)

                    yield f"rkd_distance_loss {red} squared={squared} {tag}", dl
                    yield f"rkd_distance_loss_backward {red} squared={squared} {tag}", dlb
                for normalize in (True, False):
                    def al(s=s, t=t, red=red, normalize=normalize):
                        return OPS.rkd_angle_loss(s, t, BETA, EPS, red, normalize)

                    def alb(s=s, t=t, red=red, normalize=normalize, n=n):
                        _, a, b = OPS.rkd_angle_loss(s, t, BETA, EPS, red, normalize)
                        g = upstream((n, n, n) if red == "none" else (), loss_dtype, 9, device)
                        return OPS.rkd_angle_loss_backward(g, s, t, a, b, BETA, EPS, red, normalize, True, False)

                    yield f"rkd_angle_loss {red} normalize={normalize} {tag}", al
                    yield f"rkd_angle_loss_backward {red} normalize={normalize} {tag}", alb
                if red != "none":
                    rargs = (25.0, 50.0, BETA, EPS, 1e-12, red, False, 0.0, True)

                    def rl(s=s, t=t, rargs=rargs):
                        return OPS.rkd_loss(s, t, *rargs)

                    def rlb(s=s, t=t, rargs=rargs):
                        _, a, b, st = OPS.rkd_loss(s, t, *rargs)
                        return OPS.rkd_loss_backward(upstream((), loss_dtype, 10, device), s, t, a, b, st, *rargs,
                                                     True, True)

                    yield f"rkd_loss {red} {tag}", rl
                    yield f"rkd_loss_backward {red} {tag}", rlb
            for normalize in (True, False):
                def at(s=s, normalize=normalize):
                    return OPS.angle_tensor(s, EPS, normalize)

                def atb(s=s, normalize=normalize, n=n):
                    _, sq = OPS.angle_tensor(s, EPS, normalize)
                    return (OPS.angle_tensor_backward(upstream((n, n, n), dtype, 11, device), s, sq, EPS, normalize),)

                yield f"angle_tensor normalize={normalize} {tag}", at
                yield f"angle_tensor_backward normalize={normalize} {tag}", atb
            begin, end = n // 3, n - n // 4
            for kind in ("sq", "sq_clamped", "dist"):
                def pr(s=s, kind=kind, begin=begin, end=end):
                    return (OPS.pair_matrix_rows(s, begin, end, kind, EPS),)

                def prb(s=s, kind=kind, begin=begin, end=end, n=n):
                    v = OPS.pair_matrix_rows(s, begin, end, kind, EPS)
                    return (OPS.pair_matrix_rows_backward(upstream(v.shape, torch.float64, 12, device), s, v, begin,
                                                          kind, EPS),)

                yield f"pair_matrix_rows {kind} {tag}", pr
                yield f"pair_matrix_rows_backward {kind} {tag}", prb

            def gr(s=s, begin=begin, end=end, n=n):
                return (OPS.grad_rows(s, upstream((end - begin, n), torch.float64, 13, device), begin),)

            yield f"grad_rows {tag}", gr
            if dtype == torch.float64:
                sq_s = OPS.pair_matrix_rows(s, 0, n, "sq", EPS)
                sq_t = OPS.pair_matrix_rows(t, 0, n, "sq", EPS)
                for normalize in (True, False):
                    for wide in (False, True):
                        def alr(normalize=normalize, wide=wide, begin=begin, end=end, sq_s=sq_s, sq_t=sq_t):
                            return (OPS.angle_loss_rows(sq_s, sq_t, begin, end, BETA, EPS, normalize, wide),)

                        def agr(normalize=normalize, wide=wide, begin=begin, end=end, sq_s=sq_s, sq_t=sq_t):
                            coef = torch.tensor([0.25], dtype=torch.float64, device=device)
                            return OPS.angle_grad_rows(sq_s, sq_t, coef, begin, end, BETA, EPS, normalize, wide)

                        yield f"angle_loss_rows normalize={normalize} wide={wide} {tag}", alr
                        yield f"angle_grad_rows normalize={normalize} wide={wide} {tag}", agr


def digest(outputs):
    h = hashlib.sha256()
    for o in outputs:
        o = o.detach().cpu().contiguous().reshape(-1)
        h.update(f"{o.dtype}{tuple(o.shape)}".encode())
        h.update(o.view(torch.uint8).numpy().tobytes() if o.numel() else b"")
    return h.hexdigest()[:16]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--save", metavar="FILE", help="write the digests (JSON)")
    g.add_argument("--compare", metavar="FILE", help="compare with digests saved before; exit 1 on a difference")
    a = p.parse_args(argv)
    got = {name: digest(run()) for name, run in cases(a.device)}
    total = hashlib.sha256(json.dumps(got, sort_keys=True).encode()).hexdigest()[:16]
    print(f"{len(got)} cases on {a.device}, torch {torch.__version__}: digest {total}")
    if a.save:
        with open(a.save, "w") as f:
            json.dump({"torch": torch.__version__, "device": a.device, "cases": got}, f, indent=0, sort_keys=True)
    if a.compare:
        with open(a.compare) as f:
            want = json.load(f)["cases"]
        bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        for k in bad[:20]:
            print(f"  differs: {k}: {want.get(k)} -> {got.get(k)}")
        print(f"{len(want) - len(bad)}/{len(want)} cases bitwise equal")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
