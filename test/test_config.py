"""Typed training config: unknown keys refused where they were written, defaults from the dataclasses, JSON shape."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from fsmde_core.config import (
    COMMAND_LINE,
    ConfigError,
    EvalConfig,
    LogConfig,
    OptimConfig,
    TeacherConfig,
    TrainConfig,
    TrainDataConfig,
    default_config,
    load_config,
    load_data_config,
)
from fsmde_core.models.resnet import PretrainedConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"


@pytest.mark.parametrize(("override", "nearest"), [
    ("optim.lrr=1e-3", "lr"),
    ("data.widht=64", "width"),
    ("student.encoderr=resnet34", "encoder"),
    ("log.scalar_evry=5", "scalar_every"),
    ("loss.use_vrdk=false", "use_vrkd"),
])
def test_a_misspelt_key_on_the_command_line_is_refused_with_the_nearest_valid_key_first(override, nearest):
    """These used to be accepted and silently ignored (only section names were checked)."""
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    message = str(err.value)
    section, key = override.split("=")[0].split(".")
    assert "\n" not in message
    assert message.startswith(f"{COMMAND_LINE}: unknown key '{section}.{key}'; valid {section} keys: {nearest}, ")


def test_a_misspelt_key_in_a_yaml_names_the_file_and_lists_the_valid_keys(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("optim: {lr: 1.0e-3, epochs: 2}\nlog: {scalar_evry: 5}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: unknown key 'log.scalar_evry'; valid log keys: "
                                          r"scalar_every, "):
        load_config(bad)
    bad.write_text("student: {encoder: resnet18, decoder_chanels: [8, 8, 8, 8]}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'student.decoder_chanels'; valid student keys: "
                                          r"decoder_channels, "):
        load_config(bad)


def test_bad_values_name_the_dotted_key():
    cases = {
        "optim.lr=-1": "optim.lr must be > 0",
        "optim.batch_size=0": "optim.batch_size must be a positive integer",
        "log.val_every=0": "log.val_every must be a positive integer",
        "student.pretrained_min_match=2": "student.pretrained_min_match must be in [0, 1]",
        "student.encoder=resnet50": "student: encoder must be one of",
        "eval.gt=dense": "eval.gt must be lidar or synthetic",
        "data.width=100": "data.width must be a positive multiple of 32",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_config(TINY, [override])
    with pytest.raises(ConfigError, match=r"optim\.lr takes a value, not sub-keys"):
        load_config(TINY, ["optim.lr.max=1"])
    with pytest.raises(ConfigError, match=r"is not of the form key\.path=value"):
        load_config(TINY, ["optim.lr"])


def test_defaults_come_from_the_section_dataclasses():
    """One source of truth: the plain defaults are the dataclasses' defaults, field for field."""
    from fsmde_core.data.config import DataConfig
    from fsmde_core.distill.objective import DistillLossConfig
    from fsmde_core.models.student import PRESET_LEARNING_RATES, StudentConfig

    d = default_config()
    assert d["optim"] == asdict(OptimConfig()) and d["log"] == asdict(LogConfig())
    assert d["eval"] == asdict(EvalConfig()) and d["teacher"] == asdict(TeacherConfig())
    loss = json.loads(json.dumps(asdict(DistillLossConfig())))
    assert d["loss"] == loss
    student = {k: v for k, v in StudentConfig.section_defaults().items() if k not in ("input_height", "input_width")}
    assert d["student"] == {**student, **asdict(PretrainedConfig())}
    # the preset is the default; what it fills in is unset, so a YAML's preset is not outvoted by defaults
    assert d["student"]["preset"] == "base" and d["student"]["encoder"] is None and d["student"]["num_bins"] is None
    reader = {k: d["data"][k] for k in asdict(DataConfig())}
    assert DataConfig.from_dict({k: v for k, v in reader.items() if v is not None}).size == (320, 192)
    assert {k: d["data"][k] for k in asdict(TrainDataConfig())} == asdict(TrainDataConfig())
    typed = TrainConfig.from_dict(d)
    # optim.lr null is filled with the preset's rate; every other optim key is the dataclass default
    assert typed.optim == OptimConfig(lr=PRESET_LEARNING_RATES["base"]) and OptimConfig().lr is None
    assert typed.log == LogConfig() and typed.loss == DistillLossConfig()
    assert typed.student == StudentConfig(input_height=192, input_width=320)


@pytest.mark.parametrize("preset", ["lite", "base", "large", "legacy"])
def test_a_null_learning_rate_is_the_presets_and_an_explicit_one_wins(preset: str) -> None:
    from fsmde_core.models.student import PRESET_LEARNING_RATES

    cfg = TrainConfig.from_dict(load_config(TINY, [f"student.preset={preset}"]))
    assert cfg.optim.lr == PRESET_LEARNING_RATES[preset] > 0
    cfg = TrainConfig.from_dict(load_config(TINY, [f"student.preset={preset}", "optim.lr=1e-5"]))
    assert cfg.optim.lr == 1e-5
    assert PRESET_LEARNING_RATES["base"] > PRESET_LEARNING_RATES["legacy"]  # MobileNet trains at a higher rate


def test_every_student_key_reaches_the_student_config():
    """student.decoder_channels used to be accepted and then ignored by train.py."""
    cfg = TrainConfig.from_dict(load_config(TINY, ["student.decoder_channels=[16, 16, 8, 8]", "student.readout=linear",
                                                   "data.width=64", "data.height=32"]))
    assert cfg.student.decoder_channels == (16, 16, 8, 8) and cfg.student.readout == "linear"
    assert (cfg.student.input_width, cfg.student.input_height) == (64, 32)
    assert cfg.student.num_bins == 32  # from the YAML


def test_a_preset_fills_what_the_config_leaves_unset_and_explicit_keys_win(tmp_path):
    from fsmde_core.models.student import PRESETS

    yaml_file = tmp_path / "lite.yaml"
    yaml_file.write_text("student: {preset: lite, num_bins: 48}\n")
    lite = TrainConfig.from_dict(load_config(yaml_file)).student
    assert (lite.preset, lite.num_bins) == ("lite", 48)  # the file's explicit key wins over the preset
    assert lite.encoder == PRESETS["lite"]["encoder"] and lite.decoder_channels == PRESETS["lite"]["decoder_channels"]
    large = TrainConfig.from_dict(load_config(yaml_file, ["student.preset=large"])).student
    assert (large.encoder, large.num_bins) == ("resnet34", 48)  # the command line's preset; the file's key stays
    tiny = TrainConfig.from_dict(load_config(TINY)).student
    assert tiny.preset == "base" and tiny.encoder == "mobilenetv3_large"  # the shipped tiny config chooses base


def test_an_unknown_preset_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"command line: student: preset must be one of "
                                          r"\['base', 'large', 'legacy', 'lite'\], got 'tiny'"):
        load_config(TINY, ["student.preset=tiny"])


def test_the_config_stays_a_plain_json_dict_that_eval_and_resume_read(tmp_path):
    cfg = load_config(TINY, ["data.sync_tolerance_ms=25", "data.val_bags=[/tmp/held_out]"])
    again = json.loads(json.dumps(cfg))
    assert again == cfg  # plain: no tuples, Paths or dataclasses survive only as their JSON form
    assert TrainConfig.from_dict(again, "config.json") == TrainConfig.from_dict(cfg)
    # fsmde eval reads the run's data section (training-only keys such as val_bags are left out)
    dc = load_data_config(again["data"], None, ["data.horizon_s=2"], source="config.json")
    assert (dc.sync_tolerance_ms, dc.horizon_s, dc.size) == (25.0, 2.0, (320, 192))
    with pytest.raises(ConfigError, match=r"^config\.json: unknown key 'data.sync_tolerance'; valid data keys: "):
        load_data_config({**again["data"], "sync_tolerance": 3}, None, [], source="config.json")


def test_relative_paths_in_a_yaml_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    yml = tmp_path / "sub" / "c.yaml"
    yml.write_text("data: {bags: [a_bag], val_bags: [../held_out], rig_yaml: rig.yaml}\n")
    cfg = load_config(yml)
    assert cfg["data"]["bags"] == [str(tmp_path / "sub" / "a_bag")]
    assert cfg["data"]["val_bags"] == [str(tmp_path / "held_out")]
    assert cfg["data"]["rig_yaml"] == str(tmp_path / "sub" / "rig.yaml")
