"""bench/distill_figure.py: one line per seed through the variants, from bench_distill.py's summary JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench scripts are not a package
import distill_figure  # noqa: E402


def _summary() -> dict:
    def row(a: float, s: float) -> dict:
        return {"abs_rel": a, "scale_spread_log": s}

    per_seed = {"a_supervised": [row(0.20, 0.07), row(0.19, 0.06), row(0.21, 0.08)],
                "c_ckd_vrkd": [row(0.17, 0.06), None, row(0.18, 0.07)]}  # seed 1 of c did not train
    mean = {"a_supervised": row(0.20, 0.07), "c_ckd_vrkd": row(0.175, 0.065)}  # as bench_distill writes it
    one_set = {"per_seed": per_seed, "mean": mean}
    return {"steps": 300, "seeds": [0, 1, 2], "sets": {"A": one_set, "B": one_set}}


def test_each_seed_is_one_line_through_the_variants_and_a_missing_run_is_a_gap():
    names, lines = distill_figure.seed_lines(_summary(), "A", "abs_rel")
    assert names == ["a_supervised", "c_ckd_vrkd"]
    assert lines[0] == [0.20, 0.17] and lines[2] == [0.21, 0.18]
    assert lines[1][0] == 0.19 and math.isnan(lines[1][1])


def test_figure_is_written(tmp_path: Path):
    out = distill_figure.draw(_summary(), tmp_path / "distill.png", {"c_ckd_vrkd": "distilled"})
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_is_not_a_summary_is_one_line(tmp_path: Path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"per_seed": {}}))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "distill_figure.py"), "--summary", str(bad),
                          "--out", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0 and str(bad) in res.stderr
    assert "Traceback" not in res.stderr
