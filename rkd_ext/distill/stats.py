"""The paired comparison of the two students over seeds: mean difference, spread and a Student-t interval."""
import math

__all__ = ["t_quantile_975", "paired_difference"]

# t_{0.975, df} of Student's t distribution for df = 1..30, to 4 decimals: the two-sided 95% quantiles.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df):
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (the 95% interval's half-width factor).

    A table up to 30 degrees of freedom; beyond, the Cornish-Fisher expansion of
    the quantile in 1/df around the normal's (Abramowitz & Stegun 26.7.5), off by
    less than 1e-7 there.
    """
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"t_quantile_975: df must be an integer >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g = ((z ** 3 + z) / 4,
         (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def paired_difference(treated, control):
    """Mean of ``treated[i] - control[i]`` with its sample standard deviation and 95% t interval.

    Returns:
        dict with ``mean``, ``std``, ``ci95`` (low, high) and ``within_noise``
        (the interval contains 0); with a single pair only ``mean`` is known and
        the others are None.
    """
    if len(treated) != len(control) or not treated:
        raise ValueError(f"paired_difference: need as many treated as control values, at least one; got "
                         f"{len(treated)} and {len(control)}")
    diffs = [t - c for t, c in zip(treated, control)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None, "within_noise": None}
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return {"mean": mean, "std": std, "ci95": [low, high], "within_noise": low <= 0 <= high}
