"""arrays.py: CSV, .npz, IDX folders and CIFAR-10's binary batches, each written tiny into
tmp_path and read through reading.read_path (so finish() runs too), and every refusal
with the words that tell the user what is wrong."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import Payload

from lenet.data import arrays
from lenet.data.idx import write_idx
from lenet.data.reading import read_path
from lenet.data.sources import ReadOptions
from lenet.errors import DataError


def pictures(n: int, side: int, channels: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (n, side, side) if channels is None else (n, side, side, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def csv_text(labels, images, header: bool = True) -> str:
    flat = images.reshape(len(images), -1)
    rows = [",".join(map(str, [int(y), *x])) for y, x in zip(labels, flat)]
    head = ["label," + ",".join(f"pixel{i + 1}" for i in range(flat.shape[1]))] if header else []
    return "\n".join(head + rows) + "\n"


def write_csv(path: Path, labels, images, header: bool = True) -> Path:
    text = csv_text(labels, images, header)
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


def all_rows(found) -> tuple[np.ndarray, np.ndarray]:
    """Every split's pictures and labels, in one order (sorted by the pictures' bytes)."""
    images = np.concatenate([x for x, _ in found.splits.values()])
    labels = np.concatenate([y for _, y in found.splits.values()])
    order = np.lexsort(images.reshape(len(images), -1).T[::-1])
    return images[order], labels[order]


def sorted_like(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(images.reshape(len(images), -1).T[::-1])
    return images[order], labels[order]


# --------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("name, header", [("data.csv", True), ("data.csv", False), ("data.CSV.gz", True)])
def test_csv_round_trip(tmp_path, name, header):
    labels = np.arange(40) % 4
    images = pictures(40, 5)
    path = write_csv(tmp_path / name, labels, images, header)

    found = read_path(path, ReadOptions(test_fraction=0.2))

    assert found.kind == "csv" and found.class_names == ("0", "1", "2", "3")
    assert found.splits["train"][0].shape == (32, 1, 5, 5) and len(found.splits["test"][1]) == 8
    assert found.splits["train"][0].dtype == np.uint8 and found.splits["train"][1].dtype == np.int64
    got_images, got_labels = all_rows(found)
    want_images, want_labels = sorted_like(images[:, None], labels)
    assert np.array_equal(got_images, want_images) and np.array_equal(got_labels, want_labels)


def test_csv_folder_with_train_test_and_val_and_classes_txt(tmp_path):
    folder = tmp_path / "kaggle"
    folder.mkdir()
    write_csv(folder / "Fashion_TRAIN.csv", np.arange(12) % 3, pictures(12, 4, seed=1))
    write_csv(folder / "fashion_test.csv.gz", np.arange(6) % 3, pictures(6, 4, seed=2), header=False)
    write_csv(folder / "fashion_val.csv", np.arange(3), pictures(3, 4, seed=3))
    (folder / "classes.txt").write_text("shirt\nshoe\nbag\n\n")
    (folder / "notes.csv").write_text("not a split\n")

    found = read_path(folder)

    assert found.class_names == ("shirt", "shoe", "bag")
    assert {k: v[0].shape for k, v in found.splits.items()} == {
        "train": (12, 1, 4, 4), "test": (6, 1, 4, 4), "val": (3, 1, 4, 4)}
    assert np.array_equal(found.splits["test"][0][:, 0], pictures(6, 4, seed=2))
    assert any("notes.csv" in note for note in found.notes)


def test_csv_labels_past_255_and_windows_line_ends(tmp_path):
    labels = np.array([0, 300, 0, 300])
    text = csv_text(labels, pictures(4, 2)).replace("\n", "\r\n")
    (tmp_path / "wide.csv").write_text(text, newline="")
    images, got = arrays._read_csv_file(tmp_path / "wide.csv")
    assert got.tolist() == [0, 300, 0, 300] and images.shape == (4, 1, 2, 2)


@pytest.mark.parametrize("name", ["spaces.csv", "spaces.csv.gz"])
def test_csv_lines_of_only_spaces_are_blank_lines(tmp_path, name):
    labels, images = np.arange(6) % 2, pictures(6, 2)
    lines = csv_text(labels, images).splitlines()
    text = "\n".join(lines[:3] + ["  ", "\t"] + lines[3:]) + "\n \n"  # as a hand edit leaves them
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    got_images, got_labels = arrays._read_csv_file(path)
    assert np.array_equal(got_images[:, 0], images) and got_labels.tolist() == labels.tolist()


def test_csv_with_mac_line_ends_is_read(tmp_path):
    labels, images = np.arange(6) % 2, pictures(6, 2)
    (tmp_path / "mac.csv").write_bytes(csv_text(labels, images).replace("\n", "\r").encode())
    got_images, got_labels = arrays._read_csv_file(tmp_path / "mac.csv")  # was "only a header row"
    assert np.array_equal(got_images[:, 0], images) and got_labels.tolist() == labels.tolist()


def test_fashion_mnist_sized_csv_reads_in_seconds(tmp_path):
    """Fashion-MNIST's 60,000 rows take about a second (docs/data.md); 6,000 here, bounded loosely."""
    import time

    labels, images = np.arange(6000) % 10, pictures(6000, 28)
    path = write_csv(tmp_path / "train.csv", labels, images)
    start = time.perf_counter()
    got_images, got_labels = arrays._read_csv_file(path)
    assert time.perf_counter() - start < 5.0  # ~0.1 s here; loose for a busy machine
    assert np.array_equal(got_images[:, 0], images) and np.array_equal(got_labels, labels)


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines.__setitem__(3, lines[3].rsplit(",", 1)[0]),
     r"bad\.csv, line 4: 25 values, expected 26 \(a label and 25 pixels, as the header on line 1 names\)"),
    (lambda lines: lines.__setitem__(2, lines[2].split(",", 1)[0] + ",1,2,300,4," + lines[2].split(",", 5)[5]),
     r"bad\.csv, line 3, column 4: pixel 3 300 is out of range \(0\.\.255\)"),
    (lambda lines: lines.__setitem__(5, lines[5].split(",", 1)[0] + ",-1," + lines[5].split(",", 2)[2]),
     r"bad\.csv, line 6, column 2: pixel 1 -1 is out of range"),
    (lambda lines: lines.__setitem__(2, lines[2].split(",", 1)[0] + ",1.5," + lines[2].split(",", 2)[2]),
     r"bad\.csv, line 3, column 2: pixel 1 '1\.5' is not an integer 0\.\.255"),
    (lambda lines: lines.__setitem__(4, "cat," + lines[4].split(",", 1)[1]),
     r"bad\.csv, line 5, column 1: label 'cat' is not a class index"),
    (lambda lines: lines.__setitem__(4, lines[4].split(",", 1)[0] + ",," + lines[4].split(",", 2)[2]),
     r"line 5, column 2: pixel 1 '' is not an integer"),
    (lambda lines: lines.__setitem__(6, "-2," + lines[6].split(",", 1)[1]),
     r"line 7, column 1: label -2 is out of range \(0 or more\)"),
    (lambda lines: lines.__setitem__(7, "99999999999," + lines[7].split(",", 1)[1]),
     r"line 8, column 1: label 99999999999 is past the 10,000 classes"),
    (lambda lines: lines.__setitem__(2, lines[2].split(",", 1)[0] + ',"7",' + lines[2].split(",", 2)[2]),
     r"line 3, column 2: pixel 1 '\"7\"' is not an integer"),
])
def test_csv_bad_rows_are_named_by_line(tmp_path, edit, message):
    lines = csv_text(np.arange(8) % 2, pictures(8, 5)).splitlines()
    edit(lines)
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_path(tmp_path / "bad.csv")


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("\n  \n", "empty file"),
    ("label,pixel1,pixel2,pixel3,pixel4\n", "only a header row"),
    ("1,2,3,4,5,6\n0,1,2,3,4,5\n", "a label and 5 pixels; 5 is not a square number"),
    ("1,2,3,4\n0,1,2,3\n", r"no label column \(rows hold 4 values, 2 x 2 pixels and no label\)"),
    ("pixel0,pixel1,pixel2,pixel3\n1,2,3,4\n", "no label column .the header starts with 'pixel0'"),
    ("3\n4\n", "expected label,pixel1"),
    ("label,pixel1,pixel2,pixel3,pixel4,\n1,2,3,4,5,\n", r"line 1: ends with a comma \(an empty last value\)"),
    ("label;pixel1;pixel2;pixel3;pixel4\n1;2;3;4;5\n", "line 1: values separated by ';', not commas"),
])
def test_csv_refusals(tmp_path, text, message):
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_path(tmp_path / "x.csv")


def test_csv_folder_whose_test_file_has_no_labels(tmp_path):
    """Kaggle's digit-recognizer: train.csv has 785 columns, test.csv 784 (no label)."""
    write_csv(tmp_path / "train.csv", np.arange(4) % 2, pictures(4, 28))
    (tmp_path / "test.csv").write_text(
        "\n".join(["pixel0," + ",".join(f"pixel{i}" for i in range(1, 784))] + ["0," * 783 + "0"] * 2) + "\n")
    with pytest.raises(DataError, match=r"test\.csv: no label column .*Kaggle's test\.csv is for submissions"):
        read_path(tmp_path)


def test_csv_folder_needs_one_file_per_split(tmp_path):
    write_csv(tmp_path / "a_train.csv", [0, 1], pictures(2, 2))
    write_csv(tmp_path / "b_train.csv", [0, 1], pictures(2, 2))
    with pytest.raises(DataError, match=r"2 train CSV files \(a_train\.csv, b_train\.csv\)"):
        read_path(tmp_path)
    (tmp_path / "b_train.csv").unlink()
    with pytest.raises(DataError, match=r"no test CSV file"):
        read_path(tmp_path)


def test_csv_over_the_size_bound_is_refused_before_reading(tmp_path, monkeypatch):
    write_csv(tmp_path / "big.csv", [0, 1], pictures(2, 4))
    monkeypatch.setattr(arrays, "MAX_TEXT_BYTES", 20)
    monkeypatch.setattr(arrays, "decompressed_bytes", lambda *a: pytest.fail("read past the bound"))
    with pytest.raises(DataError, match=r"big\.csv: \d+ bytes, over the 20 lenet reads as CSV"):
        read_path(tmp_path / "big.csv")


@pytest.mark.parametrize("listing, message", [
    ("a\nb\n", "names 2 classes, but the labels go up to 2"),
    ("a\n\nb\nc\n", r"classes\.txt, line 2: empty"),
    ("a\nb\na\n", r"line 3: 'a' repeats line 1"),
])
def test_classes_txt_refusals(tmp_path, listing, message):
    write_csv(tmp_path / "d.csv", [0, 1, 2, 0, 1, 2], pictures(6, 2))
    (tmp_path / "classes.txt").write_text(listing)
    with pytest.raises(DataError, match=message):
        read_path(tmp_path / "d.csv")


def test_classes_txt_beside_a_csv_names_the_classes(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 0, 1, 0, 1], pictures(6, 2))
    (tmp_path / "classes.txt").write_text("\ufeffcat \n dog\n", encoding="utf-8")  # as Notepad saves it
    assert read_path(tmp_path / "d.csv").class_names == ("cat", "dog")


# --------------------------------------------------------------------------- .npz


def keras_arrays(n_train=8, n_test=4, side=6, channels=None) -> dict[str, np.ndarray]:
    return {"x_train": pictures(n_train, side, channels, seed=1), "y_train": np.arange(n_train) % 2,
            "x_test": pictures(n_test, side, channels, seed=2), "y_test": np.arange(n_test) % 2}


def test_npz_grey(tmp_path):
    data = keras_arrays()
    data["y_test"] = data["y_test"].reshape(-1, 1).astype(np.uint8)  # (N, 1) as Keras's CIFAR has them
    np.savez(tmp_path / "d.npz", **data)

    found = read_path(tmp_path / "d.npz")

    assert found.kind == "npz" and found.class_names == ("0", "1")
    assert np.array_equal(found.splits["train"][0][:, 0], data["x_train"])
    assert found.splits["test"][1].tolist() == [0, 1, 0, 1]


def test_npz_channels_last_rgb_with_val_and_classes_txt(tmp_path):
    data = keras_arrays(channels=3)
    data.update(x_val=pictures(2, 6, 3, seed=3), y_val=np.array([0, 1]))
    np.savez_compressed(tmp_path / "rgb.npz", **data, extra=np.zeros(3))
    (tmp_path / "classes.txt").write_text("no\nyes\n")

    found = read_path(tmp_path / "rgb.npz")

    images = found.splits["train"][0]
    assert images.shape == (8, 3, 6, 6) and images.flags.c_contiguous
    assert np.array_equal(images[3, 2], data["x_train"][3, :, :, 2])  # channel 2 of picture 3
    assert found.splits["val"][0].shape == (2, 3, 6, 6) and found.class_names == ("no", "yes")
    assert any("extra" in note for note in found.notes)


def test_npz_integer_pixels_in_range_are_cast(tmp_path):
    data = keras_arrays()
    data["x_train"] = data["x_train"].astype(np.int64)
    np.savez(tmp_path / "d.npz", **data)
    found = read_path(tmp_path / "d.npz")
    assert found.splits["train"][0].dtype == np.uint8 and any("int64" in n for n in found.notes)


def test_npz_class_only_in_the_test_set_is_noted(tmp_path):
    data = keras_arrays()
    data["y_test"][0] = 2  # train holds 0 and 1
    np.savez(tmp_path / "d.npz", **data)
    found = read_path(tmp_path / "d.npz")
    assert found.class_names == ("0", "1", "2")
    assert "class '2' only in the test or validation set, with no training pictures" in " ".join(found.notes)


def test_npz_of_python_objects_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "payload-ran"
    data = keras_arrays()
    data["x_train"] = np.array([Payload(marker)] * 8, dtype=object)
    np.savez(tmp_path / "evil.npz", **data)  # saving pickles; loading must not

    with pytest.raises(DataError, match="x_train holds Python objects.*lenet never unpickles"):
        read_path(tmp_path / "evil.npz")
    assert not marker.exists()


def test_npz_without_a_test_set_holds_one_out_per_class(tmp_path):
    data = keras_arrays()
    images = np.concatenate([data["x_train"], data["x_test"]])
    labels = np.concatenate([data["y_train"], data["y_test"]])
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels)
    found = read_path(tmp_path / "d.npz", ReadOptions(test_fraction=0.25))
    (train_x, train_y), (test_x, test_y) = found.splits["train"], found.splits["test"]
    assert np.bincount(train_y).tolist() == (np.bincount(labels) - np.bincount(test_y)).tolist()
    assert len(train_x) + len(test_x) == len(images) and sorted(found.splits) == ["test", "train"]
    assert np.bincount(test_y).tolist() == [round(0.25 * n) for n in np.bincount(labels)]  # per class
    assert any("no x_test" in note for note in found.notes)
    again = read_path(tmp_path / "d.npz", ReadOptions(test_fraction=0.25))
    assert np.array_equal(again.splits["test"][0], test_x)  # the same test set every time


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(x_train=d["x_train"] / 255.0), "x_train is float64; lenet reads pixels as uint8 0..255"
                                                        r".*\(x \* 255\)\.round\(\)"),
    (lambda d: d.update(x_train=d["x_train"].astype(np.float32)),  # Keras's x.astype("float32"): not x * 255
     r"x_train is float32; .*np\.clip\(x, 0, 255\)\.round\(\)\.astype\(np\.uint8\), for pictures in 0\.\.255"),
    (lambda d: d.pop("y_test"), r"holds x_test without y_test; give both or neither"),
    (lambda d: d.pop("y_train"), r"no y_train; it holds x_test, x_train, y_test"),
    (lambda d: d.update(x_test=d["x_test"][:0], y_test=d["y_test"][:0]),
     "x_test holds no pictures; leave x_test and y_test out instead"),
    (lambda d: d.update(y_train=d["y_train"][:5]), "x_train holds 8 pictures but y_train 5 labels"),
    (lambda d: d.update(y_train=-d["y_train"]), r"\(train\): label -1 is out of range"),
    (lambda d: d.update(x_test=d["x_test"].astype(np.int16) * 2), r"x_test holds values \d+\.\.\d+; pixels must be"),
    (lambda d: d.update(y_train=np.eye(2, dtype=np.int64)[d["y_train"]]), "one-hot"),
    (lambda d: d.update(y_train=d["y_train"].astype(np.float32)), "y_train is float32; labels must be integers"),
    (lambda d: d.update(x_val=d["x_test"]), "holds x_val without y_val"),
    (lambda d: d.update(x_train=d["x_train"][:, :, :, None].repeat(2, 3)), r"x_train has shape \(8, 6, 6, 2\)"),
])
def test_npz_refusals(tmp_path, change, message):
    data = keras_arrays()
    change(data)
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(DataError, match=message):
        read_path(tmp_path / "d.npz")


@pytest.mark.parametrize("content, message", [
    (b"just text", "not a zip file"),
    (b"\x93NUMPY\x01\x00", "a single .npy array"),
    (b"\x80\x04\x95", "a Python pickle"),
])
def test_npz_that_is_not_a_zip(tmp_path, content, message):
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_path(tmp_path / "d.npz")


# --------------------------------------------------------------------------- IDX folders


@pytest.mark.parametrize("first_label", [0, 1])  # EMNIST's letters are labelled 1..26
def test_idx_folder_of_any_size_and_class_count(tmp_path, first_label):
    """EMNIST's layout: 12x12 here, 26 classes, file names with a prefix."""
    rng = np.random.default_rng(0)
    train_labels, test_labels = np.arange(52) % 26 + first_label, np.arange(26) + first_label
    rng.shuffle(train_labels)
    write_idx(tmp_path / "emnist-letters-train-images-idx3-ubyte.gz", pictures(52, 12, seed=4))
    write_idx(tmp_path / "emnist-letters-train-labels-idx1-ubyte.gz", train_labels)
    write_idx(tmp_path / "emnist-letters-t10k-images-idx3-ubyte", pictures(26, 12, seed=5))
    write_idx(tmp_path / "emnist-letters-t10k-labels-idx1-ubyte", test_labels)
    (tmp_path / "emnist-letters-mapping.txt").write_text("1 65 97\n")

    found = read_path(tmp_path)

    assert found.kind == "idx" and found.class_names == tuple(str(k) for k in range(26 + first_label))
    assert found.splits["train"][0].shape == (52, 1, 12, 12)
    assert np.array_equal(found.splits["test"][0][:, 0], pictures(26, 12, seed=5))
    assert np.array_equal(found.splits["train"][1], train_labels)
    assert ("no pictures with label 0 (of 0..26)" in found.notes) == (first_label == 1)


def test_idx_folder_refusals(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", pictures(4, 3))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(4) % 2)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pictures(2, 3))
    with pytest.raises(DataError, match="no test IDX labels file"):
        read_path(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3) % 2)
    with pytest.raises(DataError, match="holds 2 pictures but t10k-labels-idx1-ubyte 3 labels"):
        read_path(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"holds uint8 \(2, 2\); expected uint8 labels"):
        read_path(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(2))
    write_idx(tmp_path / "other-train-images-idx3-ubyte.gz", pictures(4, 3))
    with pytest.raises(DataError, match="2 train IDX images files"):
        read_path(tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar(folder: Path, per_batch: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's binary layout with ``per_batch`` records a batch; the pictures written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list] = {"train": [], "test": []}
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], images.reshape(per_batch, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        written["test" if name.startswith("test") else "train"].append((images, labels))
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")
    return {split: (np.concatenate([i for i, _ in parts]), np.concatenate([y for _, y in parts]))
            for split, parts in written.items()}


@pytest.mark.parametrize("point_at_parent", [False, True])
def test_cifar10_binary_folder(tmp_path, point_at_parent):
    written = write_cifar(tmp_path / "cifar-10-batches-bin")

    found = read_path(tmp_path if point_at_parent else tmp_path / "cifar-10-batches-bin")

    assert found.kind == "cifar10" and found.class_names == CLASSES
    images, labels = found.splits["train"]
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, written["train"][0]) and np.array_equal(labels, written["train"][1])
    assert np.array_equal(found.splits["test"][0], written["test"][0])


def test_cifar10_refusals(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar(folder)
    (folder / "data_batch_2.bin").write_bytes((folder / "data_batch_2.bin").read_bytes()[:-1])
    with pytest.raises(DataError, match=r"data_batch_2\.bin: 9,218 bytes is not a whole number of 3,073-byte"):
        read_path(folder)

    write_cifar(folder)
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[3073] = 10  # the label byte of record 1
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 1 has label 10; CIFAR-10's labels are 0\.\.9"):
        read_path(folder)

    write_cifar(folder)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"no data_batch_4\.bin; the folder is incomplete"):
        read_path(folder)


@pytest.mark.parametrize("layout", ["itself", "parent"])
def test_cifar10_python_version_is_refused_with_where_to_get_the_binary_one(tmp_path, layout):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"\x80\x04 a pickle, never opened")
    with pytest.raises(DataError, match=r"Python version.*never unpickles.*`lenet download cifar10`.*binary"):
        read_path(folder if layout == "itself" else tmp_path)


@pytest.mark.parametrize("n, chunk", [(1, 1 << 20), (37, 4 * 9), (1000, 64 * 9), (1000, 1 << 20)])
def test_to_front_gives_the_kept_rows_in_the_readers_own_array(n, chunk):
    from lenet.data.sources import held_out_per_class, to_front

    rng = np.random.default_rng(n)
    rows = rng.integers(0, 256, (n, 1, 3, 3), dtype=np.uint8)
    keep, _ = held_out_per_class(rng.integers(0, 5, n), 0, lambda k: k // 3)
    expected = rows[keep]
    got = to_front(rows, keep, chunk)
    assert np.array_equal(got, expected) and np.shares_memory(got, rows)  # no second copy of the pixels
    frozen = expected.copy()
    frozen.flags.writeable = False  # an array the reader does not own (read-only): copied, left as it is
    assert np.array_equal(to_front(frozen, np.arange(0, len(frozen), 2)), expected[::2])
