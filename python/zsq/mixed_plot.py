"""The measured mixed-precision front of bench/mixed_front.sh against the uniform bit-widths.

    python -m zsq.mixed_plot OUT/front.csv [--out OUT/front.png]

Prints, for every mixed point, its top-1 and the straight line joining the neighbouring uniform points
at the same weight size and at the same BOPs (how far above the line the mix lies), and draws top-1
against weight size and against BOPs.
"""
import argparse
import csv
import os
import sys


def read_front(path):
    """Rows of front.csv as dicts with floats; ValueError naming the file when it does not fit."""
    if not os.path.isfile(path):
        raise ValueError(f"file not found: '{path}'")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"kind", "weight_bytes", "bops", "top1"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"'{path}' is not a front file of bench/mixed_front.sh (columns {sorted(need)})")
    out = []
    for i, r in enumerate(rows, 2):
        try:
            out.append({**r, "weight_bytes": float(r["weight_bytes"]), "bops": float(r["bops"]),
                        "top1": float(r["top1"])})
        except ValueError:
            raise ValueError(f"'{path}', line {i}: weight_bytes, bops and top1 must be numbers") from None
    if sum(r["kind"] == "uniform" for r in out) < 2:
        raise ValueError(f"'{path}' needs at least two uniform points")
    return out


def line_at(uniform, key, x):
    """Top-1 on the straight line joining the uniform points on either side of x (None outside them)."""
    pts = sorted((u[key], u["top1"]) for u in uniform)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1 and x1 > x0:
            return y0 + (x - x0) / (x1 - x0) * (y1 - y0)
    return None


def margins(rows):
    """Per mixed point: (row, top-1 minus the line by size, minus the line by BOPs)."""
    uniform = [r for r in rows if r["kind"] == "uniform"]
    out = []
    for r in rows:
        if r["kind"] == "uniform":
            continue
        by_size, by_bops = line_at(uniform, "weight_bytes", r["weight_bytes"]), line_at(uniform, "bops", r["bops"])
        out.append((r, None if by_size is None else r["top1"] - by_size,
                    None if by_bops is None else r["top1"] - by_bops))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m zsq.mixed_plot", description=__doc__.split("\n")[0])
    parser.add_argument("front", help="front.csv of bench/mixed_front.sh")
    parser.add_argument("--out", help="picture to write (PNG); default: front.png beside the CSV")
    args = parser.parse_args(argv)
    try:
        rows = read_front(args.front)
    except ValueError as err:
        print(f"zsq.mixed_plot: error: {err}", file=sys.stderr)
        return 1
    fmt = lambda v: "   -  " if v is None else f"{100 * v:+6.2f}"
    print(f"{'point':<8} {'weight KB':>9} {'GBOPs':>7} {'top-1':>7} {'vs line (size)':>15} {'vs line (BOPs)':>15}")
    for r in rows:
        if r["kind"] == "uniform":
            print(f"{'W' + r['budget'] + 'A' + r['budget']:<8} {r['weight_bytes'] / 1e3:9.1f} {r['bops'] / 1e9:7.3f} "
                  f"{100 * r['top1']:6.2f}%")
    for r, s, b in margins(rows):
        print(f"{r['kind']:<8} {r['weight_bytes'] / 1e3:9.1f} {r['bops'] / 1e9:7.3f} {100 * r['top1']:6.2f}% "
              f"{fmt(s):>15} {fmt(b):>15}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = args.out or os.path.join(os.path.dirname(args.front) or ".", "front.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    uniform = sorted((r for r in rows if r["kind"] == "uniform"), key=lambda r: r["weight_bytes"])
    for ax, key, scale, label in ((axes[0], "weight_bytes", 1e3, "weight size (KB)"), (axes[1], "bops", 1e9, "GBOPs per image")):
        ax.plot([u[key] / scale for u in uniform], [100 * u["top1"] for u in uniform], "k--o", label="uniform W=A")
        for u in uniform:
            ax.annotate(f"W{u['budget']}A{u['budget']}", (u[key] / scale, 100 * u["top1"]), textcoords="offset points",
                        xytext=(4, -12))
        for kind, style, name in (("size", "C0s-", "size budget"), ("bops", "C1^-", "BOPs budget"),
                                  ("joint", "C2o-", "size and BOPs budget")):
            pts = sorted((r[key] / scale, 100 * r["top1"]) for r in rows if r["kind"] == kind)
            if pts:
                ax.plot(*zip(*pts), style, label=f"mixed, {name}")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
