"""Image folders as --data: layouts, channels, sizes, hostile folders, the decode cache, memory."""

from __future__ import annotations

import io
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lenet.data import cache, folder, listing, reading, sources
from lenet.data.sources import ReadOptions
from lenet.errors import DataError
from pictures import png_header_only

QUIET = ReadOptions(progress=False)


def grey(value: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    """A grey picture whose pixels differ (value + row + column) so any shuffle shows."""
    w, h = size
    return Image.fromarray(((value + np.add.outer(np.arange(h), np.arange(w))) % 256).astype(np.uint8))


def colour(value: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    w, h = size
    base = np.add.outer(np.arange(h), np.arange(w))
    return Image.fromarray(np.stack([(value + base) % 256, (2 * value + base) % 256, (255 - value - base) % 256],
                                    axis=-1).astype(np.uint8))


def make_folder(root: Path, classes: int = 3, per_class: int = 6, make=grey, size=(8, 8)) -> Path:
    """root/c<k>/<i>.png, each picture distinct: value 40k + i."""
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make(40 * k + i, size).save(root / f"c{k}" / f"{i:02d}.png")
    return root


def pixels(image: Image.Image) -> np.ndarray:
    """(C, H, W) uint8 as folder.py stores a picture."""
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read(path: Path, **options) -> sources.Arrays:
    return folder.read_folder(path, ReadOptions(progress=False, **options))


def error(path: Path, **options) -> str:
    with pytest.raises(DataError) as caught:
        read(path, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- layouts


def test_one_folder_gives_all_with_sorted_classes_and_exact_pixels(tmp_path):
    root = make_folder(tmp_path / "data")
    found = read(root)
    assert found.kind == "image folder" and found.class_names == ("c0", "c1", "c2")
    images, labels = found.splits["all"]
    assert images.dtype == np.uint8 and images.shape == (18, 1, 8, 8)
    assert labels.dtype == np.int64 and labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    for row, (k, i) in enumerate((k, i) for k in range(3) for i in range(6)):
        assert np.array_equal(images[row], pixels(grey(40 * k + i)))


def test_read_path_splits_one_folder_stratified(tmp_path):
    root = make_folder(tmp_path / "data", per_class=10)
    found = reading.read_path(root, QUIET)
    train, test = found.splits["train"], found.splits["test"]
    assert len(train[0]) == 24 and len(test[0]) == 6
    assert np.bincount(test[1]).tolist() == [2, 2, 2]
    # every test picture is one that was written, with its own label
    written = {pixels(grey(40 * k + i)).tobytes(): k for k in range(3) for i in range(10)}
    assert all(written[image.tobytes()] == label for image, label in zip(*test))


def test_train_test_val_layout_in_colour(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", make=colour)
    make_folder(root / "test", classes=2, per_class=2, make=colour)  # c2 has no test pictures: fine
    make_folder(root / "val", classes=3, per_class=1, make=colour)
    found = reading.read_path(root, QUIET)
    assert found.class_names == ("c0", "c1", "c2")
    assert {name: len(labels) for name, (_, labels) in found.splits.items()} == {"train": 18, "test": 4, "val": 3}
    images, labels = found.splits["test"]
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(images[2], pixels(colour(40)))


def test_nested_pictures_are_found_in_sorted_order(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=1)
    (root / "c1" / "deeper" / "deepest").mkdir(parents=True)
    grey(7).save(root / "c1" / "deeper" / "deepest" / "a.PNG")
    grey(9).save(root / "c1" / "deeper" / "b.png")
    images, labels = read(root).splits["all"]
    assert labels.tolist() == [0, 1, 1, 1]
    # c1/00.png, c1/deeper/b.png, c1/deeper/deepest/a.PNG
    assert [int(image[0, 0, 0]) for image in images[1:]] == [40, 9, 7]


def test_a_test_class_missing_from_train_is_named(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", classes=2)
    make_folder(root / "test", classes=3)
    assert "test/c2: a class that train/ does not have" in error(root)


def test_train_without_test_is_refused(tmp_path):
    make_folder(tmp_path / "data" / "train")
    assert "has train/ but no test/" in error(tmp_path / "data")


@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".tif", ".webp", ".pgm", ".JPEG"])
def test_other_formats(tmp_path, suffix):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    grey(5).save(root / "c0" / f"other{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
    images, _ = read(root).splits["all"]
    channels = 3 if suffix == ".webp" else 1  # WebP has no grey mode: Pillow reads it back as RGB
    assert images.shape == (5, channels, 8, 8)
    with Image.open(root / "c0" / f"other{suffix}") as written:
        expected = pixels(written.convert("L" if channels == 1 else "RGB"))
    assert np.array_equal(images[2], expected)
    if suffix != ".JPEG":  # lossless
        assert np.array_equal(expected[:1], pixels(grey(5)))


# --------------------------------------------------------------------------- channels and sizes


def test_channels_grey_colour_and_forced(tmp_path):
    root = make_folder(tmp_path / "data")
    assert read(root).splits["all"][0].shape[1] == 1
    forced = read(root, channels=3).splits["all"][0]
    assert forced.shape[1] == 3 and np.array_equal(forced[0], np.repeat(pixels(grey(0)), 3, axis=0))

    colour(5).save(root / "c1" / "rgb.png")
    images, _ = read(root).splits["all"]
    assert images.shape == (19, 3, 8, 8)
    assert np.array_equal(images[0], pixels(grey(0).convert("RGB")))
    as_grey = read(root, channels=1).splits["all"][0]
    assert np.array_equal(as_grey[12], pixels(colour(5).convert("L")))  # c1/rgb.png sorts last in c1


def test_palettes_grey_or_colour_and_alpha_dropped(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    grey(3).convert("P").save(root / "c0" / "palette.png")  # Pillow's "P" from "L": a grey palette
    grey(4).convert("LA").save(root / "c0" / "la.png")
    assert read(root).splits["all"][0].shape[1] == 1
    rgba = colour(9).convert("RGBA")
    rgba.putalpha(0)
    rgba.save(root / "c1" / "rgba.png")
    images, _ = read(root).splits["all"]
    assert images.shape[1] == 3
    assert np.array_equal(images[-1], pixels(colour(9)))  # alpha dropped: the stored colour


def test_sixteen_bit_is_scaled(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    values = np.full((8, 8), 65535, dtype=np.uint16)
    values[0, 0] = 257 * 100
    Image.fromarray(values).save(root / "c0" / "deep.png")
    images, _ = read(root).splits["all"]
    assert images[2, 0, 0, 0] == 100 and images[2, 0, 1, 1] == 255


def test_exif_orientation_is_applied(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2, size=(8, 6))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown rotated 90 degrees clockwise
    grey(1, (6, 8)).save(root / "c0" / "turned.jpg", exif=exif, quality=95)
    images, _ = read(root).splits["all"]
    expected = ImageOps.exif_transpose(Image.open(root / "c0" / "turned.jpg"))
    assert expected.size == (8, 6) and images.shape[2:] == (6, 8)
    assert np.array_equal(images[2], pixels(expected))


def test_image_size_resizes_bilinear(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2, size=(10, 10))
    grey(1, (20, 12)).save(root / "c1" / "wide.png")
    images, _ = read(root, image_size=6).splits["all"]
    assert images.shape == (5, 1, 6, 6)
    assert np.array_equal(images[-1], pixels(grey(1, (20, 12)).resize((6, 6), Image.Resampling.BILINEAR)))


def test_impossible_options_are_refused_before_reading(tmp_path):
    root = make_folder(tmp_path / "data")
    assert "channels must be 1 (grey) or 3 (RGB); got 2" in error(root, channels=2)
    assert "--image-size must be 1 to 1024; got 0" in error(root, image_size=0)


def test_mixed_sizes_are_named(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    grey(1, (9, 7)).save(root / "c1" / "odd.png")
    message = error(root)
    assert "2 different sizes" in message and "c0/00.png is 8 x 8" in message and "c1/odd.png is 9 x 7" in message
    assert "pass --image-size N" in message


def test_non_square_is_allowed_here_and_refused_by_finish(tmp_path):
    root = make_folder(tmp_path / "data", size=(8, 6))
    assert read(root).splits["all"][0].shape[2:] == (6, 8)
    with pytest.raises(DataError, match="square"):
        reading.read_path(root, QUIET)


# --------------------------------------------------------------------------- what is ignored


def test_other_files_are_ignored_and_counted(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "c0" / "notes.txt").write_text("about cats")
    (root / "c0" / ".DS_Store").write_bytes(b"\0")
    (root / "c1" / "._00.png").write_bytes(b"AppleDouble")
    (root / "README.md").write_text("my pictures")
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(b"never read")
    found = read(root)
    assert len(found.splits["all"][1]) == 4
    assert found.notes == ["ignored 3 files that are not pictures (e.g. c0/.DS_Store)",
                           "ignored 1 file outside the class folders (e.g. README.md)",
                           "ignored 1 hidden folder (e.g. .git)"]


def test_folders_beside_train_and_test_are_said(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", classes=2, per_class=2)
    make_folder(root / "test", classes=2, per_class=1)
    (root / "extra").mkdir()
    assert "ignored 1 folder other than train/, test/ and val/ (e.g. extra)" in read(root).notes


# --------------------------------------------------------------------------- hostile folders


def truncated_png(path: Path) -> None:
    """An 8 x 8 PNG cut inside its pixel data: the header still reads."""
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(data, "PNG")
    path.write_bytes(data.getvalue()[:-30])


def test_unreadable_pictures_are_counted_or_skipped(tmp_path):
    root = make_folder(tmp_path / "data", per_class=3)
    truncated_png(root / "c0" / "cut.png")
    (root / "c1" / "junk.jpg").write_bytes(b"not a picture at all")
    (root / "c2" / "gone.png").symlink_to(root / "c2" / "missing.png")
    message = error(root)
    assert message.startswith(f"{root}: 3 pictures cannot be read, e.g. c0/cut.png, c1/junk.jpg, c2/gone.png")
    assert "pass --skip-bad to leave them out" in message
    found = read(root, skip_bad=True)  # cut.png fails only when decoded: its row is closed up
    images, labels = found.splits["all"]
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert all(np.array_equal(images[3 * k + i], pixels(grey(40 * k + i))) for k in range(3) for i in range(3))
    assert any(note.startswith("skipped 3 pictures that cannot be read (--skip-bad)") for note in found.notes)


def test_truncated_jpeg_is_not_padded(tmp_path):
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    root = make_folder(tmp_path / "data", classes=2, per_class=2, size=(64, 64))
    data = io.BytesIO()
    colour(3, (64, 64)).save(data, "JPEG")
    (root / "c0" / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    assert "1 picture cannot be read, e.g. c0/cut.jpg" in error(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_permission_is_unreadable(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "c0" / "00.png").chmod(0)
    assert "Permission denied" in error(root)


def test_a_file_refused_by_the_system_is_unreadable(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    system_open = os.open

    def refuse(path, *args, **kwargs):  # what a file without read permission does (root is never refused)
        if str(path).endswith("01.png"):
            raise PermissionError(13, "Permission denied")
        return system_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse)
    assert "2 pictures cannot be read, e.g. c0/01.png, c1/01.png (c0/01.png: Permission denied)" in error(root)
    assert read(root, skip_bad=True).splits["all"][1].tolist() == [0, 1]


def test_a_pipe_named_png_does_not_hang(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    os.mkfifo(root / "c0" / "pipe.png")
    assert "c0/pipe.png: not a regular file" in error(root)


def test_skipping_every_picture_of_a_train_class_is_refused(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", classes=2, per_class=2)
    make_folder(root / "test", classes=2, per_class=1)
    for picture in (root / "train" / "c1").iterdir():
        picture.write_bytes(b"junk")
    assert "train/c1: no picture left that can be read" in error(root, skip_bad=True)


def test_a_file_changed_between_passes_is_refused(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    hash_files = folder.hash_files

    def then_changed(listing, options):
        hashed = hash_files(listing, options)
        grey(200).save(root / "c0" / "00.png")
        return hashed
    monkeypatch.setattr(folder, "hash_files", then_changed)
    assert "c0/00.png: changed while lenet was reading the folder; run again" in error(root)
    assert not entries()


def test_an_empty_class_folder_is_named(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "c9").mkdir()
    (root / "c9" / "notes.txt").write_text("todo")
    assert f"{root}/c9: a class folder with no pictures" in error(root)
    assert "remove the folder or add pictures" in error(root)


def test_no_class_folders_says_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no class folders; an image folder holds PATH/<class>/<pictures>" in error(tmp_path / "empty")
    loose = tmp_path / "loose"
    loose.mkdir()
    grey(1).save(loose / "a.png")
    assert "1 pictures directly in it, none in a class folder" in error(loose)


def test_too_many_classes_before_any_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "MAX_CLASSES", 3)
    root = tmp_path / "data"
    for k in range(4):
        (root / f"c{k}").mkdir(parents=True)  # empty: refused for their number before being looked into
    assert "4 class folders, over the 3 lenet trains" in error(root)


def test_pictures_over_the_pixel_bound(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "c0" / "huge.png").write_bytes(png_header_only(5000, 5000))
    assert f"{root}/c0/huge.png: 5000 x 5000 pixels, over the 16,777,216" in error(root, skip_bad=True)
    (root / "c0" / "huge.png").write_bytes(png_header_only(30000, 30000))  # Pillow's own bomb guard fires first
    assert f"{root}/c0/huge.png: far more than 16 million pixels" in error(root)


def test_files_over_the_byte_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "MAX_PICTURE_BYTES", 50)
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    assert "c0/00.png" in error(root) and "MiB lenet reads as one picture" in error(root)


def test_links_out_of_the_folder_are_refused(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    outside = make_folder(tmp_path / "elsewhere", classes=1)
    (root / "c0" / "link.png").symlink_to(outside / "c0" / "00.png")
    assert f"{root}/c0/link.png: a link to {outside}/c0/00.png, outside {root}" in error(root)
    (root / "c0" / "link.png").unlink()
    (root / "c2").symlink_to(outside / "c0")
    assert f"{root}/c2: a link to {outside}/c0, outside" in error(root)


def test_links_inside_the_folder_are_followed_once(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "c1" / "again.png").symlink_to(root / "c0" / "00.png")
    (root / "c1" / "loop").symlink_to(root / "c1")  # a folder that holds itself: read once
    images, labels = read(root).splits["all"]
    assert labels.tolist() == [0, 0, 1, 1, 1]
    assert np.array_equal(images[4], images[0])  # c1/again.png


# --------------------------------------------------------------------------- the cache


def entries() -> list[Path]:
    return sorted(cache.cache_dir().glob("*.npz"))


def no_decoding(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these pictures")
    monkeypatch.setattr(folder, "decode_into", refuse)


def same(a: sources.Arrays, b: sources.Arrays) -> bool:
    return a.class_names == b.class_names and a.splits.keys() == b.splits.keys() and all(
        np.array_equal(a.splits[name][0], b.splits[name][0]) and np.array_equal(a.splits[name][1], b.splits[name][1])
        for name in a.splits)


def test_a_second_read_comes_from_the_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    (root / "c0" / "notes.txt").write_text("x")
    first = read(root)
    assert len(entries()) == 1
    no_decoding(monkeypatch)
    second = read(root)
    assert same(first, second)
    assert second.notes[0] == first.notes[0] and "read from the cache" in second.notes[-1]
    moved = tmp_path / "moved"
    root.rename(moved)
    assert same(first, read(moved))  # keyed by content and relative paths, not by where the folder is


def test_a_changed_file_is_decoded_again_even_with_the_same_size_and_time(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    first = read(root)
    picture = root / "c1" / "03.png"
    stamp = picture.stat()
    data = bytearray(picture.read_bytes())
    replacement = io.BytesIO()
    grey(200).save(replacement, "PNG")
    assert len(replacement.getvalue()) == len(data)  # same size: only the content says it changed
    picture.write_bytes(replacement.getvalue())
    os.utime(picture, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    second = read(root)
    assert np.array_equal(second.splits["all"][0][9], pixels(grey(200)))
    assert not same(first, second) and len(entries()) == 2


@pytest.mark.parametrize("change", ["add", "remove", "rename", "move to another class"])
def test_added_removed_or_renamed_files_miss_the_cache(tmp_path, monkeypatch, change):
    root = make_folder(tmp_path / "data")
    read(root)
    picture = root / "c0" / "02.png"
    if change == "add":
        grey(99).save(root / "c2" / "new.png")
    elif change == "remove":
        picture.unlink()
    elif change == "rename":
        picture.rename(root / "c0" / "zz.png")
    else:
        picture.rename(root / "c1" / "02b.png")
    calls = []
    decode = folder.decode_into
    monkeypatch.setattr(folder, "decode_into", lambda *args: calls.append(1) or decode(*args))
    found = read(root)
    assert calls and len(entries()) == 2
    if change == "rename":  # the same pixels, in the rename's place in the sorted order
        assert np.array_equal(found.splits["all"][0][5], pixels(grey(2)))
    if change == "move to another class":
        assert np.bincount(found.splits["all"][1]).tolist() == [5, 7, 6]


def test_options_that_change_pixels_are_part_of_the_key(tmp_path):
    root = make_folder(tmp_path / "data")
    read(root)
    read(root, image_size=4)
    read(root, channels=3)
    assert len(entries()) == 3


@pytest.mark.parametrize("damage", ["garbage", "cut", "shapes"])
def test_a_damaged_entry_is_ignored_and_rewritten(tmp_path, monkeypatch, damage):
    root = make_folder(tmp_path / "data")
    first = read(root)
    (entry,) = entries()
    if damage == "garbage":
        entry.write_bytes(b"\x93NUMPY not really")
    elif damage == "cut":
        entry.write_bytes(entry.read_bytes()[:-100])
    else:  # a valid file that disagrees with itself: 17 labels for 18 pictures
        with np.load(entry) as held:
            arrays = dict(held)
        arrays["labels"] = arrays["labels"][:-1]
        with open(entry, "wb") as out:
            np.savez(out, **arrays)
    again = read(root)
    assert same(first, again) and not any("from the cache" in note for note in again.notes)
    no_decoding(monkeypatch)
    assert same(first, read(root))  # rewritten whole


def test_cache_off_writes_nothing_and_killed_writes_are_not_trusted(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    read(root, cache=False)
    assert not cache.cache_dir().exists() or not entries()

    def killed(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", killed)
    found = read(root)
    assert any("not cached" in note and "No space left" in note for note in found.notes)
    assert not list(cache.cache_dir().iterdir())  # its temporary file removed, no entry


def test_the_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "KEEP_ENTRIES", 2)
    root = make_folder(tmp_path / "data")
    read(root)
    keep = entries()
    os.utime(keep[0], (1, 1))  # long ago: but reading it again makes it recent
    read(root)
    read(root, channels=3)
    read(root, image_size=4)
    assert len(entries()) == 2 and keep[0] not in entries()
    read(root, channels=3)  # the most recent two survive
    no_decoding(monkeypatch)
    read(root, image_size=4)


# --------------------------------------------------------------------------- progress and memory


def test_progress_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "data")
    folder.read_folder(root, ReadOptions(progress=True, cache=False))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    folder.read_folder(root, ReadOptions(progress=True, cache=False))
    err = capsys.readouterr().err
    assert all(f"\r{phase}: 18/18" in err for phase in ("hashing pictures", "reading headers", "decoding pictures"))


def test_memory_stays_near_the_decoded_pixels(tmp_path):
    n, side = 2000, 48
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k in range(3):
        (root / f"c{k}").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(root / f"c{i % 3}" / f"{i:05d}.png",
                                                                                 compress_level=0)
    decoded = n * side * side
    Image.init()  # Pillow's plugins, imported once per process: not the reader's memory
    tracemalloc.start()
    try:
        found = folder.read_folder(root, QUIET)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.splits["all"][0].nbytes == decoded
    # the array, one copy while the cache writes it, and per-file bookkeeping (paths, hashes);
    # a list of decoded pictures would add their pixels and a Python object per picture
    assert peak < 2 * decoded + 2_000_000, f"peak {peak:,} bytes for {decoded:,} decoded"
    tiny = sources.Arrays({"all": (np.zeros((4, 1, 2, 2), np.uint8), np.array([0, 0, 1, 1]))}, ("a", "b"), "x")
    sources.finish(tiny, QUIET, root)  # the modules a first split imports (numpy.ma) are not its memory
    tracemalloc.start()  # the split into training and test: only the test share is copied
    try:
        split = sources.finish(found, QUIET, root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(split.splits["train"][0]) + len(split.splits["test"][0]) == n
    # the test share (a fifth), one 1 MiB chunk in flight, the labels; a copy would be the pixels again
    assert peak < 0.25 * decoded + 1_600_000, f"split peak {peak:,} bytes for {decoded:,} decoded"


def test_split_folders_in_any_case_are_splits_and_look_alikes_are_refused(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "Train", classes=2, per_class=2)
    make_folder(root / "Test", classes=2, per_class=1)
    found = read(root)
    assert found.class_names == ("c0", "c1") and sorted(found.splits) == ["test", "train"]  # not classes Test, Train
    other = tmp_path / "other"
    make_folder(other / "training", classes=2, per_class=2)
    make_folder(other / "testing", classes=2, per_class=1)
    assert "folders training/, testing/ look like splits" in error(other)
