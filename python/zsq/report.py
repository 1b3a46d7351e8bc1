"""python3 -m zsq.report RUN [--out FILE.png] [--eval EVAL.json]

A picture of a `zsq quantize` run folder: top-1 per bit-width next to the FP32
teacher (from RUN/result.json, written when the run completes with an
evaluation) and each bit-width's distillation loss along the steps (from
RUN/metrics.jsonl). Writes RUN/report.png unless --out says otherwise. A run
made with --eval-data none takes its accuracies from --eval: the JSON line of
`zsq eval --checkpoint RUN/checkpoint.h5 --teacher T --json`.

Exit status: 0 written, 1 a missing or broken run file, 2 a wrong command line.
"""
import argparse
import json
import os
import sys

from . import files


def read_metrics(path):
    """Steps and per-bit losses of metrics.jsonl: (bits, steps, {bit: [loss per step]})."""
    if not os.path.isfile(path):
        raise ValueError(f"'{path}' does not exist (is this a zsq quantize run folder?)")
    bits, steps, losses = None, [], {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row_bits, row_loss, step = row["bits"], row["loss"], row["step"]
            except (ValueError, KeyError) as e:
                raise ValueError(f"'{path}', line {number}: not a metrics line of zsq quantize ({e})") from None
            if bits is None:
                bits = list(row_bits)
                losses = {b: [] for b in bits}
            if list(row_bits) != bits or len(row_loss) != len(bits):
                raise ValueError(f"'{path}', line {number}: bit-widths {row_bits} differ from the first line's {bits}")
            steps.append(step)
            for b, loss in zip(bits, row_loss):
                losses[b].append(loss)
    if not steps:
        raise ValueError(f"'{path}' holds no training step")
    return bits, steps, losses


def read_result(path):
    """teacher top-1 and {bit: top-1} of result.json; None when the run wrote no evaluation."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            result = json.load(f)
    except ValueError as e:
        raise ValueError(f"'{path}' is not JSON ({e})") from None
    if "teacher_top1" not in result:
        return None
    top1 = {int(k[len("top1_b"):]): v for k, v in result.items() if k.startswith("top1_b")}
    return result["teacher_top1"], top1


def draw(run, out, eval_path=None):
    """Writes the PNG (atomically); returns what it drew."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits, steps, losses = read_metrics(os.path.join(run, "metrics.jsonl"))
    result = read_result(eval_path or os.path.join(run, "result.json"))
    if eval_path and result is None:
        raise ValueError(f"'{eval_path}' has no teacher_top1 (the JSON line of zsq eval --checkpoint ... --teacher T --json)")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if result:
        teacher, top1 = result
        shown = [b for b in bits if b in top1]
        left.bar([f"W{b}A{b}" for b in shown], [100 * top1[b] for b in shown], color="tab:blue")
        left.axhline(100 * teacher, color="black", linestyle="--", label=f"FP32 teacher {100 * teacher:.2f} %")
        for i, b in enumerate(shown):
            left.text(i, 100 * top1[b], f"{100 * top1[b]:.2f}", ha="center", va="bottom", fontsize=9)
        low = min([100 * top1[b] for b in shown] + [100 * teacher])
        left.set_ylim(max(0.0, low - 5), 100)
        left.set_ylabel("top-1 (%)")
        left.legend(loc="upper right")
    else:
        left.text(0.5, 0.5, "no result.json with accuracies\n(run not finished, or --eval-data none)",
                  ha="center", va="center", transform=left.transAxes)
    left.set_title("accuracy per bit-width")
    for b in bits:
        right.plot(steps, losses[b], label=f"{b}-bit", linewidth=1)
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("loss (distillation + extra terms)")
    right.set_title("per-bit loss")
    right.legend()
    figure.suptitle(os.path.basename(os.path.normpath(run)))
    figure.tight_layout()
    files.atomic_replace(out, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return {"bits": bits, "steps": len(steps), "accuracies": result is not None}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m zsq.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("run", help="run folder of zsq quantize (metrics.jsonl, result.json)")
    parser.add_argument("--out", help="PNG to write (default: RUN/report.png)")
    parser.add_argument("--eval", help="accuracies from this JSON (zsq eval --checkpoint ... --teacher T --json) "
                                       "instead of RUN/result.json")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run):
        print(f"zsq.report: error: '{args.run}' is not a folder", file=sys.stderr)
        return 1
    out = args.out or os.path.join(args.run, "report.png")
    try:
        if args.eval and not os.path.isfile(args.eval):
            raise ValueError(f"'{args.eval}' does not exist")
        drawn = draw(args.run, out, args.eval)
    except (ValueError, OSError) as e:
        print(f"zsq.report: error: {e}", file=sys.stderr)
        return 1
    what = "accuracies and " if drawn["accuracies"] else ""
    print(f"wrote {out}: {what}per-bit losses of {drawn['steps']} steps, bits {drawn['bits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
