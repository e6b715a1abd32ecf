"""The robustness benchmark's bookkeeping (bench/bench_robust.py): variants, corruption spec, paired claims."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench scripts are not a package
import bench_robust as br

from fsmde_core.corruptions import CORRUPTIONS, parse_corruption_spec


def test_every_variant_is_a_list_of_valid_overrides_and_the_baseline_is_today() -> None:
    args = br.parse_args(["--variants", "a_today,d_both", "--add-variant", "x=student.retinex=true"])
    assert list(args.table) == ["a_today", "d_both", "x"]
    assert args.table["a_today"] == [] and "augment.enabled=true" in args.table["d_both"]
    from fsmde_core.config import TrainConfig, load_config

    for overrides in args.table.values():  # each variant's overrides are keys the trainer accepts
        TrainConfig.from_dict(load_config(br.ROOT / "config" / "train_tiny.yaml", overrides))


def test_unknown_variant_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        br.parse_args(["--variants", "a_today,z_nope"])
    assert "z_nope" in capsys.readouterr().err


def test_corruption_spec_is_every_corruption_at_the_severity() -> None:
    parsed = parse_corruption_spec(br.corruption_spec("3"))
    assert sorted(parsed) == sorted((name, 3) for name in CORRUPTIONS)
    assert len(parse_corruption_spec(br.corruption_spec("all"))) == 5 * len(CORRUPTIONS)


def _row(clear: float, adverse: float, mdee: float) -> dict:
    return {"clear_abs_rel": clear, "adverse_abs_rel": adverse, "corruption_mdee": mdee}


def test_paired_claim_is_per_seed_difference_to_today() -> None:
    rows = {"a_today": [_row(0.20, 0.40, 0.30), _row(0.22, 0.44, 0.32), None],
            "b_augment": [_row(0.21, 0.30, 0.25), _row(0.22, 0.35, 0.26), _row(0.2, 0.3, 0.2)]}
    diffs = br.paired(rows)["b_augment"]
    assert diffs["adverse_abs_rel"].n == 2  # the seed without a baseline run is left out of the pairing
    assert diffs["adverse_abs_rel"].mean == pytest.approx(-0.095)
    assert diffs["clear_abs_rel"].mean == pytest.approx(0.005)
    text = "\n".join(br.claim_lines(br.paired(rows)))
    assert "| b_augment | 2 |" in text and "-22.6 %" in text  # -0.095 / 0.42


def test_a_run_that_was_not_trained_is_left_out_and_named() -> None:
    rows = {"a_today": [_row(0.20, 0.40, 0.30), _row(0.22, 0.44, 0.32)],
            "c_semgraph": [_row(0.21, 0.38, 0.29), br.NOT_RUN]}
    diffs = br.paired(rows)["c_semgraph"]
    assert diffs["adverse_abs_rel"].n == 1 and diffs["adverse_abs_rel"].mean == pytest.approx(-0.02)
    assert "| c_semgraph | 1 |" in "\n".join(br.summary_lines(rows))
    assert "not run" in "\n".join(br.per_seed_lines(rows, [0, 1]))
