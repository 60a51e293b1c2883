import os
import shutil

import numpy as np
import pytest
from conftest import write_colour_images

from keras_transfer.data import load_dataset

COLOURS = ("blue", "green", "red")  # class ids: the folder names sorted


def _colour(path):
    return COLOURS.index(os.path.basename(os.path.dirname(path)))


def _load(source, **kwargs):
    return load_dataset(source, image_size=16, batch_size=4, labels_per_class=3, seed=0, **kwargs)


def test_the_rest_are_the_training_images_the_limit_left_out_with_their_labels_kept_aside(colour_folder):
    _, _, _, full = load_dataset(colour_folder, image_size=16, batch_size=4, seed=0)
    train, _, _, info = _load(colour_folder, unlabelled="rest")
    assert info.sizes["train"] == 9 and info.sizes["unlabelled"] == full.sizes["train"] - 9
    assert sorted(info.files["unlabelled"] + info.files["train"]) == sorted(full.files["train"])
    assert not set(info.files["unlabelled"]) & set(info.files["validation"] + info.files["test"])
    assert info.labels["unlabelled"].tolist() == [_colour(p) for p in info.files["unlabelled"]]
    seen = np.concatenate([y.numpy() for _, y in info.unlabelled])  # in order, every image once
    assert seen.tolist() == info.labels["unlabelled"].tolist()
    assert f"unlabelled {info.sizes['unlabelled']} images" in str(info)
    assert sum(int(x.shape[0]) for x, _ in train) == 9  # never trained on without a pseudo-label
    with pytest.raises(ValueError, match=r"labels_per_class leaves out.*Received: unlabelled='rest'"):
        load_dataset(colour_folder, image_size=16, unlabelled="rest")


def test_pseudo_labelled_images_join_the_training_split_under_their_pseudo_label(colour_folder):
    _, _, _, info = _load(colour_folder, unlabelled="rest")
    pseudo = np.full(info.sizes["unlabelled"], -1)
    pseudo[:4] = [2, 2, 0, 1]  # deliberately not their colours: the given ids are what they train as
    train, _, _, with_pseudo = _load(colour_folder, unlabelled="rest", pseudo_labels=pseudo)
    assert with_pseudo.sizes["train"] == 13 and with_pseudo.files["train"][9:] == info.files["unlabelled"][:4]
    assert with_pseudo.labels["train"][9:].tolist() == [2, 2, 0, 1]
    labels = np.concatenate([y.numpy() for _, y in train])
    assert sorted(labels.tolist()) == sorted(with_pseudo.labels["train"].tolist())
    none = np.full(info.sizes["unlabelled"], -1)  # none chosen: the labelled images alone
    train, _, _, without = _load(colour_folder, unlabelled="rest", pseudo_labels=none)
    assert without.files["train"] == info.files["train"] and sum(len(y) for _, y in train) == 9
    with pytest.raises(ValueError, match=r"one class id \(or -1\) per unlabelled image"):
        _load(colour_folder, unlabelled="rest", pseudo_labels=pseudo[:3])
    with pytest.raises(ValueError, match=r"give unlabelled too"):
        _load(colour_folder, pseudo_labels=pseudo)


def test_a_folder_of_unlabelled_images_keeps_new_ones_drops_training_copies_and_refuses_test_images(
    colour_folder, tmp_path
):
    _, _, _, info = _load(colour_folder)
    extra = write_colour_images(tmp_path / "unlabelled", names=("red",), n=4, seed=5)  # new images, in a subfolder
    shutil.copy(info.files["train"][0], extra / "copy_of_a_training_image.png")
    _, _, _, found = _load(colour_folder, unlabelled=str(extra))
    assert found.sizes["unlabelled"] == 4 and (found.labels["unlabelled"] == -1).all()
    assert any("copy_of_a_training_image.png" in p and "in train" in why for p, why in found.skipped)
    shutil.copy(info.files["test"][0], extra / "copy_of_a_test_image.png")
    with pytest.raises(ValueError, match=r"copy_of_a_test_image.png is test image .*must not train on the images"):
        _load(colour_folder, unlabelled=str(extra))
    with pytest.raises(ValueError, match=r"'rest' \(with labels_per_class\), a folder of images .* or a CSV file"):
        _load(colour_folder, unlabelled=str(tmp_path / "missing"))


def test_the_rows_of_a_table_without_a_label_are_its_unlabelled_images(colour_folder, tmp_path):
    rows = ["path,label"]
    for colour in COLOURS:
        rows += [f"{colour_folder}/{colour}/{i}.png,{colour if i < 9 else ''}" for i in range(12)]
    rows.append("nowhere.png,")
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    table = str(tmp_path / "table.csv")
    _, _, _, info = _load(table, unlabelled=table)  # the same table: its labelled rows train, the others do not
    assert info.sizes["unlabelled"] == 9 and all(int(os.path.basename(p)[:-4]) >= 9 for p in info.files["unlabelled"])
    assert any(p.endswith("nowhere.png") and "file missing" in why for p, why in info.skipped)
    assert not set(info.files["unlabelled"]) & {
        p for split in ("train", "validation", "test") for p in info.files[split]
    }
