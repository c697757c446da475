"""What `minisft` prints and draws: the comparison table (text or Markdown), the methods table, and
the comparison plot (PNG, when matplotlib is installed).

The comparison's input is compare.json's dictionary (compare.compare, or one finetune run made
into a row by compare.summarize): rows with counts, memory, the chosen learning rate, mean ± sd over
the seeds of the test losses, and the per-seed histories; "domains" names the target and source
columns.

The plot, three panels and one legend outside them:
  (1) target-domain test loss against source-domain test loss (forgetting): one marked point per
      method, the base model as a star; with several seeds, error bars of ± one standard deviation;
  (2) target-domain test loss against trainable parameters (log scale), the base model as a line;
  (3) target-domain validation loss during fine-tuning (mean over seeds, band ± one sd), from the
      base model's loss at step 0.
Colours: the Okabe–Ito palette (distinguishable with the common colour-vision deficiencies) and a
neutral grey, one per method family (the text before the first "-" of a label); every row has its
own marker, and within a family rows alternate filled / hollow markers and differ in line style.
The base model is a yellow star with a black edge.
"""

MB = 1024 * 1024
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
FAMILY_COLOURS = {"full": "#000000", "lora": "#E69F00", "loradrop": "#56B4E9", "spruft": "#009E73",
                  "adapeft": "#CC79A7", "gmt": "#D55E00", "mgpp": "#0072B2", "magprune": "#7F7F7F"}
BASE_STYLE = dict(marker="*", color="#F0E442", mec="#000000", mew=1.2, ms=18, ls="none", zorder=4)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "H", "d", "8")
LINESTYLES = ("-", "--", ":", "-.")
NO_MATPLOTLIB = "matplotlib is not installed (pip install 'minisft[plot]'); no plot written"


def _columns(domains):
    return ("method", "trainable", "%", "frozen MB", "train MB", "grads MB", "optim MB", "act MB", "ms/step", "lr",
            f"{domains['target']} test", f"{domains['source']} test", "sparsity")


def _fmt_stat(stat, digits=4):
    if stat is None or stat.get("mean") is None:
        return "-"
    mean = f"{stat['mean']:.{digits}f}"
    return mean if stat.get("sd") is None else f"{mean} ± {stat['sd']:.{digits}f}"


def table_rows(compared, ms_per_step):
    """The cells of every row, the base model first."""
    out = []
    base = compared.get("base")
    if base is not None:
        out.append(["(base model)", "0", "0.00", "", "", "", "", "", "", "", f"{base['test']['target']:.4f}",
                    f"{base['test']['source']:.4f}", ""])
    for r in compared["rows"]:
        m, c = r["memory"], r["counts"]
        ms = ms_per_step.get(r["label"])
        out.append([r["label"], f"{c['trainable']:,}", f"{c['trainable_pct']:.2f}",
                    f"{m['frozen'] / MB:.2f}", f"{m['trainable'] / MB:.2f}", f"{m['grads'] / MB:.2f}",
                    f"{m['optimizer'] / MB:.2f}", f"{m['activations'] / MB:.2f}",
                    "-" if ms is None else f"{ms:.1f}", _lr(r.get("lr")), _fmt_stat(r["target"]), _fmt_stat(r["source"]),
                    f"{r['sparsity']['mean']:.3f}"])
    return out


def _lr(lr):
    """The row's learning rate: the grid's choice, or the one rate a run used ("-": the preset's)."""
    if isinstance(lr, dict):
        lr = lr["chosen"]
    return "-" if lr is None else f"{lr:g}"


def format_table(compared, ms_per_step, markdown=False):
    """The comparison as aligned text, or as a Markdown table (`markdown`)."""
    columns = _columns(compared.get("domains", {"target": "prose", "source": "code"}))
    body = table_rows(compared, ms_per_step)
    if markdown:
        line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
        return "\n".join([line(columns), line(["---"] + ["---:"] * (len(columns) - 1))] + [line(r) for r in body])
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in body])


def methods_table():
    """Every registered method: its paper, then one line per option (type, default, meaning)."""
    from ..methods import REGISTRY, option_specs, type_name

    blocks = []
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        specs = option_specs(name)
        lines = [f"{name}: {cls.paper or '(no paper given)'}"]
        if not specs:
            lines.append("    (no options)")
        rows = [(s.name, type_name(s.annotation) if s.annotation is not None else "?",
                 _default(s.default), s.help or "(undocumented)") for s in specs]
        widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else []
        for r in rows:
            lines.append("    " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
        blocks.append("\n".join(lines))
    header = ("Methods (`minisft finetune --method NAME --set OPTION=VALUE ...`); per option: name, type, "
              "default, meaning.")
    return header + "\n\n" + "\n\n".join(blocks)


def _default(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


# ------------------------------------------------------------------------------------------ plot
def _styles(labels):
    """{label: (colour, marker, linestyle, filled)} (module docstring)."""
    spare = iter(c for c in OKABE_ITO[1:] if c not in FAMILY_COLOURS.values())
    colours, seen = {}, {}
    out = {}
    for i, label in enumerate(labels):
        family = label.split("-")[0]
        if family not in colours:
            colours[family] = FAMILY_COLOURS.get(family) or next(spare, OKABE_ITO[i % len(OKABE_ITO)])
        k = seen[family] = seen.get(family, -1) + 1
        out[label] = (colours[family], MARKERS[i % len(MARKERS)], LINESTYLES[k % len(LINESTYLES)], k % 2 == 0)
    return out


def _mean_curve(row):
    """(steps, mean target loss, sd or None) over the row's seeds, from step 0 (the base model)."""
    import numpy as np

    runs = row["runs"]
    steps = [0] + [e["step"] for e in runs[0]["history"]["eval"]]
    losses = np.array([[r["base"]["val"]["target"]] + [e["target"] for e in r["history"]["eval"]] for r in runs])
    return steps, losses.mean(axis=0), (losses.std(axis=0, ddof=1) if len(runs) > 1 else None)


def plot_compare(compared, path):
    """The three-panel comparison plot (module docstring) written to `path`. Returns (path, None),
    or (None, reason) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None, NO_MATPLOTLIB
    rows, base, domains = compared["rows"], compared["base"], compared["domains"]
    tgt, src = domains["target"], domains["source"]
    styles = _styles([r["label"] for r in rows])
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2))
    ax1.plot([base["test"]["source"]], [base["test"]["target"]], label="base model", **BASE_STYLE)
    ax2.axhline(base["test"]["target"], color="#000000", ls=":", lw=1.2)
    for r in rows:
        colour, marker, ls, filled = styles[r["label"]]
        kw = dict(color=colour, marker=marker, ms=8, mfc=colour if filled else "white", mec=colour, mew=1.6)
        t, s = r["target"], r["source"]
        ax1.errorbar([s["mean"]], [t["mean"]], xerr=None if s["sd"] is None else [s["sd"]],
                     yerr=None if t["sd"] is None else [t["sd"]], ls="none", capsize=3, label=r["label"], **kw)
        ax2.errorbar([r["counts"]["trainable"]], [t["mean"]], yerr=None if t["sd"] is None else [t["sd"]],
                     ls="none", capsize=3, **kw)
        steps, mean, sd = _mean_curve(r)
        ax3.plot(steps, mean, ls=ls, lw=1.6, markevery=[len(steps) - 1], **kw)
        if sd is not None:
            ax3.fill_between(steps, mean - sd, mean + sd, color=colour, alpha=0.12, lw=0)
    ax3.plot([0], [base["val"]["target"]], **BASE_STYLE)
    ax1.set(xlabel=f"{src} test loss (source domain: higher = more forgetting)",
            ylabel=f"{tgt} test loss (target domain)", title="(1) adaptation vs forgetting")
    ax2.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel=f"{tgt} test loss (target domain)",
            title="(2) adaptation vs trainable parameters")
    ax3.set(xlabel="fine-tuning step", ylabel=f"{tgt} validation loss (target domain)",
            title="(3) validation loss during fine-tuning")
    ax2.annotate("base model", (1, base["test"]["target"]), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                 fontsize=8)
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    seeds = compared.get("seeds") or [None]
    note = f"mean ± sd over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, title=note, frameon=False)
    return save_png(fig, path), None


def save_png(fig, path):
    """Write a matplotlib figure to `path` as PNG (legends outside the axes included), atomically,
    and close it."""
    import io

    import matplotlib.pyplot as plt

    from ..core.fileio import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
