import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SUBPROCESS_ENV, free_ports

import keras_transfer as kt
from keras_transfer.models import feature_model, head_model
from keras_transfer.runs import read_history, read_state

ENV = SUBPROCESS_ENV


def _weights(layer):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]


def _digits(n_classes=3, per_class=8, batch_size=16, **kwargs):
    return kt.load_dataset(
        "digits",
        image_size=32,
        batch_size=batch_size,
        classes=range(n_classes),
        labels_per_class=per_class,
        deterministic=True,
        **kwargs,
    )


def test_two_stages_with_continuous_epochs_and_the_policy_applied_in_stage_two():
    train, val, _, _ = _digits(validation_split=0.2)
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None, dense_units=(8,))
    backbone = model.get_layer("backbone")
    before = {name: _weights(backbone.get_layer(name)) for name in ("block1_conv1", "block5_conv3")}
    head_before = _weights(model.get_layer("predictions"))

    history = kt.fine_tune(model, train, val, head_epochs=2, fine_tune_epochs=1, unfreeze="from:block5")

    assert history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    np.testing.assert_array_equal(before["block1_conv1"][0], _weights(backbone.get_layer("block1_conv1"))[0])
    assert not np.array_equal(before["block5_conv3"][0], _weights(backbone.get_layer("block5_conv3"))[0])
    assert not np.array_equal(head_before[0], _weights(model.get_layer("predictions"))[0])
    schedule = model.optimizer.learning_rate
    assert isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert model.optimizer._learning_rate.warmup_target == pytest.approx(1e-4)  # the default stage-2 peak rate
    assert float(schedule) <= 1e-4


@pytest.mark.slow
def test_cached_features_train_the_same_head_as_plain_fit():
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=8, validation_split=0.0, deterministic=True)
    models = {}
    for cache in (False, True):
        keras.utils.set_random_seed(0)
        models[cache] = kt.build_model("resnet50", 3, input_shape=32, weights=None, dense_units=(16,))
        # SGD: Adam's g / sqrt(v) turns float-rounding differences in near-zero gradients into full steps.
        kt.fine_tune(
            models[cache],
            train,
            head_epochs=3,
            fine_tune_epochs=0,
            optimizer="sgd",
            learning_rate=1e-4,
            cache_features=cache,
        )
    full = models[True].predict(x, verbose=0)
    np.testing.assert_allclose(full, models[False].predict(x, verbose=0), atol=1e-4)
    # The full model and the head on cached features are one set of weights.
    features = feature_model(models[True]).predict(x, verbose=0)
    np.testing.assert_allclose(head_model(models[True]).predict(features, verbose=0), full, atol=1e-6)


def test_a_model_that_augments_is_not_feature_cached_and_says_why(caplog):
    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None, augment=True)
    assert not hasattr(train, "keras_transfer_augmented")  # nothing hidden on the dataset
    with caplog.at_level("INFO", logger="keras_transfer"):
        kt.fine_tune(model, train.take(2), head_epochs=1, fine_tune_epochs=0)
    assert "Stage 1: head on a frozen backbone for 1 epoch\n" in caplog.text + "\n"
    assert "the model augments its images" in caplog.text
    plain = kt.build_model("vgg16", 3, input_shape=32, weights=None)
    caplog.clear()
    with caplog.at_level("INFO", logger="keras_transfer"):
        kt.fine_tune(plain, train.take(2), head_epochs=1, fine_tune_epochs=0)
    assert "(cached backbone features)" in caplog.text and "the model has no augmentation layer" in caplog.text


def test_lines_mode_logs_about_ten_lines_per_long_stage(caplog):
    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    with caplog.at_level("INFO", logger="keras_transfer"):
        kt.fine_tune(model, train.take(1), head_epochs=25, fine_tune_epochs=2, unfreeze="all", verbose="lines")
    head = [line for line in caplog.messages if "  head  " in line]
    tune = [line for line in caplog.messages if "  tune  " in line]
    # Stage 1 has 25 epochs: every 3rd and the last; stage 2 has 2: both. Each line names loss and accuracy.
    assert [line.split()[1] for line in head] == [f"{e}/27" for e in (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert [line.split()[1] for line in tune] == ["26/27", "27/27"]
    assert all("loss" in line and "accuracy" in line for line in head + tune)
    with pytest.raises(ValueError, match="verbose must be 'auto', 'lines', 0, 1 or 2. Received: verbose='loud'"):
        kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, verbose="loud")


def test_head_init_probe_starts_stage_one_at_the_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    images, labels = (np.concatenate(parts) for parts in zip(*[(x.numpy(), y.numpy()) for x, y in train]))
    features = np.asarray(feature_model(model).predict(images, verbose=0))
    # learning rate 1e-12 (Adam steps by about the rate): stage 1 runs and caches but leaves the head in place.
    kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, learning_rate=1e-12, head_init="probe", verbose=0)
    scale = np.mean(np.linalg.norm(features, axis=1))
    expected = LogisticRegression(C=10.0, max_iter=2000).fit(features / scale, labels).predict_proba(features / scale)
    # atol: with fewer images than features the probe fits in their span, the same optimum to the solver's tolerance
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=3e-3)

    with pytest.raises(ValueError, match="head_init must be None, 'probe' or 'auto'. Received: head_init='lp'"):
        kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, head_init="lp")
    # With augmentation (stage 1 runs the backbone every epoch) the probe is still fitted, on the images as they
    # are: augmentation acts in training only.
    augmented = kt.build_model("small_cnn", 3, input_shape=32, weights=None, augment=True)
    kt.set_trainable(augmented, "frozen")
    before = augmented.predict(images, verbose=0)
    kt.fine_tune(augmented, train, head_epochs=1, fine_tune_epochs=0, learning_rate=1e-12, head_init="probe", verbose=0)
    features = np.asarray(feature_model(augmented).predict(images, verbose=0))
    scale = np.mean(np.linalg.norm(features, axis=1))
    expected = LogisticRegression(C=10.0, max_iter=2000).fit(features / scale, labels).predict_proba(features / scale)
    assert not np.allclose(before, expected, atol=3e-2)  # far from the probe before stage 1
    np.testing.assert_allclose(augmented.predict(images, verbose=0), expected, atol=3e-3)
    deep = kt.build_model("small_cnn", 3, input_shape=32, weights=None, dense_units=(8,))
    with pytest.raises(ValueError, match="without hidden dense layers"):
        kt.fine_tune(deep, train, head_epochs=1, fine_tune_epochs=0, head_init="probe")


def test_label_smoothing_and_bad_arguments():
    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None)
    history = kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=0, label_smoothing=0.1)
    assert np.isfinite(history.history["loss"][0])
    assert "val_cross_entropy" not in history.history  # no validation split
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adagrad'\. Expected one of: adam, adamw, sgd, rmsprop"):
        kt.fine_tune(model, train, optimizer="adagrad")
    with pytest.raises(ValueError, match=r"fine_tune_epochs must be an integer >= 0\. Received: fine_tune_epochs=-1"):
        kt.fine_tune(model, train, fine_tune_epochs=-1)
    with pytest.raises(ValueError, match=r"No backbone layer name starts with 'block9'"):
        kt.fine_tune(model, train, unfreeze="from:block9")  # refused before stage 1 spends any time
    with pytest.raises(ValueError, match=r"cache_features must be 'auto', True or False"):
        kt.fine_tune(model, train, cache_features="yes")


def test_with_label_smoothing_the_run_watches_the_plain_validation_cross_entropy(tmp_path):
    # The smoothed loss rewards an unsure model; early stopping and the best checkpoint watch the plain
    # cross-entropy of the validation images, recorded beside the loss.
    train, val, _, _ = _digits(validation_split=0.3)
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None)
    history = kt.fine_tune(
        model, train, val, head_epochs=2, fine_tune_epochs=0, label_smoothing=0.2, run_dir=tmp_path, verbose="lines"
    ).history
    images, labels = map(np.concatenate, zip(*[(x, y) for x, y in val]))
    p = model.predict(images, verbose=0)
    plain = -np.mean(np.log(np.clip(p[np.arange(len(labels)), labels.astype(int)], 1e-7, 1)))
    assert history["val_cross_entropy"][-1] == pytest.approx(plain, rel=1e-3)
    assert history["val_cross_entropy"][-1] < history["val_loss"][-1]  # the smoothed loss is higher
    assert read_state(tmp_path)["best"]["monitor"] == "val_cross_entropy"


RESUME_SCRIPT = """
import json, os, signal, sys
import keras
import keras_transfer as kt

run_dir, kill_after = sys.argv[1], int(os.environ.get("KILL_AFTER_EPOCH", "-1"))

class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

keras.utils.set_random_seed(0)
train, val, _, _ = kt.load_dataset("digits", image_size=32, batch_size=16, classes=range(3), labels_per_class=16,
                                   validation_split=0.2, deterministic=True)
model = kt.build_model("vgg16", 3, input_shape=32, weights=None)
history = kt.fine_tune(model, train, val, head_epochs=1, fine_tune_epochs=3, unfreeze="from:block5", run_dir=run_dir,
                       callbacks=[Kill()])
with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump({"epochs": history.epoch, "iterations": int(model.optimizer.iterations.numpy())}, f)
"""


@pytest.mark.slow
def test_killed_run_resumes_at_the_next_epoch_with_optimizer_state(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    run_dir = tmp_path / "run"
    first = subprocess.run(
        [sys.executable, str(script), str(run_dir)],
        env={**ENV, "KILL_AFTER_EPOCH": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert not (run_dir / "result.json").exists()
    epochs_logged = [line.split(",")[0] for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert epochs_logged == ["0", "1", "2"]

    second = subprocess.run(
        [sys.executable, str(script), str(run_dir)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs"] == [3]  # only the epoch that was left
    # 48 training images in batches of 16: 3 steps per epoch. The stage-2 optimizer counted the two epochs
    # before the kill, so its state was restored rather than started again.
    assert result["iterations"] == 3 * 3
    lines = (run_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines if line[0].isdigit()] == ["0", "1", "2", "3"]
    assert (run_dir / "checkpoints" / "best.keras").exists()
    assert os.listdir(run_dir / "logs")


MIRRORED_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import keras_transfer as kt

x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
y = np.arange(16) % 2
results = {}
for name in ("default", "mirrored"):
    strategy = kt.get_strategy(name)
    train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=16, validation_split=0.0, deterministic=True)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = kt.build_model("vgg16", 2, input_shape=32, weights=None)
    history = kt.fine_tune(model, train, head_epochs=2, fine_tune_epochs=1, unfreeze="from:block5", strategy=strategy,
                           learning_rate=1e-2, fine_tune_learning_rate=1e-3)
    results[name] = {"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"],
                     "weights": [w.tolist() for w in (model.get_layer("predictions").get_weights()
                                 + model.get_layer("backbone").get_layer("block5_conv3").get_weights())]}
json.dump(results, sys.stdout)
"""


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.array(u) - np.array(v)))) for u, v in zip(a, b))


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpu_devices_trains_like_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["default"]["replicas"] == 1 and results["mirrored"]["replicas"] == 2
    # Two replicas of 8 images each, gradients all-reduced: the same losses and weights as one device on 16.
    np.testing.assert_allclose(results["mirrored"]["loss"], results["default"]["loss"], rtol=1e-4)
    assert _max_diff(results["default"]["weights"], results["mirrored"]["weights"]) < 1e-4


WORKER_SCRIPT = """
import json, os, sys
import numpy as np
import keras
import keras_transfer as kt

strategy = kt.get_strategy(sys.argv[1])
x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
y = np.arange(16) % 2
train, _, _, _ = kt.load_dataset((x, y), image_size=32, batch_size=8, validation_split=0.0, deterministic=True)
keras.utils.set_random_seed(0)
with strategy.scope():
    model = kt.build_model("vgg16", 2, input_shape=32, weights=None)
history = kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=1, unfreeze="from:block5", strategy=strategy,
                       learning_rate=1e-2, fine_tune_learning_rate=1e-3)
backbone = model.get_layer("backbone")
weights = model.get_layer("predictions").get_weights() + backbone.get_layer("block5_conv3").get_weights()
with open(sys.argv[2], "w") as f:
    json.dump({"replicas": strategy.num_replicas_in_sync, "epochs": history.epoch,
               "weights": [w.tolist() for w in weights]}, f)
"""


@pytest.mark.slow
def test_multi_worker_strategy_two_local_workers_train_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for i in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        workers.append(
            subprocess.Popen(
                [sys.executable, str(script), "multi_worker", str(tmp_path / f"w{i}.json")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]
    assert results[0]["epochs"] == results[1]["epochs"] == [0, 1]
    assert _max_diff(results[0]["weights"], results[1]["weights"]) == 0.0
    for a, b in zip(results[0]["weights"], _initial_weights()):
        assert not np.allclose(np.array(a), b)  # they trained, identically


def _initial_weights():
    keras.utils.set_random_seed(0)
    model = kt.build_model("vgg16", 2, input_shape=32, weights=None)
    return (
        model.get_layer("predictions").get_weights()
        + model.get_layer("backbone").get_layer("block5_conv3").get_weights()
    )


def test_mixed_precision_training_keeps_float32_outputs():
    from keras_transfer.distribute import set_mixed_precision

    set_mixed_precision("auto")  # mixed_bfloat16 on this CPU; the conftest fixture resets the policy
    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("vgg16", 3, input_shape=32, weights=None, dense_units=(8,))
    assert model.get_layer("head_dense_0").compute_dtype == "bfloat16"
    history = kt.fine_tune(model, train, head_epochs=1, fine_tune_epochs=1, unfreeze="from:block5")
    assert all(np.isfinite(history.history["loss"]))
    images, _ = next(iter(train))
    assert model(images).dtype == "float32"


def test_recompute_batchnorm_sets_the_dataset_statistics():
    from keras_transfer.training import recompute_batchnorm

    x = np.random.default_rng(0).uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    import tensorflow as tf

    train = tf.data.Dataset.from_tensor_slices(x).batch(4)  # in order: per-batch variances depend on the batches
    model = kt.build_model("resnet50", 2, input_shape=32, weights=None)
    kt.set_trainable(model, "all", train_batchnorm=True)
    assert recompute_batchnorm(model, train) == 53
    backbone = model.get_layer("backbone")
    bn = backbone.get_layer("conv1_bn")
    # The input of conv1_bn over the whole dataset, computed directly.
    inner = keras.Model(backbone.input, backbone.get_layer("conv1_conv").output)
    activations = inner(model.get_layer("preprocessing")(x)).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), activations.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-3)
    per_batch_var = np.mean([activations[i : i + 4].var(axis=(0, 1, 2)) for i in range(0, 12, 4)], axis=0)
    np.testing.assert_allclose(bn.moving_variance.numpy(), per_batch_var, rtol=1e-3, atol=1e-3)
    assert bn.momentum == 0.99  # restored


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(learning_rate=0.0),
            r"learning_rate must be a number > 0 or a learning-rate schedule\. Received: learning_rate=0\.0",
        ),
        (dict(fine_tune_learning_rate=-1.0), r"fine_tune_learning_rate must be a number > 0 .*=-1\.0"),
        (dict(learning_rate="0.1"), r"learning_rate must be a number > 0 .*='0\.1'"),
        (dict(head_epochs=1.5), r"head_epochs must be an integer >= 0\. Received: head_epochs=1\.5"),
        (
            dict(optimizer="adamx"),
            r"Unknown optimizer 'adamx'\. Expected one of: adam, adamw, sgd, rmsprop\. Received: optimizer='adamx'",
        ),
        (dict(label_smoothing=1.0), r"label_smoothing must be a number in \[0, 1\)\. Received: label_smoothing=1\.0"),
        (dict(cache_features="yes"), r"cache_features must be 'auto', True or False"),
        (dict(head_init="lp"), r"head_init must be None, 'probe' or 'auto'"),
    ],
)
def test_bad_settings_fail_before_any_training(kwargs, message):
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    with pytest.raises(ValueError, match=message):
        kt.fine_tune(model, None, **kwargs)  # checked before the data is touched


def test_options_group_the_less_common_settings_and_old_names_are_errors():
    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    options = kt.training.TrainingOptions(optimizer="sgd", label_smoothing=0.1)
    history = kt.fine_tune(
        model, train.take(1), head_epochs=1, fine_tune_epochs=1, unfreeze="all", options=options, verbose=0
    )
    assert history.epoch == [0, 1]
    assert type(model.optimizer).__name__ == "SGD"
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'optimiser'; options are: cache_features"):
        kt.fine_tune(model, train, optimiser="sgd")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'epochs'"):
        kt.fine_tune(model, train, epochs=1)


def test_xla_stays_off_by_default_on_a_cpu_only_machine():
    # On this project's CPUs XLA made EfficientNet-Lite0 prediction 13-14x slower; "auto" leaves it to Keras, whose
    # "auto" is off without an accelerator. On GPUs it is the user's choice (TrainingOptions(jit_compile=True)).
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: 'auto' may turn XLA on there")
    train, _, _, _ = _digits(validation_split=0.0)
    model = kt.build_model("small_cnn", 3, input_shape=32, weights=None)
    kt.fine_tune(model, train.take(1), head_epochs=0, fine_tune_epochs=1, unfreeze="all", verbose=0)
    assert model.jit_compile is False
    kt.fine_tune(model, train.take(1), head_epochs=0, fine_tune_epochs=1, unfreeze="all", verbose=0, jit_compile=True)
    assert model.jit_compile is True  # the user's choice is passed through


class _Counts(keras.callbacks.Callback):
    """What a user's callback sees: epoch numbers, training batches and validations."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.epochs, self.batches, self.validations, self.stop_after = [], 0, 0, stop_after

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_test_begin(self, logs=None):
        self.validations += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        if epoch == self.stop_after:
            raise KeyboardInterrupt("stopped by the test")


def _six_images():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (6, 32, 32, 3)).astype("float32"), np.arange(6) % 2
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(2)  # 3 batches


@pytest.mark.parametrize(
    ("batches", "epochs", "passes"),
    [
        (1, 200, 20),
        (1, 400, 20),
        (1, 30, 3),
        (5, 200, 4),
        (3, 14, 1),
        (1, 29, 1),
        (25, 100, 1),
        (4, 0, 1),
    ],
)
def test_passes_per_epoch_fill_about_twenty_steps_and_keep_ten_groups(batches, epochs, passes):
    from keras_transfer.callbacks import passes_per_epoch

    assert passes_per_epoch(batches, epochs) == passes


def test_long_stages_on_a_small_training_set_run_in_groups_with_the_same_optimizer_steps(tmp_path, caplog):
    data = _six_images()
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    counts = _Counts()
    with caplog.at_level("INFO", logger="keras_transfer"):
        history = kt.fine_tune(
            model,
            data,
            data,
            head_epochs=20,
            fine_tune_epochs=30,
            unfreeze="all",
            run_dir=tmp_path,
            callbacks=[counts],
            verbose="lines",
        )
    # 3 batches: stage 1 in 10 groups of 2 epochs, stage 2 in 10 groups of 3; numbered as the user counts epochs.
    expected = list(range(1, 20, 2)) + list(range(22, 50, 3))
    assert history.epoch == counts.epochs == expected
    assert all(len(values) == 20 for values in history.history.values())
    assert counts.batches == 20 * 3 + 30 * 3 and counts.validations == 20
    assert int(model.optimizer.iterations.numpy()) == 30 * 3  # stage 2's schedule saw every step
    assert sorted(read_history(tmp_path)) == expected
    assert "its 20 epochs run in 10 groups of 2" in caplog.text and "its 30 epochs run in 10 groups of 3" in caplog.text
    lines = [message.split()[1] for message in caplog.messages if message.startswith("epoch ")]
    assert lines == [f"{e + 1}/50" for e in expected]


def test_a_grouped_stage_resumes_after_its_last_finished_group(tmp_path):
    data = _six_images()
    settings = {"head_epochs": 0, "fine_tune_epochs": 20, "unfreeze": "all", "run_dir": tmp_path, "verbose": 0}
    keras.utils.set_random_seed(0)
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    with pytest.raises(KeyboardInterrupt):
        kt.fine_tune(model, data, **settings, callbacks=[_Counts(stop_after=9)])  # after the 5th group of 2
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
    counts = _Counts()
    history = kt.fine_tune(model, data, **settings, callbacks=[counts])
    assert history.epoch == counts.epochs == [11, 13, 15, 17, 19]
    assert int(model.optimizer.iterations.numpy()) == 20 * 3  # the optimizer state came back with the backup
    assert sorted(read_history(tmp_path)) == list(range(1, 20, 2))


class _BatchAccuracy(keras.callbacks.Callback):
    """Keras's running training accuracy after each batch, per epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.__dict__.setdefault("epochs", {})[epoch] = []

    def on_train_batch_end(self, batch, logs=None):
        self.epochs[max(self.epochs)].append(float(logs["accuracy"]))


def test_each_epochs_training_accuracy_counts_that_epochs_images_only():
    """8 images in 4 batches of 2: after batch b the running accuracy is a multiple of 1 / (2 (b + 1)), and the
    epoch's accuracy a multiple of 1/8, in stage 2 as in stage 1 (stage 2's first epoch counted stage 1's last)."""
    x = np.random.default_rng(0).uniform(0, 255, (10, 32, 32, 3)).astype("float32")
    train, val, _, _ = kt.load_dataset((x, np.arange(10) % 2), image_size=32, batch_size=2, validation_split=0.2)
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None, augment=True)  # stage 1 on the full model
    batches = _BatchAccuracy()
    history = kt.fine_tune(
        model,
        train,
        val,
        head_epochs=2,
        fine_tune_epochs=2,
        unfreeze="all",
        verbose=0,
        callbacks=[batches],
        min_steps_per_epoch=1,
    )
    assert sorted(batches.epochs) == [0, 1, 2, 3]
    for epoch, running in batches.epochs.items():
        seen = 2 * np.arange(1, len(running) + 1)
        assert np.allclose(np.round(np.array(running) * seen), np.array(running) * seen), (epoch, running)
        assert history.history["accuracy"][epoch] == pytest.approx(running[-1])
