import json

import keras
import numpy as np
import pytest
from PIL import Image

from keras_transfer import evaluate


def _model_and_data(n_classes=6, n=40):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, 4, 4, 3)).astype("float32")
    y = rng.integers(0, n_classes, n)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(n_classes, activation="softmax")]
    )
    model.layers[-1].set_weights([rng.normal(0, 0.002, (48, n_classes)), np.zeros(n_classes)])
    return model, x, y


def test_report_matches_a_recomputation_and_is_written(tmp_path):
    from sklearn.metrics import f1_score, precision_score, recall_score

    model, x, y = _model_and_data()
    names = [f"c{i}" for i in range(6)]
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    report = evaluate(model, ds, names, output_dir=str(tmp_path))

    probs = model.predict(x, verbose=0).astype(np.float64)
    pred = probs.argmax(1)
    assert report.num_examples == 40
    assert report.accuracy == pytest.approx(np.mean(pred == y))
    assert report.loss == pytest.approx(-np.mean(np.log(probs[np.arange(40), y])), rel=1e-5)
    top3 = np.mean([y[i] in np.argsort(-probs[i])[:3] for i in range(40)])
    assert report.top_k == {
        3: pytest.approx(top3),
        5: pytest.approx(np.mean([y[i] in np.argsort(-probs[i])[:5] for i in range(40)])),
    }
    for i, name in enumerate(names):
        assert report.per_class[name]["support"] == int(np.sum(y == i))
        assert report.per_class[name]["recall"] == pytest.approx(
            recall_score(y, pred, labels=[i], average="macro", zero_division=0)
        )
        assert report.per_class[name]["precision"] == pytest.approx(
            precision_score(y, pred, labels=[i], average="macro", zero_division=0)
        )
    assert report.macro["f1"] == pytest.approx(f1_score(y, pred, labels=range(6), average="macro", zero_division=0))
    confusion = np.zeros((6, 6), int)
    np.add.at(confusion, (y, pred), 1)
    assert report.confusion == confusion.tolist()

    assert json.loads((tmp_path / "report.json").read_text())["accuracy"] == report.accuracy
    text = (tmp_path / "report.txt").read_text()
    assert text.startswith(
        f"40 examples: loss {report.loss:.4f}, accuracy {report.accuracy:.2%}, balanced accuracy "
        f"{report.balanced_accuracy:.2%}, macro F1 {report.macro['f1']:.4f}, top-3"
    )
    assert "macro avg" in text and "weighted avg" in text and "c5" in text
    with Image.open(tmp_path / "confusion.png") as png:
        assert png.size[0] > 100


def test_binary_sigmoid_model_and_errors():
    import tensorflow as tf

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.layers[0].set_weights([np.array([[1.0], [-1.0]]), np.zeros(1)])
    x = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]], "float32")
    report = evaluate(model, tf.data.Dataset.from_tensor_slices((x, np.array([1, 0, 0]))).batch(2), ["no", "yes"])
    assert report.accuracy == pytest.approx(2 / 3) and report.top_k == {}
    with pytest.raises(ValueError, match=r"class_names has 3 names but the model predicts 2 classes"):
        evaluate(model, tf.data.Dataset.from_tensor_slices((x, np.array([1, 0, 0]))).batch(2), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"The dataset to evaluate is empty"):
        evaluate(model, tf.data.Dataset.from_tensor_slices((x[:0], np.array([], int))).batch(2))


def test_linear_probe_separates_an_easy_problem_and_needs_two_classes():
    import tensorflow as tf

    from keras_transfer import build_model
    from keras_transfer.evaluation import linear_probe

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.uniform(0, 60, (60, 32, 32, 3)).astype("float32")
    x[np.arange(60), :, :, y] += 180  # the colour carries the class
    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", 3, input_shape=32, weights=None)
    order = rng.permutation(60)
    train = (
        tf.data.Dataset.from_tensor_slices((x[order[:30]], y[order[:30]])).shuffle(30).batch(8)
    )  # reshuffled per pass
    test = tf.data.Dataset.from_tensor_slices((x[order[30:]], y[order[30:]])).shuffle(30).batch(8)
    assert linear_probe(model, train, test) >= 0.9
    one_class = tf.data.Dataset.from_tensor_slices((x[:5], np.zeros(5, int))).batch(5)
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe(model, one_class, test)
