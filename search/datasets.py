"""Load a study's data from its `data:` section: built-in digits, Tiny ImageNet, or an image folder."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from spaces import check_float, check_keys
from trainers.data import Dataset, load_digits
from trainers.imagefolder import load_image_folder
from trainers.tinyimagenet import load_tinyimagenet

# ZCA's matrix is (height * width * channels)^2 floats, decomposed once per fold: 3072 values
# (32x32x3) make 38 MB and about a second; 64x64x3 would make 600 MB and minutes per fold.
ZCA_MAX_PIXELS = 3072


@dataclass(frozen=True)
class StudyData:
    """A study's training split (folds come from it) and its held-out split, if any."""

    train: Dataset
    heldout: Dataset | None
    augment_preset: str
    class_weights: bool = False
    zca_epsilon: float | None = None  # ZCA whitening, fitted per fold (trainers.whitening)

    def describe(self) -> dict[str, Any]:
        """Shape facts an exported recipe needs to rebuild the model."""
        return {
            "input_shape": list(self.train.image_shape),
            "n_classes": self.train.n_classes,
            "pixel_max": self.train.pixel_max,
            "class_names": list(self.train.class_names),
            "n_train": len(self.train),
            "n_heldout": 0 if self.heldout is None else len(self.heldout),
        }


def load_data(data: dict[str, Any], *, where: str, seed: int = 0, data_dir: str | None = None,
              progress: bool = True) -> StudyData:
    """Load the data a study file's ``data:`` section names.

    Args:
        data: the section; ``source`` is ``digits``, ``tinyimagenet`` or ``folder``.
        where: the study file, for error messages.
        seed: the study seed (for a held-out fraction split).
        data_dir: ``--data-dir`` from the command line; overrides the file's folder.
        progress: show progress bars while decoding images.

    Raises:
        ValueError: unknown source or option (the message lists the valid ones), an option out
            of range, or ``data_dir`` for a source without a folder.
        FileNotFoundError: the data folder is missing (the message says how to point at one).
    """
    name = data.get("source")
    if name not in SOURCES:
        raise ValueError(
            f"{where}: 'data.source'={name!r} is not allowed; expected one of: {', '.join(SOURCES)}."
        )
    source = SOURCES[name]
    options = check_keys("data", data, ("source", *source.options, *COMMON_OPTIONS), where=where)
    options.pop("source")
    if data_dir is not None:
        if source.folder_option is None:
            with_folder = [n for n, s in SOURCES.items() if s.folder_option]
            raise ValueError(
                f"{where}: --data-dir {data_dir!r} is not allowed with 'data.source'={name!r}, "
                f"which reads no folder (it would be ignored); --data-dir applies to sources "
                f"{' and '.join(with_folder)} only. Leave it out.")
        options[source.folder_option] = data_dir
    if "heldout_fraction" in options:  # 0: no held-out split
        options["heldout_fraction"] = check_float(
            "data.heldout_fraction", options["heldout_fraction"], low=0.0, high=1.0,
            high_open=True, where=where)
    weights = bool(options.pop("class_weights", False))
    zca = options.pop("zca_epsilon", None)
    if zca is not None:
        zca = check_float("data.zca_epsilon", zca, low=0.0, low_open=True, where=where)
    train, heldout = source.load(options, where=where, seed=seed, progress=progress)
    loaded = StudyData(train, heldout, source.augment_preset, weights)
    if zca is None:
        return loaded
    size = math.prod(loaded.train.image_shape)
    if size > ZCA_MAX_PIXELS:
        raise ValueError(
            f"{where}: 'data.zca_epsilon' whitens {'x'.join(map(str, loaded.train.image_shape))} "
            f"images, {size} values each: a {size} x {size} matrix per fold. ZCA is allowed up to "
            f"{ZCA_MAX_PIXELS} values (32x32x3); use a smaller image_size or leave it out.")
    return dataclasses.replace(loaded, zca_epsilon=zca)


def _digits(options: dict[str, Any], *, where: str, seed: int,
            progress: bool) -> tuple[Dataset, Dataset | None]:
    """scikit-learn's 8x8 digits, with a stratified held-out fraction if asked."""
    full = load_digits()
    fraction = options.get("heldout_fraction", 0.0)
    if not fraction:
        return full, None
    n_heldout, n_classes = math.ceil(fraction * len(full)), full.n_classes
    if not n_classes <= n_heldout <= len(full) - n_classes:  # one image per class each side
        raise ValueError(
            f"{where}: 'data.heldout_fraction'={fraction:g} holds out {n_heldout} of "
            f"{len(full)} images, but a stratified split of {n_classes} classes needs "
            f"between {n_classes} and {len(full) - n_classes}; choose a fraction in "
            f"[{n_classes / len(full):.3f}, {1 - n_classes / len(full):.3f}], or 0 for none.")
    train_idx, held_idx = train_test_split(
        range(len(full)), test_size=fraction, stratify=full.y, random_state=seed
    )
    return full.subset(sorted(train_idx)), full.subset(sorted(held_idx))


def _tinyimagenet(options: dict[str, Any], *, where: str, seed: int,
                  progress: bool) -> tuple[Dataset, Dataset | None]:
    """Tiny ImageNet's training images of the chosen classes, and its validation images."""
    return load_tinyimagenet(progress=progress, **options)


def _folder(options: dict[str, Any], *, where: str, seed: int,
            progress: bool) -> tuple[Dataset, Dataset | None]:
    """A folder of class subfolders (`trainers.imagefolder`)."""
    if "root" not in options:
        raise ValueError(f"{where}: 'data.root' is required for source 'folder' (or pass --data-dir).")
    if "image_size" not in options:
        raise ValueError(f"{where}: 'data.image_size' is required for source 'folder', e.g. [64, 64].")
    root = Path(options.pop("root"))
    if not root.is_absolute() and not root.exists():
        root = Path(where).parent / root  # relative to the study file
    return load_image_folder(root, image_size=tuple(options.pop("image_size")), seed=seed,
                             progress=progress, **options)


@dataclass(frozen=True)
class Source:
    """One kind of data a study file's ``data.source`` names."""

    options: tuple[str, ...]  # the keys its ``data:`` section may hold, besides COMMON_OPTIONS
    augment_preset: str  # the `trainers.augment` preset the ``augment`` strength drives
    load: Callable[..., tuple[Dataset, Dataset | None]]  # checked options -> (train, held out)
    folder_option: str | None = None  # the option naming its folder: what --data-dir replaces


# Every data source in one table: a new one is a loader and a row here.
COMMON_OPTIONS = ("zca_epsilon",)
SOURCES: dict[str, Source] = {
    "digits": Source(("heldout_fraction",), "digits", _digits),
    "tinyimagenet": Source(("data_dir", "n_classes", "wnids", "images_per_class", "cache_dir",
                            "download", "class_weights"), "natural", _tinyimagenet,
                           folder_option="data_dir"),
    "folder": Source(("root", "image_size", "heldout_dir", "heldout_fraction", "cache_dir",
                      "class_weights"), "natural", _folder, folder_option="root"),
}
