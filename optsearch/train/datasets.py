"""Readers for the real datasets (MNIST, Fashion-MNIST, CIFAR-10), decoded once and cached as ``.npy``.

Two on-disk layouts are accepted under one data directory, so the same setting works on a machine
without internet (the prepared files) and on a user's machine (torchvision's ``download=True``):

=============  ======================================  ==============================================
dataset        prepared files                           torchvision layout
=============  ======================================  ==============================================
mnist          ``mnist/*-ubyte.gz``                     ``MNIST/raw/*-ubyte`` (or ``.gz``)
fashion_mnist  ``fashion-mnist/*-ubyte.gz``             ``FashionMNIST/raw/*-ubyte`` (or ``.gz``)
cifar10        ``cifar10/cifar10-jpeg.tar.gz``          ``cifar-10-batches-py/`` (pickled batches)
=============  ======================================  ==============================================

Decoding (gunzip, or 60,000 JPEGs: ≈ 12 s) happens once; the uint8 arrays are cached under
``<data dir>/.optsearch-cache/`` when that is writable, else ``~/.cache/optsearch/arrays/``, in a
folder keyed by the source files' paths, sizes and mtimes (a replaced file is decoded again). Images
stay uint8 here (CIFAR-10 as float32 would be 700 MB); ``tasks.load_data`` converts and normalises
only the rows it keeps, on the device.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import stat
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from optsearch.errors import DataError

DATA_DIR_ENV = "OPTSEARCH_DATA_DIR"
CACHE_VERSION = 1
"""Bump when a decoder's output changes, so stale caches are not read."""
SPLITS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

Raw = dict[str, np.ndarray]


def default_download_root() -> Path:
    """Where torchvision downloads go when no data directory is set (users with internet)."""
    return _user_cache() / "data"


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "optsearch"


# ----------------------------------------------------------------------------- decoders
def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (gzip-compressed or raw), checking magic and size."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt ({e}); replace the file") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    head = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:head]) if len(data) >= head else ()
    if len(dims) != ndim or len(data) != head + int(np.prod(dims)):
        raise DataError(f"{path}: size {len(data)} bytes does not match its IDX header {dims}; the file is cut off")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def _decode_idx(files: dict[str, Path]) -> Raw:
    ti, tl, vi, vl = (read_idx(files[n]) for n in IDX_FILES)
    for images, labels, n_img, n_lab in ((ti, tl, IDX_FILES[0], IDX_FILES[1]), (vi, vl, IDX_FILES[2], IDX_FILES[3])):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
            raise DataError(f"{files[n_img]}: expected 28×28 images, got shape {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"{files[n_lab]}: {len(labels)} labels for {len(images)} images in {files[n_img].name}")
        if labels.max(initial=0) > 9:
            raise DataError(f"{files[n_lab]}: labels outside 0..9")
    return {"x_train": ti[:, None], "y_train": tl.astype(np.int64), "x_test": vi[:, None], "y_test": vl.astype(np.int64)}


def _decode_cifar_jpeg(files: dict[str, Path]) -> Raw:
    from PIL import Image

    path = files["tar"]
    found: dict[str, list[tuple[int, str, bytes]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                parts = m.name.strip("./").split("/")
                if not m.isfile() or len(parts) != 3 or parts[0] not in found or parts[1] not in CIFAR_CLASSES:
                    continue
                f = tar.extractfile(m)
                found[parts[0]].append((CIFAR_CLASSES.index(parts[1]), parts[2], f.read() if f else b""))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt archive ({e}); replace the file") from None
    out: Raw = {}
    for split, items in found.items():
        if not items:
            raise DataError(f"{path}: no {split}/<class>/*.jpg images inside (expected the ImageFolder layout)")
        items.sort(key=lambda t: (t[0], t[1]))  # ImageFolder order, independent of the archive's order
        x = np.empty((len(items), 32, 32, 3), np.uint8)
        for i, (_, name, blob) in enumerate(items):
            try:
                x[i] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: image {split}/{name} cannot be decoded ({e})") from None
        out["x_" + split] = x.transpose(0, 3, 1, 2).copy()
        out["y_" + split] = np.array([c for c, _, _ in items], np.int64)
    return out


def _decode_cifar_pickles(files: dict[str, Path]) -> Raw:
    def batch(p: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(p, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[b"labels"], np.int64)
        except Exception as e:  # unpickling a damaged file can raise almost anything
            raise DataError(f"{p}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
        if len(x) != len(y):
            raise DataError(f"{p}: {len(y)} labels for {len(x)} images")
        return x, y

    train = [batch(files[f"data_batch_{i}"]) for i in range(1, 6)]
    tx, ty = batch(files["test_batch"])
    return {"x_train": np.concatenate([b[0] for b in train]), "y_train": np.concatenate([b[1] for b in train]),
            "x_test": tx, "y_test": ty}


# ----------------------------------------------------------------------------- layouts
Layout = tuple[str, dict[str, Path], Callable[[dict[str, Path]], Raw]]


def _idx_layouts(root: Path, prepared: str, tv: str) -> list[Layout]:
    raw = root / tv / "raw"
    tv_files = {n: (raw / n if (raw / n).exists() or not (raw / f"{n}.gz").exists() else raw / f"{n}.gz") for n in IDX_FILES}
    return [
        (f"{root / prepared}/", {n: root / prepared / f"{n}.gz" for n in IDX_FILES}, _decode_idx),
        (f"{raw}/", tv_files, _decode_idx),
    ]


def _cifar_layouts(root: Path) -> list[Layout]:
    py = root / "cifar-10-batches-py"
    return [
        (f"{root / 'cifar10'}/", {"tar": root / "cifar10" / "cifar10-jpeg.tar.gz"}, _decode_cifar_jpeg),
        (f"{py}/", {**{f"data_batch_{i}": py / f"data_batch_{i}" for i in range(1, 6)}, "test_batch": py / "test_batch"},
         _decode_cifar_pickles),
    ]


DATASETS: dict[str, tuple[str, Callable[[Path], list[Layout]]]] = {
    "mnist": ("MNIST", lambda r: _idx_layouts(r, "mnist", "MNIST")),
    "fashion_mnist": ("FashionMNIST", lambda r: _idx_layouts(r, "fashion-mnist", "FashionMNIST")),
    "cifar10": ("CIFAR10", _cifar_layouts),
}


def _locate(name: str, root: Path) -> Layout:
    """The first complete layout of ``name`` under ``root``, or a DataError saying where files belong."""
    layouts = DATASETS[name][1](root)
    for layout in layouts:
        if all(p.is_file() for p in layout[1].values()):
            return layout
    for where, files, _ in layouts:
        have = [p for p in files.values() if p.is_file()]
        if have:
            missing = ", ".join(p.name for p in files.values() if not p.is_file())
            raise DataError(f"{name}: incomplete dataset in {where}: missing {missing}")
    wanted = " or ".join(f"{where} ({', '.join(p.name for p in files.values())})" for where, files, _ in layouts)
    raise DataError(f"{name} not found in {root}: put its files in {wanted}; "
                    f"the data directory is set by --data-dir or ${DATA_DIR_ENV}")


# ----------------------------------------------------------------------------- cache
def _cache_dir(root: Path, files: dict[str, Path], name: str) -> Path:
    stamp = [CACHE_VERSION, name] + [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()]
    key = hashlib.sha1(repr(stamp).encode()).hexdigest()[:16]
    local = root / ".optsearch-cache"
    base = local if _writable(local if local.is_dir() else root) else _user_cache() / "arrays"
    return base / f"{name}-{key}"


def _writable(folder: Path) -> bool:
    """Writable by its mode bits too: root may write anywhere, but a read-only shared folder stays untouched."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def _load_cached(folder: Path) -> Raw | None:
    try:
        return {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in SPLITS}
    except (OSError, ValueError):
        return None


def _store(folder: Path, raw: Raw) -> None:
    """Write the arrays next to their final place, then rename: a crash never leaves a half cache."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        tmp.chmod(0o755)
        for k in SPLITS:
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(raw[k]))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # an unwritable cache costs time, not correctness


def read_dataset(name: str, root: Path | None) -> Raw:
    """uint8 images (N, C, H, W) and int64 labels of a real dataset, from the cache when it is fresh.

    Args:
        name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
        root: the data directory; None means torchvision's download into :func:`default_download_root`.
    """
    if root is None:
        root = default_download_root()
        try:
            _locate(name, root)
        except DataError:
            _download(name, root)
    elif not root.is_dir():
        raise DataError(f"data directory {root} does not exist (set by --data-dir or ${DATA_DIR_ENV})")
    _, files, decode = _locate(name, root)
    folder = _cache_dir(root, files, name)
    raw = _load_cached(folder) if folder.is_dir() else None
    if raw is None:
        shutil.rmtree(folder, ignore_errors=True)  # a damaged cache is rebuilt, not read again
        raw = decode(files)
        _store(folder, raw)
    return raw


def _download(name: str, root: Path) -> None:
    """torchvision's ordinary download, for users with internet who set no data directory."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, DATASETS[name][0])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"{name}: no data directory set and the download into {root} failed ({type(e).__name__}: "
                        f"{e}); put the files in a folder and pass --data-dir or set ${DATA_DIR_ENV}") from None
