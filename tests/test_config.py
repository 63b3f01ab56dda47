"""Config: presets, flag checking with clear errors, JSON round trip."""
from __future__ import annotations

import pytest

from autoencoder.cifar10 import CIFAR10_CLASSES, parse_classes
from autoencoder.cli import ConfigError, save_config
from autoencoder.config import PRESETS, load_train_config, make_config


def test_presets_build():
    for name in PRESETS:
        assert make_config(name).preset == name
    assert make_config("gpu").width > make_config("smoke").width


def test_flags_override_and_coerce():
    config = make_config("smoke", latent_dim="32", lr="1e-3", channels_last="false", classes=("horse", "bird"))
    assert config.latent_dim == 32 and config.lr == 1e-3 and config.channels_last is False
    assert config.class_names == ("bird", "horse")  # label order


def test_unknown_flag_is_named():
    with pytest.raises(ConfigError, match="--laten_dim"):
        make_config("smoke", laten_dim=3)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="--latent_dim"):
        make_config("smoke", latent_dim="big")
    with pytest.raises(ConfigError, match="--batch_size"):
        make_config("smoke", batch_size=1)
    with pytest.raises(ConfigError, match="--precision"):
        make_config("smoke", precision="fp8")
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("huge")
    with pytest.raises(ConfigError, match="--perceptual_source must be one of net, critic"):
        make_config("smoke", perceptual_source="evaluator")
    with pytest.raises(ConfigError, match="needs the critic: set --image_weight above 0"):
        make_config("smoke", perceptual_weight=1.0, perceptual_source="critic", image_weight=0)


def test_parse_classes():
    assert parse_classes("") == CIFAR10_CLASSES
    assert parse_classes(" Horse , bird") == ("bird", "horse")
    with pytest.raises(ConfigError, match="pegasus"):
        parse_classes("pegasus")


def test_json_round_trip(tmp_path):
    config = make_config("cpu", seed=7, classes="horse")
    save_config(config, tmp_path / "config.json")
    assert load_train_config(tmp_path / "config.json") == config
