"""Load any one-folder-per-class image tree as cached, resized uint8 RGB Datasets.

``root/<class name>/**/<image>`` with class names sorted, like Keras'
``image_dataset_from_directory``.
No Keras imports.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.model_selection import train_test_split

from trainers._imagecache import DecodeSpec, load_images
from trainers.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def load_image_folder(
    root: str | Path,
    *,
    image_size: tuple[int, int],
    heldout_dir: str | Path | None = None,
    heldout_fraction: float = 0.0,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Dataset, Dataset | None]:
    """Return ``(train, heldout)`` from a folder with one sub-folder of images per class.

    Use it for your own data. Class names are the sub-folder names, sorted; labels are their
    positions. Images (jpg, jpeg, png, bmp, gif, webp, any case, searched recursively inside each
    class folder, hidden files skipped) are converted to RGB and resized to ``image_size``
    (bilinear, stretched: aspect ratio is not kept; GIFs give their first frame). Decoded arrays
    are cached like :func:`trainers.tinyimagenet.load_tinyimagenet`'s.

    Args:
        root: the folder of class folders.
        image_size: ``(height, width)`` of every returned image.
        heldout_dir: a second folder with (a subset of) the same class folders, used as the
            held-out split. Excludes ``heldout_fraction``.
        heldout_fraction: fraction of ``root``'s images, stratified by class, held out instead;
            0 means no held-out split.
        seed: seed of the stratified split.
        cache_dir: where decoded arrays are cached; None means ``$REGSEARCH_CACHE_DIR`` or
            ``~/.cache/regsearch``.
        progress: show a rich progress bar while decoding.

    Returns:
        ``(train, heldout)``; ``heldout`` is None when neither ``heldout_dir`` nor
        ``heldout_fraction`` asks for one. Samples are in folder order (shuffling is the
        trainer's job).

    Raises:
        FileNotFoundError: ``root`` or ``heldout_dir`` does not exist.
        ValueError: ``root`` or ``heldout_dir`` is a file, fewer than 2 class folders in
            ``root`` (none in ``heldout_dir``), a class without images, a held-out class
            unknown to ``root``, an out-of-range argument, or an image that cannot be decoded
            (the message names the file).
    """
    size = _check_image_size(image_size)
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(
            f"load_image_folder: heldout_fraction={heldout_fraction!r} is out of range; expected "
            "a float in [0, 1)."
        )
    if heldout_dir is not None and heldout_fraction > 0:
        raise ValueError(
            f"load_image_folder: pass heldout_dir={str(heldout_dir)!r} or "
            f"heldout_fraction={heldout_fraction!r}, not both."
        )
    spec = DecodeSpec(size=size, resize=True)
    root = Path(root).expanduser()
    class_names = _class_folders(root)
    if len(class_names) < 2:  # one class: nothing to learn, its loss is ln(1) = 0 from the start
        raise ValueError(
            f"Image folder {root} has {len(class_names)} class folder ({class_names[0]}); a "
            "classifier needs at least 2, one sub-folder of images per class, e.g. "
            f"{root / 'cat'} and {root / 'dog'}."
        )
    files, y = _list_images(root, class_names)
    x = load_images(
        files, y, root=root, spec=spec, kind="imagefolder", cache_dir=cache_dir, progress=progress
    )
    names = tuple(class_names)
    if heldout_dir is not None:
        heldout_root = Path(heldout_dir).expanduser()
        heldout_classes = _class_folders(heldout_root)
        unknown = [c for c in heldout_classes if c not in names]
        if unknown:
            raise ValueError(
                f"load_image_folder: heldout_dir {heldout_root} has class folders "
                f"{', '.join(unknown)} that {root} does not have. Its classes are: "
                f"{', '.join(names)}."
            )
        absent = [c for c in names if c not in heldout_classes]
        if absent:
            warnings.warn(
                f"heldout_dir {heldout_root} has no folder for {', '.join(absent)}; those classes "
                "are not measured on the held-out split.",
                stacklevel=2,
            )
        h_files, h_y = _list_images(heldout_root, heldout_classes, label_of=names.index)
        h_x = load_images(
            h_files, h_y, root=heldout_root, spec=spec, kind="imagefolder",
            cache_dir=cache_dir, progress=progress,
        )
        return Dataset(x, y, names), Dataset(h_x, h_y, names)
    if heldout_fraction == 0:
        return Dataset(x, y, names), None
    train_index, heldout_index = _stratified_split(y, names, heldout_fraction, seed, root)
    return (
        Dataset(np.asarray(x[train_index]), y[train_index], names),
        Dataset(np.asarray(x[heldout_index]), y[heldout_index], names),
    )



def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        raise TypeError(
            "load_image_folder: image_size must be (height, width) as two ints; "
            f"got {image_size!r}."
        )
    if min(image_size) < 1:
        raise ValueError(
            f"load_image_folder: image_size={tuple(image_size)!r} must be positive, e.g. (64, 64)."
        )
    return int(image_size[0]), int(image_size[1])


def _class_folders(root: Path) -> list[str]:
    expected = ("expected a folder with one sub-folder of images per class, e.g. "
                f"{root / 'cat' / '0001.jpg'}")
    if not root.exists():
        raise FileNotFoundError(f"Image folder {root} does not exist; {expected}.")
    if not root.is_dir():
        raise ValueError(f"Image folder {root} is a file; {expected}.")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(f"Image folder {root} has no class folders; {expected}.")
    return names


def _list_images(
    root: Path, class_names: list[str], label_of: Callable[[str], int] | None = None
) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for position, name in enumerate(class_names):
        label = position if label_of is None else label_of(name)
        found = _images_under(root / name)
        if not found:
            raise ValueError(
                f"Class folder {root / name} has no images; expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)} (any case). Add images or remove the folder."
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return files, np.asarray(labels, dtype=np.int64)


def _images_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(
            Path(directory) / n
            for n in sorted(names)
            if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)
        )
    return found


def _stratified_split(
    y: np.ndarray, names: tuple[str, ...], fraction: float, seed: int, root: Path
) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(y, minlength=len(names))
    if counts.min() < 2:
        small = [f"{names[c]} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
        raise ValueError(
            f"load_image_folder: heldout_fraction={fraction} needs at least 2 images per class "
            f"in {root}; these have fewer: {', '.join(small)}."
        )
    n_heldout = int(np.ceil(fraction * len(y)))
    if not len(names) <= n_heldout <= len(y) - len(names):
        raise ValueError(
            f"load_image_folder: heldout_fraction={fraction} holds out {n_heldout} of {len(y)} "
            f"images, but a stratified split of {len(names)} classes needs between "
            f"{len(names)} and {len(y) - len(names)}. Choose a fraction in that range."
        )
    train_index, heldout_index = train_test_split(
        np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y
    )
    # Sorted, so reading a memory-mapped cache walks it front to back.
    return np.sort(train_index), np.sort(heldout_index)
