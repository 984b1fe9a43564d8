"""Datasets: where they are found, how they are checked, how they are split.

Tiny IDX files written by the tests stand in for the real data everywhere except
the one ``slow`` test, which checks the real files and the constants in DATASETS.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset

import lenet.data.datasets
from lenet.data.datasets import (
    DATASETS,
    Normalizer,
    Split,
    class_index,
    get_spec,
    last_indices,
    load_dataset,
    locate,
    prepare_data,
    stratified_split,
    user_cache_dir,
    validation_indices,
)
from lenet.errors import DataError, UsageError
from lenet.data.idx import decompressed_bytes, read_idx, write_idx

FASHION = DATASETS["fashion-mnist"]
FILES = {key: f.filename for key, f in FASHION.files.items()}


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """The four places locate() searches, each a fresh folder that holds no data yet."""
    roots = {  # in the order locate() searches them
        "--data-dir": tmp_path / "flag",
        "LENET_DATA_DIR": tmp_path / "env",
        "user cache": user_cache_dir(),  # under XDG_CACHE_HOME, which conftest points at tmp_path
        "Debian package": tmp_path / "debian",
    }
    monkeypatch.setenv("LENET_DATA_DIR", str(roots["LENET_DATA_DIR"]))
    monkeypatch.setattr(lenet.data.datasets, "DEBIAN_DATASETS", roots["Debian package"])
    assert tmp_path in roots["user cache"].parents
    return roots


# --------------------------------------------------------------------------- locating


def test_locate_order_data_dir_env_cache_debian(places):
    for seed, root in enumerate(places.values()):
        write_tiny_dataset(root / "fashion-mnist", n_train=20, n_test=10, seed=seed)
    data_dir = places["--data-dir"]

    for how, root in places.items():
        found = locate("fashion-mnist", data_dir=data_dir)
        assert found == {key: root / "fashion-mnist" / name for key, name in FILES.items()}, how
        shutil.rmtree(root / "fashion-mnist")  # the next place must win now


def test_data_dir_wins_even_when_given_as_a_string(places):
    for root in places.values():
        write_tiny_dataset(root / "fashion-mnist", n_train=20, n_test=10)
    found = locate("fashion-mnist", data_dir=str(places["--data-dir"]))
    assert found["train_images"].parent == places["--data-dir"] / "fashion-mnist"


def test_a_place_with_only_some_files_is_skipped(places):
    write_tiny_dataset(places["--data-dir"] / "fashion-mnist", n_train=20, n_test=10)
    (places["--data-dir"] / "fashion-mnist" / FILES["test_labels"]).unlink()
    write_tiny_dataset(places["Debian package"] / "fashion-mnist", n_train=20, n_test=10)

    found = locate("fashion-mnist", data_dir=places["--data-dir"])
    assert {p.parent for p in found.values()} == {places["Debian package"] / "fashion-mnist"}


def test_datasets_live_in_their_own_subfolder(places):
    write_tiny_dataset(places["--data-dir"] / "fashion-mnist", n_train=20, n_test=10)
    write_tiny_dataset(places["--data-dir"] / "mnist", n_train=30, n_test=10, seed=1)
    assert len(load_dataset("mnist", data_dir=places["--data-dir"]).train) == 30
    assert len(load_dataset("fashion-mnist", data_dir=places["--data-dir"]).train) == 20


def test_raw_uncompressed_files_are_found_and_load(places):
    folder = write_tiny_dataset(places["LENET_DATA_DIR"] / "fashion-mnist", n_train=20,
                                n_test=10, compress=False)
    found = locate("fashion-mnist")
    assert found == {key: folder / name.removesuffix(".gz") for key, name in FILES.items()}
    ds = load_dataset("fashion-mnist")
    assert np.array_equal(ds.test.labels.numpy(), read_idx(found["test_labels"]))


def test_nothing_found_lists_every_place_and_how_to_get_it(places):
    with pytest.raises(DataError) as info:
        locate("fashion-mnist", data_dir=places["--data-dir"])
    message = str(info.value)
    for how, root in places.items():
        assert f"{how}: {root / 'fashion-mnist'}" in message
    assert "`lenet download fashion-mnist`" in message
    assert "apt-get install dataset-fashion-mnist" in message
    for name in FILES.values():
        assert name in message


def test_nothing_found_for_mnist_does_not_suggest_the_debian_package(places):
    with pytest.raises(DataError, match="lenet download mnist") as info:
        locate("mnist")
    assert "apt-get" not in str(info.value)
    assert "  --data-dir:" not in str(info.value)  # none given, so not searched


def test_download_false_wins_over_an_unset_no_download(places, monkeypatch):
    monkeypatch.delenv("LENET_NO_DOWNLOAD")
    with pytest.raises(DataError, match="not found"):
        locate("fashion-mnist", download=False)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset 'cifar100'.*fashion-mnist"):
        get_spec("cifar100")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar100")


def test_load_dataset_reads_a_path_with_read_options(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    np.savez(tmp_path / "mine.npz", x_train=images[:30], y_train=labels[:30], x_test=images[30:], y_test=labels[30:])
    ds = load_dataset(tmp_path / "mine.npz")
    assert ds.spec.name == "mine.npz" and ds.class_names == ("0", "1", "2", "3")
    assert ds.train.images.shape == (30, 3, 12, 12)
    assert np.array_equal(ds.test.images.numpy(), images[30:].transpose(0, 3, 1, 2))
    grey = load_dataset(str(tmp_path / "mine.npz"), image_size=16, channels=1)
    assert grey.train.images.shape == (30, 1, 16, 16) and grey.spec.size == 16
    with pytest.raises(UsageError, match="read options.*image_size.*got colour"):
        load_dataset(tmp_path / "mine.npz", colour=True)
    with pytest.raises(UsageError, match="read options .image_size. are for your own data"):
        load_dataset("fashion-mnist", image_size=32)
    with pytest.raises(DataError, match="unknown dataset 'nowhere', and no such path"):
        load_dataset("nowhere")


def test_lenet_decode_cache_0_reads_a_folder_without_the_cache(tmp_path, monkeypatch):
    from PIL import Image

    from lenet.data import cache

    for label in ("a", "b"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 60 * i + (label == "b") * 20).save(tmp_path / "pics" / label / f"{i}.png")
    monkeypatch.setenv("LENET_DECODE_CACHE", "0")
    first = load_dataset(tmp_path / "pics", test_fraction=0.25, progress=False)
    assert not list(cache.cache_dir().glob("*.npz"))
    monkeypatch.setenv("LENET_DECODE_CACHE", "1")
    again = load_dataset(tmp_path / "pics", test_fraction=0.25, progress=False)
    assert len(list(cache.cache_dir().glob("*.npz"))) == 1
    assert torch.equal(first.train.images, again.train.images) and first.class_names == ("a", "b")


# --------------------------------------------------------------------------- loading


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A --data-dir whose fashion-mnist/ holds 60 train and 20 test examples."""
    write_tiny_dataset(tmp_path / "data" / "fashion-mnist", n_train=60, n_test=20)
    return tmp_path / "data"


def test_load_dataset_shapes_types_and_content(tiny):
    ds = load_dataset("fashion-mnist", data_dir=tiny)
    folder = tiny / "fashion-mnist"
    assert ds.spec is FASHION and ds.class_names == FASHION.class_names and ds.val is None
    assert ds.train.images.shape == (60, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.shape == (60,) and ds.train.labels.dtype == torch.int64
    assert len(ds.test) == 20
    assert np.array_equal(ds.train.images[:, 0].numpy(), read_idx(folder / FILES["train_images"]))
    assert np.array_equal(ds.test.labels.numpy(), read_idx(folder / FILES["test_labels"]))
    assert ds.train.images.is_contiguous()


def _replace(tiny: Path, key: str, array: np.ndarray) -> Path:
    return write_idx(tiny / "fashion-mnist" / FILES[key], array)


def test_image_and_label_counts_differ(tiny):
    labels = _replace(tiny, "train_labels", np.zeros(59, dtype=np.uint8))
    with pytest.raises(DataError, match="60 images but .* 59 labels") as info:
        load_dataset("fashion-mnist", data_dir=tiny)
    assert str(labels) in str(info.value)
    assert str(tiny / "fashion-mnist" / FILES["train_images"]) in str(info.value)


def test_wrong_image_size(tiny):
    images = _replace(tiny, "test_images", np.zeros((20, 20, 20), dtype=np.uint8))
    with pytest.raises(DataError, match="28x28 images; got 20x20") as info:
        load_dataset("fashion-mnist", data_dir=tiny)
    assert str(info.value).startswith(str(images))


def test_images_not_3d(tiny):
    images = _replace(tiny, "train_images", np.zeros((60, 784), dtype=np.uint8))
    with pytest.raises(DataError, match="3-D image file") as info:
        load_dataset("fashion-mnist", data_dir=tiny)
    assert str(info.value).startswith(str(images))


def test_label_out_of_range(tiny):
    labels = np.zeros(20, dtype=np.uint8)
    labels[7] = 10
    path = _replace(tiny, "test_labels", labels)
    with pytest.raises(DataError, match="label 10 out of range for 10 classes") as info:
        load_dataset("fashion-mnist", data_dir=tiny)
    assert str(info.value).startswith(str(path))


def test_label_file_not_1d(tiny):
    path = _replace(tiny, "train_labels", np.zeros((60, 1), dtype=np.uint8))
    with pytest.raises(DataError, match="1-D label file") as info:
        load_dataset("fashion-mnist", data_dir=tiny)
    assert str(info.value).startswith(str(path))


def test_corrupt_file_surfaces_as_data_error_naming_it(tiny):
    path = tiny / "fashion-mnist" / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated gzip") as info:
        load_dataset("fashion-mnist", data_dir=tiny)
    assert str(info.value).startswith(str(path))


def _write_typed_idx(path: Path, type_code: int, shape: tuple[int, ...], payload: bytes) -> None:
    path.write_bytes(bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload)




def test_signed_labels_are_rejected(tiny):
    """An int8 label file (type 0x09) holding -1 would reach the loss as class -1."""
    path = tiny / "fashion-mnist" / FILES["test_labels"]
    path.unlink()
    _write_typed_idx(path.with_suffix(""), 0x09, (20,), bytes([255] + [0] * 19))
    with pytest.raises(DataError, match="uint8"):
        load_dataset("fashion-mnist", data_dir=tiny)


def test_float_images_are_rejected(tiny):
    """Float images (type 0x0D) would bypass the uint8 -> [0, 1] scaling downstream."""
    path = tiny / "fashion-mnist" / FILES["test_images"]
    path.unlink()
    _write_typed_idx(path.with_suffix(""), 0x0D, (20, 28, 28), bytes(4 * 20 * 28 * 28))
    with pytest.raises(DataError, match="uint8"):
        load_dataset("fashion-mnist", data_dir=tiny)


# --------------------------------------------------------------------------- splitting


def make_split(counts: list[int]) -> Split:
    """Class c has counts[c] examples, sorted by class (like a file that is); each
    image holds its own index, so the tests can tell which example went where."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    images = torch.arange(len(labels)).view(-1, 1, 1, 1)
    return Split(images, labels)


COUNTS = [50, 31, 7, 12, 100, 3, 64, 20, 9, 45]


def ids(split: Split) -> list[int]:
    return split.images.flatten().tolist()


def test_split_is_seeded():
    full = make_split(COUNTS)
    a_train, a_val = stratified_split(full, 0.1, seed=0)
    b_train, b_val = stratified_split(full, 0.1, seed=0)
    c_train, c_val = stratified_split(full, 0.1, seed=1)
    assert ids(a_val) == ids(b_val) and ids(a_train) == ids(b_train)
    assert ids(a_val) != ids(c_val)


def test_split_is_disjoint_complete_and_keeps_labels():
    full = make_split(COUNTS)
    train, val = stratified_split(full, 0.2, seed=3)
    assert not set(ids(train)) & set(ids(val))
    assert sorted(ids(train) + ids(val)) == list(range(len(full)))
    for part in (train, val):
        assert torch.equal(part.labels, full.labels[part.images.flatten()])
        assert part.images.dim() == 4


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_split_is_stratified(fraction):
    full = make_split(COUNTS)
    train, val = stratified_split(full, fraction, seed=0)
    val_counts = torch.bincount(val.labels, minlength=len(COUNTS)).tolist()
    train_counts = torch.bincount(train.labels, minlength=len(COUNTS)).tolist()
    for cls, count in enumerate(COUNTS):
        assert abs(val_counts[cls] - round(fraction * count)) <= 1, cls
        assert val_counts[cls] + train_counts[cls] == count


def test_split_is_not_the_last_part_of_the_file():
    full = make_split([100] * 10)
    _, val = stratified_split(full, 0.1, seed=0)
    assert sorted(ids(val)) != list(range(900, 1000))
    # Shuffled within each class too: not the last 10 of every class either.
    assert sorted(ids(val)) != [c * 100 + i for c in range(10) for i in range(90, 100)]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_bad_fraction(fraction):
    with pytest.raises(DataError, match="validation fraction"):
        stratified_split(make_split(COUNTS), fraction, seed=0)


def test_fraction_that_leaves_an_empty_split():
    with pytest.raises(DataError, match="empty split"):
        stratified_split(make_split([4] * 10), 0.05, seed=0)  # round(0.2) == 0 per class


@pytest.mark.parametrize("n, fraction", [(60_000, 0.1), (600, 0.1), (10, 0.25), (7, 0.3), (101, 0.5)])
def test_last_split_is_kerass_validation_split(n, fraction):
    """Keras' validation_split: the rows from floor(n * (1 - fraction)) on, in file order."""
    train_index, val_index = last_indices(n, fraction)
    split_at = math.floor(n * (1.0 - fraction))
    assert train_index.tolist() == list(range(split_at)) and val_index.tolist() == list(range(split_at, n))


def test_validation_indices_select_stratified_or_last():
    labels = make_split(COUNTS).labels
    last = [validation_indices(labels, 0.1, seed, "last")[1].tolist() for seed in (0, 1)]
    assert last[0] == last[1] == list(range(math.floor(len(labels) * 0.9), len(labels)))  # the seed plays no part
    stratified = [validation_indices(labels, 0.1, seed)[1].tolist() for seed in (0, 1)]
    assert stratified[0] != stratified[1] and stratified[0] != last[0]
    with pytest.raises(DataError, match="empty split"):
        last_indices(3, 0.9)  # floor(0.3): no training rows, which Keras refuses too
    with pytest.raises(DataError, match="validation fraction"):
        last_indices(100, 0.0)


@pytest.mark.parametrize("select", ["last", "stratified"])
def test_prepare_data_holds_out_the_rows_val_select_names(tiny_data_dir, select):
    from lenet.configuration.build import build_config

    cfg = build_config("d2l", overrides=[f"data.data_dir={tiny_data_dir}", "data.val_split=0.1",
                                         f"data.val_select={select}"])
    data = prepare_data(cfg, torch.device("cpu"))
    assert (data.n_train, data.n_val) == (540, 60)
    assert (data.val_index.tolist() == list(range(540, 600))) == (select == "last")


def test_normalizer_raw_feeds_the_pixels_as_floats():
    images = torch.tensor([[[[0, 1, 128, 255]]]], dtype=torch.uint8)
    raw = Normalizer("raw", 0.5, 0.25)
    assert raw(images).dtype == torch.float32 and raw(images).flatten().tolist() == [0.0, 1.0, 128.0, 255.0]
    assert (raw.scale, raw.shift) == (1.0, 0.0)  # the constants an ONNX export writes


# --------------------------------------------------------------------------- class names


@pytest.mark.parametrize("given, index", [
    ("Pullover", 2), ("pullover", 2), ("  PULLOVER ", 2), ("sweater", 2), ("Sweater", 2),
    ("coat", 4), ("Coat", 4), ("jacket", 4), ("t-shirt/top", 0), ("ankle boot", 9),
    ("boot", 9), ("7", 7), (7, 7), (0, 0),
])
def test_class_index_fashion(given, index):
    assert class_index(FASHION, given) == index


def test_class_index_mnist():
    mnist = DATASETS["mnist"]
    assert class_index(mnist, "7") == 7 and class_index(mnist, 3) == 3
    assert class_index(mnist, "Seven") == 7


@pytest.mark.parametrize("given", ["cat", "10", -1, "", "sweaters"])
def test_class_index_unknown(given):
    with pytest.raises(UsageError, match="unknown class") as info:
        class_index(FASHION, given)
    assert "Pullover" in str(info.value) and "sweater" in str(info.value)


def test_aliases_name_real_classes():
    for spec in DATASETS.values():
        for alias, name in spec.aliases.items():
            assert alias == alias.lower() and name in spec.class_names, (spec.name, alias)


# --------------------------------------------------------------------------- the real data


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, spec in DATASETS.items() if spec.files])  # the IDX ones
def test_real_datasets(name):
    """The real files load, match the published checksums, and the spec's constants."""
    from conftest import real_data

    real_data_dir = real_data(name)
    for spec in (DATASETS[name],):
        ds = load_dataset(name, data_dir=real_data_dir)
        assert ds.train.images.shape == (60000, 1, 28, 28), name
        assert ds.test.images.shape == (10000, 1, 28, 28), name
        assert len(ds.train) == 60000 and len(ds.test) == 10000
        assert set(torch.unique(ds.train.labels).tolist()) == set(range(10))
        if name == "fashion-mnist":  # balanced by construction (Zalando's README)
            assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
            assert torch.bincount(ds.test.labels).tolist() == [1000] * 10

        for key, f in spec.files.items():
            data = decompressed_bytes(real_data_dir / name / f.filename)
            assert len(data) == f.size, (name, key)
            assert hashlib.sha256(data).hexdigest() == f.sha256, (name, key)

        pixels = ds.train.images.double() / 255  # the [0, 1] scale normalize="standard" uses
        assert abs(pixels.mean().item() - spec.mean) < 5e-4, name
        assert abs(pixels.std(correction=0).item() - spec.std) < 5e-4, name

        if name == "mnist":
            assert ds.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
            assert ds.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_the_tests_find_real_data_where_lenet_would(tmp_path, monkeypatch):
    """conftest looks where lenet looks, per dataset: Debian's Fashion-MNIST is found, and
    only the case whose dataset is absent skips, saying how to get it."""
    import conftest
    import lenet.data.catalog
    from conftest import write_tiny_dataset

    debian = tmp_path / "usr-share-datasets"
    write_tiny_dataset(debian / "fashion-mnist")  # what apt-get install dataset-fashion-mnist gives
    monkeypatch.setattr(lenet.data.catalog, "DEBIAN_DATASETS", debian)
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "no-shared")
    monkeypatch.delenv("LENET_DATA_DIR", raising=False)
    found, _ = conftest._find_real_data("fashion-mnist")
    assert found == debian
    missing, looked = conftest._find_real_data("mnist")
    assert missing is None and str(debian / "mnist") in looked and len(looked) == 3
    monkeypatch.setitem(conftest.REAL_DATA, "mnist", (missing, looked))
    monkeypatch.delenv("LENET_REQUIRE_REAL_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"real mnist not found .*`lenet download mnist`"):
        conftest.real_data("mnist")


def test_a_run_whose_data_changed_classes_or_shape_is_refused_not_scored_against_wrong_names(tmp_path):
    import lenet
    from lenet.data.datasets import load_data

    x, y = np.zeros((6, 12, 12), np.uint8), np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    cfg = lenet.config(set={"data.path": str(tmp_path / "d.npz"), "data.classes": ["0", "1"]})  # trained on 2
    with pytest.raises(DataError, match=r"now has the classes \['0', '1', '2'\] but this run trained on \['0', '1'\]"):
        load_data(cfg)  # eval crashed on the confusion matrix, or with a class sorted first, used shifted labels
    resized = lenet.config(set={"data.path": str(tmp_path / "d.npz"), "data.classes": ["0", "1", "2"],
                                "model.input_size": 16})  # trained on 16 x 16; the pictures are 12 x 12 now
    with pytest.raises(DataError, match=r"now has pictures of 1 x 12 x 12 but this run trained on 1 x 16 x 16"):
        load_data(resized)  # was a torch traceback from inside the model
    assert load_data(resized.model_copy(update={"model": resized.model.model_copy(update={"input_size": 12})}))
