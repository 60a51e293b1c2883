"""One image, one split: the same file under several names (relative, absolute, `..`, a link, a copy) is one image."""

import csv
import os
import shutil

import pytest
from conftest import write_colour_images
from PIL import Image

from keras_transfer.data import Table, load_dataset


def _names_of_one_image(root):
    """Five more names of images of `root/red`: relative, absolute, through `..`, a symlink and a byte copy."""
    os.symlink(root / "red" / "3.png", root.parent / "link.png")
    shutil.copy(root / "red" / "4.png", root.parent / "copy.png")
    return [
        (str(root / "red" / "1.png"), "red"),  # absolute, where the table's rows are relative
        (os.path.join("images", "..", "images", "red", "2.png"), "red"),
        (str(root.parent / "link.png"), "red"),
        ("copy.png", "red"),
    ]


def test_a_table_naming_one_image_five_ways_holds_it_once_and_says_which_rows(tmp_path, monkeypatch, caplog):
    root = write_colour_images(tmp_path / "images")
    rows = [(os.path.join("images", c, f"{i}.png"), c) for c in ("red", "green", "blue") for i in range(12)]
    rows += _names_of_one_image(root)
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    monkeypatch.chdir(tmp_path)  # a relative root, as in the report: `--root .`
    with caplog.at_level("INFO", logger="keras_transfer"):
        _, _, _, info = load_dataset(
            Table("t.csv", root="."), image_size=16, validation_split=0.25, test_split=0.25, seed=0
        )
    assert sum(info.sizes.values()) == 36  # each image once
    files = [os.path.realpath(p) for split in info.files.values() for p in split]
    assert len(files) == len(set(files)) == 36
    assert sorted(reason for _, reason in info.skipped) == [
        "row 38: duplicate of row 3 (the same file)",
        "row 39: duplicate of row 4 (the same file)",
        "row 40: duplicate of row 5 (the same file by another path or link)",
        "row 41: duplicate of row 6 (the same bytes)",
    ]
    assert "4 skipped:\n  " in str(info)  # the summary a run prints names each one ...
    assert not [r for r in caplog.records if "duplicate" in r.getMessage()]  # ... and no second line says it again


def test_a_copy_in_a_given_test_folder_stays_in_training_only(tmp_path):
    train = write_colour_images(tmp_path / "train", ("red", "green"))
    test = write_colour_images(tmp_path / "test", ("red", "green"), n=4, seed=1)
    shutil.copy(train / "red" / "0.png", test / "red" / "copied.png")
    _, _, _, info = load_dataset(train, image_size=16, validation_split=0.25, test=test)
    assert (
        info.sizes["test"] == 8
        and (str(test / "red" / "copied.png"), f"duplicate of {train / 'red' / '0.png'} (the same bytes, in train)")
        in info.skipped
    )


def test_one_image_under_two_labels_is_refused_naming_both(tmp_path):
    root = write_colour_images(tmp_path / "images", ("red", "green"))
    shutil.copy(root / "red" / "5.png", root / "green" / "odd.png")
    with pytest.raises(
        ValueError, match=r"1 image is listed under two names with different labels: .*green/odd.png and .*red/5.png"
    ):
        load_dataset(root, image_size=16)
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ("path", "label"),
                *((f"images/red/{i}.png", "red") for i in range(4)),
                ("images/red/0.png", "green"),
                ("images/green/1.png", "green"),
            ]
        )
    with pytest.raises(ValueError, match=r"row 2 \(.*red/0.png\) and row 6 \(.*red/0.png\)"):
        load_dataset(Table(tmp_path / "t.csv"), image_size=16)


def test_images_of_the_same_size_but_other_bytes_are_two_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(4):
        for name, value in (("a", i), ("b", 100 + i)):
            Image.new("RGB", (20, 20), (value, 0, 0)).save(tmp_path / name / f"{i}.png")  # same size on disk
    _, _, _, info = load_dataset(tmp_path, image_size=16, validation_split=0.0, test_split=0.0)
    assert info.sizes["train"] == 8 and not info.skipped
