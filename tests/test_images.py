"""The one image decoder and the byte checks: EXIF orientation, bad files, the pixel limit, size-aware JPEG
decoding and the decode groups of a folder."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import encode
from PIL import Image

import keras_transfer as kt
from keras_transfer import images
from keras_transfer.data import pipeline


def _jpeg(array, orientation=None, big_endian=False):
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if orientation and not big_endian:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(buf, "JPEG", exif=exif, quality=95)
        return buf.getvalue()
    image.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    if not orientation:
        return data
    # A Motorola-order (big-endian) EXIF segment written by hand: one entry, tag 0x0112, type SHORT.
    tiff = (
        b"MM\x00\x2a\x00\x00\x00\x08"
        + b"\x00\x01"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01"
        + orientation.to_bytes(2, "big")
        + b"\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    app1 = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]


ASYMMETRIC = np.zeros((40, 60, 3), np.uint8)
ASYMMETRIC[:20, :30] = (255, 0, 0)
ASYMMETRIC[20:, 30:] = (0, 0, 255)
ASYMMETRIC[:6, 50:] = 255


@pytest.mark.slow
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_wherever_images_are_decoded(orientation, tmp_path):
    from PIL import ImageOps

    from keras_transfer import images

    blob = _jpeg(ASYMMETRIC, orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(blob))).convert("RGB"), np.float32)
    # the one decoder: eagerly (predict, retrieval), inside tf.data (folders) and in the exported signature
    assert np.abs(images.image_array(blob) - upright).mean() < 2
    by_hand = _jpeg(ASYMMETRIC, orientation, big_endian=True)
    assert np.abs(images.image_array(by_hand) - upright).mean() < 2
    for b in (blob, by_hand):  # the header reader the folder listing uses reads the tag the decoder reads
        assert images.jpeg_header(b)[2] == int(images.exif_orientation(b)) == orientation
    for name, b in (("a", blob), ("b", by_hand)):  # two encodings of one photo: two images, not one listed twice
        (tmp_path / name).mkdir()
        (tmp_path / name / "photo.jpg").write_bytes(b)
    train, _, _, _ = kt.load_dataset(str(tmp_path), image_size=upright.shape[:2], batch_size=2, validation_split=0.0)
    np.testing.assert_allclose(next(iter(train))[0][0].numpy(), images.image_array(blob), atol=1.0)
    model = kt.build_model("small_cnn", 2, input_shape=(upright.shape[0], upright.shape[1]), weights=None)
    path = kt.export_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(path).signatures["serve_bytes"](image_bytes=tf.constant([blob]))["probabilities"]
    np.testing.assert_allclose(served.numpy(), model.predict(upright[None], verbose=0), atol=2e-3)


def _png_with_header(width, height):
    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )


def test_counts_equal_what_iterating_yields_over_a_corpus_of_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(4):
            path = tmp_path / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
            good.append(path)
    whole = good[0].read_bytes()
    damaged = bytearray(whole)
    damaged[60] ^= 0xFF  # inside the image data: the checksum no longer matches
    jpeg = _jpeg(ASYMMETRIC)
    corpus = {
        "empty.png": b"",
        "cut.png": whole[:-30],
        "cut.jpg": jpeg[:-50],
        "notes.jpg": b"just text",
        "bomb.png": _png_with_header(60000, 60000),
        "damaged.png": bytes(damaged),
    }
    for name, data in corpus.items():
        (tmp_path / "cat" / name).write_bytes(data)
    odd = os.path.join(os.fsencode(tmp_path / "dog"), b"caf\xe9-\xff.jpg")  # not UTF-8: Latin-1 and a stray byte
    with open(odd, "wb") as f:
        f.write(jpeg)
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"\xe9t\xe9"))  # a class folder whose name is not UTF-8
    with open(os.path.join(os.fsencode(tmp_path), b"\xe9t\xe9", b"1.jpg"), "wb") as f:
        f.write(_jpeg(ASYMMETRIC[::-1]))  # another image: the same one in two classes is refused
    train, val, test, info = kt.load_dataset(
        str(tmp_path), image_size=16, batch_size=2, validation_split=0.3, test_split=0.2, cache=False
    )
    reasons = {os.path.basename(p): r for p, r in info.skipped}
    assert set(reasons) == set(corpus), reasons
    assert "60000x60000 pixels is above the limit of 89,478,485" in reasons["bomb.png"]
    assert "checksum of chunk 'IDAT' does not match" in reasons["damaged.png"]
    assert info.class_names == sorted(["cat", "dog", "\\xe9t\\xe9"])
    for split, ds in (("train", train), ("validation", val), ("test", test)):
        yielded = np.concatenate([y for _, y in ds]) if ds is not None else np.array([], int)
        assert sum(info.counts[split].values()) == len(yielded), split
        assert [info.counts[split][c] for c in info.class_names] == [int(np.sum(yielded == i)) for i in range(3)]
    assert sum(sum(c.values()) for c in info.counts.values()) == 8 + 1 + 1  # the odd names load
    str(info)  # printable, odd names and all


def test_the_pixel_limit_is_configurable(tmp_path, monkeypatch):
    from keras_transfer import images

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    assert images.image_problem(str(path)) is None
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    assert images.image_problem(str(path)) == (
        "40x30 pixels is above the limit of 1,000 (a decompression bomb; raise "
        "keras_transfer.images.MAX_PIXELS to allow it)"
    )


def _photo(height, width, seed=0):
    """A photo-like JPEG: one of scikit-learn's sample photos resized, with noise."""
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[seed % 2]).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(photo, np.float32) + np.random.default_rng(seed).normal(0, 4, (height, width, 3))
    return encode(np.clip(noisy, 0, 255), "JPEG", quality=90)


@pytest.mark.parametrize(
    "stored,target,ratio,limit",
    [
        ((1600, 2400), (224, 224), 4, 2.0),  # the benchmark's photo size
        ((300, 400), (224, 224), 1, 2.0),  # and its small size: no reduction possible
        ((460, 700), (224, 224), 2, 2.0),
        ((900, 1200), (100, 150), 8, 5.0),  # a 1/8 decode landing on the target itself: measured 3.8
    ],
)
def test_size_aware_jpeg_decoding_is_close_to_a_full_decode_and_never_upsamples(
    stored, target, ratio, limit, monkeypatch
):
    from keras_transfer import images

    blob = _photo(*stored)
    fast = images.image_array(blob, size=target)
    full = images.image_array(blob, size=target, dct_scaling=False)
    assert fast.shape == full.shape == (*target, 3)
    assert np.abs(fast - full).mean() <= limit
    # the ratio it chose is the largest whose output still covers the target on both sides
    chosen = max(r for r in (1, 2, 4, 8) if all(-(-s // r) >= t for s, t in zip(stored, target)))
    assert chosen == ratio


@pytest.mark.slow
def test_folder_decoding_groups_jpegs_by_decode_and_gives_what_decode_image_gives(tmp_path):
    from keras_transfer import images

    size = (112, 112)
    blobs = [
        _photo(300, 400),
        _photo(1000, 1000, seed=1),
        _photo(200, 210),
        _photo(240, 300, seed=1),  # ratios 2, 8, 1, 2
        _jpeg(ASYMMETRIC, orientation=6),  # turned: the general decoder
        _jpeg(np.full((50, 70), 90, np.uint8)),  # grayscale JPEG: RGB like the others
        _photo(200, 260)[:400] + bytes(range(256)) * 8 + b"\xff\xd9",  # passes the byte check, fails to decode
    ]
    blobs.insert(2, encode(ASYMMETRIC))
    paths = []
    for i, blob in enumerate(blobs):
        suffix = ".png" if blob.startswith(b"\x89PNG") else ".jpg"
        paths.append(os.fsencode(tmp_path / f"{i}{suffix}"))
        with open(paths[-1], "wb") as f:
            f.write(blob)
    keys = [images.file_decode_key(p, size) for p in paths]
    # the PNG: the decoder of images that are not JPEGs; the turned JPEG: the general decoder (None)
    assert keys[:6] == [(2, True), (8, True), "other", (1, False), (2, True), None]
    got = list(pipeline.decode_files(paths, np.arange(len(paths)), size).as_numpy_iterator())
    assert [label for _, label in got] == [0, 1, 2, 3, 4, 5, 6]  # in order, the undecodable file dropped
    for image, label in got:  # bit-identical to the one decoder, labels still beside their images
        np.testing.assert_array_equal(image, images.image_array(blobs[label], size=size))
    floats = pipeline.decode_files(paths, np.arange(len(paths)), size, dtype=tf.float32)  # uncached pipelines
    for (image, label), (value, same) in zip(got, floats.as_numpy_iterator(), strict=True):
        assert value.dtype == np.float32 and label == same
        np.testing.assert_array_equal(value, image.astype(np.float32))
    shuffled = pipeline.decode_files(paths, np.arange(len(paths)), size, shuffle_seed=0)
    passes = [list(shuffled.as_numpy_iterator()) for _ in range(60)]  # each pass decodes: 0.4 s
    for image, label in passes[0]:
        np.testing.assert_array_equal(image, images.image_array(blobs[label], size=size))
    orders = [tuple(int(label) for _, label in p) for p in passes]
    assert all(sorted(order) == [0, 1, 2, 3, 4, 5, 6] for order in orders) and len(set(orders)) > 50
    firsts = np.bincount([order[0] for order in orders], minlength=7)  # a uniform shuffle across the 5 groups:
    assert firsts.min() >= 2 and firsts.max() <= 20, firsts  # each file first in about 1 of 7 passes (60 / 7 = 8.6)


def test_jpegs_are_judged_by_decoding_not_by_their_tail(tmp_path):
    # Photos from some phones and scanners end in padding or other data after the end-of-image marker: they
    # decode, so they are kept; one cut short is not.
    photo = encode(np.random.default_rng(0).integers(0, 256, (60, 80, 3)), "JPEG", quality=90)
    for name, blob in (("padded", photo + bytes(250_000)), ("trailing", photo + b"x" * 5000), ("cut", photo[:-600])):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"{name}.jpg").write_bytes(blob)
    assert [images.image_problem(tmp_path / "a" / f"{n}.jpg") for n in ("padded", "trailing")] == [None, None]
    assert images.image_problem(tmp_path / "a" / "cut.jpg") == "truncated JPEG (no end-of-image marker)"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "other.jpg").write_bytes(photo)
    train, _, _, info = kt.load_dataset(tmp_path, image_size=32, batch_size=8, validation_split=0.0)
    assert info.sizes["train"] == 3 and [p.rsplit("/", 1)[-1] for p, _ in info.skipped] == ["cut.jpg"]
    assert sum(len(x) for x, _ in train) == 3  # the padded ones decode in the pipeline too


def test_images_unlikely_to_be_photos_of_the_task_are_kept_and_listed(colour_folder, tmp_path):
    import shutil

    shutil.copytree(colour_folder, tmp_path / "photos")
    Image.new("RGB", (120, 90), (200, 200, 200)).save(tmp_path / "photos" / "red" / "sorry.gif")  # a placeholder
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "photos" / "green" / "pixel.png")
    _, _, _, info = kt.load_dataset(tmp_path / "photos", image_size=16, test_split=0.0)
    assert sum(info.sizes.values()) == 38 and not info.skipped  # kept
    assert sorted((os.path.basename(p), why.split(":")[0]) for p, why in info.outliers) == [
        ("pixel.png", "1x1 pixels"),
        ("sorry.gif", "a GIF"),
    ]
