"""One picture of the distillation claim: every seed's held-out error, variant beside baseline.

A paired claim is about per-seed differences, which a table of means hides:
each panel is one held-out set and one metric, each line one training seed
through every variant (same initialisation and data order), so a gain that
holds on every seed reads as lines that all fall, and a mean carried by one
seed as one steep line among flat ones. Reads the JSON that
``bench/bench_distill.py --summary-json`` writes.

    python bench/distill_figure.py --summary /tmp/distill_summary.json --out bench/results/distill.png \\
        [--label 'c_ckd_vrkd=c_ckd_vrkd (default)']
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

#: (row key, axis label) of the panels' rows.
METRICS = (("abs_rel", "metric AbsRel"), ("scale_spread_log", "per-image scale spread (std log)"))


def seed_lines(summary: dict, set_name: str, key: str) -> tuple[list[str], list[list[float]]]:
    """Variant names (baseline first, as the benchmark ran them) and one value list per seed (NaN: not run)."""
    per_seed = summary["sets"][set_name]["per_seed"]
    names = list(per_seed)
    n_seeds = len(summary["seeds"])
    lines = []
    for i in range(n_seeds):
        row = []
        for name in names:
            cell = per_seed[name][i] if i < len(per_seed[name]) else None
            value = cell.get(key) if isinstance(cell, dict) else None
            row.append(float(value) if value is not None else math.nan)
        lines.append(row)
    return names, lines


def draw(summary: dict, out: Path, labels: dict[str, str] | None = None) -> Path:
    """The 2 x sets panels into ``out``; ``labels`` renames variants on the axis (a run made before a rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(summary["sets"])
    fig, axes = plt.subplots(len(METRICS), len(sets), figsize=(4.2 * len(sets), 3.4 * len(METRICS)), squeeze=False)
    for col, set_name in enumerate(sets):
        for row, (key, label) in enumerate(METRICS):
            ax = axes[row][col]
            names, lines = seed_lines(summary, set_name, key)
            x = list(range(len(names)))
            for seed, values in zip(summary["seeds"], lines, strict=True):
                ax.plot(x, values, marker="o", alpha=0.8, label=f"seed {seed}")
            means = [summary["sets"][set_name]["mean"][n][key] for n in names]  # bench_distill's finite mean
            ax.plot(x, means, color="black", linewidth=3, marker="s", label="mean")
            ax.set_xticks(x, [(labels or {}).get(n, n) for n in names], rotation=15)
            ax.set_title(f"held-out set {set_name}: {label}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{summary['steps']} steps, seeds {', '.join(map(str, summary['seeds']))}: one line per seed "
                 "(lower is better)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", type=Path, required=True, help="bench_distill.py --summary-json output")
    ap.add_argument("--out", type=Path, default=Path("bench/results/distill.png"))
    ap.add_argument("--label", action="append", default=[], metavar="VARIANT=TEXT",
                    help="the axis label of a variant (repeatable), e.g. for runs named before a rename")
    args = ap.parse_args()
    if any("=" not in item for item in args.label):
        ap.error("--label wants VARIANT=TEXT")
    labels = dict(item.split("=", 1) for item in args.label)
    try:
        summary = json.loads(args.summary.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"distill_figure: {args.summary}: {err}") from None
    if "sets" not in summary:
        raise SystemExit(f"distill_figure: {args.summary}: no 'sets' (not a bench_distill.py --summary-json file)")
    print(f"wrote {draw(summary, args.out, labels)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
