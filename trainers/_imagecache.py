"""Decode a list of image files into one uint8 array, cached on disk as a memory-mapped .npy.

Shared by the Tiny ImageNet and image-folder loaders. The cache key is a hash of the exact file
list (relative path, size and mtime of every file, in order), the labels and the decode settings,
so adding, removing, replacing or relabelling any file builds a new cache file. A cache file is
written under a temporary name and renamed into place only when complete, so a killed run never
leaves a half-written cache behind. No Keras imports.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

CACHE_ENV_VAR = "REGSEARCH_CACHE_DIR"

# Bump when decoding changes (resampling, colour conversion), so old caches are not reused.
_FORMAT_VERSION = 1
# Images per thread-pool task: large enough to amortise scheduling, small enough for a live bar.
_CHUNK = 128


@dataclass(frozen=True)
class DecodeSpec:
    """How every file becomes an RGB image of one size.

    Attributes:
        size: ``(height, width)`` of every decoded image.
        resize: if True, images of another size are resized (bilinear, aspect ratio not kept);
            if False, an image of another size is an error naming the file.
    """

    size: tuple[int, int]
    resize: bool

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
            raise ValueError(f"DecodeSpec: size={self.size!r} must be (height, width) > 0.")


def default_cache_dir() -> Path:
    """Return ``$REGSEARCH_CACHE_DIR`` if set, else ``~/.cache/regsearch``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "regsearch"


def decode_image(path: Path, spec: DecodeSpec) -> np.ndarray:
    """Decode one file into a ``(height, width, 3)`` uint8 RGB array.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (alpha is dropped).

    Raises:
        ValueError: the file cannot be decoded, or (with ``spec.resize=False``) has another size.
    """
    height, width = spec.size
    try:
        with Image.open(path) as image:
            if spec.resize and image.format == "JPEG":
                # Lets libjpeg decode large photos at 1/2, 1/4 or 1/8 scale (never below size).
                image.draft("RGB", (width, height))
            rgb = _to_rgb(image)
            if rgb.size != (width, height) and spec.resize:
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... on bad files
        raise ValueError(
            f"Cannot decode image file {path}: {type(exc).__name__}: {exc}. "
            "Replace or delete the file and load again."
        ) from exc
    if array.shape != (height, width, 3):
        raise ValueError(
            f"Image file {path} is {array.shape[1]}x{array.shape[0]} pixels; expected "
            f"{width}x{height} like every other image of this dataset. Replace the file, or load "
            "the folder with trainers.imagefolder.load_image_folder(..., image_size=...), "
            "which resizes."
        )
    return array


def fingerprint(
    root: Path, files: Sequence[Path], labels: np.ndarray, spec: DecodeSpec, kind: str
) -> str:
    """Return a hex key that changes whenever any file, its order, its label or the spec changes.

    Paths enter relative to ``root``, so a dataset that moves keeps its cache.
    """
    digest = hashlib.sha256()
    digest.update(f"v{_FORMAT_VERSION}|{kind}|{spec.size}|{spec.resize}|{len(files)}\n".encode())
    for path, label in zip(files, labels.tolist(), strict=True):
        stat = path.stat()
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    return digest.hexdigest()[:24]


def load_images(
    files: Sequence[Path],
    labels: np.ndarray,
    *,
    root: Path,
    spec: DecodeSpec,
    kind: str,
    cache_dir: str | Path | None,
    progress: bool,
) -> np.ndarray:
    """Return the decoded images of ``files`` as ``(n, height, width, 3)`` uint8, cached on disk.

    On a cache hit the array is memory-mapped read-only and no file is decoded. If the cache
    directory cannot be written, a warning names it and the images are decoded into memory.

    Args:
        files: image paths under ``root``, in sample order.
        labels: the label of each file (part of the cache key).
        root: the dataset root the paths are made relative to in the key.
        spec: size and resize policy.
        kind: a short name for the cache file and progress bar, e.g. ``"tinyimagenet-train"``.
        cache_dir: where cache files live; None means :func:`default_cache_dir`.
        progress: show a rich progress bar while decoding.

    Raises:
        ValueError: a file cannot be decoded or has the wrong size (the message names it).
    """
    height, width = spec.size
    shape = (len(files), height, width, 3)
    if not files:
        return np.zeros(shape, dtype=np.uint8)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = fingerprint(root, files, labels, spec, kind)
    path = directory / f"{kind}-{height}x{width}-{key}.npy"
    cached = _read_cache(path, shape)
    if cached is not None:
        return cached

    out, tmp = _open_output(directory, path, shape)
    try:
        _decode_all(files, spec, out, progress=progress, description=f"Decoding {kind}")
        if tmp is None:
            return out
        out.flush()
        del out  # close the memmap before renaming (required on Windows)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        # Pillow warns when a palette image with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        x = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        warnings.warn(
            f"Ignoring unreadable image cache {path} ({exc}); rebuilding it.", stacklevel=3
        )
        return None
    if x.shape != shape or x.dtype != np.uint8:
        warnings.warn(
            f"Ignoring image cache {path}: it holds {x.dtype} {x.shape}, expected uint8 {shape}; "
            "rebuilding it.",
            stacklevel=3,
        )
        return None
    return x


def _open_output(
    directory: Path, path: Path, shape: tuple[int, ...]
) -> tuple[np.ndarray, Path | None]:
    """Return a writable array for the decoded images and its temporary file (None: memory)."""
    tmp: Path | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        return out, tmp
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        warnings.warn(
            f"Cannot write the image cache in {directory} ({exc}); decoding into memory without "
            f"a cache. Pass cache_dir=... or set {CACHE_ENV_VAR} to a writable directory.",
            stacklevel=3,
        )
        return np.empty(shape, dtype=np.uint8), None


def _decode_all(
    files: Sequence[Path], spec: DecodeSpec, out: np.ndarray, *, progress: bool, description: str
) -> None:
    def decode_chunk(start: int, stop: int) -> int:
        for i in range(start, stop):
            out[i] = decode_image(files[i], spec)  # module lookup, so tests can patch it
        return stop - start

    n = len(files)
    # Pillow releases the GIL while decoding, so threads overlap file reads and decoding.
    n_threads = min(16, (os.cpu_count() or 1) + 2)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"{description} ({n:,} images)", total=n)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            futures: list[Future[int]] = [
                pool.submit(decode_chunk, start, min(start + _CHUNK, n))
                for start in range(0, n, _CHUNK)
            ]
            try:
                for future in as_completed(futures):
                    bar.advance(task, future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
