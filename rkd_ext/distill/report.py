"""What a run leaves behind: the per-epoch CSV log, the curves plot and the final tables."""
import csv
import io

from .checkpoint import atomic_file

__all__ = ["LOG_FIELDS", "write_log", "plot_curves", "format_table", "format_seeds", "format_difference"]

LOG_FIELDS = ("stage", "epoch", "lr", "loss", "ce", "rkd", "train_top1", "val_top1", "val_top5", "seconds")

STAGE_LABELS = {"teacher": "teacher", "baseline": "student (CE)", "rkd": "student (CE + RKD)"}


def write_log(path, histories):
    """Rewrite ``path`` with every epoch of every stage so far; atomic, so a resumed run's log stays whole."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for history in histories.values():
        for row in history:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    with atomic_file(path, "w", newline="") as f:
        f.write(buf.getvalue())


def plot_curves(path, histories, roles=None):
    """Validation top-1 and training cross-entropy per epoch of each model, as a PNG.

    Args:
        histories: stage name -> its history.
        roles: stage name -> "teacher", "baseline" or "rkd"; the seeds of one
            role share a colour and a legend entry. By default each name is its
            own role.

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
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return None


def _columns(header, cells, align):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells)]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    return "\n".join([fmt.format(*header), "  ".join("-" * w for w in widths)] + [fmt.format(*c) for c in cells])


def format_table(rows):
    """A plain-text table of ``rows``: dicts with model, arch, params, top1, top5."""
    cells = [(r["model"], r["arch"], f"{r['params'] / 1e6:.2f}M", f"{r['top1']:.2f}", f"{r['top5']:.2f}")
             for r in rows]
    return _columns(("model", "architecture", "params", "top-1 %", "top-5 %"), cells, "<<>>>")


def format_seeds(seeds):
    """A plain-text table of each seed's two students (dicts with seed, baseline and rkd, each top1 and top5)."""
    cells = []
    for r in seeds:
        b, k = r["baseline"], r["rkd"]
        cells.append((r["seed"], f"{b['top1']:.2f}", f"{k['top1']:.2f}", f"{k['top1'] - b['top1']:+.2f}",
                      f"{b['top5']:.2f}", f"{k['top5']:.2f}", f"{k['top5'] - b['top5']:+.2f}"))
    header = ("seed", "CE top-1", "CE + RKD top-1", "difference", "CE top-5", "CE + RKD top-5", "difference")
    return _columns(header, cells, ">" * len(header))


def format_difference(difference, seeds):
    """The headline: RKD minus baseline, per metric; over several seeds with its spread and 95% interval."""
    top1, top5 = difference["top1"], difference["top5"]
    if seeds == 1:
        return (f"RKD vs baseline: {top1['mean']:+.2f} top-1, {top5['mean']:+.2f} top-5  (one seed, so the seed "
                "noise is unknown: --seeds K repeats the students over K seeds)")
    lines = [f"RKD vs baseline, paired over {seeds} seeds: mean difference, std, 95% t interval"]
    for name, d in (("top-1", top1), ("top-5", top5)):
        low, high = d["ci95"]
        verdict = "within noise: the interval contains 0" if d["within_noise"] else "the interval excludes 0"
        lines.append(f"  {name}  {d['mean']:+.2f}  std {d['std']:.2f}  [{low:+.2f}, {high:+.2f}]  {verdict}")
    return "\n".join(lines)
