import csv

import numpy as np
import pytest

from keras_transfer.cli import main
from keras_transfer.semi_supervised import pseudo_labels


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n)
    centres = np.eye(3, 8) * 6
    return centres[labels] + rng.normal(0, 1, (len(labels), 8)), labels


def test_pseudo_labels_are_class_balanced_confident_and_right_on_separable_features():
    labelled, labels = _blobs(3, seed=0)
    unlabelled, truth = _blobs(40, seed=1)
    unlabelled[-5:] = 0  # five images in the middle of nowhere: no class should claim them
    pseudo, confidence = pseudo_labels(labelled, labels, unlabelled, 3, per_class=10, threshold=0.5, rounds=2)
    chosen = pseudo >= 0
    assert np.bincount(pseudo[chosen], minlength=3).tolist() == [10, 10, 10]  # the quota of each class
    assert (pseudo[chosen] == truth[chosen]).all() and (confidence[chosen] >= 0.5).all()
    assert not chosen[-5:].any()
    clear = np.arange(len(pseudo)) < len(pseudo) - 5
    for c in range(3):  # each class's chosen images are the most confident of those in it
        left = clear & ~chosen & (truth == c)
        assert confidence[pseudo == c].min() >= confidence[left].max() - 1e-9
    with pytest.raises(ValueError, match=r"0 <= threshold < 1, per_class >= 1"):
        pseudo_labels(labelled, labels, unlabelled, 3, threshold=1.0)


def test_the_command_trains_on_pseudo_labelled_images_and_shows_them(colour_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--data", str(colour_folder), "--backbone", "vgg16", "--weights", "none", "--image-size", "32"]
    args += ["--batch-size", "4", "--head-epochs", "1", "--fine-tune-epochs", "1", "--labels-per-class", "5"]
    args += ["--unlabelled", "rest", "--pseudo-labels-per-class", "2", "--output", str(run)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    with open(run / "pseudo_labels.csv") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["pseudo_label"]]
    assert rows and list(rows[0]) == ["index", "path", "pseudo_label", "confidence", "true_label"]
    assert all(r["true_label"] == r["path"].split("/")[-2] for r in rows)  # "rest" knows the true labels
    assert 0 < len(chosen) <= 6 and all(float(r["confidence"]) >= 0.5 for r in chosen)
    assert f"Training on 15 labelled and {len(chosen)} pseudo-labelled images" in printed
    assert printed.count("Suspected label errors: ") == 2 and "the 15 training images" in printed  # before
    assert printed.count("Pseudo-labelled: ") == 1 and printed.count("unlabelled images (") == 2
    with open(run / "splits.csv") as f:
        splits = {}
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append(row["path"])
    assert {r["path"] for r in chosen} <= set(splits["train"]) and len(splits["train"]) == 15 + len(chosen)
    assert not {r["path"] for r in chosen} & set(splits["unlabelled"])  # each image in one split
    page = (run / "report.html").read_text()
    assert f"<h2>Pseudo-labels</h2><p>{len(chosen)} of the {len(rows)} unlabelled images" in page
    # a rerun (as after a kill) reads the same choice back instead of choosing again
    (run / "complete.json").unlink()
    before = (run / "pseudo_labels.csv").stat().st_mtime_ns
    assert main(args) == 0
    assert "Pseudo-labels (" not in capsys.readouterr().out and (run / "pseudo_labels.csv").stat().st_mtime_ns == before
