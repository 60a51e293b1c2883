import csv
import json
import shutil

import numpy as np
import pytest
from conftest import write_colour_images

from keras_transfer.cli import main
from keras_transfer.label_issues import confident_learning, find_label_issues, out_of_sample_probabilities


def _blobs(n_per_class=40, classes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), dim)), labels


def test_flipped_labels_of_separable_classes_are_found_and_others_are_not():
    features, labels = _blobs()
    noisy = labels.copy()
    flipped = np.array([3, 50, 90, 130, 155, 17])
    noisy[flipped] = (labels[flipped] + 1) % 4
    probs, fold, left_out = out_of_sample_probabilities(features, noisy, 4, folds=5)
    assert left_out == [] and set(fold) == set(range(5))
    assert np.allclose(probs.sum(axis=1), 1.0)
    found = confident_learning(probs, noisy)
    assert set(np.flatnonzero(found)) == set(flipped)


def test_a_class_smaller_than_the_folds_is_left_out_and_one_class_is_refused():
    features, labels = _blobs()
    features, labels = np.concatenate([features, features[:3]]), np.concatenate([labels, [4, 4, 4]])
    probs, fold, left_out = out_of_sample_probabilities(features, labels, 5, folds=5)
    assert left_out == [4] and np.isnan(probs[-3:]).all() and (fold[-3:] == -1).all()
    assert not np.isnan(probs[:-3]).any() and np.all(probs[:-3, 4] == 0)  # never suggested
    assert not confident_learning(probs, labels)[-3:].any()
    with pytest.raises(ValueError, match=r"at least two classes with 5 images or more"):
        out_of_sample_probabilities(features[:40], labels[:40], 4, folds=5)
    with pytest.raises(ValueError, match=r"folds must be an integer >= 2"):
        find_label_issues("unused", folds=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Colour folders with two red images and one blue image filed under the wrong class."""
    root = write_colour_images(tmp_path_factory.mktemp("planted") / "images", n=16)
    moves = [("red", "0.png", "green"), ("red", "1.png", "blue"), ("blue", "2.png", "red")]
    for source, name, target in moves:
        shutil.move(root / source / name, root / target / f"moved_{source}_{name}")
    return root, {f"moved_{s}_{n}": s for s, n, _ in moves}


def test_the_command_ranks_the_planted_errors_first_and_writes_the_csv_and_page(planted, tmp_path, capsys):
    root, moved = planted
    out = tmp_path / "issues"
    args = ["label-issues", "--data", str(root), "--backbone", "vgg16", "--weights", "none", "--image-size", "32"]
    assert main([*args, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "suspected label errors among 48 images" in printed and "label_issues.html" in printed
    with open(out / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "given", "suggested", "score", "margin", "fold"]
    top = {row["path"].rsplit("/", 1)[-1]: row for row in rows[: len(moved)]}
    assert set(top) == set(moved)  # the planted ones, most suspicious first
    assert all(top[name]["suggested"] == colour for name, colour in moved.items())
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)
    page = (out / "label_issues.html").read_text()
    assert page.count('<figure class="issue"') == len(rows) and page.count("data:image/jpeg;base64,") == len(rows)
    assert json.dumps(sorted(moved))  # names are plain


def test_bad_input_is_named(tmp_path, colour_folder, capsys):
    assert main(["label-issues", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="no Chromium here: `make test` installs Debian's chromium where apt-get is allowed",
)
def test_the_page_in_headless_chromium_shows_every_suspect_with_its_labels(planted, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (in [dev]) drives the browser")
    root, moved = planted
    assert (
        main(
            ["label-issues", "--data", str(root), "--backbone", "vgg16", "--weights", "none"]
            + ["--image-size", "32", "--output", str(tmp_path)]
        )
        == 0
    )
    with open(tmp_path / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "label_issues.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        shown = page.eval_on_selector_all(
            "figure.issue",
            "fs => fs.map(f => [f.dataset.path, f.querySelector('.given').innerText,"
            " f.querySelector('.suggested').innerText])",
        )
        browser.close()
    assert errors == [] and len(widths) == len(rows) and all(w > 0 for w in widths)
    assert shown == [[r["path"], r["given"], r["suggested"]] for r in rows]  # the CSV's order, the same labels


def test_several_labels_per_image_a_flipped_label_is_found_as_present_or_missing():
    from keras_transfer.label_issues import multi_label_issues

    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], (150, 3))
    features = np.concatenate([signs * (1 + rng.uniform(0, 1, (150, 3))), rng.normal(0, 1, (150, 5))], axis=1)
    labels = (signs > 0).astype(np.float32)  # label j present exactly where feature j is positive
    noisy = labels.copy()
    flipped = [(4, 0), (40, 1), (77, 2), (120, 0)]
    for i, j in flipped:
        noisy[i, j] = 1 - noisy[i, j]
    probs, fold, pairs = multi_label_issues(features, noisy, folds=5)
    assert probs.shape == (150, 3) and set(fold) == set(range(5))
    found = set(zip(*np.nonzero(pairs)))
    # no false alarm; one flip may go unflagged: confident learning counts only images confidently in some class
    assert found <= set(flipped) and len(found) >= 3


def test_a_multi_label_table_gets_a_row_per_suspected_label(tmp_path):
    from keras_transfer.data.tables import Table

    root = write_colour_images(tmp_path / "images", n=10)
    rows = ["path,tags"]
    for colour in ("red", "green", "blue"):
        for i in range(10):
            tags = {"red": "warm", "green": "cool plant", "blue": "cool"}[colour]
            if (colour, i) == ("blue", 3):
                tags = "warm"  # a blue image tagged warm, not cool
            rows.append(f"{colour}/{i}.png,{tags}")
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    table = Table(str(tmp_path / "tags.csv"), root=str(root), label_column="tags", label_delimiter=" ")
    issues = find_label_issues(table, backbone="vgg16", weights=None, image_size=32)
    suspects = {(r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1], r["given"]) for r in issues.rows}
    assert ("blue/3.png", "warm") in suspects and ("blue/3.png", "no cool") in suspects
    assert all(r["suggested"].startswith("no ") != r["given"].startswith("no ") for r in issues.rows)


def test_a_run_looks_for_label_errors_in_its_training_split_and_a_second_run_can_leave_them_out(
    planted, tmp_path, capsys
):
    root, moved = planted
    args = ["--data", str(root), "--backbone", "vgg16", "--weights", "none", "--image-size", "32"]
    args += ["--batch-size", "4", "--head-epochs", "1", "--fine-tune-epochs", "0", "--test-split", "0"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "run" / "splits.csv") as f:
        training = [row["path"] for row in csv.DictReader(f) if row["split"] == "train"]
    with open(tmp_path / "run" / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    planted_in_training = {p.rsplit("/", 1)[-1] for p in training} & set(moved)
    assert planted_in_training and {r["path"] for r in rows} <= set(training)
    top = {row["path"].rsplit("/", 1)[-1]: row["suggested"] for row in rows[: len(planted_in_training)]}
    assert top == {name: moved[name] for name in planted_in_training}  # most suspicious first, the true colour
    line = f"Suspected label errors: {len(rows)} of the {len(training)} training images"
    assert printed.count(line) == 2  # when found, and again under the closing table
    page = (tmp_path / "run" / "report.html").read_text()
    assert f">Suspected label errors ({len(rows)})</h2>" in page and page.count('<figure class="issue"') == len(rows)
    assert all(f'data-path="{r["path"]}"' in page for r in rows)
    assert page.count("data:image/jpeg;base64,") == len(rows)  # each suspect shown, from its own file
    # the next run trains without them; it, and a run told not to look, write no label_issues.csv of their own
    again = [*args, "--no-label-issues", "--exclude-issues", str(tmp_path / "run" / "label_issues.csv")]
    assert main([*again, "--output", str(tmp_path / "clean")]) == 0
    printed = capsys.readouterr().out
    assert f"Left out {len(rows)} training images named as suspected label errors" in printed
    assert "Suspected label errors:" not in printed and not (tmp_path / "clean" / "label_issues.csv").exists()
    assert "Suspected label errors" not in (tmp_path / "clean" / "report.html").read_text()
