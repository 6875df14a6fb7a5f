"""Load Tiny ImageNet (the standard ``tiny-imagenet-200/`` layout) as cached uint8 Datasets.

Layout read: ``wnids.txt``, ``words.txt`` (wnid TAB words), ``train/<wnid>/images/*.JPEG`` and
``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (file TAB wnid TAB bbox...). The
labelled ``val/`` split becomes the held-out set that no trial sees. If the folder is missing,
the official archive can be downloaded (checksum verified). No Keras imports.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from trainers._imagecache import DecodeSpec, default_cache_dir, load_images
from trainers.data import Dataset

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
DATA_DIR_ENV_VAR = "REGSEARCH_TINYIMAGENET_DIR"
IMAGE_SIZE = (64, 64)

# Seconds to wait for the server to answer (and between reads): a machine without network fails
# in seconds instead of hanging.
_DOWNLOAD_TIMEOUT_S = 10.0
_JPEG_SUFFIXES = (".jpeg", ".jpg")
_LAYOUT = (
    "wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt"
)


class TinyImageNetNotFoundError(FileNotFoundError):
    """Tiny ImageNet is not on disk and could not be downloaded."""


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Return the Tiny ImageNet folder to read: the argument, else the environment, else a default.

    Order: ``data_dir``; else ``$REGSEARCH_TINYIMAGENET_DIR``; else
    ``<cache dir>/tiny-imagenet-200`` (``$REGSEARCH_CACHE_DIR`` or ``~/.cache/regsearch``). A
    folder that holds ``tiny-imagenet-200/`` (rather than being it) is accepted too. The folder
    may not exist yet; :func:`load_tinyimagenet` downloads into it.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
    elif os.environ.get(DATA_DIR_ENV_VAR):
        path = Path(os.environ[DATA_DIR_ENV_VAR]).expanduser()
    else:
        path = default_cache_dir() / "tiny-imagenet-200"
    nested = path / "tiny-imagenet-200"
    if not (path / "wnids.txt").is_file() and (nested / "wnids.txt").is_file():
        return nested
    return path


def load_tinyimagenet(
    data_dir: str | Path | None = None,
    *,
    n_classes: int = 25,
    wnids: Sequence[str] | None = None,
    images_per_class: int | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[Dataset, Dataset]:
    """Return ``(train, heldout)`` for a subset of Tiny ImageNet classes, as 64x64x3 uint8.

    Use it for the Tiny ImageNet studies; ``heldout`` is the labelled ``val/`` split (50 images
    a class), which trials never see. Decoded images are cached as ``.npy`` files and
    memory-mapped on later calls, so only the first call decodes JPEGs. Grayscale images are
    converted to RGB; an image that is not 64x64 is an error (Tiny ImageNet has no other size).

    Args:
        data_dir: the ``tiny-imagenet-200`` folder; see :func:`resolve_data_dir` for the default.
        n_classes: use the first ``n_classes`` wnids of ``wnids.txt`` that have a train folder.
        wnids: explicit wnids, in label order; overrides ``n_classes``.
        images_per_class: keep the first K training files (sorted by name) of each class; None
            keeps all. The held-out split always keeps all its images for the chosen classes.
        cache_dir: where decoded arrays are cached; None means ``$REGSEARCH_CACHE_DIR`` or
            ``~/.cache/regsearch``.
        download: if the data is missing, download and unpack the official archive into
            ``data_dir``.
        progress: show rich progress bars while downloading and decoding.

    Returns:
        ``(train, heldout)`` Datasets whose labels follow the chosen wnid order and whose
        ``class_names`` are the first words.txt name of each wnid (e.g. ``"goldfish"``).

    Raises:
        TinyImageNetNotFoundError: no data at ``data_dir`` and no download (or it failed).
        ValueError: unknown wnid, out-of-range argument, malformed annotation line, or an image
            that cannot be decoded or is not 64x64 (the message names the file).
    """
    if images_per_class is not None and (
        isinstance(images_per_class, bool) or not isinstance(images_per_class, int)
        or images_per_class < 1
    ):
        raise ValueError(
            f"load_tinyimagenet: images_per_class={images_per_class!r} is invalid; expected an "
            "int >= 1, or None for all images."
        )
    root = resolve_data_dir(data_dir)
    if not (root / "wnids.txt").is_file():
        _fetch(root, download=download, progress=progress)
    chosen = _choose_wnids(root, n_classes, wnids)
    names = _class_names(root, chosen)
    spec = DecodeSpec(size=IMAGE_SIZE, resize=False)
    datasets = []
    for split, (files, y) in (
        ("train", _train_files(root, chosen, images_per_class)),
        ("val", _val_files(root, chosen)),
    ):
        x = load_images(
            files, y, root=root, spec=spec, kind=f"tinyimagenet-{split}",
            cache_dir=cache_dir, progress=progress,
        )
        datasets.append(Dataset(x=x, y=y, class_names=names, pixel_max=255.0))
    return datasets[0], datasets[1]


def _choose_wnids(root: Path, n_classes: int, wnids: Sequence[str] | None) -> list[str]:
    listed = [line.strip() for line in _read_lines(root / "wnids.txt") if line.strip()]
    available = [w for w in dict.fromkeys(listed) if (root / "train" / w / "images").is_dir()]
    if not available:
        raise ValueError(
            f"{root / 'wnids.txt'} lists {len(listed)} wnids but none has a "
            f"train/<wnid>/images folder under {root}. Expected the layout {_LAYOUT}."
        )
    if wnids is None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int):
            raise TypeError(f"load_tinyimagenet: n_classes must be an int; got {n_classes!r}.")
        if not 1 <= n_classes <= len(available):
            raise ValueError(
                f"load_tinyimagenet: n_classes={n_classes} is out of range; {root} has "
                f"{len(available)} classes, so expected an int in [1, {len(available)}]."
            )
        return available[:n_classes]
    if isinstance(wnids, str):
        raise TypeError(
            f"load_tinyimagenet: wnids must be a list of wnids; got the string {wnids!r}."
        )
    chosen = list(wnids)
    if not chosen:
        raise ValueError("load_tinyimagenet: wnids is empty; pass at least one wnid or None.")
    valid = set(available)
    for wnid in chosen:
        if wnid not in valid:
            raise ValueError(
                f"load_tinyimagenet: unknown wnid {wnid!r}. The valid wnids are the lines of "
                f"{root / 'wnids.txt'} that have a train/<wnid>/images folder "
                f"({len(available)} here, e.g. {', '.join(available[:3])})."
            )
    duplicates = sorted({w for w in chosen if chosen.count(w) > 1})
    if duplicates:
        raise ValueError(f"load_tinyimagenet: wnids lists {', '.join(duplicates)} more than once.")
    return chosen


def _class_names(root: Path, chosen: list[str]) -> tuple[str, ...]:
    path = root / "words.txt"
    if not path.is_file():
        warnings.warn(f"{path} is missing; using wnids as class names.", stacklevel=3)
        return tuple(chosen)
    wanted = set(chosen)
    names: dict[str, str] = {}
    for line in _read_lines(path):
        wnid, _, words = line.partition("\t")
        if wnid in wanted and wnid not in names:
            names[wnid] = words.split(",")[0].strip() or wnid
    missing = [w for w in chosen if w not in names]
    if missing:
        warnings.warn(
            f"{path} has no entry for {', '.join(missing)}; using the wnid as its class name.",
            stacklevel=3,
        )
    return tuple(names.get(w, w) for w in chosen)


def _train_files(
    root: Path, chosen: list[str], images_per_class: int | None
) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(chosen):
        folder = root / "train" / wnid / "images"
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(_JPEG_SUFFIXES))
        if not names:
            raise ValueError(f"Class {wnid} has no *.JPEG images in {folder}.")
        if images_per_class is not None:
            if len(names) < images_per_class:
                warnings.warn(
                    f"Class {wnid} has only {len(names)} training images in {folder}; "
                    f"images_per_class={images_per_class} asked for more. Using all of them.",
                    stacklevel=3,
                )
            names = names[:images_per_class]
        files.extend(folder / n for n in names)
        labels.extend([label] * len(names))
    return files, np.asarray(labels, dtype=np.int64)


def _val_files(root: Path, chosen: list[str]) -> tuple[list[Path], np.ndarray]:
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise TinyImageNetNotFoundError(
            f"{annotations} is missing, so the held-out split has no labels. Expected the "
            f"layout {_LAYOUT} under {root}."
        )
    label_of = {wnid: i for i, wnid in enumerate(chosen)}
    files: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(_read_lines(annotations), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(
                f"{annotations} line {number} is {line!r}; expected 'file<TAB>wnid<TAB>bbox...'."
            )
        if fields[1].strip() not in label_of:  # a class not chosen (or not present): skip
            continue
        path = root / "val" / "images" / fields[0].strip()
        if not path.is_file():
            raise FileNotFoundError(
                f"{annotations} line {number} names {path}, which does not exist."
            )
        files.append(path)
        labels.append(label_of[fields[1].strip()])
    return files, np.asarray(labels, dtype=np.int64)


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _fetch(root: Path, *, download: bool, progress: bool) -> None:
    """Download and unpack the official archive into ``root``, or explain how to provide it."""
    advice = (
        f"Pass --data-dir PATH (data_dir=PATH) or set {DATA_DIR_ENV_VAR}=PATH, pointing at a "
        f"tiny-imagenet-200 folder with {_LAYOUT}."
    )
    if not download:
        raise TinyImageNetNotFoundError(
            f"Tiny ImageNet not found: {root / 'wnids.txt'} does not exist (download=False). "
            f"{advice}"
        )
    try:
        _download_and_extract(TINYIMAGENET_URL, TINYIMAGENET_MD5, root, progress=progress)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise TinyImageNetNotFoundError(
            f"Tiny ImageNet not found at {root}, and downloading {TINYIMAGENET_URL} failed "
            f"({type(exc).__name__}: {exc}). {advice}"
        ) from exc


def _download_and_extract(url: str, md5: str, target: Path, *, progress: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Everything happens in a temporary folder beside target, renamed into place at the end,
    # so an interrupted download never looks like a dataset.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tiny-imagenet-download-") as tmp:
        archive = Path(tmp) / "tiny-imagenet-200.zip"
        digest = hashlib.md5()
        columns = (
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()
        )
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
            archive.open("wb") as file,
            Progress(*columns, disable=not progress) as bar,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            task = bar.add_task(f"Downloading {url}", total=total)
            while chunk := response.read(1 << 20):
                file.write(chunk)
                digest.update(chunk)
                bar.advance(task, len(chunk))
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch: md5 {digest.hexdigest()}, expected {md5}")
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(Path(tmp) / "extracted")
        extracted = Path(tmp) / "extracted" / "tiny-imagenet-200"
        if not (extracted / "wnids.txt").is_file():
            raise ValueError("the archive has no tiny-imagenet-200/wnids.txt")
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(extracted, target)
