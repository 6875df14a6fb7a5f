"""Tests for trainers/imagefolder.py: the one-folder-per-class loader and class_weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from tests.trainers.conftest import CLASS_COLORS, mean_colors, write_solid
from trainers import _imagecache
from trainers.data import class_weights
from trainers.imagefolder import load_image_folder


def _load(root: Path, cache: Path, **kwargs):
    kwargs.setdefault("image_size", (16, 24))
    return load_image_folder(root, cache_dir=cache, progress=False, **kwargs)


def _write_coded(path: Path, class_index: int, i: int) -> None:
    """A lossless PNG whose pixel (R, G) = (class_index * 50, i) identifies the sample."""
    write_solid(path, (class_index * 50, i, 7), size=(20, 10))


def _coded_tree(root: Path, counts: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            _write_coded(root / name / f"{i:03d}.png", c, i)
    return root


def _ids(x: np.ndarray) -> set[tuple[int, int]]:
    return {(int(img[0, 0, 0]), int(img[0, 0, 1])) for img in np.asarray(x)}


@pytest.fixture
def mixed_tree(tmp_path: Path) -> Path:
    """Three classes (folders not created in sorted order) with every supported format."""
    root = tmp_path / "images"
    red, green, blue = CLASS_COLORS[0], CLASS_COLORS[1], CLASS_COLORS[2]
    write_solid(root / "zebra" / "a.png", blue, size=(40, 30))
    write_solid(root / "zebra" / "b.WEBP", blue, size=(16, 24), fmt="WEBP")
    write_solid(root / "cat" / "a.JPG", red, size=(100, 80), fmt="JPEG")
    write_solid(root / "cat" / "b.bmp", red, size=(8, 8), fmt="BMP")
    write_solid(root / "cat" / "nested" / "c.jpeg", red, size=(33, 17), fmt="JPEG")
    rgba = Image.new("RGBA", (24, 16), green + (128,))
    (root / "dog").mkdir()
    rgba.save(root / "dog" / "a.png")
    palette = Image.new("RGB", (24, 16), green).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(root / "dog" / "b.gif")
    write_solid(root / "dog" / "c.png", (90,), size=(24, 16), mode="L")
    (root / "dog" / "notes.txt").write_text("not an image")
    write_solid(root / "dog" / ".hidden.png", red)
    write_solid(root / ".thumbnails" / "x.png", red)
    return root


def test_load_image_folder_labels_sizes_and_formats(mixed_tree, tmp_path):
    train, heldout = _load(mixed_tree, tmp_path / "cache")
    assert heldout is None
    assert train.class_names == ("cat", "dog", "zebra")
    assert train.x.shape == (8, 16, 24, 3) and train.x.dtype == np.uint8
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    red, green, blue = CLASS_COLORS[0], CLASS_COLORS[1], CLASS_COLORS[2]
    gray = (90, 90, 90)
    # cat: a.JPG, b.bmp, nested/c.jpeg; dog: a.png (RGBA), b.gif (palette), c.png (L).
    expected = [red, red, red, green, green, gray, blue, blue]
    np.testing.assert_allclose(mean_colors(train.x), np.asarray(expected, float), atol=4)


def test_load_image_folder_cache_hit(mixed_tree, tmp_path, monkeypatch):
    first, _ = _load(mixed_tree, tmp_path / "cache")
    monkeypatch.setattr(_imagecache, "decode_image", lambda p, s: pytest.fail(f"decoded {p}"))
    again, _ = _load(mixed_tree, tmp_path / "cache")
    assert np.array_equal(first.x, again.x)
    # Another image size is another cache entry, so it must decode.
    with pytest.raises(pytest.fail.Exception):
        _load(mixed_tree, tmp_path / "cache", image_size=(8, 8))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_load_image_folder_heldout_fraction_stratified(tmp_path, seed, fraction):
    root = _coded_tree(tmp_path / "images", {"a": 10, "b": 20, "c": 30})
    train, heldout = _load(root, tmp_path / "cache", heldout_fraction=fraction, seed=seed)
    assert np.bincount(heldout.y).tolist() == [round(fraction * n) for n in (10, 20, 30)]
    assert len(train) + len(heldout) == 60
    train_ids, heldout_ids = _ids(train.x), _ids(heldout.x)
    assert len(train_ids) == len(train) and len(heldout_ids) == len(heldout)
    assert not train_ids & heldout_ids
    assert len(train_ids | heldout_ids) == 60
    for x, y in ((train.x, train.y), (heldout.x, heldout.y)):
        assert (np.asarray(x)[:, 0, 0, 0] == y * 50).all()  # label matches the image's class
    again, _ = _load(root, tmp_path / "cache", heldout_fraction=fraction, seed=seed)
    assert _ids(again.x) == train_ids
    other, _ = _load(root, tmp_path / "cache", heldout_fraction=fraction, seed=seed + 10)
    assert _ids(other.x) != train_ids


def test_load_image_folder_heldout_dir(tmp_path):
    root = _coded_tree(tmp_path / "train", {"a": 3, "b": 3, "c": 3})
    _write_coded(tmp_path / "val" / "c" / "0.png", 2, 100)
    _write_coded(tmp_path / "val" / "a" / "0.png", 0, 101)
    with pytest.warns(UserWarning, match="no folder for b"):
        train, heldout = _load(root, tmp_path / "cache", heldout_dir=tmp_path / "val")
    assert len(train) == 9
    assert heldout.class_names == ("a", "b", "c")
    assert heldout.y.tolist() == [0, 2]  # labels by class name, not by position in val/
    assert _ids(heldout.x) == {(0, 101), (100, 100)}


def test_load_image_folder_heldout_dir_unknown_class(tmp_path):
    root = _coded_tree(tmp_path / "train", {"a": 2, "b": 2})
    _write_coded(tmp_path / "val" / "zz" / "0.png", 0, 0)
    with pytest.raises(ValueError, match=r"class folders zz"):
        _load(root, tmp_path / "cache", heldout_dir=tmp_path / "val")


def test_load_image_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _load(tmp_path / "nowhere", tmp_path / "cache")


def test_load_image_folder_no_class_folders(tmp_path):
    write_solid(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(ValueError, match=r"flat has no class folders"):
        _load(tmp_path / "flat", tmp_path / "cache")


@pytest.mark.parametrize("heldout_dir", [None, "val"])
def test_load_image_folder_one_class_is_refused(tmp_path, heldout_dir):
    # one class trains to loss ln(1) = 0 from the first step: refused before any decoding
    root = _coded_tree(tmp_path / "images", {"a": 3})
    _coded_tree(tmp_path / "val", {"a": 1})
    held = None if heldout_dir is None else tmp_path / heldout_dir
    with pytest.raises(ValueError, match=r"images has 1 class folder \(a\); a classifier needs "
                                         r"at least 2"):
        _load(root, tmp_path / "cache", heldout_dir=held)
    assert not (tmp_path / "cache").exists()


def test_load_image_folder_heldout_dir_may_hold_one_class(tmp_path):
    root = _coded_tree(tmp_path / "images", {"a": 2, "b": 2})
    _coded_tree(tmp_path / "val", {"b": 1})
    with pytest.warns(UserWarning, match="no folder for a"):
        _, heldout = _load(root, tmp_path / "cache", heldout_dir=tmp_path / "val")
    assert heldout.y.tolist() == [1]


def test_load_image_folder_empty_class(tmp_path):
    root = _coded_tree(tmp_path / "images", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"images/b has no images"):
        _load(root, tmp_path / "cache")


def test_load_image_folder_corrupt_image(tmp_path):
    root = _coded_tree(tmp_path / "images", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"b/broken\.png"):
        _load(root, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"heldout_fraction": 1.0}, ValueError, r"heldout_fraction=1\.0 .*\[0, 1\)"),
        ({"heldout_fraction": -0.1}, ValueError, "heldout_fraction"),
        ({"heldout_fraction": 0.5, "heldout_dir": "x"}, ValueError, "not both"),
        ({"heldout_fraction": 0.1}, ValueError, r"needs between 2 and 4"),
        ({"image_size": 64}, TypeError, "image_size"),
        ({"image_size": (0, 8)}, ValueError, "image_size"),
    ],
)
def test_load_image_folder_bad_arguments(tmp_path, kwargs, error, pattern):
    root = _coded_tree(tmp_path / "images", {"a": 3, "b": 3})
    with pytest.raises(error, match=pattern):
        _load(root, tmp_path / "cache", **kwargs)


def test_load_image_folder_class_too_small_to_split(tmp_path):
    root = _coded_tree(tmp_path / "images", {"a": 5, "b": 1})
    with pytest.raises(ValueError, match=r"at least 2 images per class.*b \(1\)"):
        _load(root, tmp_path / "cache", heldout_fraction=0.5)


@pytest.mark.parametrize(
    ("y", "n_classes", "expected"),
    [
        ([0, 0, 0, 1], 2, {0: 4 / 6, 1: 2.0}),
        ([0, 1, 2], 3, {0: 1.0, 1: 1.0, 2: 1.0}),
        ([2, 2, 1, 0, 0, 0], 3, {0: 6 / 9, 1: 2.0, 2: 1.0}),
    ],
)
def test_class_weights_balanced(y, n_classes, expected):
    weights = class_weights(np.asarray(y), n_classes)
    assert weights.keys() == expected.keys()
    for c, w in expected.items():
        assert weights[c] == pytest.approx(w)
    reference = compute_class_weight("balanced", classes=np.arange(n_classes), y=np.asarray(y))
    np.testing.assert_allclose([weights[c] for c in range(n_classes)], reference)
    # Balanced weights make every class contribute the same total weight.
    totals = [weights[c] * np.sum(np.asarray(y) == c) for c in range(n_classes)]
    np.testing.assert_allclose(totals, len(y) / n_classes)


def test_class_weights_errors():
    with pytest.raises(ValueError, match=r"classes \[1\] have no sample"):
        class_weights(np.array([0, 2, 2]), 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        class_weights(np.array([0, 2]), 2)


def test_a_file_given_as_the_folder_is_a_one_line_value_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "images.zip"
    not_a_folder.write_bytes(b"PK")
    with pytest.raises(ValueError, match="is a file; expected a folder with one sub-folder"):
        load_image_folder(not_a_folder, image_size=(8, 8), cache_dir=tmp_path / "cache")
