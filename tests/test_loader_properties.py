"""Property tests (hypothesis) of the expression grammar and of the config and recipe loaders: random text and bytes,
deep nesting, huge numbers, unicode digits and signs. Each input is either read or refused with a UserError (one
line for the person); nothing else escapes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoencoder.cli import UserError, dataclass_from_flags, load_config
from latent_ops.compose_config import ComposeConfig, validate_compose_config
from latent_ops.expression import MAX_WEIGHT, parse

GRAMMAR_PIECES = st.sampled_from(["horse", "bird", "wings", "white", "horse:2", "@top", "@back", "&", "+", "-", "*",
                                  "/", "(", ")", "0.5", "2", "1e308", "1e-320", "٣", "−", "＋", " ", "..", "e"])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_or_refuse(text: str) -> None:
    try:
        weights = parse(text)
    except UserError as error:
        assert "\n" not in str(error) and str(error)
    else:
        assert weights and all(abs(w) <= MAX_WEIGHT for w in weights.values())


@SETTINGS
@given(st.text(max_size=80))
def test_any_text_is_read_or_refused_in_one_line(text):
    read_or_refuse(text)


@SETTINGS
@given(st.lists(GRAMMAR_PIECES, max_size=40).map("".join))
def test_grammar_like_text_is_read_or_refused_in_one_line(text):
    read_or_refuse(text)


@SETTINGS
@given(st.integers(1, 200), st.integers(0, 120))
def test_deep_signs_and_parentheses_are_refused_not_crashed(signs, depth):
    read_or_refuse("-" * signs + "(" * depth + "horse" + ")" * depth)


RECIPE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                          st.text(max_size=12), st.lists(st.integers(), max_size=3))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["pool", "n", "guidance", "solver", "expression", "refine_top", "seed",
                                        "precision", "strength", "poool", "Pool"]), RECIPE_VALUES, max_size=6))
def test_any_recipe_is_read_or_refused_in_one_line(tmp_path_factory, values):
    file = tmp_path_factory.mktemp("recipe") / "compose.json"
    file.write_text(json.dumps(values))
    try:
        load_config(file, ComposeConfig, validate_compose_config, strict=True)
    except UserError as error:
        assert "\n" not in str(error) and str(file) in str(error)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_as_a_recipe_are_refused_in_one_line(tmp_path_factory, data):
    file: Path = tmp_path_factory.mktemp("recipe") / "compose.json"
    file.write_bytes(data)
    try:
        load_config(file, ComposeConfig, validate_compose_config, strict=True)
    except UserError as error:
        assert "\n" not in str(error)


# --- every saved config a command reads back, and every command's flags ---------------------------------------------

def saved_config_loaders() -> dict:
    from autoencoder.classifier import ClassifierConfig, check_classifier_config
    from autoencoder.config import TrainConfig, validate
    from autoencoder.diagram import LossWeights
    from autoencoder.run_folder import RunConfig, check_run_config
    from autoencoder.train_evaluator import EvaluatorConfig, validate_evaluator_config
    from latent_ops.prior import PriorConfig, validate_prior_config
    from latent_ops.trained_prior import PriorNetConfig, check_net_config

    return {  # what a file holds -> (the config it is read as, its check, whether unknown keys are refused)
        "a run's config.json, for training": (TrainConfig, validate, True),
        "a run's config.json, for inference": (RunConfig, check_run_config, False),
        "a run's config.json, for the diagram": (LossWeights, None, False),
        "an evaluator run's config.json": (EvaluatorConfig, validate_evaluator_config, True),
        "a classifier's config.json": (ClassifierConfig, check_classifier_config, False),
        "a prior's config.json": (PriorConfig, validate_prior_config, True),
        "a prior's net.json": (PriorNetConfig, check_net_config, False),
        "a compose recipe": (ComposeConfig, validate_compose_config, True),
    }


LOADERS = saved_config_loaders()


def field_names(kind: type) -> list[str]:
    return [f.name for f in dataclasses.fields(kind)]


def read_back(file: Path, loader: str) -> None:
    kind, check, strict = LOADERS[loader]
    try:
        config = load_config(file, kind, check, strict=strict)
    except UserError as error:
        assert "\n" not in str(error) and str(file) in str(error), str(error)
    else:
        assert isinstance(config, kind)


@pytest.mark.parametrize("loader", sorted(LOADERS))
@SETTINGS
@given(data=st.data())
def test_any_saved_config_is_read_or_refused_in_one_line_naming_the_file(loader, data, tmp_path_factory):
    names = field_names(LOADERS[loader][0])
    keys = st.sampled_from(names + [names[0] + "s", names[-1].upper(), "", "__class__"])
    values = data.draw(st.dictionaries(keys, RECIPE_VALUES, max_size=8))
    file = tmp_path_factory.mktemp("saved") / "config.json"
    file.write_text(json.dumps(values))
    read_back(file, loader)


@pytest.mark.parametrize("loader", sorted(LOADERS))
@SETTINGS
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_saved_config_are_refused_in_one_line_naming_the_file(loader, data, tmp_path_factory):
    file = tmp_path_factory.mktemp("saved") / "config.json"
    file.write_bytes(data)
    read_back(file, loader)


FLAG_TEXT = st.one_of(st.text(max_size=20), st.sampled_from(["1e999", "-1e999", "nan", "inf", "٣", "−1", "１",
                                                              "0x10", "1_000", "True", "None", "[1]", "(horse)",
                                                              "9" * 400, "-0", ""]))


def command_configs() -> dict:
    from autoencoder.config import TrainConfig
    from autoencoder.train_evaluator import EvaluatorConfig
    from latent_ops.edit import EditConfig
    from latent_ops.explore.__main__ import ExploreConfig
    from latent_ops.learn import LearnConfig
    from latent_ops.prior import PriorConfig

    return {kind.__name__: kind for kind in (TrainConfig, EvaluatorConfig, EditConfig, ExploreConfig, LearnConfig,
                                             PriorConfig, ComposeConfig)}


COMMAND_CONFIGS = command_configs()


@pytest.mark.parametrize("name", sorted(COMMAND_CONFIGS))
@SETTINGS
@given(data=st.data())
def test_any_flag_text_is_read_or_refused_in_one_line_naming_the_flag(name, data):
    kind = COMMAND_CONFIGS[name]
    flag = data.draw(st.sampled_from(field_names(kind)))
    text = data.draw(FLAG_TEXT)
    try:
        dataclass_from_flags(kind, {}, {flag: text})
    except UserError as error:
        assert "\n" not in str(error) and f"--{flag}" in str(error), str(error)
