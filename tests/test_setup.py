"""scripts/setup.sh: which torch it installs and from where, run on a copy of the project
in a temporary folder (its own .venv there; the checkout's .venv is never touched)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent


def copy_project(target: Path, *, sources: bool = True) -> Path:
    (target / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", target / "scripts")
    if sources:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, target)
        shutil.copytree(ROOT / "src" / "lenet", target / "src" / "lenet",
                        ignore=shutil.ignore_patterns("__pycache__"))
    return target


def setup_sh(project: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys._base_executable, **env}
    environment.pop("VIRTUAL_ENV", None)
    return subprocess.run(["bash", str(project / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


@pytest.mark.parametrize("args, env, needle", [
    (["--torch", "torch"], {}, "'torch' must pin one version"),
    ([], {"LENET_TORCH": "torch>=2.11"}, "'torch>=2.11' must pin one version"),
    (["--torch", "torch==2.13.0,<3"], {}, "is not one torch version"),
    (["--torch", "nowhere/torch-2.13.0-cp311-none-any.whl"], {}, "no wheel file at"),
    (["--torch"], {}, "--torch needs a requirement"),
    (["--gpu"], {}, "unknown argument '--gpu'"),
])
def test_an_open_or_unclear_torch_is_refused_in_one_line_before_anything_is_made(tmp_path, args, env, needle):
    project = copy_project(tmp_path / "p", sources=False)
    done = setup_sh(project, *args, **env)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and needle in done.stderr
    assert "usage: bash scripts/setup.sh" in done.stderr
    assert sorted(p.name for p in project.iterdir()) == ["scripts"]  # no .venv, no log


class Index(http.server.BaseHTTPRequestHandler):
    """A package index on 127.0.0.1: with ``wheel`` set, /whl/cpu/torch/ lists it and
    /files/ serves it (PyTorch's CPU index, as pip sees it); without, every page is a 404."""

    wheel: Path | None = None
    asked: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Index.asked.append(self.path)
        wheel = Index.wheel
        if wheel is not None and self.path == "/whl/cpu/torch/":
            body = f'<a href="/files/{quote(wheel.name)}">{wheel.name}</a>'.encode()
        elif wheel is not None and self.path == f"/files/{quote(wheel.name)}":
            body = wheel.read_bytes()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def local_torch_wheel() -> Path | None:
    """The torch==2.13.0 wheel pip finds here without the network (find-links), if any: the
    tests install it, where elsewhere they would download a build of torch."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--ignore-installed", "--quiet", "--report", "-", "torch==2.13.0"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return None
    url = json.loads(done.stdout)["install"][0]["download_info"]["url"]
    return Path(unquote(urlparse(url).path)) if url.startswith("file:") else None


@pytest.fixture
def index():
    """(URL of the CPU index on 127.0.0.1, the handler class to set up and read back)."""
    Index.wheel, Index.asked = None, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu", Index
    server.shutdown()
    server.server_close()


def fresh_setup(tmp_path: Path, url: str) -> tuple[Path, subprocess.CompletedProcess]:
    if local_torch_wheel() is None:
        pytest.skip("no torch==2.13.0 wheel that pip finds without the network (find-links)")
    checkout_venv = sorted((ROOT / ".venv").iterdir()) if (ROOT / ".venv").is_dir() else None
    project = copy_project(tmp_path / "p")
    # LENET_TORCH given: a new venv of its own even where the system Python has torch.
    done = setup_sh(project, timeout=900, LENET_TORCH_INDEX=url, LENET_TORCH="torch==2.13.0")
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("setup: lenet ") and ", torch 2.13.0" in last and "; .venv " in last
    version = subprocess.run([str(project / ".venv" / "bin" / "python"), "-c",
                              "import torch; print(torch.__version__)"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version.startswith("2.13.0")
    assert (project / ".venv" / "torch-pin.txt").read_text().strip() == f"torch=={version}"
    assert (sorted((ROOT / ".venv").iterdir()) if (ROOT / ".venv").is_dir() else None) == checkout_venv
    return project, done


@pytest.mark.slow
def test_an_unreachable_cpu_index_is_said_in_one_line_and_the_default_index_installs_torch(tmp_path, index):
    url, served = index
    _, done = fresh_setup(tmp_path, url)
    said = [line for line in done.stdout.splitlines() if "cannot be reached" in line]
    assert said == [f"setup: PyTorch's CPU index ({url}) cannot be reached (HTTP 404), so torch==2.13.0 comes "
                    "from pip's default index: on Linux that is the CUDA build, about 5 GB (a CPU wheel file "
                    "instead: --torch FILE.whl)"]
    assert served.asked == ["/whl/cpu/torch/"]  # asked once, no retries
    assert "setup: installing torch==2.13.0 from pip's default index" in done.stdout


@pytest.mark.slow
def test_torch_comes_from_the_cpu_index_where_it_answers(tmp_path, index):
    url, served = index
    served.wheel = local_torch_wheel()
    _, done = fresh_setup(tmp_path, url)
    assert f"setup: installing torch==2.13.0 (CPU build, from {url})" in done.stdout
    assert "cannot be reached" not in done.stdout
    # Set-up's question, then pip's (which may take the same file from find-links instead).
    assert served.asked.count("/whl/cpu/torch/") >= 2
