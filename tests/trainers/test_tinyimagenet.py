"""Tests for trainers/tinyimagenet.py and the decode cache it shares (trainers/_imagecache.py)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.trainers.conftest import CLASS_COLORS, GRAY_VALUE, mean_colors, write_solid
from trainers import _imagecache, tinyimagenet
from trainers.tinyimagenet import TinyImageNetNotFoundError, load_tinyimagenet, resolve_data_dir

# The shared copy beside the repository (../shared/data), as in DESIGN.md.
REAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiny-imagenet-200"

RED, GREEN, BLUE = CLASS_COLORS[0], CLASS_COLORS[1], CLASS_COLORS[2]


def _load(root: Path, cache: Path, **kwargs):
    return load_tinyimagenet(root, cache_dir=cache, download=False, progress=False, **kwargs)


def _assert_colors(x: np.ndarray, expected: list[tuple[int, int, int]]) -> None:
    np.testing.assert_allclose(mean_colors(x), np.asarray(expected, dtype=float), atol=4)


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = _imagecache.decode_image

    def counting(path, spec):
        calls.append(path)
        return real(path, spec)

    monkeypatch.setattr(_imagecache, "decode_image", counting)
    return calls


# --- generated tree ---------------------------------------------------------------------------


def test_load_tinyimagenet_labels_follow_wnids_order(tiny_imagenet, tmp_path):
    train, heldout = _load(tiny_imagenet, tmp_path / "cache", n_classes=2)
    # n999 (listed second) has no train folder, so the first two classes are n003 then n001.
    assert train.class_names == ("Egyptian cat", "goldfish")
    assert train.x.shape == (8, 64, 64, 3) and train.x.dtype == np.uint8
    assert train.y.dtype == np.int64 and train.pixel_max == 255.0
    assert train.y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    gray = (GRAY_VALUE,) * 3
    _assert_colors(train.x, [BLUE] * 4 + [RED, RED, gray, RED])


def test_load_tinyimagenet_grayscale_becomes_rgb(tiny_imagenet, tmp_path):
    train, _ = _load(tiny_imagenet, tmp_path / "cache", wnids=["n001"])
    gray = np.asarray(train.x[2])
    assert gray.shape == (64, 64, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert abs(int(gray.mean()) - GRAY_VALUE) <= 1


def test_load_tinyimagenet_val_annotations_honoured(tiny_imagenet, tmp_path):
    _, heldout = _load(tiny_imagenet, tmp_path / "cache", wnids=["n002", "n003", "n001"])
    assert heldout.class_names == ("reel", "Egyptian cat", "goldfish")
    # Annotation order; the n777 row and the unannotated val_7 are left out.
    assert heldout.y.tolist() == [0, 2, 1, 1, 2, 0]
    _assert_colors(heldout.x, [GREEN, RED, BLUE, BLUE, RED, GREEN])


def test_load_tinyimagenet_images_per_class_takes_first_sorted(
    tiny_imagenet, tmp_path, monkeypatch
):
    images = tiny_imagenet / "train" / "n003" / "images"
    write_solid(images / "n003_10.JPEG", RED, fmt="JPEG")  # sorts between _1 and _2
    calls = _count_decodes(monkeypatch)
    train, heldout = _load(tiny_imagenet, tmp_path / "cache", wnids=["n003", "n001"],
                           images_per_class=3)
    assert [p.name for p in calls if "train" in p.parts] == [
        "n003_0.JPEG", "n003_1.JPEG", "n003_10.JPEG", "n001_0.JPEG", "n001_1.JPEG", "n001_2.JPEG"
    ]
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1]
    _assert_colors(train.x[:3], [BLUE, BLUE, RED])
    assert heldout.y.tolist() == [1, 0, 0, 1]  # val keeps all images of the chosen classes
    full, _ = _load(tiny_imagenet, tmp_path / "cache", wnids=["n003"])
    assert len(full) == 5


@pytest.mark.parametrize("bad", ["n999", "n777", "nope"])
def test_load_tinyimagenet_unknown_wnid(tiny_imagenet, tmp_path, bad):
    with pytest.raises(ValueError, match=rf"unknown wnid '{bad}'.*wnids\.txt"):
        _load(tiny_imagenet, tmp_path / "cache", wnids=["n001", bad])


@pytest.mark.parametrize("n_classes", [0, 4])
def test_load_tinyimagenet_n_classes_out_of_range(tiny_imagenet, tmp_path, n_classes):
    with pytest.raises(ValueError, match=rf"n_classes={n_classes} .*\[1, 3\]"):
        _load(tiny_imagenet, tmp_path / "cache", n_classes=n_classes)


def test_load_tinyimagenet_bad_images_per_class(tiny_imagenet, tmp_path):
    with pytest.raises(ValueError, match="images_per_class=0"):
        _load(tiny_imagenet, tmp_path / "cache", images_per_class=0)


def test_load_tinyimagenet_corrupt_image_names_file(tiny_imagenet, tmp_path):
    bad = tiny_imagenet / "train" / "n002" / "images" / "n002_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ValueError, match=r"n002_1\.JPEG"):
        _load(tiny_imagenet, tmp_path / "cache", n_classes=3)
    garbage = tiny_imagenet / "val" / "images" / "val_3.JPEG"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"Cannot decode image file .*val_3\.JPEG"):
        _load(tiny_imagenet, tmp_path / "cache", wnids=["n002"], images_per_class=1)


def test_load_tinyimagenet_wrong_size_names_file(tiny_imagenet, tmp_path):
    write_solid(tiny_imagenet / "train" / "n001" / "images" / "n001_3.JPEG", RED, size=(32, 48),
                fmt="JPEG")
    with pytest.raises(ValueError, match=r"n001_3\.JPEG is 32x48 pixels; expected 64x64"):
        _load(tiny_imagenet, tmp_path / "cache", wnids=["n001"])


def test_load_tinyimagenet_missing_val_file(tiny_imagenet, tmp_path):
    (tiny_imagenet / "val" / "images" / "val_0.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 2 .*val_0\.JPEG"):
        _load(tiny_imagenet, tmp_path / "cache", wnids=["n001"])


# --- cache ------------------------------------------------------------------------------------


def test_load_tinyimagenet_cache_hit_decodes_nothing(tiny_imagenet, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first_train, first_val = _load(tiny_imagenet, cache, n_classes=3)
    assert len(list(cache.glob("*.npy"))) == 2

    def fail(path, spec):
        raise AssertionError(f"decoded {path} on a cache hit")

    monkeypatch.setattr(_imagecache, "decode_image", fail)
    train, heldout = _load(tiny_imagenet, cache, n_classes=3)
    assert isinstance(train.x, np.memmap) and not train.x.flags.writeable
    assert np.array_equal(train.x, first_train.x) and np.array_equal(train.y, first_train.y)
    assert np.array_equal(heldout.x, first_val.x) and np.array_equal(heldout.y, first_val.y)


def test_load_tinyimagenet_cache_rebuilt_when_file_added(tiny_imagenet, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _load(tiny_imagenet, cache, wnids=["n001"])
    write_solid(tiny_imagenet / "train" / "n001" / "images" / "n001_9.JPEG", RED, fmt="JPEG")
    calls = _count_decodes(monkeypatch)
    train, heldout = _load(tiny_imagenet, cache, wnids=["n001"])
    assert len(train) == 5 and len(calls) == 5  # train rebuilt, val still cached
    assert len(list(cache.glob("*.npy"))) == 3


def test_load_tinyimagenet_cache_rebuilt_when_file_changed(tiny_imagenet, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    before, _ = _load(tiny_imagenet, cache, wnids=["n002"])
    _assert_colors(before.x[:1], [GREEN])
    path = tiny_imagenet / "train" / "n002" / "images" / "n002_0.JPEG"
    stat = path.stat()
    write_solid(path, CLASS_COLORS[3], fmt="JPEG")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    calls = _count_decodes(monkeypatch)
    after, _ = _load(tiny_imagenet, cache, wnids=["n002"])
    assert len(calls) == 4
    _assert_colors(after.x[:2], [CLASS_COLORS[3], GREEN])


def test_load_tinyimagenet_cache_keyed_by_labels(tiny_imagenet, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a, _ = _load(tiny_imagenet, cache, wnids=["n001", "n002"])
    b, _ = _load(tiny_imagenet, cache, wnids=["n002", "n001"])
    _assert_colors(a.x[[0, 4]], [RED, GREEN])
    _assert_colors(b.x[[0, 4]], [GREEN, RED])
    assert b.y.tolist() == [0] * 4 + [1] * 4


def test_load_tinyimagenet_interrupted_decode_leaves_no_cache(tiny_imagenet, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = _imagecache.decode_image

    def die_on_third_class(path, spec):
        if "n002" in path.name:
            raise KeyboardInterrupt
        return real(path, spec)

    monkeypatch.setattr(_imagecache, "decode_image", die_on_third_class)
    with pytest.raises(KeyboardInterrupt):
        _load(tiny_imagenet, cache, n_classes=3)
    assert list(cache.iterdir()) == []  # neither a .npy nor a leftover temporary file


def test_load_tinyimagenet_unwritable_cache_warns(tiny_imagenet, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="Cannot write the image cache"):
        train, _ = _load(tiny_imagenet, blocker / "cache", wnids=["n001"])
    assert len(train) == 4


# --- missing data and download ----------------------------------------------------------------


def test_load_tinyimagenet_missing_without_download(tmp_path):
    with pytest.raises(TinyImageNetNotFoundError, match=r"--data-dir.*REGSEARCH_TINYIMAGENET_DIR"):
        _load(tmp_path / "nowhere", tmp_path / "cache")
    assert issubclass(TinyImageNetNotFoundError, FileNotFoundError)


def test_load_tinyimagenet_download_unreachable_fails_fast(tmp_path, monkeypatch):
    unreachable = "http://127.0.0.1:9/tiny-imagenet-200.zip"  # port 9 (discard): refused
    monkeypatch.setattr(tinyimagenet, "TINYIMAGENET_URL", unreachable)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"127\.0\.0\.1:9.*failed.*--data-dir"):
        load_tinyimagenet(tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - start < 15
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


@pytest.fixture
def served_archive(tiny_imagenet, tmp_path):
    """Serve a zip of the generated tree over HTTP on localhost; yields (url, md5)."""
    site = tmp_path / "site"
    site.mkdir()
    archive = site / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(tiny_imagenet.rglob("*")):
            zipped.write(path, path.relative_to(tiny_imagenet.parent).as_posix())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", md5
    finally:
        server.shutdown()
        server.server_close()


def test_load_tinyimagenet_downloads_and_verifies(served_archive, tmp_path, monkeypatch):
    url, md5 = served_archive
    monkeypatch.setattr(tinyimagenet, "TINYIMAGENET_URL", url)
    monkeypatch.setattr(tinyimagenet, "TINYIMAGENET_MD5", md5)
    target = tmp_path / "downloaded" / "tiny-imagenet-200"
    train, heldout = load_tinyimagenet(
        target, n_classes=3, cache_dir=tmp_path / "c", progress=False
    )
    assert (target / "wnids.txt").is_file()
    assert train.class_names == ("Egyptian cat", "goldfish", "reel")
    assert len(train) == 12 and len(heldout) == 6
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-imagenet-200"]


def test_load_tinyimagenet_download_checksum_mismatch(served_archive, tmp_path, monkeypatch):
    url, _ = served_archive
    monkeypatch.setattr(tinyimagenet, "TINYIMAGENET_URL", url)
    target = tmp_path / "downloaded" / "tiny-imagenet-200"
    with pytest.raises(TinyImageNetNotFoundError, match=r"checksum mismatch.*90528d7c.*--data-dir"):
        load_tinyimagenet(target, cache_dir=tmp_path / "c", progress=False)
    assert list((tmp_path / "downloaded").iterdir()) == []


def test_resolve_data_dir_order(tiny_imagenet, tmp_path, monkeypatch):
    monkeypatch.delenv("REGSEARCH_TINYIMAGENET_DIR", raising=False)
    monkeypatch.setenv("REGSEARCH_CACHE_DIR", str(tmp_path / "cachehome"))
    assert resolve_data_dir() == tmp_path / "cachehome" / "tiny-imagenet-200"
    monkeypatch.setenv("REGSEARCH_TINYIMAGENET_DIR", str(tmp_path / "from-env"))
    assert resolve_data_dir() == tmp_path / "from-env"
    assert resolve_data_dir(tiny_imagenet) == tiny_imagenet
    # The folder holding tiny-imagenet-200/ works too.
    assert resolve_data_dir(tiny_imagenet.parent) == tiny_imagenet


# --- the real copy ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not REAL_DIR.is_dir(), reason=f"real Tiny ImageNet copy not found at {REAL_DIR}"
)
def test_load_tinyimagenet_real_slice(tmp_path):
    listed = (REAL_DIR / "wnids.txt").read_text().split()
    # n04099969 (rocking chair) has grayscale images among its first 20 files.
    wnids = [listed[0], listed[1], "n04099969"]
    train, heldout = _load(REAL_DIR, tmp_path / "cache", wnids=wnids, images_per_class=20)
    assert train.class_names == ("Egyptian cat", "reel", "rocking chair")
    assert train.x.shape == (60, 64, 64, 3) and heldout.x.shape == (150, 64, 64, 3)
    assert np.bincount(train.y).tolist() == [20, 20, 20]
    assert np.bincount(heldout.y).tolist() == [50, 50, 50]

    names = sorted(os.listdir(REAL_DIR / "train" / "n04099969" / "images"))[:20]
    for k in (0, names.index("n04099969_113.JPEG")):
        path = REAL_DIR / "train" / "n04099969" / "images" / names[k]
        expected = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(train.x[40 + k], expected), path
    gray = REAL_DIR / "train" / "n04099969" / "images" / "n04099969_113.JPEG"
    assert Image.open(gray).mode == "L"

    annotations = (REAL_DIR / "val" / "val_annotations.txt").read_text().splitlines()
    rows = [line.split("\t") for line in annotations]
    rows = [r for r in rows if r[1] in wnids]
    for i in (0, 77, 149):
        assert heldout.y[i] == wnids.index(rows[i][1])
        expected = np.asarray(Image.open(REAL_DIR / "val" / "images" / rows[i][0]).convert("RGB"))
        assert np.array_equal(heldout.x[i], expected)
