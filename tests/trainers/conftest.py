"""Fixtures for the image loaders: generated trees in the Tiny ImageNet and image-folder layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# One solid colour per class, far apart, so a wrong label shows up as a wrong colour even
# after JPEG compression.
CLASS_COLORS = [(220, 30, 30), (30, 200, 40), (40, 50, 210), (230, 220, 20)]
GRAY_VALUE = 97


def write_solid(
    path: Path,
    color: tuple[int, ...],
    size: tuple[int, int] = (64, 64),
    mode: str = "RGB",
    fmt: str | None = None,
) -> None:
    """Write a solid-colour image of ``size`` (width, height) in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = color[0] if mode == "L" else color
    Image.new(mode, size, fill).save(path, format=fmt)


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    """A small ``tiny-imagenet-200`` tree: 3 classes, 4 train and 2 val images each.

    ``wnids.txt`` lists ``n003, n999, n001, n002``; ``n999`` has no train folder, so the first
    two usable classes are ``n003`` then ``n001``. ``n001_2.JPEG`` is grayscale (mode L). Colours:
    ``n001`` red, ``n002`` green, ``n003`` blue. ``val_annotations.txt`` also names a class
    ``n777`` that is not present, and ``val/images`` holds one unannotated image.
    """
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n003\nn999\nn001\nn002\n")
    (root / "words.txt").write_text(
        "n000\tentity\nn001\tgoldfish, Carassius auratus\nn002\treel\n"
        "n003\tEgyptian cat\nn999\tunused\n"
    )
    colors = {"n001": CLASS_COLORS[0], "n002": CLASS_COLORS[1], "n003": CLASS_COLORS[2]}
    for wnid, color in colors.items():
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(4):
            path = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            if wnid == "n001" and i == 2:
                write_solid(path, (GRAY_VALUE,), mode="L", fmt="JPEG")
            else:
                write_solid(path, color, fmt="JPEG")
    # Annotation order is deliberately not sorted by file name or class.
    val_rows = [("val_3", "n002"), ("val_0", "n001"), ("val_5", "n003"), ("val_1", "n777"),
                ("val_2", "n003"), ("val_4", "n001"), ("val_6", "n002")]
    for name, wnid in val_rows:
        write_solid(root / "val" / "images" / f"{name}.JPEG", colors.get(wnid, CLASS_COLORS[3]),
                    fmt="JPEG")
    write_solid(root / "val" / "images" / "val_7.JPEG", CLASS_COLORS[3], fmt="JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}.JPEG\t{wnid}\t0\t0\t63\t63\n" for name, wnid in val_rows)
    )
    return root


def mean_colors(x: np.ndarray) -> np.ndarray:
    """Per-image mean RGB, shape ``(n, 3)``."""
    return np.asarray(x, dtype=np.float64).mean(axis=(1, 2))
