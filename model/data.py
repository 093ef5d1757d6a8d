"""MNIST: IDX reading with validation, checksums, locating or downloading the files, preprocessing.

Images reach a network through :func:`fit_images` (the shape a spec's ``input_shape`` takes),
which area-resamples digits for smaller inputs with the integer rule of :func:`resample`.

Search order for the data directory: ``--data DIR``, ``$LENET_DATA``, ``./data/mnist``,
``../shared/data/mnist``; otherwise the files are downloaded from the public mirrors into
``./data/mnist`` and verified against the sha256 of the uncompressed payload.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .util import UserError, atomic_path

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60000, "test": 10000}

# sha256 of each file *after* decompression (same as ../shared/data/mnist/SHA256SUMS.raw)
SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# The paper's input scaling: background (white) -0.1, foreground (black) 1.175.
BACKGROUND = -0.1
FOREGROUND = 1.175

IDX_TYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None, check_sha: bool = True) -> np.ndarray:
    """Read an IDX file (gzip'd or raw); validate magic, dimensions, length and checksum."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise UserError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4:
        raise UserError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in IDX_TYPES or ndim == 0:
        raise UserError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x000008NN)")
    if expect_ndim is not None and ndim != expect_ndim:
        raise UserError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    n = int(np.prod(dims))
    if len(raw) - header != n:
        raise UserError(
            f"{path}: IDX payload is {len(raw) - header} bytes but dimensions {dims} need {n}"
            + (" (truncated file)" if len(raw) - header < n else " (trailing data)")
        )
    name = path.name.removesuffix(".gz")
    if check_sha and name in SHA256:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SHA256[name]:
            raise UserError(f"{path}: sha256 of the uncompressed data is {digest[:16]}..., expected {SHA256[name][:16]}... (corrupt or not the official file)")
    return np.frombuffer(raw, dtype=IDX_TYPES[dtype_code], offset=header).reshape(dims)


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def has_mnist(directory: Path) -> bool:
    return all(_find_file(directory, n) is not None for n in FILES.values())


def candidate_dirs() -> list[Path]:
    """The default places, relative to the working directory (the project root for make targets)."""
    return [Path("data/mnist"), Path("../shared/data/mnist")]


def download(dest: str | os.PathLike, mirrors=None, quiet: bool = False) -> Path:
    """Download the four files into ``dest``, verifying each payload's sha256 before renaming it in."""
    dest = Path(dest)
    if mirrors is None:
        env = os.environ.get("LENET_MNIST_MIRROR")
        mirrors = [m.strip() for m in env.split(",")] if env else list(MIRRORS)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if _find_file(dest, name) is not None:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name + ".gz"
            if not quiet:
                print(f"downloading {url}", file=sys.stderr)
            target = dest / (name + ".gz")
            try:
                with atomic_path(target) as tmp:
                    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                        shutil.copyfileobj(r, f)
                    read_idx(tmp.with_name(tmp.name), check_sha=False)  # structure check
                    digest = hashlib.sha256(gzip.decompress(tmp.read_bytes())).hexdigest()
                    if digest != SHA256[name]:
                        raise UserError(f"checksum mismatch for {url}")
                break
            except (urllib.error.URLError, OSError, UserError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
        else:
            raise UserError(f"could not download {name}: " + "; ".join(errors))
    if not quiet:
        print(f"MNIST downloaded and verified in {dest}", file=sys.stderr)
    return dest


def locate(explicit: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """Return the first directory holding all four MNIST files (see module doc for the order)."""
    named = [("--data", explicit)] if explicit else []
    if not explicit and os.environ.get("LENET_DATA"):
        named.append(("$LENET_DATA", os.environ["LENET_DATA"]))
    for what, value in named:  # a directory the user named must hold MNIST
        d = Path(value)
        if not d.is_dir():
            raise UserError(f"{what} {d}: no such directory")
        if not has_mnist(d):
            missing = [n for n in FILES.values() if _find_file(d, n) is None]
            raise UserError(f"{what} {d}: no MNIST files there (missing {', '.join(missing)})")
        return d
    for d in candidate_dirs():
        if d.is_dir() and has_mnist(d):
            return d
    if not allow_download:
        raise UserError("MNIST not found in $LENET_DATA, ./data/mnist or ../shared/data/mnist")
    return download(Path("data/mnist"))


@dataclass
class Split:
    images: np.ndarray  # uint8 N x 28 x 28
    labels: np.ndarray  # uint8 N


_CACHE: dict[tuple[str, str], Split] = {}


def load(split: str = "test", data: str | os.PathLike | None = None) -> Split:
    """Load ``train`` or ``test`` as uint8 arrays, validated."""
    if split not in COUNTS:
        raise UserError(f"unknown split {split!r} (train or test)")
    d = locate(data)
    key = (str(d.resolve()), split)
    if key in _CACHE:
        return _CACHE[key]
    images = read_idx(_find_file(d, FILES[(split, "images")]), expect_ndim=3)
    labels = read_idx(_find_file(d, FILES[(split, "labels")]), expect_ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise UserError(f"{d}: {split} images {images.shape} and labels {labels.shape} do not match")
    result = Split(images, labels)
    _CACHE[key] = result
    return result


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Validate a uint8 N x 28 x 28 or N x 32 x 32 array (a single image is promoted to N=1)."""
    if not isinstance(images, np.ndarray):
        raise UserError(f"{what}: expected a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise UserError(f"{what}: dtype {images.dtype}, expected uint8 (0..255 grey levels)")
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] not in ((28, 28), (32, 32)):
        raise UserError(f"{what}: shape {images.shape}, expected N x 28 x 28 or N x 32 x 32")
    return images


def resample(images_u8: np.ndarray, h: int, w: int) -> np.ndarray:
    """Integer area resampling of uint8 N x H0 x W0 (or H0 x W0) images to N x ``h`` x ``w``.

    Output pixel (i, j) is the mean of the input pixels in rows ``floor(i H0 / h)`` ..
    ``ceil((i + 1) H0 / h) - 1`` and the same columns for ``j`` (torch's ``adaptive_avg_pool2d``
    windows), rounded half up in integers: ``(2 sum + count) // (2 count)``. Deterministic and
    exact: the same bytes on every machine.
    """
    a = np.asarray(images_u8)
    if a.dtype != np.uint8:
        raise UserError(f"images: dtype {a.dtype}, expected uint8 (0..255 grey levels)")
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3:
        raise UserError(f"images: shape {a.shape}, expected N x H x W")
    h0, w0 = a.shape[1:]
    if h < 1 or w < 1 or h0 < 1 or w0 < 1:
        raise UserError(f"images: cannot resample {h0} x {w0} to {h} x {w}")

    def windows(n0: int, n: int) -> np.ndarray:  # n x n0 0/1 membership matrix
        m = np.zeros((n, n0), np.float64)
        for i in range(n):
            m[i, (i * n0) // n: -((-(i + 1) * n0) // n)] = 1
        return m

    rows, cols = windows(h0, h), windows(w0, w)
    # float64 sums of at most 255 * H0 * W0 are exact integers
    sums = np.rint(np.einsum("ih,nhw,jw->nij", rows, a.astype(np.float64), cols, optimize=True)).astype(np.int64)
    count = np.outer(rows.sum(1), cols.sum(1)).astype(np.int64)
    out = ((2 * sums + count) // (2 * count)).astype(np.uint8)
    return out[0] if single else out


def fit_images(images, shape, what: str = "images") -> np.ndarray:
    """Images as the uint8 N x C x H x W array a spec of ``input_shape`` ``shape`` = (C, H, W) takes.

    Accepted: that exact shape (a single C x H x W image is promoted to N=1; N x H x W and H x W
    when C == 1); MNIST digits N x 28 x 28 for a 1 x H x W spec with H, W <= 28, area-resampled
    by :func:`resample`; N x 32 x 32 with a blank (0) 2-pixel border for a 1 x 28 x 28 spec,
    cropped (the old padded LeNet-5 input). Anything else raises a one-line ``UserError``.
    """
    c, h, w = (int(v) for v in shape)
    if not isinstance(images, np.ndarray):
        raise UserError(f"{what}: expected a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise UserError(f"{what}: dtype {images.dtype}, expected uint8 (0..255 grey levels)")
    a = images
    if a.ndim == 4 and a.shape[1:] == (c, h, w):
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape == (c, h, w) and c > 1:
        return np.ascontiguousarray(a[None])
    if c == 1:
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        elif a.ndim == 2:
            a = a[None]
        if a.ndim == 3:
            if a.shape[1:] == (h, w):
                return np.ascontiguousarray(a[:, None])
            if a.shape[1:] == (28, 28) and h <= 28 and w <= 28:
                return resample(a, h, w)[:, None]
            if a.shape[1:] == (32, 32) and (h, w) == (28, 28):
                inner = a[:, 2:30, 2:30]
                if int(a.astype(np.int64).sum()) == int(inner.astype(np.int64).sum()):
                    return np.ascontiguousarray(inner[:, None])
                raise UserError(f"{what}: shape {images.shape} with a non-blank 2-pixel border, the spec takes {c} x {h} x {w}")
    raise UserError(f"{what}: shape {images.shape}, the spec takes {c} x {h} x {w}")


def pad32(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> N x 32 x 32 with a 2-pixel background border (N x 32 x 32 passes)."""
    images = check_images(images)
    if images.shape[1] == 32:
        return images
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))


def scale(images_u8) -> "np.ndarray":
    """Grey level 0..255 -> the paper's range: 0 -> -0.1 (background), 255 -> 1.175 (ink)."""
    return BACKGROUND + images_u8.astype(np.float32) * np.float32((FOREGROUND - BACKGROUND) / 255.0)
