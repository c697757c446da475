"""The comparison table (text) and its plot (PNG, when matplotlib is installed)."""

MB = 1024 * 1024
COLUMNS = ("method", "trainable", "%", "frozen MB", "train MB", "grads MB", "optim MB", "act MB",
           "ms/step", "docs val", "code val", "sparsity")


def _fmt_loss(v):
    return "-" if v is None else f"{v:.4f}"


def _fmt_ms(v):
    return "-" if v is None else f"{v:.1f}"


def table_rows(rows, timings, base=None):
    out = []
    if base is not None:
        out.append(["(base model)", "0", "0.00", "", "", "", "", "", "", _fmt_loss(base["target"]), _fmt_loss(base["source"]), ""])
    for r in rows:
        m, c, f = r["memory"], r["counts"], r["final"] or {}
        out.append([r["label"], f"{c['trainable']:,}", f"{c['trainable_pct']:.2f}",
                    f"{m['frozen'] / MB:.2f}", f"{m['trainable'] / MB:.2f}", f"{m['grads'] / MB:.2f}",
                    f"{m['optimizer'] / MB:.2f}", f"{m['activations'] / MB:.2f}",
                    _fmt_ms(timings.get(r["label"])), _fmt_loss(f.get("target")),
                    _fmt_loss(f.get("source")), f"{r['sparsity']:.3f}"])
    return out


def format_table(rows, timings, base=None):
    body = table_rows(rows, timings, base)
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in body])


def plot_curves(rows, path):
    """Target-domain validation loss against step for every run. Returns the path, or None with the
    reason when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install 'minisft[plot]'); no plot written"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: compare has up to 13 runs
    for ax in (ax1, ax2):
        ax.set_prop_cycle(color=colors)
    for r in rows:
        ev = r["history"]["eval"]
        ax1.plot([e["step"] for e in ev], [e["target"] for e in ev], marker="o", label=r["label"])
        tr = r["history"]["train"]
        ax2.plot([e["step"] for e in tr], [e["loss"] for e in tr], label=r["label"], alpha=0.8)
    ax1.set(xlabel="step", ylabel="target (docs) validation loss", title="validation")
    ax2.set(xlabel="step", ylabel="training loss", title="training")
    ax1.legend(fontsize=7)
    return save_png(fig, path), None


def save_png(fig, path):
    """Write a matplotlib figure to `path` as PNG, atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    from .fileio import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
