import json
import os

import numpy as np
import pytest
from PIL import Image

import keras_transfer as kt
from keras_transfer.retrieval import FeatureIndex, retrieval_metrics


@pytest.fixture
def photo_folder(tmp_path):
    """12 generated PNGs in two subfolders, each different, plus one corrupt file."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "blue")):
        os.makedirs(tmp_path / "photos" / name)
        for i in range(6):
            pixels = rng.integers(0, 120, (40 + i, 48, 3), dtype=np.uint8)
            pixels[..., 2 * c] += 120
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.png")
    (tmp_path / "photos" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path / "photos"


@pytest.fixture
def index(photo_folder):
    model = kt.build_model("resnet50", 2, input_shape=32, weights=None)
    built = FeatureIndex(model)
    assert built.add(photo_folder) == 12  # the corrupt file is skipped
    return built


def test_each_indexed_image_finds_itself_first(index, photo_folder):
    for path in index.paths:
        hits = index.query(path, k=3)
        assert hits[0]["path"] == path
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    with open(index.paths[3], "rb") as f:
        assert index.query(f.read(), k=1)[0]["index"] == 3


def test_exact_search_matches_brute_force_and_faiss_agrees(index):
    pytest.importorskip("faiss")
    queries = index.embeddings[[0, 5, 7]]
    scores, ids = index.search_vectors(queries, 4)
    brute = np.argsort(-(queries @ index.embeddings.T), axis=1)[:, :4]
    np.testing.assert_array_equal(ids, brute)
    index.search = "faiss"
    approx_scores, approx_ids = index.search_vectors(queries, 4)
    np.testing.assert_array_equal(approx_ids[:, 0], [0, 5, 7])  # a dozen vectors: HNSW finds the exact answer
    np.testing.assert_allclose(approx_scores, scores, atol=1e-5)


@pytest.mark.slow
def test_incremental_add_and_save_load_round_trip(index, tmp_path, rgb_images):
    extra = rgb_images(3, 40, seed=5)
    assert index.add(extra, labels=[7, 7, 8]) == 3
    assert len(index) == 15 and index.paths[-1] is None and list(index.labels[-3:]) == [7, 7, 8]
    saved = index.save(tmp_path / "index")
    loaded = FeatureIndex.load(saved)
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert loaded.paths == index.paths and list(loaded.labels) == list(index.labels)
    # The reloaded embedding model embeds new queries exactly like the original.
    np.testing.assert_allclose(loaded.embed(extra), index.embed(extra), atol=1e-5)
    assert loaded.query(extra[1], k=2) == index.query(extra[1], k=2)
    with open(os.path.join(saved, "index.json")) as f:
        assert json.load(f)["dim"] == 2048


def test_bad_queries_and_sources_are_clear_errors(index, tmp_path):
    with pytest.raises(ValueError, match=r"is not a readable JPEG, PNG"):
        index.query(b"GIF89a garbage", k=1)
    with pytest.raises(ValueError, match=r"Cannot read the image '.*missing.png': no such file"):
        index.query(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"Received: an array of shape \(2, 5\)"):
        index.query(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"k must be a positive integer. Received: k=0"):
        index.query(index.paths[0], k=0)
    with pytest.raises(ValueError, match=r"Got 2 labels for 3 images"):
        index.add(np.zeros((3, 32, 32, 3)), labels=[1, 2])
    with pytest.raises(ValueError, match=r"No readable images in"):
        os.makedirs(tmp_path / "empty")
        index.add(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"The index is empty"):
        FeatureIndex("small_cnn", weights=None).query(np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match=r"Unknown search 'annoy'"):
        FeatureIndex("small_cnn", weights=None, search="annoy")
    with pytest.raises(ValueError, match=r"is not a saved FeatureIndex"):
        FeatureIndex.load(tmp_path)


def _brute_force_metrics(embeddings, labels, k):
    recalls, aps = [], []
    for q in range(len(labels)):
        others = [i for i in range(len(labels)) if i != q]
        ranked = sorted(others, key=lambda i: (-float(embeddings[q] @ embeddings[i]), i))
        rel = [labels[i] == labels[q] for i in ranked]
        if not any(rel):
            continue
        recalls.append(any(rel[:k]))
        precisions = [sum(rel[: r + 1]) / (r + 1) for r in range(len(rel)) if rel[r]]
        aps.append(np.mean(precisions))
    return np.mean(recalls), np.mean(aps)


def test_recall_at_k_and_map_match_a_brute_force_recomputation():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, 4, 40)
    labels[-1] = 9  # a class of one: no relevant item, left out
    got = retrieval_metrics(embeddings, labels, ks=(1, 5))
    for k in (1, 5):
        recall, mean_ap = _brute_force_metrics(embeddings, labels, k)
        assert got[f"recall@{k}"] == pytest.approx(recall)
    assert got["mAP"] == pytest.approx(mean_ap)


def test_digits_features_retrieve_same_class_images():
    train, _, _, info = kt.load_dataset("digits", image_size=32, batch_size=64, validation_split=0.0)
    index = FeatureIndex(kt.build_model("small_cnn", 10, input_shape=32, weights=None))
    index.add(train.take(4))
    metrics = retrieval_metrics(index.embeddings, index.labels)
    assert len(index) == 256 and set(index.labels) == set(range(10))
    # Even random convolutional features retrieve digits far above the 10% a random ranking gives.
    assert metrics["recall@1"] > 0.5 and metrics["mAP"] > 0.15


def _retrieve_script():
    from keras_transfer import cli

    return lambda argv: cli.main(["retrieve", *argv])


@pytest.mark.slow
def test_retrieve_script_indexes_queries_adds_and_evaluates(photo_folder, tmp_path, capsys):
    retrieve = _retrieve_script()
    model_file = tmp_path / "model.keras"
    kt.build_model("resnet50", 2, input_shape=32, weights=None).save(model_file)
    index_dir = tmp_path / "index"
    assert retrieve(["index", str(photo_folder / "red"), "--model", str(model_file), "--index", str(index_dir)]) == 0
    assert "indexed 6 images" in capsys.readouterr().out
    assert retrieve(["index", str(photo_folder / "blue"), "--model", "unused", "--index", str(index_dir), "--add"]) == 0
    assert "12 in" in capsys.readouterr().out
    query = str(photo_folder / "blue" / "2.png")
    assert retrieve(["query", str(index_dir), query, "--k", "3", "--json", "--output", str(tmp_path / "r.json")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "r.json").read_text()) == results
    assert results[0]["query"] == query and results[0]["results"][0]["path"] == query
    assert len(results[0]["results"]) == 3
    assert retrieve(["evaluate", str(index_dir)]) == 0
    assert "12 images, 2 classes: recall@1" in capsys.readouterr().out
    assert retrieve(["index", str(photo_folder), "--model", "resnet5", "--index", str(tmp_path / "x")]) == 2
    assert "--model must be a backbone key" in capsys.readouterr().err
