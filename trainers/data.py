"""In-memory image datasets and the built-in `digits` loader. No Keras imports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits as _sk_load_digits


@dataclass(frozen=True)
class Dataset:
    """Images and integer labels held as numpy arrays.

    Attributes:
        x: images, shape ``(n, height, width, channels)``; uint8 or float32.
        y: integer class labels in ``[0, n_classes)``, shape ``(n,)``.
        class_names: one human-readable name per class, indexed by label.
        pixel_max: the value of a white pixel in ``x`` (255 for uint8 images, 16 for digits);
            models divide by it so they always see pixels in [0, 1].
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    pixel_max: float = 255.0

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"Dataset: x must have shape (n, h, w, c); got {self.x.shape}.")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"Dataset: y must have shape ({self.x.shape[0]},) to match x; got {self.y.shape}."
            )

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: np.ndarray) -> "Dataset":
        """Return the samples at ``index`` (a copy; memory-mapped arrays are read here)."""
        return Dataset(np.asarray(self.x[index]), self.y[index], self.class_names, self.pixel_max)


def load_digits() -> Dataset:
    """Return scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as 8x8x1 images.

    Needs no download, so it is the study any fresh machine can run offline.
    """
    bunch = _sk_load_digits()
    x = bunch.images.astype(np.float32)[..., None]
    y = bunch.target.astype(np.int64)
    return Dataset(x=x, y=y, class_names=tuple(str(i) for i in range(10)), pixel_max=16.0)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Return "balanced" Keras ``class_weight``: ``len(y) / (n_classes * count)`` per class.

    Use it when classes have very different sizes, so each class weighs the same in the loss.

    Raises:
        ValueError: a label is outside ``[0, n_classes)``, or a class has no sample.
    """
    y = np.asarray(y)
    if n_classes < 1:
        raise ValueError(f"class_weights: n_classes={n_classes!r} must be >= 1.")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"class_weights: labels must be in [0, {n_classes}); got min {y.min()}, max {y.max()}."
        )
    counts = np.bincount(y.astype(np.int64), minlength=n_classes)
    missing = np.flatnonzero(counts == 0).tolist()
    if missing:
        raise ValueError(
            f"class_weights: classes {missing} have no sample in y (n={y.size}), so their "
            "balanced weight is undefined."
        )
    return {c: float(y.size / (n_classes * counts[c])) for c in range(n_classes)}
