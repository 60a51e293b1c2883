"""Ranking backbones: each score checked on features whose quality is known, LogME against its definition, and the
ranking from a folder through the command (cached features reused, bad input refused before any work)."""

import csv
import json

import numpy as np
import pytest

from keras_transfer import rank
from keras_transfer.cli import main


def _features(n_per_class=30, classes=3, dim=8, separation=3.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, dim)) * separation
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def _evidence(f, y, alpha, beta):
    """log p(y | f, alpha, beta) / n of Bayesian linear regression, computed directly (LogME's definition)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    log_det = np.linalg.slogdet(a)[1]
    value = d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
    value -= beta / 2 * np.sum((y - f @ m) ** 2) + alpha / 2 * m @ m + log_det / 2
    return value / n


def test_logme_is_the_maximum_evidence_of_its_definition():
    f, labels = _features(classes=2, dim=5)
    grid = 10.0 ** np.arange(-4, 4.01, 0.05)
    best = [max(_evidence(f, (labels == c).astype(float), a, b) for a in grid for b in grid) for c in (0, 1)]
    assert rank.logme(f, labels) == pytest.approx(np.mean(best), abs=2e-3)


def test_every_score_prefers_features_that_separate_the_classes():
    good, labels = _features(separation=3.0)
    poor, _ = _features(separation=0.3, seed=1)
    better = rank.all_scores(good, labels)
    worse = rank.all_scores(poor, labels)
    for name in rank.SCORES:
        assert better[name] > worse[name], name
    assert better["probe"] == pytest.approx(1.0, abs=0.02)
    assert worse["probe"] < 0.8


def test_nleep_averages_mixtures_so_that_its_seed_matters_less_than_the_features():
    f, labels = _features(n_per_class=10, classes=6, dim=32, separation=0.6)  # few images per mixture component
    one = [rank.nleep(f, labels, seed=s, restarts=1) for s in range(20)]
    assert rank.nleep(f, labels, seed=0, restarts=3) == pytest.approx(np.mean(one[:3]))
    averaged = [rank.nleep(f, labels, seed=10 * s) for s in range(2)]  # NLEEP_RESTARTS mixtures each
    assert np.ptp(averaged) < 0.5 * np.ptp(one)


def test_close_marks_the_candidates_the_score_cannot_tell_from_the_first():
    f, labels = _features(n_per_class=10, classes=4, dim=16, separation=1.0)
    scores = rank.all_scores(f, labels)
    mixtures = rank.nleep_mixtures(f, labels)
    assert scores["nleep_se"] == pytest.approx(np.std(mixtures, ddof=1) / np.sqrt(len(mixtures)))
    assert scores["nleep_se"] > 0

    def row(score, error, name="nleep"):
        return {"score": score, "nleep_se": error, "score_name": name}

    ranking = rank.mark_close([row(-0.10, 0.01), row(-0.12, 0.01), row(-0.14, 0.01), row(-0.20, 0.03)])
    assert [r["close"] for r in ranking] == [True, True, False, False]  # 2 errors: 2 * sqrt(2) * 0.01 = 0.028
    fallback = rank.mark_close([row(0.9, float("nan"), "probe"), row(0.9, float("nan"), "probe")])
    assert [r["close"] for r in fallback] == [True, False]  # the probe has no error to go by


def test_several_labels_per_image_score_the_label_matrix():
    f, labels = _features(classes=3)
    matrix = np.eye(3)[labels]
    matrix[::4, (labels[::4] + 1) % 3] = 1  # some images carry a second label
    scores = rank.all_scores(f, matrix)
    assert np.isfinite(scores["logme"]) and 0 < scores["probe"] <= 1
    assert np.isnan(scores["nleep"]) and np.isnan(scores["hscore"]) and np.isnan(scores["nleep_se"])
    assert rank.recommended(scores) == "probe"  # NLEEP needs one label per image


def test_candidates_parse_and_bad_ones_are_refused_naming_them():
    assert rank.parse_candidate("efficientnet_lite0@160") == rank.Candidate("efficientnet_lite0", 160, "imagenet")
    assert rank.parse_candidate("efficientnet_lite2:none").weights is None
    assert rank.parse_candidate("small_cnn").weights is None  # no ImageNet weights: random ones
    assert rank.parse_candidate("small_cnn@32").name == "small_cnn@32:none"
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'"):
        rank.parse_candidate("resnet5@224")
    with pytest.raises(ValueError, match=r"at least 32x32 pixels"):
        rank.parse_candidate("efficientnet_lite0@16")


@pytest.mark.slow
def test_ranks_a_folder_through_the_command_and_reuses_the_features(colour_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rank"
    argv = ["rank", "--data", str(colour_folder), "--output", str(out), "--batch-size", "4"]
    argv += ["--backbones", "efficientnet_lite0@32", "efficientnet_lite0@32:none", "small_cnn@32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "score = nleep" in printed and "ranking.csv" in printed
    with open(out / "ranking.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert {"backbone", "image_size", "score", "seconds", "nleep_se", "close", *rank.SCORES} <= set(rows[0])
    assert rows[0]["close"] == "True" and float(rows[0]["nleep_se"]) > 0
    assert sorted(r["weights"] for r in rows) == ["imagenet", "none", "none"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(r["images"] == "27" for r in rows)
    saved = json.loads((out / "ranking.json").read_text())
    assert saved["score"] == "nleep" and [r["score"] for r in saved["ranking"]] == scores

    def no_features(*args, **kwargs):
        raise AssertionError("the cached features should have been read")

    monkeypatch.setattr("keras_transfer.models.build_model", no_features)
    again = rank.rank_backbones(colour_folder, ["small_cnn@32"], output_dir=out, batch_size=4)
    monkeypatch.undo()
    sample = rank.rank_backbones(colour_folder, ["small_cnn@32"], max_images=10, folds=2, batch_size=4)
    assert sample[0]["images"] == 10
    with pytest.raises(ValueError, match=r"probe column's 5-fold needs two classes with 5"):
        rank.rank_backbones(colour_folder, ["small_cnn@32"], max_images=6, batch_size=4)
    assert again[0]["probe"] == pytest.approx(float(next(r for r in rows if r["backbone"] == "small_cnn")["probe"]))


def test_bad_input_is_refused_before_any_feature(tmp_path, capsys, monkeypatch):
    def no_features(*args, **kwargs):
        raise AssertionError("nothing should be computed")

    monkeypatch.setattr("keras_transfer.models.build_model", no_features)
    argv = ["rank", "--data", "digits", "--output", str(tmp_path / "r"), "--backbones", "small_cnn", "resnet5"]
    assert main(argv) == 2
    assert "Unknown backbone 'resnet5'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=r"repeat"):
        rank.rank_backbones("digits", ["small_cnn@32", "small_cnn@32:none"])
    from conftest import write_colour_images

    write_colour_images(tmp_path / "one_class", names=("red",), n=4)
    with pytest.raises(ValueError, match=r"at least two class"):
        rank.rank_backbones(tmp_path / "one_class", ["small_cnn@32"])


def test_every_candidate_sees_the_same_images_whatever_ran_before(colour_folder):
    """TensorFlow's global seed, which earlier work in the process may have set, must not change which images (or
    in what order) a candidate is scored on: a `max_images` sample is the first images of the shuffled split."""
    import tensorflow as tf

    def sample(global_seed):
        tf.random.set_seed(global_seed)  # what another candidate, a run or a notebook cell may have left
        candidate = rank.parse_candidate("efficientnet_lite0@32:none")
        return rank.candidate_features(colour_folder, candidate, None, None, 8, 4, 0, {})

    (first, first_labels), (second, second_labels) = sample(1), sample(2)
    np.testing.assert_array_equal(first_labels, second_labels)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-5)
