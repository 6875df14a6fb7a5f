"""Load a study's data from its `data:` section: built-in digits, Tiny ImageNet, or an image folder."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spaces import check_float, check_keys
from trainers.data import Dataset

OPTIONS: dict[str, tuple[str, ...]] = {
    "digits": ("source", "heldout_fraction", "zca_epsilon"),
    "tinyimagenet": ("source", "data_dir", "n_classes", "wnids", "images_per_class", "cache_dir",
                     "download", "class_weights", "zca_epsilon"),
    "folder": ("source", "root", "image_size", "heldout_dir", "heldout_fraction", "cache_dir",
               "class_weights", "zca_epsilon"),
}
# The option of each source that names its folder: what --data-dir replaces.
FOLDER_OPTION = {"tinyimagenet": "data_dir", "folder": "root"}
AUGMENT_PRESETS = {"digits": "digits", "tinyimagenet": "natural", "folder": "natural"}
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
    source = data.get("source")
    if source not in OPTIONS:
        raise ValueError(
            f"{where}: 'data.source'={source!r} is not allowed; expected one of: {', '.join(OPTIONS)}."
        )
    options = check_keys("data", data, OPTIONS[source], where=where)
    options.pop("source")
    if data_dir is not None and source not in FOLDER_OPTION:
        raise ValueError(
            f"{where}: --data-dir {data_dir!r} is not allowed with 'data.source'={source!r}, "
            f"which reads no folder (it would be ignored); --data-dir applies to sources "
            f"{' and '.join(FOLDER_OPTION)} only. Leave it out.")
    if "heldout_fraction" in options:  # 0: no held-out split
        options["heldout_fraction"] = check_float(
            "data.heldout_fraction", options["heldout_fraction"], low=0.0, high=1.0,
            high_open=True, where=where)
    weights = bool(options.pop("class_weights", False))
    zca = options.pop("zca_epsilon", None)
    if zca is not None:
        zca = check_float("data.zca_epsilon", zca, low=0.0, low_open=True, where=where)
    loaded = _load(source, options, where=where, seed=seed, data_dir=data_dir,
                   progress=progress, preset=AUGMENT_PRESETS[source], weights=weights)
    if zca is None:
        return loaded
    size = math.prod(loaded.train.image_shape)
    if size > ZCA_MAX_PIXELS:
        raise ValueError(
            f"{where}: 'data.zca_epsilon' whitens {'x'.join(map(str, loaded.train.image_shape))} "
            f"images, {size} values each: a {size} x {size} matrix per fold. ZCA is allowed up to "
            f"{ZCA_MAX_PIXELS} values (32x32x3); use a smaller image_size or leave it out.")
    return dataclasses.replace(loaded, zca_epsilon=zca)


def _load(source: str, options: dict[str, Any], *, where: str, seed: int, data_dir: str | None,
          progress: bool, preset: str, weights: bool) -> StudyData:
    """Load the splits of one source (`load_data` has checked the options)."""
    if source == "digits":
        from sklearn.model_selection import train_test_split

        from trainers.data import load_digits

        full = load_digits()
        fraction = options.get("heldout_fraction", 0.0)
        if not fraction:
            return StudyData(full, None, preset, weights)
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
        return StudyData(full.subset(sorted(train_idx)), full.subset(sorted(held_idx)), preset, weights)
    if source == "tinyimagenet":
        from trainers.tinyimagenet import load_tinyimagenet

        if data_dir is not None:
            options["data_dir"] = data_dir
        train, heldout = load_tinyimagenet(progress=progress, **options)
        return StudyData(train, heldout, preset, weights)

    from trainers.imagefolder import load_image_folder

    if data_dir is not None:
        options["root"] = data_dir
    if "root" not in options:
        raise ValueError(f"{where}: 'data.root' is required for source 'folder' (or pass --data-dir).")
    if "image_size" not in options:
        raise ValueError(f"{where}: 'data.image_size' is required for source 'folder', e.g. [64, 64].")
    root = Path(options.pop("root"))
    if not root.is_absolute() and not root.exists():
        root = Path(where).parent / root  # relative to the study file
    train, heldout = load_image_folder(root, image_size=tuple(options.pop("image_size")), seed=seed,
                                       progress=progress, **options)
    return StudyData(train, heldout, preset, weights)
