"""download_dataset against a real HTTP server on 127.0.0.1 (never the internet).

The server serves a tmp folder whose subfolders act as mirrors (``/good/``,
``/bad/``, ...); the dataset spec is rebuilt with the sizes and SHA-256 of the tiny
files the tests write, so verification runs exactly as for the real datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_dataset

import lenet.data.datasets
import lenet.data.download
from lenet.data.catalog import DATASETS, DatasetSpec, FileSpec
from lenet.data.datasets import load_dataset, locate, user_cache_dir
from lenet.data.download import download_dataset
from lenet.errors import DataError
from lenet.data.idx import decompressed_bytes, read_idx

NAMES = [f.filename for f in DATASETS["fashion-mnist"].files.values()]
LAST = DATASETS["fashion-mnist"].files["test_labels"].filename  # fetched last


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; records each request path; ``/cut/...`` stops halfway through."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return  # HTTP/1.0: the connection closes with the body short
        super().do_GET()

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@dataclasses.dataclass
class Server:
    root: Path  # what it serves; each subfolder is a mirror
    url: str  # http://127.0.0.1:PORT/
    requests: list[str]

    def mirror(self, name: str) -> str:
        (self.root / name).mkdir(exist_ok=True)
        return f"{self.url}{name}/"


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "served"
    root.mkdir()
    with serve(root) as running:
        yield running


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.requests = []  # type: ignore[attr-defined]
    # A short poll interval: shutdown() waits for it, 0.5 s by default, in every teardown.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        yield Server(root, url, httpd.requests)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """The tiny dataset the spec describes (what every good mirror serves)."""
    return write_tiny_dataset(tmp_path / "good", n_train=60, n_test=20, seed=0)


def spec_for(folder: Path, mirrors: tuple[str, ...]) -> DatasetSpec:
    """fashion-mnist's spec with the sizes and checksums of the files in ``folder``."""
    base = DATASETS["fashion-mnist"]
    files = {}
    for key, f in base.files.items():
        data = decompressed_bytes(folder / f.filename)
        files[key] = FileSpec(f.filename, len(data), hashlib.sha256(data).hexdigest(), md5_gz="")
    return dataclasses.replace(base, files=files, mirrors=mirrors)


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.glob("*.part")) if dest.exists() else []


def test_downloads_all_four_files_that_verify_and_load(server, good, tmp_path, monkeypatch):
    shutil.copytree(good, server.root / "m1")
    spec = spec_for(good, (server.mirror("m1"),))
    dest = tmp_path / "fetched" / "fashion-mnist"  # parents do not exist yet

    assert download_dataset(spec, dest) == dest

    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)
    for f in spec.files.values():
        assert hashlib.sha256(decompressed_bytes(dest / f.filename)).hexdigest() == f.sha256
    assert sorted(server.requests) == sorted(f"/m1/{n}" for n in NAMES)
    monkeypatch.setitem(lenet.data.datasets.DATASETS, "fashion-mnist", spec)
    ds = load_dataset("fashion-mnist", data_dir=dest.parent)
    assert ds.train.images.shape == (60, 1, 28, 28) and len(ds.test) == 20
    assert np.array_equal(ds.train.labels.numpy(), read_idx(good / NAMES[1]))


def _replace_with_other_content(path: Path) -> None:
    other = write_tiny_dataset(path.parent / "other", n_train=60, n_test=20, seed=99)
    shutil.copy(other / path.name, path)


def _flip_middle_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, reason", [
    (_replace_with_other_content, "sha256"),  # a valid IDX file, just not this one
    (_flip_middle_bytes, "gzip"),
])
def test_corrupt_file_is_rejected_and_nothing_is_left(server, good, tmp_path, damage, reason):
    shutil.copytree(good, server.root / "m1")
    damage(server.root / "m1" / LAST)
    spec = spec_for(good, (server.mirror("m1"),))
    dest = tmp_path / "dest"

    with pytest.raises(DataError) as info:
        download_dataset(spec, dest)

    message = str(info.value)
    assert LAST in message and f"{server.url}m1/{LAST}" in message
    assert reason in message
    if reason == "sha256":
        expected = spec.files["test_labels"].sha256
        got = hashlib.sha256(decompressed_bytes(server.root / "m1" / LAST)).hexdigest()
        assert expected in message and got in message
    assert not (dest / LAST).exists()
    assert leftovers(dest) == []
    # The three files fetched before it verified and are kept for the next attempt.
    assert sorted(p.name for p in dest.iterdir()) == sorted(set(NAMES) - {LAST})


def test_truncated_gzip_on_first_mirror_falls_through_to_second(server, good, tmp_path):
    shutil.copytree(good, server.root / "m1")
    shutil.copytree(good, server.root / "m2")
    gz = (good / LAST).read_bytes()
    (server.root / "m1" / LAST).write_bytes(gz[: len(gz) // 2])
    spec = spec_for(good, (server.mirror("m1"), server.mirror("m2")))
    dest = tmp_path / "dest"

    download_dataset(spec, dest)

    assert np.array_equal(read_idx(dest / LAST), read_idx(good / LAST))
    assert server.requests[-2:] == [f"/m1/{LAST}", f"/m2/{LAST}"]
    assert leftovers(dest) == []


def test_404_on_first_mirror_falls_through_to_second(server, good, tmp_path):
    server.mirror("empty")
    shutil.copytree(good, server.root / "m2")
    # The second mirror without its trailing slash: still a folder, not a name prefix.
    spec = spec_for(good, (server.mirror("empty"), server.mirror("m2").rstrip("/")))
    dest = tmp_path / "dest"

    download_dataset(spec, dest)

    for name in NAMES:
        assert f"/empty/{name}" in server.requests and f"/m2/{name}" in server.requests
        assert (dest / name).read_bytes() == (good / name).read_bytes()


def test_404_everywhere_says_http_404(server, good, tmp_path):
    spec = spec_for(good, (server.mirror("empty"),))
    with pytest.raises(DataError, match="HTTP 404"):
        download_dataset(spec, tmp_path / "dest")
    assert leftovers(tmp_path / "dest") == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_mirrors_unreachable_lists_every_url_and_what_to_do(good, tmp_path):
    urls = [f"http://127.0.0.1:{_closed_port()}/a/", f"http://127.0.0.1:{_closed_port()}/b/"]
    spec = spec_for(good, tuple(urls))
    dest = tmp_path / "dest"

    with pytest.raises(DataError) as info:
        download_dataset(spec, dest, timeout=5)

    message = str(info.value)
    first = DATASETS["fashion-mnist"].files["train_images"].filename
    for url in urls:
        assert url + first in message
    assert "refused" in message.lower()
    for advice in ("network", "--data-dir", "LENET_DATA_DIR", "apt-get install dataset-fashion-mnist"):
        assert advice in message
    assert list(dest.iterdir()) == []


def test_mnist_failure_does_not_suggest_the_fashion_mnist_package(good, tmp_path):
    spec = dataclasses.replace(spec_for(good, ()), name="mnist")
    with pytest.raises(DataError) as info:
        download_dataset(spec, tmp_path / "dest", mirrors=[f"http://127.0.0.1:{_closed_port()}/"])
    assert "apt-get" not in str(info.value) and "'mnist/'" in str(info.value)


def test_silent_mirror_times_out_and_the_next_one_is_used(server, good, tmp_path):
    shutil.copytree(good, server.root / "m2")
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        spec = spec_for(good, (f"http://127.0.0.1:{silent.getsockname()[1]}/", server.mirror("m2")))
        download_dataset(spec, tmp_path / "dest", timeout=0.2)
    assert sorted(server.requests) == sorted(f"/m2/{n}" for n in NAMES)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(DataError, match="timed out"):
            download_dataset(spec, tmp_path / "dest2", timeout=0.2,
                             mirrors=[f"http://127.0.0.1:{silent.getsockname()[1]}/"])


def test_transfer_cut_off_is_reported_as_such(server, good, tmp_path):
    shutil.copytree(good, server.root / "cut")
    spec = spec_for(good, (server.mirror("cut"),))
    half = len((good / NAMES[0]).read_bytes()) - len((good / NAMES[0]).read_bytes()) // 2
    with pytest.raises(DataError, match=rf"{NAMES[0]}: transfer cut off \({half} bytes missing\)"):
        download_dataset(spec, tmp_path / "dest")
    assert leftovers(tmp_path / "dest") == []


def test_right_checksum_but_not_idx_is_rejected(server, good, tmp_path):
    """Verification also parses the file: a checksum is only as good as the spec."""
    not_idx = b"this is not an IDX file at all"
    shutil.copytree(good, server.root / "m1")
    (server.root / "m1" / LAST).write_bytes(gzip.compress(not_idx))
    spec = spec_for(server.root / "m1", (server.mirror("m1"),))  # checksums of what is served

    with pytest.raises(DataError, match="not an IDX file"):
        download_dataset(spec, tmp_path / "dest")
    assert not (tmp_path / "dest" / LAST).exists()


def test_wrong_decompressed_size_is_rejected(server, good, tmp_path):
    shutil.copytree(good, server.root / "m1")
    spec = spec_for(good, (server.mirror("m1"),))
    f = spec.files["test_labels"]
    spec.files["test_labels"] = dataclasses.replace(f, size=f.size + 1)  # sha256 still right

    with pytest.raises(DataError, match=f"decompressed size is {f.size} bytes, expected {f.size + 1}"):
        download_dataset(spec, tmp_path / "dest")


def test_valid_files_already_there_are_not_downloaded_again(server, good, tmp_path):
    shutil.copytree(good, server.root / "m1")
    spec = spec_for(good, (server.mirror("m1"),))
    dest = tmp_path / "dest"
    download_dataset(spec, dest)
    assert len(server.requests) == 4

    server.requests.clear()
    download_dataset(spec, dest)
    assert server.requests == []

    # A damaged one is fetched again (and only that one), and replaced.
    (dest / LAST).write_bytes(b"\x1f\x8b garbage")
    download_dataset(spec, dest)
    assert server.requests == [f"/m1/{LAST}"]
    assert (dest / LAST).read_bytes() == (good / LAST).read_bytes()


def test_interrupted_download_leaves_no_file_under_either_name(server, good, tmp_path, monkeypatch):
    """Ctrl-C (or a kill) at the worst moment: data written, not yet renamed."""
    shutil.copytree(good, server.root / "m1")
    spec = spec_for(good, (server.mirror("m1"),))
    dest = tmp_path / "dest"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lenet.data.download.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_dataset(spec, dest)
    assert list(dest.iterdir()) == []


def test_progress_lines_go_to_stderr_only_when_asked(server, good, tmp_path, capsys):
    shutil.copytree(good, server.root / "m1")
    spec = spec_for(good, (server.mirror("empty"), server.mirror("m1")))

    download_dataset(spec, tmp_path / "quiet")  # progress=None: stderr is not a TTY here
    assert capsys.readouterr() == ("", "")

    download_dataset(spec, tmp_path / "loud", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert f"downloading {NAMES[0]} from {server.url}empty/{NAMES[0]} ... failed: HTTP 404" in err
    assert f"downloading {NAMES[0]} from {server.url}m1/{NAMES[0]} ... " in err
    assert err.count("MB, verified") == 4


def test_locate_downloads_into_the_user_cache(server, good, tmp_path, monkeypatch):
    shutil.copytree(good, server.root / "m1")
    monkeypatch.setitem(lenet.data.datasets.DATASETS, "fashion-mnist", spec_for(good, (server.mirror("m1"),)))
    monkeypatch.delenv("LENET_NO_DOWNLOAD")

    paths = locate("fashion-mnist")

    cache = user_cache_dir() / "fashion-mnist"
    assert cache == tmp_path / "cache" / "lenet" / "datasets" / "fashion-mnist"
    assert sorted(paths.values()) == sorted(cache / n for n in NAMES)
    assert len(server.requests) == 4
    assert locate("fashion-mnist") == paths  # found in the cache now: no second download
    assert len(server.requests) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_real_files_verify_against_the_real_spec(tmp_path, name):
    from conftest import real_data

    real_data_dir = real_data(name)
    """The shipped checksums accept the real (recompressed) files, served over HTTP."""
    with serve(real_data_dir) as server:
        dest = download_dataset(DATASETS[name], tmp_path / name, mirrors=[f"{server.url}{name}/"])
        assert sorted(server.requests) == sorted(f"/{name}/{n}" for n in NAMES)
    for f in DATASETS[name].files.values():
        assert (dest / f.filename).read_bytes() == (real_data_dir / name / f.filename).read_bytes()


# --------------------------------------------------------------------------- CIFAR-10's archive

CIFAR = DATASETS["cifar10"]
FOLDER = CIFAR.archive.folder  # type: ignore[union-attr]
BATCHES = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]


def write_cifar_batches(folder: Path, per_batch: int = 2, seed: int = 0) -> Path:
    """CIFAR-10's binary layout, ``per_batch`` records (1 label byte + 3,072 pixels) a batch."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in BATCHES:
        records = rng.integers(0, 256, (per_batch, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR.class_names) + "\n")
    return folder


def make_tar(path: Path, add) -> Path:
    """A .tar.gz at ``path``; ``add(tar)`` puts the members in."""
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Path:
    """A tiny archive in the official layout: cifar-10-binary.tar.gz of cifar-10-batches-bin/."""
    source = write_cifar_batches(tmp_path / "source" / FOLDER)
    return make_tar(tmp_path / "source" / CIFAR.archive.filename,  # type: ignore[union-attr]
                    lambda tar: tar.add(source, arcname=FOLDER))


def cifar_spec(archive: Path, mirrors: tuple[str, ...]) -> DatasetSpec:
    """cifar10's spec with the size and SHA-256 of the archive at ``archive``."""
    data = archive.read_bytes()
    return dataclasses.replace(CIFAR, mirrors=mirrors, archive=dataclasses.replace(
        CIFAR.archive, size=len(data), sha256=hashlib.sha256(data).hexdigest()))


def serve_archive(server: Server, mirror: str, archive: Path) -> str:
    url = server.mirror(mirror)
    shutil.copy(archive, server.root / mirror / archive.name)
    return url


def test_cifar10_archive_downloads_verifies_and_unpacks(server, cifar_archive, tmp_path):
    from lenet.data.cifar import read_cifar10
    from lenet.data.download import download_archive, unpack_archive

    spec = cifar_spec(cifar_archive, (serve_archive(server, "m1", cifar_archive),))
    dest = tmp_path / "fetched" / "cifar10"

    archive = download_archive(spec, dest)
    folder = unpack_archive(archive, dest, FOLDER)

    assert archive == dest / CIFAR.archive.filename and folder == dest / FOLDER
    assert archive.read_bytes() == cifar_archive.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(BATCHES + ["batches.meta.txt"])
    assert sorted(p.name for p in dest.iterdir()) == sorted([archive.name, FOLDER])  # no .part, no scratch
    found = read_cifar10(folder)
    assert found.splits["train"][0].shape == (10, 3, 32, 32) and found.class_names == CIFAR.class_names
    server.requests.clear()
    assert download_archive(spec, dest) == archive and server.requests == []  # verified: kept


def test_cifar10_wrong_checksum_on_first_mirror_falls_through_to_second(server, cifar_archive, tmp_path):
    from lenet.data.download import download_archive

    other = write_cifar_batches(tmp_path / "other" / FOLDER, seed=1)
    wrong = make_tar(tmp_path / "other" / CIFAR.archive.filename, lambda tar: tar.add(other, arcname=FOLDER))
    spec = cifar_spec(cifar_archive, (serve_archive(server, "m1", wrong), serve_archive(server, "m2", cifar_archive)))

    archive = download_archive(spec, tmp_path / "dest", progress=True)

    assert archive.read_bytes() == cifar_archive.read_bytes()
    assert server.requests == [f"/m{k}/{CIFAR.archive.filename}" for k in (1, 2)]


def test_cifar10_all_mirrors_bad_is_one_error_listing_them(server, cifar_archive, tmp_path):
    from lenet.data.download import download_archive

    damaged = tmp_path / "damaged" / CIFAR.archive.filename
    damaged.parent.mkdir()
    damaged.write_bytes(cifar_archive.read_bytes()[:-10] + b"0123456789")  # right size, wrong bytes
    big = tmp_path / "big" / CIFAR.archive.filename
    big.parent.mkdir()
    big.write_bytes(cifar_archive.read_bytes() + b"more")
    spec = cifar_spec(cifar_archive, (serve_archive(server, "m1", damaged), server.mirror("empty"),
                                      serve_archive(server, "m3", big)))
    dest = tmp_path / "dest"

    with pytest.raises(DataError) as info:
        download_archive(spec, dest)

    message = str(info.value)
    name = CIFAR.archive.filename
    assert f"could not download {name} of cifar10" in message
    assert f"{server.url}m1/{name}: sha256 is " in message and spec.archive.sha256 in message
    assert f"{server.url}empty/{name}: HTTP 404" in message
    assert f"{server.url}m3/{name}: sent over {spec.archive.size:,} bytes" in message
    assert "--data-dir / LENET_DATA_DIR" in message and "'cifar10/'" in message
    assert list(dest.iterdir()) == []


def _dotdot(tar, source):
    tar.add(source, arcname=FOLDER)
    tar.add(source / "test_batch.bin", arcname="../evil")


def _dotdot_inside(tar, source):
    tar.add(source, arcname=FOLDER)
    tar.add(source / "test_batch.bin", arcname=f"{FOLDER}/../../evil")


def _symlink(tar, source):
    import tarfile

    tar.add(source, arcname=FOLDER)
    link = tarfile.TarInfo(f"{FOLDER}/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "../../evil"
    tar.addfile(link)


def _outside(tar, source):
    tar.add(source, arcname=FOLDER)
    tar.add(source / "test_batch.bin", arcname="evil")


def _absolute(tar, source):
    import io
    import tarfile

    tar.add(source, arcname=FOLDER)
    member = tarfile.TarInfo(str(source.parent.parent / "evil"))  # tar.add would strip the "/"
    member.size = 4
    tar.addfile(member, io.BytesIO(b"evil"))


def _device(tar, source):
    import tarfile

    tar.add(source, arcname=FOLDER)
    device = tarfile.TarInfo(f"{FOLDER}/null")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(device)


@pytest.mark.parametrize("add, reason", [
    (_outside, "lies outside cifar-10-batches-bin/"),
    (_dotdot, "climbs out of its folder"),
    (_dotdot_inside, "climbs out of its folder"),
    (_symlink, "is a link"),
    (_absolute, "is an absolute path"),
    (_device, "is a device"),
])
def test_cifar10_archive_with_a_hostile_member_is_refused_and_writes_nothing(tmp_path, add, reason):
    from lenet.data.download import unpack_archive

    source = write_cifar_batches(tmp_path / "source" / FOLDER)
    archive = make_tar(tmp_path / "bad.tar.gz", lambda tar: add(tar, source))
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)

    with pytest.raises(DataError, match=f"refused: member .* {reason}.*nothing was unpacked"):
        unpack_archive(archive, dest, FOLDER)

    assert list(dest.iterdir()) == []
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_cifar10_interrupted_download_or_unpack_leaves_nothing_under_a_real_name(
        server, cifar_archive, tmp_path, monkeypatch):
    from lenet.data.download import download_archive, unpack_archive

    spec = cifar_spec(cifar_archive, (serve_archive(server, "m1", cifar_archive),))
    dest = tmp_path / "dest"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(lenet.data.download.os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            download_archive(spec, dest)
        assert list(dest.iterdir()) == []

    archive = download_archive(spec, dest)
    monkeypatch.setattr(lenet.data.download.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unpack_archive(archive, dest, FOLDER)
    assert [p.name for p in dest.iterdir()] == [archive.name]  # no folder, no scratch left


def test_cifar10_locate_unpacks_an_archive_found_in_a_data_dir(cifar_archive, tmp_path, monkeypatch):
    monkeypatch.setitem(lenet.data.datasets.DATASETS, "cifar10", cifar_spec(cifar_archive, ()))
    data_dir = tmp_path / "data"
    (data_dir / "cifar10").mkdir(parents=True)
    shutil.copy(cifar_archive, data_dir / "cifar10")

    assert locate("cifar10", data_dir) == {"folder": data_dir / "cifar10" / FOLDER}
    assert locate("cifar10", data_dir) == {"folder": data_dir / "cifar10" / FOLDER}  # now found unpacked
    ds = load_dataset("cifar10", data_dir)
    assert ds.train.images.shape == (10, 3, 32, 32) and ds.test.images.dtype == torch_uint8()
    assert ds.train.labels.dtype == torch_int64() and ds.class_names == CIFAR.class_names

    other = tmp_path / "other" / "cifar10"
    other.mkdir(parents=True)
    (other / CIFAR.archive.filename).write_bytes(b"not it")
    with pytest.raises(DataError, match=r"not cifar10's published archive \(size is 6 bytes.*lenet download cifar10"):
        locate("cifar10", other.parent)


def test_cifar10_locate_downloads_into_the_user_cache(server, cifar_archive, tmp_path, monkeypatch):
    spec = cifar_spec(cifar_archive, (serve_archive(server, "m1", cifar_archive),))
    monkeypatch.setitem(lenet.data.datasets.DATASETS, "cifar10", spec)
    monkeypatch.delenv("LENET_NO_DOWNLOAD")

    assert locate("cifar10") == {"folder": user_cache_dir() / "cifar10" / FOLDER}
    assert locate("cifar10") == {"folder": user_cache_dir() / "cifar10" / FOLDER}
    assert len(server.requests) == 1


def test_cifar10_missing_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        locate("cifar10", tmp_path / "data")
    message = str(info.value)
    assert "`lenet download cifar10`" in message and "cifar-10-binary.tar.gz" in message
    assert f"--data-dir: {tmp_path / 'data' / 'cifar10'}" in message


def test_files_in_finds_no_idx_files_for_an_archive_dataset(tmp_path):
    from lenet.data.datasets import files_in

    assert files_in(tmp_path, CIFAR) is None


def test_lenet_download_cifar10_says_where_it_went(server, cifar_archive, tmp_path, monkeypatch, capsys):
    from lenet.cli import main

    spec = cifar_spec(cifar_archive, (serve_archive(server, "m1", cifar_archive),))
    monkeypatch.setitem(lenet.data.datasets.DATASETS, "cifar10", spec)

    assert main(["download", "cifar10", "--dest", str(tmp_path / "here")]) == 0

    folder = tmp_path / "here" / "cifar10" / FOLDER
    assert capsys.readouterr().out == f"cifar10: verified and unpacked in {folder}\n"
    assert (folder / "test_batch.bin").is_file()


def torch_uint8():
    import torch

    return torch.uint8


def torch_int64():
    import torch

    return torch.int64
