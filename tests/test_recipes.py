"""Every configs/*.yaml recipe runs through scripts/finetune.py's main in a smoke mode: digits, random (or a
locally made) weights, 32-pixel images, two labels per class, at most one epoch per stage."""

import json
from pathlib import Path

import pytest
import yaml

import keras_transfer as kt
from keras_transfer.cli import main, parse_config
from keras_transfer.config import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_is_a_recipe_per_worked_example():
    assert [p.name[:3] for p in RECIPES] == ["000", "001", "002", "003", "004"]


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_in_smoke_mode(path, tmp_path):
    recipe = load_config(path)  # unknown keys would fail here
    _, full = parse_config(["--config", str(path)])
    assert full.backbone == recipe["backbone"] and full.head_epochs == recipe.get("head_epochs", full.head_epochs)
    weights = "none"
    if recipe.get("compare_scratch"):  # needs pretrained weights: a backbone saved here stands in
        weights = str(tmp_path / "pretrained.weights.h5")
        kt.build_model(recipe["backbone"], 2, input_shape=32, weights=None).get_layer("backbone").save_weights(weights)
    smoke = [
        "--config",
        str(path),
        "--data",
        "digits",
        "--weights",
        weights,
        "--image-size",
        "32",
        "--labels-per-class",
        "2",
        "--batch-size",
        "4",
        "--validation-split",
        "0.1",
        "--test-split",
        "0.1",
        "--head-epochs",
        str(min(full.head_epochs, 1)),
        "--fine-tune-epochs",
        str(min(full.fine_tune_epochs, 1)),
        "--output",
        str(tmp_path / "run"),
    ]
    assert main(smoke) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["num_examples"] > 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    for key in ("backbone", "pooling", "dense_units", "unfreeze", "optimizer", "train_batchnorm"):
        assert saved[key] == getattr(full, key), key  # the recipe's own settings were used
    if recipe.get("compare_scratch"):
        assert (tmp_path / "run" / "comparison.json").exists()
