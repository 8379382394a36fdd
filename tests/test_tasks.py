"""Tasks: real datasets (both layouts, cache, errors), splits, models, augmentation, embedded tasks.

Real-data tests read $OPTSEARCH_DATA_DIR (skipped without it) and never download.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optsearch.train import datasets, tasks
from optsearch.errors import DataError
from optsearch.train.tasks import Arrays, Task, get_task, load_data

IDX = datasets.IDX_FILES


@pytest.fixture
def one_thread():
    """Train on one thread: on a shared 2-core machine, two threads next to a busy process run ~8× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prepared_mnist(real: Path, tmp: Path, skip: str = "") -> Path:
    """A data dir with links to the prepared MNIST files (all but ``skip``)."""
    (tmp / "mnist").mkdir(parents=True)
    for n in IDX:
        if n != skip:
            (tmp / "mnist" / f"{n}.gz").symlink_to(real / "mnist" / f"{n}.gz")
    return tmp


# ----------------------------------------------------------------------------- training on real data
# Adam (lr 1e-3), batch 64, seed 0, 2,000 training examples, scored on 1,000 validation examples.
# Measured here: mnist 0.92, fashion_mnist 0.75 after 40 steps; cifar10 0.26 after 40 (chance 0.10).
@pytest.mark.parametrize(("name", "steps", "threshold"), [("mnist", 40, 0.6), ("fashion_mnist", 40, 0.5),
                                                           ("cifar10", 40, 0.17)])
def test_real_task_trains_above_chance(real_data_dir, one_thread, name, steps, threshold):
    task = get_task(name)
    data = load_data(task, data_dir_=real_data_dir, subsample=2000, seed=0)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (2000, 5000, 10000)
    assert data.train_x.shape[1:] == task.input_shape and data.train_x.dtype == torch.float32
    assert abs(data.train_x.mean().item()) < 0.1 and abs(data.train_x.std().item() - 1) < 0.1  # normalised
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.train_x), (64,), generator=g)
        x = data.train_x[idx]
        if task.augment is not None:
            x = task.augment(x, g)
        loss = F.cross_entropy(model(x), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.val_x[:1000]).argmax(1) == data.val_y[:1000]).float().mean().item()
    assert acc > threshold, f"{name}: validation accuracy {acc:.3f} after {steps} steps"


def test_real_task_budgets_and_traits():
    for name in ("mnist", "fashion_mnist", "cifar10"):
        t = get_task(name)
        assert (t.steps, t.batch_size, t.subsample, t.embedded) == (500, 128, None, False)
    assert get_task("mnist").traits.conv and not get_task("mnist").traits.batchnorm
    assert not get_task("mnist").traits.dropout and get_task("mnist").augment is None
    c = get_task("cifar10").traits
    assert c.conv and c.batchnorm and c.dropout and get_task("cifar10").augment is not None
    d = get_task("digits").traits
    assert not (d.conv or d.batchnorm or d.dropout)
    assert d.num_params == 64 * 128 + 128 + 128 * 10 + 10 and d.flops_per_example == 2 * (64 * 128 + 128 * 10)
    m = get_task("mnist").traits  # conv1 + conv2 + fc1 + fc2 multiply-adds, ×2
    assert m.flops_per_example == 2 * (784 * 32 * 9 + 196 * 64 * 32 * 9 + 3136 * 256 + 256 * 10)


# ----------------------------------------------------------------------------- splits
def _indexed_task(n: int = 1000) -> Task:
    """A task whose every training example is its own index, to check splits exactly."""
    x = np.arange(n, dtype=np.float32)[:, None]
    arrays = Arrays(x, np.zeros(n, np.int64), x[:10], np.zeros(10, np.int64))
    return Task(name="indexed", build_model=lambda: torch.nn.Linear(1, 10), read=lambda _: arrays,
                steps=1, batch_size=1, val_size=150, embedded=True, input_shape=(1,))


def test_validation_split_is_carved_from_train_and_seeded():
    task = _indexed_task()
    a = load_data(task, seed=0)
    ids = lambda t: set(t[:, 0].long().tolist())  # noqa: E731
    assert len(a.val_x) == 150 and len(a.train_x) == 850
    assert ids(a.val_x).isdisjoint(ids(a.train_x)) and ids(a.val_x) | ids(a.train_x) == set(range(1000))
    assert torch.equal(load_data(task, seed=0).val_x, a.val_x)
    b = load_data(task, seed=1)
    assert ids(b.val_x) != ids(a.val_x)
    small = load_data(task, seed=0, subsample=100)
    assert len(small.train_x) == 100 and torch.equal(small.val_x, a.val_x)  # subsampling never touches validation
    assert ids(small.train_x) <= ids(a.train_x)


def test_real_split_is_disjoint(real_data_dir):
    a = load_data(get_task("mnist"), data_dir_=real_data_dir, subsample=3000, seed=3)
    b = load_data(get_task("mnist"), data_dir_=real_data_dir, subsample=3000, seed=4)
    key = lambda x: {bytes(r.numpy().tobytes()) for r in x.flatten(1)}  # noqa: E731
    assert len(key(a.val_x) & key(a.train_x)) <= 2  # MNIST has a handful of exact duplicate images
    assert not torch.equal(a.val_y, b.val_y)


# ----------------------------------------------------------------------------- cache and layouts
def test_cache_is_used_the_second_time(real_data_dir, tmp_path, monkeypatch):
    root = _prepared_mnist(real_data_dir, tmp_path, skip=IDX[3])
    shutil.copy(real_data_dir / "mnist" / f"{IDX[3]}.gz", root / "mnist" / f"{IDX[3]}.gz")  # a copy we may touch
    first = datasets.read_dataset("mnist", root)
    assert len(list((root / ".optsearch-cache").glob("mnist-*/x_train.npy"))) == 1

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(datasets, "read_idx", no_decoding)
    second = datasets.read_dataset("mnist", root)
    assert all(np.array_equal(first[k], second[k]) for k in datasets.SPLITS)
    assert first["x_train"].shape == (60000, 1, 28, 28) and np.bincount(first["y_train"])[0] == 5923
    os.utime(root / "mnist" / f"{IDX[3]}.gz", ns=(1, 1))  # a changed source is decoded again
    with pytest.raises(AssertionError, match="decoded"):
        datasets.read_dataset("mnist", root)


def test_torchvision_mnist_layout(real_data_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for n in IDX[:2]:  # torchvision leaves decompressed files; accept .gz copies as well
        with gzip.open(real_data_dir / "mnist" / f"{n}.gz") as src, open(raw / n, "wb") as dst:
            shutil.copyfileobj(src, dst)
    for n in IDX[2:]:
        shutil.copy(real_data_dir / "mnist" / f"{n}.gz", raw / f"{n}.gz")
    got = datasets.read_dataset("mnist", tmp_path)
    want = datasets.read_dataset("mnist", real_data_dir)
    assert all(np.array_equal(got[k], want[k]) for k in datasets.SPLITS)


def test_torchvision_cifar_pickle_layout(real_data_dir, tmp_path):
    ref = datasets.read_dataset("cifar10", real_data_dir)
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, n in enumerate(names):  # the pickled-dict format of the original batches, 20 images each
        x, y = (ref["x_train"], ref["y_train"]) if i < 5 else (ref["x_test"], ref["y_test"])
        sl = slice(i * 5000, i * 5000 + 20) if i < 5 else slice(0, 20)
        with open(py / n, "wb") as f:
            pickle.dump({b"data": x[sl].reshape(20, -1), b"labels": y[sl].tolist()}, f)
    got = datasets.read_dataset("cifar10", tmp_path)
    assert got["x_train"].shape == (100, 3, 32, 32) and np.array_equal(got["x_train"][20:40], ref["x_train"][5000:5020])
    assert np.array_equal(got["y_train"][20:40], ref["y_train"][5000:5020])
    assert np.array_equal(got["x_test"], ref["x_test"][:20]) and np.array_equal(got["y_test"], ref["y_test"][:20])


# ----------------------------------------------------------------------------- errors
def test_cut_off_gzip_names_the_file(real_data_dir, tmp_path):
    root = _prepared_mnist(real_data_dir, tmp_path, skip=IDX[0])
    blob = (real_data_dir / "mnist" / f"{IDX[0]}.gz").read_bytes()
    (root / "mnist" / f"{IDX[0]}.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated") as e:
        load_data(get_task("mnist"), data_dir_=root)
    assert "\n" not in str(e.value)


def test_cut_off_tar_names_the_file(real_data_dir, tmp_path):
    (tmp_path / "cifar10").mkdir()
    blob = (real_data_dir / "cifar10" / "cifar10-jpeg.tar.gz").read_bytes()
    (tmp_path / "cifar10" / "cifar10-jpeg.tar.gz").write_bytes(blob[:500_000])
    with pytest.raises(DataError, match=r"cifar10-jpeg\.tar\.gz: truncated"):
        datasets.read_dataset("cifar10", tmp_path)


def test_bad_idx_magic_and_size(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / IDX[1]).write_bytes(b"\x00\x00\x0d\x01" + (10).to_bytes(4, "big") + bytes(10))  # float32 IDX, not bytes
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: not an IDX file"):
        datasets.read_idx(raw / IDX[1])
    (raw / IDX[1]).write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(7))  # 7 of 10 labels
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: size 15 bytes .* cut off"):
        datasets.read_idx(raw / IDX[1])


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(get_task("mnist"), data_dir_=tmp_path)
    msg = str(e.value)
    assert "mnist not found" in msg and "OPTSEARCH_DATA_DIR" in msg and "--data-dir" in msg
    assert f"{tmp_path}/mnist/" in msg and f"{tmp_path}/MNIST/raw/" in msg and "train-images-idx3-ubyte.gz" in msg
    with pytest.raises(DataError, match=r"cifar10/ \(cifar10-jpeg\.tar\.gz\) or .*cifar-10-batches-py/"):
        load_data(get_task("cifar10"), data_dir_=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_data(get_task("fashion_mnist"), data_dir_=tmp_path / "nowhere")
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / f"{IDX[0]}.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"incomplete dataset .*missing train-labels-idx1-ubyte\.gz"):
        load_data(get_task("fashion_mnist"), data_dir_=tmp_path)


def test_no_data_dir_falls_back_to_torchvision_download(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class Offline:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raise ConnectionError("no network")

    monkeypatch.delenv("OPTSEARCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tvd, "FashionMNIST", Offline)
    with pytest.raises(DataError, match=r"download into .*failed .*OPTSEARCH_DATA_DIR"):
        load_data(get_task("fashion_mnist"))
    assert calls == [(str(tmp_path / "optsearch" / "data"), True, True)]


# ----------------------------------------------------------------------------- augmentation
def test_crop_flip_augmentation():
    aug = get_task("cifar10").augment
    x = torch.randn(16, 3, 32, 32)
    a = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, aug(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert sum(not torch.equal(a[i], x[i]) for i in range(16)) >= 12  # 1/162 of draws are the identity
    fill = torch.tensor([-m / s for m, s in zip((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    padded = fill.view(1, 3, 1, 1).repeat(16, 1, 40, 40)
    padded[..., 4:36, 4:36] = x
    flips = 0
    for i in range(16):  # every output is exactly one crop of the black-padded input, maybe mirrored
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                   if torch.equal(a[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert len(matches) == 1
        flips += matches[0][2]
    assert 2 <= flips <= 14
    pop = aug(x.view(2, 8, 3, 32, 32), torch.Generator().manual_seed(0))  # a population's [P, B, ...] batch
    assert pop.shape == (2, 8, 3, 32, 32) and torch.equal(pop.reshape(16, 3, 32, 32), a)


# ----------------------------------------------------------------------------- embedded tasks
def test_embedded_tasks_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("embedded tasks must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name, shape, n_val, n_test in (("digits", (64,), 287, 360), ("mnist1d", (40,), 800, 1000)):
        task = get_task(name)
        d = load_data(task, data_dir_="/nonexistent", seed=0)
        assert task.embedded and d.train_x.shape[1:] == shape == task.input_shape
        assert (len(d.val_x), len(d.test_x)) == (n_val, n_test) and d.train_y.dtype == torch.int64
        assert set(d.train_y.unique().tolist()) == set(range(10))
