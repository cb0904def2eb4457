"""lc.config: the packaged schema, nested overrides, value checks, config-file shape, startup checks."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from lc.config import (
    SCHEMA_PATH,
    ConfigError,
    check_startup,
    coerce_overrides,
    load_config,
    load_schema,
    resolve_config,
    rho_arg,
    write_resolved_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"


def _raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _snakemake_config(*entries: str) -> dict:
    """What Snakemake hands the Snakefile for `--config ENTRY...` (nested values stay strings)."""
    from snakemake.cli import parse_config

    return parse_config(list(entries))


# --- the schema ships with the package ------------------------------------------------------------
def test_schema_ships_inside_the_package():
    assert SCHEMA_PATH.is_file() and SCHEMA_PATH.parent == REPO / "lc"
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert SCHEMA_PATH.name in package_data["lc"]


def test_config_outside_the_repository_is_validated(tmp_path):
    elsewhere = tmp_path / "home" / "my.yaml"
    elsewhere.parent.mkdir()
    raw = _raw()
    raw["train"]["learning_rate"] = 0.1  # a typo
    elsewhere.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train: .*'learning_rate' was unexpected"):
        load_config(elsewhere, preset="test")


def test_missing_schema_fails_instead_of_skipping_validation(tmp_path):
    with pytest.raises(ConfigError, match="schema .* is missing"):
        load_schema(tmp_path / "config.schema.yaml")


# --- nested --config overrides (Snakemake passes their values as strings) ------------------------
@pytest.mark.parametrize("entry, key, expected", [
    ("evaluate={max_images: 10}", ("evaluate", "max_images"), 10),                    # int
    ("train={lr: 0.25}", ("train", "lr"), 0.25),                                      # float
    ("evaluate={flip: false}", ("evaluate", "flip"), False),                          # bool
    ("evaluate={max_images: null}", ("evaluate", "max_images"), None),                # null
    ("evaluate={scales: [0.5, 1]}", ("evaluate", "scales"), [0.5, 1]),                # list
    ("train={iterations: {pretrain: 7}}", ("train", "iterations", "pretrain"), 7),    # nested dict
    ("model={output_stride: 16}", ("model", "output_stride"), 16),                    # enum of ints
    ("data={mirror: null}", ("data", "mirror"), None),                                # string or null
    ("device=cpu", ("device",), "cpu"),                                               # a string stays
])
def test_nested_snakemake_override_of_every_type(entry, key, expected):
    overrides = _snakemake_config(entry)
    cfg = load_config(CONFIG, preset="test", overrides=overrides)
    value = cfg
    for part in key:
        value = value[part]
    assert value == expected and type(value) is type(expected)


def test_nested_override_keeps_the_siblings_of_the_changed_key():
    cfg = load_config(CONFIG, preset="test", overrides=_snakemake_config("evaluate={crf: {iterations: 3}}"))
    assert cfg["evaluate"]["crf"]["iterations"] == 3
    assert cfg["evaluate"]["crf"]["bilateral_sxy"] == _raw()["evaluate"]["crf"]["bilateral_sxy"]


def test_override_of_a_preset_block_is_coerced_too():
    overrides = coerce_overrides({"presets": {"test": {"train": {"batch_size": "3"}}}})
    assert overrides["presets"]["test"]["train"]["batch_size"] == 3


def test_override_that_is_not_the_expected_type_names_the_key():
    with pytest.raises(ConfigError, match=r"evaluate\.max_images: 'ten' is not of type"):
        load_config(CONFIG, preset="test", overrides=_snakemake_config("evaluate={max_images: ten}"))


def test_resolved_config_round_trips_the_overrides(tmp_path):
    overrides = _snakemake_config("evaluate={max_images: 10, flip: false}", "seed=3")
    out = write_resolved_config(CONFIG, "test", overrides, tmp_path / "config.resolved.yaml")
    direct = load_config(CONFIG, preset="test", overrides=overrides)
    assert load_config(out, preset="test") == direct
    assert load_config(out, preset="demo")["evaluate"]["max_images"] == 10  # overrides win in every preset
    old = out.stat().st_mtime_ns - 3600 * 10**9  # an hour back: any rewrite would move it on any file system
    os.utime(out, ns=(old, old))
    write_resolved_config(CONFIG, "test", overrides, out)
    assert out.stat().st_mtime_ns == old  # unchanged text: not rewritten, nothing looks outdated
    write_resolved_config(CONFIG, "test", {**overrides, "seed": 4}, out)
    assert out.stat().st_mtime_ns != old  # changed text: rewritten (so the check above can fail)


# --- values the schema lets through ---------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ({"train": {"lr": ".nan"}}, "train.lr"),
    ({"train": {"lr": math.inf}}, "train.lr"),
    ({"train": {"momentum": float("nan")}}, "train.momentum"),
    ({"evaluate": {"scales": [1.0, float("inf")]}}, r"evaluate.scales\[1\]"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: .* is not a finite number"):
        load_config(CONFIG, preset="test", overrides=override)


@pytest.mark.parametrize("override, key", [
    ({"train": {"rho": 0}}, r"train\.rho"),
    ({"evaluate": {"rho": 0.0}}, r"evaluate\.rho"),
    ({"evaluate": {"fast_rho": -0.5}}, r"evaluate\.fast_rho"),
    ({"evaluate": {"rho_sweep": [1.0, 0.0]}}, r"evaluate\.rho_sweep\.1"),
    ({"evaluate": {"rho": 1.5}}, r"evaluate\.rho"),
])
def test_rho_outside_zero_one_is_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(CONFIG, preset="test", overrides=override)


def test_scale_range_upside_down_is_refused_and_equal_ends_allowed():
    with pytest.raises(ConfigError, match=r"train\.scale_range: \[2\.0, 0\.5\] is upside down"):
        load_config(CONFIG, preset="test", overrides={"train": {"scale_range": [2.0, 0.5]}})
    assert load_config(CONFIG, preset="test", overrides={"train": {"scale_range": [1.0, 1.0]}})


def test_unfrozen_bn_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.freeze_bn: false is not supported"):
        load_config(CONFIG, preset="test", overrides={"model": {"freeze_bn": False}})


def test_cpu_device_with_gpu_jobs_is_refused():
    with pytest.raises(ConfigError, match=r"device: cpu, but resources\.gpus asks .*train 1"):
        load_config(CONFIG, preset="paper", overrides={"device": "cpu"})
    assert load_config(CONFIG, preset="test", overrides={"device": "cpu"})["device"] == "cpu"  # gpus 0


# --- the shape of a config file -------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("5\n", r"holds 5 \(int\), not a mapping"),
    ("- a\n- b\n", r"holds \['a', 'b'\] \(list\), not a mapping"),
    ("presets: [demo, test]\n", r"presets: in .* is a list"),
    ("presets:\n  test: [1, 2]\n", r"presets\.test in .* is a list"),
])
def test_config_of_the_wrong_shape_names_the_file(tmp_path, text, message):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, preset="test")
    assert str(path) in str(info.value)


def test_preset_given_as_a_list_in_raw_config():
    raw = _raw()
    raw["presets"]["test"] = ["train"]
    with pytest.raises(ConfigError, match=r"presets\.test in config\.yaml is a list"):
        resolve_config(raw, "test")


# --- startup checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["demo", "test", "paper"])
def test_every_preset_passes_the_startup_checks(preset):
    check_startup(load_config(CONFIG, preset=preset))


def test_startup_refuses_a_results_root_that_is_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("")
    cfg = load_config(CONFIG, preset="test", overrides={"results_root": str(blocker)})
    with pytest.raises(ConfigError, match="results_root = .* is a file"):
        check_startup(cfg)


def test_startup_refuses_synthetic_data_without_a_local_mirror():
    cfg = load_config(CONFIG, preset="test", overrides={"data": {"mirror": "https://example.org/voc"}})
    with pytest.raises(ConfigError, match="data.synthetic: true needs data.mirror to be a local folder"):
        check_startup(cfg)


def test_startup_refuses_a_missing_local_mirror(tmp_path):
    cfg = load_config(CONFIG, preset="paper", overrides={"data": {"mirror": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="data.mirror = .*nowhere is not a folder"):
        check_startup(cfg)


def test_commands_run_the_startup_checks(tmp_path):
    from lc.config import config_from_args

    blocker = tmp_path / "results"
    blocker.write_text("")
    raw = _raw()
    raw["results_root"] = str(blocker)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="is a file"):
        config_from_args(argparse.Namespace(config=str(path), preset="test"))


# --- the rho argument type ------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("1", 1.0), ("0.985", 0.985)])
def test_rho_arg_accepts_zero_to_one(text, value):
    assert rho_arg(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "2.5", "nan", "inf", "high"])
def test_rho_arg_refuses_the_rest(text):
    with pytest.raises(argparse.ArgumentTypeError, match="rho must be"):
        rho_arg(text)


def test_schema_is_found_from_any_working_directory(tmp_path, monkeypatch):
    copy = tmp_path / "config.yaml"
    shutil.copy(CONFIG, copy)
    monkeypatch.chdir(tmp_path)
    os.makedirs("sub")
    monkeypatch.chdir("sub")
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(copy, preset="test", overrides={"train": {"batch_size": 0}})
