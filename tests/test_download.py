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
