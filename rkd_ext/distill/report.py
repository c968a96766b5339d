"""What a run leaves behind: the per-epoch CSV log, the curves plot and the final table."""
import csv
import io

from .checkpoint import atomic_file

__all__ = ["LOG_FIELDS", "write_log", "plot_curves", "format_table"]

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


def plot_curves(path, histories):
    """Validation top-1 and training cross-entropy per epoch of each model, as a PNG.

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

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for stage, history in histories.items():
        epochs = [row["epoch"] for row in history]
        label = STAGE_LABELS.get(stage, stage)
        acc_ax.plot(epochs, [row["val_top1"] for row in history], marker=".", label=label)
        loss_ax.plot(epochs, [row["ce"] for row in history], marker=".", label=label)
    acc_ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training cross-entropy", title="loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def format_table(rows):
    """A plain-text table of ``rows``: dicts with model, arch, params, top1, top5."""
    header = ("model", "architecture", "params", "top-1 %", "top-5 %")
    cells = [(r["model"], r["arch"], f"{r['params'] / 1e6:.2f}M", f"{r['top1']:.2f}", f"{r['top5']:.2f}")
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells)]
    fmt = "  ".join(f"{{:{align}{w}}}" for align, w in zip("<<>>>", widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*c) for c in cells]
    return "\n".join(lines)
