import io
import os
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_colour_images
from PIL import Image

from keras_transfer.data import Tfds, fashion_mnist_arrays, load_dataset, sources
from keras_transfer.images import decode_image, image_problem


def _save(path, image, fmt, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, fmt, **kwargs)


def _rgb(rng, size=(40, 30)):
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture
def image_folder(tmp_path):
    """Three classes of generated images plus the bad-file corpus; returns (root, bad files, good count)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    good = 0
    for name in ("cat", "dog", "fox"):
        for i in range(6):
            _save(str(root / name / f"{i}.jpg"), _rgb(rng, (30 + i, 40)), "JPEG")
            good += 1
    # Odd but valid images: each must decode to RGB.
    _save(str(root / "cat" / "cmyk.jpg"), _rgb(rng).convert("CMYK"), "JPEG")
    _save(str(root / "cat" / "gray16.png"), Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)), "PNG")
    _save(str(root / "dog" / "rgba.png"), _rgb(rng).convert("RGBA"), "PNG")
    _save(str(root / "dog" / "palette.gif"), _rgb(rng).convert("P"), "GIF")
    _save(str(root / "dog" / "gray.bmp"), _rgb(rng).convert("L"), "BMP")
    _save(str(root / "fox" / "tiny.png"), Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")
    _save(str(root / "fox" / "nested" / "deeper" / "n.webp"), _rgb(rng), "WEBP")
    good += 7
    # Bad files: listed in info.skipped, never a crash.
    bad = {}
    (root / "cat" / "empty.jpg").write_bytes(b"")
    bad["cat/empty.jpg"] = "empty file"
    buf = io.BytesIO()
    _rgb(rng).save(buf, "JPEG")
    (root / "dog" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad["dog/truncated.jpg"] = "truncated JPEG"
    (root / "fox" / "notes.jpg").write_text("not an image at all")
    bad["fox/notes.jpg"] = "not an image"
    # Ignored: hidden files and folders, and an empty class folder (reported).
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden_class").mkdir()
    (root / "empty_class").mkdir()
    bad["empty_class"] = "empty class folder"
    return root, bad, good


def _all(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def test_folder_with_bad_files_iterates_a_full_epoch_and_reports_them(image_folder):
    root, bad, good = image_folder
    train, val, test, info = load_dataset(
        str(root), image_size=(24, 24), batch_size=4, validation_split=0.25, test_split=0.0
    )
    assert info.class_names == ["cat", "dog", "fox"] and info.num_classes == 3
    reported = {os.path.relpath(path, root): reason for path, reason in info.skipped}
    assert set(reported) == set(bad)
    for path, reason in bad.items():
        assert reported[path].startswith(reason)
    x_train, y_train = _all(train)
    x_val, y_val = _all(val)
    assert len(x_train) + len(x_val) == good
    assert x_train.dtype == np.float32 and x_train.shape[1:] == (24, 24, 3)
    assert x_train.min() >= 0.0 and x_train.max() <= 255.0 and x_train.max() > 1.0
    assert y_train.dtype == np.int32
    assert sum(info.counts["train"].values()) == len(x_train)
    assert np.bincount(y_val, minlength=3).tolist() == [info.counts["validation"][c] for c in info.class_names]
    assert test is None and sum(info.counts["test"].values()) == 0
    assert "3 skipped" not in str(info) and "4 skipped" in str(info)


def test_odd_formats_decode_to_rgb(image_folder):
    root, _, _ = image_folder
    for path, expect in [("fox/tiny.png", (255, 0, 0)), ("dog/gray.bmp", None), ("cat/gray16.png", None)]:
        image = decode_image(tf.io.read_file(str(root / path))).numpy()
        assert image.shape[-1] == 3 and image.dtype == np.uint8
        if expect:
            assert tuple(image[0, 0]) == expect
    assert image_problem(str(root / "fox" / "nested" / "deeper" / "n.webp")) is None


def test_train_validation_test_layout(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 4), ("validation", 2), ("test", 3)):
        for name in ("a", "b"):
            for i in range(n):
                _save(str(tmp_path / split / name / f"{i}.png"), _rgb(rng), "PNG")
    train, val, test, info = load_dataset(str(tmp_path), image_size=16, batch_size=2)
    assert {s: sum(c.values()) for s, c in info.counts.items()} == {"train": 8, "validation": 4, "test": 6}
    assert len(_all(test)[0]) == 6


def test_folder_errors(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "x.png")
    with pytest.raises(ValueError, match=r"needs at least two class subfolders with images; found 1 \(only\)"):
        load_dataset(str(tmp_path))
    with pytest.raises(ValueError, match=r"Dataset source '.*nowhere' is not a folder"):
        load_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "other" / "train" / "a").mkdir(parents=True)
    (tmp_path / "other" / "train" / "b").mkdir(parents=True)
    (tmp_path / "other" / "test" / "c").mkdir(parents=True)
    for d in ("train/a", "train/b", "test/c"):
        Image.new("RGB", (4, 4)).save(tmp_path / "other" / d / "x.png")
    with pytest.raises(ValueError, match=r"has classes the training folder lacks: c\. Training classes: a, b"):
        load_dataset(str(tmp_path / "other"))


def test_digits_subset_relabelled_with_names_kept_and_few_shot_counts_exact():
    train, val, test, info = load_dataset(
        "digits",
        image_size=16,
        batch_size=64,
        classes=range(5, 10),
        labels_per_class=3,
        validation_split=0.2,
        test_split=0.1,
    )
    assert info.class_names == ["5", "6", "7", "8", "9"]
    assert info.label_map == {5: 0, 6: 1, 7: 2, 8: 3, 9: 4}
    assert info.counts["train"] == dict.fromkeys(info.class_names, 3)
    x, y = _all(train)
    assert sorted(y.tolist()) == sorted([0, 1, 2, 3, 4] * 3)
    # scikit-learn's digits has 182, 181, 179, 174 and 180 images of 5..9; the held-out fractions are exact.
    for name, n in zip(info.class_names, (182, 181, 179, 174, 180)):
        assert info.counts["test"][name] == round(n * 0.1)
        assert info.counts["validation"][name] == round(n * 0.2)
    assert len(_all(test)[1]) == sum(info.counts["test"].values())


def test_a_stratified_test_sample_keeps_every_class_and_follows_the_seed():
    kwargs = dict(image_size=8, validation_split=0.0, test_split=0.5, test_per_class=4)
    _, _, test, info = load_dataset("digits", seed=1, **kwargs)
    assert info.counts["test"] == dict.fromkeys(info.class_names, 4)
    assert sum(info.counts["train"].values()) > 800  # the training split keeps its images
    labels = _all(test)[1]
    assert sorted(labels.tolist()) == sorted(list(range(10)) * 4)
    other = _all(load_dataset("digits", seed=2, **kwargs)[2])[0]
    assert not np.array_equal(np.sort(_all(test)[0].ravel()), np.sort(other.ravel()))
    with pytest.raises(ValueError, match=r"test_per_class must be .*Received: test_per_class=0"):
        load_dataset("digits", test_per_class=0)


def test_a_validation_sample_per_class_leaves_the_other_splits_as_they_were():
    kwargs = dict(image_size=8, validation_split=0.3, test_split=0.1, seed=3)
    _, whole, _, full = load_dataset("digits", **kwargs)
    _, val, _, info = load_dataset("digits", validation_per_class=5, **kwargs)
    assert info.counts["validation"] == dict.fromkeys(info.class_names, 5)
    assert info.counts["train"] == full.counts["train"] and info.counts["test"] == full.counts["test"]
    sample, pool = _all(val)[0].reshape(50, -1), _all(whole)[0].reshape(len(_all(whole)[0]), -1)
    assert all((pool == image).all(axis=1).any() for image in sample)  # drawn from the validation split it limits
    with pytest.raises(ValueError, match=r"validation_per_class must be .*Received: validation_per_class=-1"):
        load_dataset("digits", validation_per_class=-1)


def test_splits_are_identical_across_calls_with_one_seed_and_differ_with_another():
    def split_arrays(seed):
        _, val, test, _ = load_dataset(
            "digits", image_size=8, batch_size=256, seed=seed, test_split=0.2, deterministic=True
        )
        return _all(val), _all(test)

    (xv1, yv1), (xt1, _) = split_arrays(0)
    (xv2, yv2), (xt2, _) = split_arrays(0)
    np.testing.assert_array_equal(xv1, xv2)
    np.testing.assert_array_equal(yv1, yv2)
    np.testing.assert_array_equal(xt1, xt2)
    (xv3, _), _ = split_arrays(1)
    assert not np.array_equal(xv1, xv3)


def test_stratified_split_keeps_class_proportions():
    _, val, _, info = load_dataset("digits", image_size=8, validation_split=0.2, test_split=0.0)
    for name, n in info.counts["validation"].items():
        total = n + info.counts["train"][name]
        assert n == round(total * 0.2)


def test_arrays_source_grayscale_and_errors():
    x = np.random.default_rng(0).integers(0, 256, (20, 10, 10), dtype=np.uint8)
    y = np.array([0, 1] * 10)
    train, val, _, info = load_dataset((x, y), image_size=12, batch_size=5, validation_split=0.0, test_split=0.0)
    xs, ys = _all(train)
    assert xs.shape == (20, 12, 12, 3) and np.all(xs[..., 0] == xs[..., 2])
    assert val is None and info.class_names == ["0", "1"]
    # arrays cannot fail to load: the size stays known, so Keras's evaluate does not warn "ran out of data"
    _, _, test, _ = load_dataset((x, y), image_size=12, batch_size=3, validation_split=0.0, test_split=0.3, cache=False)
    assert int(train.cardinality()) == 4 and int(test.cardinality()) == 2
    import keras

    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(loss="sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.evaluate(test, verbose=0)
    with pytest.raises(ValueError, match=r"y must be one integer label per image.*y\.shape=\(3,\)"):
        load_dataset((x, y[:3]), test_split=0.0)
    with pytest.raises(ValueError, match=r"x must have shape .* Received: x\.shape=\(20, 10\)"):
        load_dataset((x[:, :, 0], y), test_split=0.0)
    with pytest.raises(ValueError, match=r"Unknown class 7\. Expected ids 0\.\.1 or names: 0, 1"):
        load_dataset((x, y), classes=[0, 7], test_split=0.0)
    with pytest.raises(ValueError, match=r"validation_split must be in \[0, 1\)\. Received: validation_split=1\.5"):
        load_dataset((x, y), validation_split=1.5, test_split=0.0)
    with pytest.raises(ValueError, match=r"image_size must be an int or \(height, width\)"):
        load_dataset((x, y), image_size=(0, 4), test_split=0.0)


def test_augmentation_is_the_model_s_not_the_pipeline_s():
    # Augmenting in the input pipeline hid it from fine_tune's feature cache; build_model(augment=True) holds it.
    with pytest.raises(TypeError, match="unexpected keyword argument 'augment'"):
        load_dataset("digits", augment=True)


def test_file_cache(tmp_path, image_folder):
    root, _, good = image_folder
    prefix = str(tmp_path / "cache" / "run")
    os.makedirs(os.path.dirname(prefix))
    train, _, _, _ = load_dataset(
        str(root), image_size=8, batch_size=4, cache=prefix, validation_split=0.0, test_split=0.0
    )
    assert len(_all(train)[0]) == good
    assert any(name.startswith("run_train") for name in os.listdir(os.path.dirname(prefix)))


def test_fashion_mnist_from_a_local_idx_copy(tmp_path, monkeypatch):
    import gzip

    def write_idx(path, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + array.tobytes())

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    local = fashion_mnist_arrays(folders=(str(tmp_path / "elsewhere"), str(tmp_path)))
    assert local["train"][0].shape == (40, 28, 28) and local["test"][1].tolist() == list(range(10)) * 2
    monkeypatch.setattr(sources, "fashion_mnist_arrays", lambda: local)
    train, val, test, info = load_dataset("fashion_mnist", image_size=28, classes=range(5), validation_split=0.25)
    assert info.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert sum(info.counts["test"].values()) == 10 and sum(info.counts["train"].values()) == 15
    xt, _ = _all(test)
    assert xt.shape == (10, 28, 28, 3)


def test_fashion_mnist_missing_everywhere_names_all_three_places(tmp_path, monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(
        OSError,
        match=r"(?s)Fashion-MNIST is not on this machine.*apt-get install dataset-fashion-mnist"
        r".*Keras's cache.*keras\.datasets\.fashion_mnist\.load_data\(\)",
    ):
        fashion_mnist_arrays(folders=(str(tmp_path / "a"), str(tmp_path / "b")))


def test_tfds_source_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        train, val, test, info = load_dataset("tfds:tf_flowers", image_size=16, batch_size=4, test_split=0.2)
        x, y = _all(train)
    assert info.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert x.shape[1:] == (16, 16, 3) and len(x) == sum(info.counts["train"].values())
    assert sum(sum(c.values()) for c in info.counts.values()) == 20


def test_tfds_not_prepared_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    def hang(self, *args, **kwargs):
        time.sleep(30)  # what a download that retries for minutes looks like

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", hang)
    start = time.time()
    with pytest.raises(
        OSError,
        match=r"TFDS dataset 'tf_flowers' is not prepared in .*\(not prepared within 0\.5 s\).*"
        r"tfds build tf_flowers --data_dir DIR",
    ):
        load_dataset(Tfds("tf_flowers", data_dir=str(tmp_path), deadline_s=0.5))
    assert time.time() - start < 10


def test_validation_and_test_sources_of_their_own_are_used_as_they_are(colour_folder, tmp_path, caplog):
    import shutil

    held_out = write_colour_images(tmp_path / "held_out", ("red", "blue"), seed=1)  # some classes, other order
    with caplog.at_level("WARNING", logger="keras_transfer"):
        train, val, test, info = load_dataset(
            colour_folder, image_size=16, batch_size=8, validation_split=0.25, test=held_out, seed=3
        )
    assert info.sizes == {"train": 27, "validation": 9, "test": 24}  # nothing of the training folder is tested
    assert "The test split has 24 images" in caplog.text and "standard error of up to 10.2 points" in caplog.text
    labels = np.concatenate([y for _, y in test.as_numpy_iterator()])
    names = [info.class_names[i] for i in labels]
    assert names == [p.split(os.sep)[-2] for p in info.files["test"]]  # files in the order the split yields them
    assert set(info.files["test"]).isdisjoint(info.files["train"] + info.files["validation"])
    assert sorted(info.files["train"] + info.files["validation"]) == sorted(
        str(colour_folder / c / f) for c in ("blue", "green", "red") for f in os.listdir(colour_folder / c)
    )
    (tmp_path / "other" / "purple").mkdir(parents=True)
    Image.new("RGB", (48, 56), (128, 0, 128)).save(tmp_path / "other" / "purple" / "0.png")
    shutil.copytree(colour_folder / "red", tmp_path / "other" / "red")
    with pytest.raises(ValueError, match="The validation source .* has classes the training source lacks: purple"):
        load_dataset(colour_folder, image_size=16, validation=tmp_path / "other")


def test_a_folder_with_its_own_splits_says_which_folder_became_which(tmp_path, caplog):
    for seed, split in enumerate(("train", "val", "test")):
        write_colour_images(tmp_path / "photos" / split, ("red", "green"), seed=seed)
    with caplog.at_level("INFO", logger="keras_transfer"):
        _, _, _, info = load_dataset(tmp_path / "photos", image_size=16)
    assert "train/ -> train, val/ -> validation, test/ -> test" in caplog.text
    assert info.sizes == {"train": 24, "validation": 24, "test": 24}


def test_splits_asked_for_that_draw_no_image_are_said(tmp_path, caplog):
    write_colour_images(tmp_path / "one_each", ("red", "green"), n=1)
    with caplog.at_level("WARNING", logger="keras_transfer"):
        _, val, test, info = load_dataset(tmp_path / "one_each", image_size=16, validation_split=0.2, test_split=0.1)
    assert val is None and test is None and info.sizes == {"train": 2, "validation": 0, "test": 0}
    assert "No validation images: validation_split=0.2 of 2 training images drew none" in caplog.text
    assert "No test images: test_split=0.1 of 2 training images drew none" in caplog.text


def test_suspected_label_errors_are_left_out_of_training_or_relabelled(tmp_path):
    root = write_colour_images(tmp_path / "images", n=6)
    _, _, _, info = load_dataset(root, image_size=8, validation_split=0.0, test_split=0.0)
    wrong = sorted(info.files["train"])[:2]
    issues = tmp_path / "label_issues.csv"
    rows = "".join(f"{os.path.relpath(p)},{os.path.basename(os.path.dirname(p))},red,0.01\n" for p in wrong)
    issues.write_text("path,given,suggested,score\n" + rows + "elsewhere/x.png,red,blue,0.1\n")

    train, _, _, kept = load_dataset(root, image_size=8, validation_split=0.0, test_split=0.0, exclude_issues=issues)
    assert kept.sizes["train"] == 16 and not set(wrong) & set(kept.files["train"])
    assert sum(1 for x, _ in train.unbatch()) == 16
    assert {p for p, why in kept.skipped if "suspected label error" in why} == set(wrong)
    _, _, _, same = load_dataset(root, image_size=8, validation_split=0.0, test_split=0.0, exclude_issues=wrong)
    assert same.files["train"] == kept.files["train"]  # a list of paths works as the file does

    train, _, _, moved = load_dataset(root, image_size=8, validation_split=0.0, test_split=0.0, relabel_issues=issues)
    moved_in = sum(1 for p in wrong if os.path.basename(os.path.dirname(p)) != "red")
    assert moved_in and moved.counts["train"]["red"] == 6 + moved_in and moved.sizes["train"] == 18
    labels = np.concatenate([y.numpy() for _, y in train])
    assert np.sum(labels == moved.class_names.index("red")) == 6 + moved_in
    with pytest.raises(ValueError, match=r"exclude_issues or relabel_issues, not both"):
        load_dataset(root, image_size=8, exclude_issues=issues, relabel_issues=issues)
    with pytest.raises(ValueError, match=r"no 'path' column"):
        (tmp_path / "bad.csv").write_text("file,label\na,b\n")
        load_dataset(root, image_size=8, exclude_issues=tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"needs a source of image files"):
        load_dataset("digits", image_size=8, exclude_issues=wrong)
