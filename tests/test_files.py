import os

import pytest

from keras_transfer.files import atomic_path


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.weights.h5"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.weights.h5"]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.weights.h5"]


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path):
    path = tmp_path / "index"
    path.mkdir()
    (path / "old").write_text("1")
    with pytest.raises(ValueError), atomic_path(path, replace_folder=True) as tmp:
        os.makedirs(tmp)
        raise ValueError("failed")
    assert os.listdir(path) == ["old"] and os.listdir(tmp_path) == ["index"]
    with pytest.raises(FileExistsError, match=r"a folder is never replaced here"), atomic_path(path) as tmp:
        os.makedirs(tmp)  # without replace_folder=True (an export version must never be replaced)
    assert os.listdir(path) == ["old"] and os.listdir(tmp_path) == ["index"]
    with atomic_path(path, replace_folder=True) as tmp:
        os.makedirs(tmp)
        (tmp_path / tmp / "new").write_text("2")
    assert os.listdir(path) == ["new"]
