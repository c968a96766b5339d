"""What a run leaves behind: the per-epoch CSV log, the curves plot and the final tables."""
import csv
import io

from .checkpoint import atomic_file

__all__ = ["LOG_FIELDS", "LOSS_LABELS", "STAGE_LABELS", "write_log", "plot_curves", "format_table", "format_seeds",
           "format_difference", "format_cost"]

LOG_FIELDS = ("stage", "epoch", "lr", "loss", "ce", "rkd", "train_top1", "val_top1", "val_top5", "seconds")

# Each student role's training loss: "rkd" is --rkd-impl's RKD loss, "rkd-<impl>" the other implementation's.
LOSS_LABELS = {"baseline": "CE", "rkd": "CE + RKD", "rkd-reference": "CE + reference RKD",
               "rkd-kernel": "CE + rkd_ext RKD"}
STAGE_LABELS = {"teacher": "teacher", **{role: f"student ({loss})" for role, loss in LOSS_LABELS.items()}}
IMPL_NAMES = {"kernel": "rkd_ext", "reference": "reference"}


def write_log(path, histories):
    """Rewrite ``path`` with every epoch of every stage so far; atomic, so a resumed run's log stays whole."""
    buf = io.StringIO()
    # The loss's measured cost (an RKD student's "loss_cost") is in the checkpoints and results.json, not here.
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for history in histories.values():
        for row in history:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    with atomic_file(path, "w", newline="") as f:
        f.write(buf.getvalue())


def plot_curves(path, histories, roles=None, differences=()):
    """Validation top-1 and training cross-entropy per epoch of each model, and the paired differences, as a PNG.

    Args:
        histories: stage name -> its history.
        roles: stage name -> "teacher", "baseline", "rkd", ...; the seeds of
            one role share a colour and a legend entry. By default each name is
            its own role.
        differences: (label, per-seed differences, their paired_difference summary) for a third panel, which
            shows each seed's difference, the mean and its 95% interval; none: no third panel.

    Returns:
        None when written, else why not: matplotlib is a dependency, but an install without
        dependencies may lack it, and a finished run should not fail on its plot.
    """
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed, so no plot (pip install 'matplotlib>=3.5')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = roles or {}
    colours = {}
    fig, axes = plt.subplots(1, 3 if differences else 2, figsize=(16 if differences else 11, 4),
                             gridspec_kw={"width_ratios": [3, 3, 2] if differences else [1, 1]})
    acc_ax, loss_ax = axes[:2]
    for stage, history in histories.items():
        role = roles.get(stage, stage)
        label = STAGE_LABELS.get(role, role) if role not in colours else None
        colour = colours.setdefault(role, f"C{len(colours)}")
        epochs = [row["epoch"] for row in history]
        acc_ax.plot(epochs, [row["val_top1"] for row in history], marker=".", color=colour, label=label)
        loss_ax.plot(epochs, [row["ce"] for row in history], marker=".", color=colour, label=label)
    acc_ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training cross-entropy", title="loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if differences:
        _plot_differences(axes[2], differences)
    fig.tight_layout()
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return None


def _plot_differences(ax, differences):
    for x, (label, values, summary) in enumerate(differences):
        # Seeds spread sideways a little, so that equal differences stay visible.
        offsets = [0.16 * (i / max(1, len(values) - 1) - 0.5) for i in range(len(values))]
        ax.plot([x - 0.25 + o for o in offsets], values, "o", color="C7", alpha=0.8,
                label="one seed" if x == 0 else None)
        if summary.get("ci95") is not None:
            low, high = summary["ci95"]
            ax.errorbar([x + 0.15], [summary["mean"]], yerr=[[summary["mean"] - low], [high - summary["mean"]]],
                        fmt="D", color="C3", capsize=6, label="mean, 95% t interval" if x == 0 else None)
        else:
            ax.plot([x + 0.15], [summary["mean"]], "D", color="C3", label="mean" if x == 0 else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(differences)), [label for label, _, _ in differences])
    ax.set_xlim(-0.6, len(differences) - 0.4)
    ax.set(ylabel="validation top-1 difference (points)", title="paired differences over seeds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")


def _columns(header, cells, align):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells)]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    return "\n".join([fmt.format(*header), "  ".join("-" * w for w in widths)] + [fmt.format(*c) for c in cells])


def format_table(rows):
    """A plain-text table of ``rows``: dicts with model, arch, params, top1, top5."""
    cells = [(r["model"], r["arch"], f"{r['params'] / 1e6:.2f}M", f"{r['top1']:.2f}", f"{r['top5']:.2f}")
             for r in rows]
    return _columns(("model", "architecture", "params", "top-1 %", "top-5 %"), cells, "<<>>>")


def format_seeds(seeds, treated="rkd", control="baseline", names=("CE", "CE + RKD")):
    """A plain-text table of each seed's ``control`` and ``treated`` students and their difference.

    ``seeds``: dicts with seed and, per role, a dict with top1 and top5; ``names``: the control's and the
    treated's column names.
    """
    cells = []
    for r in seeds:
        b, k = r[control], r[treated]
        cells.append((r["seed"], f"{b['top1']:.2f}", f"{k['top1']:.2f}", f"{k['top1'] - b['top1']:+.2f}",
                      f"{b['top5']:.2f}", f"{k['top5']:.2f}", f"{k['top5'] - b['top5']:+.2f}"))
    c, t = names
    header = ("seed", f"{c} top-1", f"{t} top-1", "difference", f"{c} top-5", f"{t} top-5", "difference")
    return _columns(header, cells, ">" * len(header))


def format_difference(difference, seeds, label="RKD vs baseline", same_loss=False):
    """The headline: treated minus control (``label``), per metric; over several seeds with its spread and 95%
    interval, and whether that interval contains 0. ``same_loss``: the two students train on the same loss from
    two implementations, so a difference within noise is expected; a last line says whether it is."""
    top1, top5 = difference["top1"], difference["top5"]
    if seeds == 1:
        return (f"{label}: {top1['mean']:+.2f} top-1, {top5['mean']:+.2f} top-5  (one seed, so the seed "
                "noise is unknown: --seeds K repeats the students over K seeds)")
    lines = [f"{label}, paired over {seeds} seeds: mean difference, std, 95% t interval"]
    for name, d in (("top-1", top1), ("top-5", top5)):
        low, high = d["ci95"]
        verdict = "within noise: the interval contains 0" if d["within_noise"] else "the interval excludes 0"
        lines.append(f"  {name}  {d['mean']:+.2f}  std {d['std']:.2f}  [{low:+.2f}, {high:+.2f}]  {verdict}")
    if same_loss:
        if top1["within_noise"] and top5["within_noise"]:
            lines.append("  both within noise, as two implementations of the same loss should be")
        else:
            lines.append("  not within noise, although two implementations of the same loss should be")
    return "\n".join(lines)


def _size(n):
    return "n/a" if n is None else f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def format_cost(cost):
    """The RKD loss's measured cost per training step (train.summarise_cost's summary, with its device), per
    implementation: median and quartiles of the time, peak memory, steps measured; and the ratios of the two."""
    impls = [impl for impl in ("kernel", "reference") if impl in cost]
    (n, ds), (_, dt) = cost["features"]
    lines = [f"RKD loss per training step, forward + backward on {n} x {ds} student and {n} x {dt} teacher features,",
             f"measured in this run on {cost['device']}: median time and quartiles over the measured steps, peak "
             "memory of its own tensors"]
    cells = [(IMPL_NAMES[impl], f"{cost[impl]['ms_median']:.3g} ms",
              "[{:.3g}, {:.3g}] ms".format(*cost[impl]["ms_quartiles"]), _size(cost[impl]["peak_bytes"]),
              cost[impl]["steps"]) for impl in impls]
    table = _columns(("loss", "time", "quartiles", "peak memory", "steps"), cells, "<>>>>")
    lines += ["  " + line for line in table.splitlines()]
    if len(impls) == 2:
        k, r = cost["kernel"], cost["reference"]
        ratio = f"reference / rkd_ext: {r['ms_median'] / k['ms_median']:.1f}x the time"
        if k["peak_bytes"] and r["peak_bytes"] is not None:
            ratio += f", {r['peak_bytes'] / k['peak_bytes']:.1f}x the peak memory"
        lines.append("  " + ratio)
    return "\n".join(lines)
