"""The web API: the page, /predict and its limits, JSON errors, and a bounded load test."""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.exceptions import StarletteDeprecationWarning

from lenet.use import serve
from lenet.use.serve import STATIC, ServerProcess, create_app
import models_fixture
from pictures import png_bytes, png_header_only, seven

# Session fixtures, trained once for all test modules (see models_fixture.py).
untrained_model = models_fixture.untrained_model

ROOT = Path(__file__).resolve().parents[1]

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its test client but still works with httpx, the test
    # dependency pyproject.toml names; only this import-time notice is silenced.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated",
                            category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(untrained_model):
    # A 200 KB upload limit so the "too large" case needs no big buffers.
    with TestClient(create_app(untrained_model, max_upload_bytes=200_000, max_pixels=2048 * 2048)) as c:
        yield c


def post_image(client, data: bytes, filename: str = "x.png", content_type: str = "image/png", field: str = "image"):
    return client.post("/predict", files={field: (filename, data, content_type)})


def test_page_is_served_and_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    assert 'id="canvas"' in html and 'id="file"' in html and 'id="bars"' in html and 'id="model-input"' in html
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html and client.get(asset).status_code == 200
    # Offline: nothing the page uses comes from another host.
    for name in ("index.html", "app.js", "style.css"):
        text = (Path(str(STATIC)) / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text


def test_health_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["dataset"] == "mnist" and info["classes"] == [str(d) for d in range(10)]
    assert info["model"] == "lenet5-v2" and "accuracy" in info and info["accuracy"] is None
    assert info["limits"]["max_upload_bytes"] == 200_000 and "image/png" in info["limits"]["content_types"]


def test_predict_returns_label_probabilities_and_the_input(client):
    response = post_image(client, png_bytes(seven(ink=0, paper=255).convert("RGB"), "JPEG"), "seven.jpg", "image/jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"label", "index", "confidence", "probabilities", "classes", "top", "input_image", "inverted"}
    assert body["inverted"] is True
    assert body["label"] == body["classes"][body["index"]]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    prefix = "data:image/png;base64,"
    assert body["input_image"].startswith(prefix)
    seen = Image.open(io.BytesIO(base64.b64decode(body["input_image"][len(prefix):])))
    assert (seen.size, seen.mode) == ((28, 28), "L")


@pytest.mark.parametrize("case, status, error", [
    ("not-an-image", 400, "not_an_image"),
    ("empty-file", 400, "not_an_image"),
    ("blank", 422, "blank_image"),
    ("huge-dimensions", 413, "too_large"),
    ("decompression-bomb", 413, "too_large"),
    ("too-many-bytes", 413, "too_large"),
    ("chunked-too-many-bytes", 413, "too_large"),
    ("wrong-content-type", 415, "unsupported_media_type"),
    ("not-multipart", 415, "unsupported_media_type"),
    ("missing-field", 422, "missing_field"),
    ("text-field", 422, "not_a_file"),
    ("bad-multipart", 400, "bad_multipart"),
])
def test_bad_requests_get_4xx_json_quickly(client, case, status, error):
    tic = time.perf_counter()
    if case == "not-an-image":
        response = post_image(client, b"GIF89a but not really")
    elif case == "empty-file":
        response = post_image(client, b"")
    elif case == "blank":
        response = post_image(client, png_bytes(Image.new("L", (280, 280), 0)))
    elif case == "huge-dimensions":
        response = post_image(client, png_header_only(4000, 1200))  # 4.8 M pixels; the limit is 4.2 M here
    elif case == "decompression-bomb":
        response = post_image(client, png_header_only(50_000, 50_000))
    elif case == "too-many-bytes":
        response = post_image(client, b"\0" * 300_000)
    elif case == "chunked-too-many-bytes":  # no content-length: the server counts as it reads
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * 300_000 + f"\r\n--{boundary}--\r\n".encode()
        response = client.post("/predict", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    elif case == "wrong-content-type":
        response = post_image(client, png_bytes(seven()), "x.svg", "image/svg+xml")
    elif case == "not-multipart":
        response = client.post("/predict", content=png_bytes(seven()), headers={"content-type": "image/png"})
    elif case == "missing-field":
        response = post_image(client, png_bytes(seven()), field="picture")
    elif case == "text-field":
        text_part = b"--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nseven\r\n--x--\r\n"
        response = client.post("/predict", headers={"content-type": "multipart/form-data; boundary=x"},
                               content=text_part)
    else:
        response = client.post("/predict", content=b"garbage without boundaries",
                               headers={"content-type": "multipart/form-data; boundary=zz"})
    elapsed = time.perf_counter() - tic
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["detail"]
    assert elapsed < 2.0  # refused before any expensive work
    # ... and the server still answers properly afterwards
    assert post_image(client, png_bytes(seven())).status_code == 200


def test_unknown_routes_and_methods_are_json(client):
    assert client.get("/nothing").json()["error"] == "not_found"
    response = client.get("/predict")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a server process and 100 requests: about 4 s
def test_bounded_load_on_a_real_server_has_no_errors(untrained_model):
    serve_load = load_benchmark()
    pictures = [png_bytes(Image.fromarray(np.roll(np.asarray(seven(28, width=3)), k, axis=1))) for k in range(-3, 4)]
    with ServerProcess(untrained_model) as server:
        assert server.url.startswith("http://127.0.0.1:")
        serve_load.run_load(server.url, pictures, requests=16, concurrency=8)  # warm-up
        report = serve_load.run_load(server.url, pictures, requests=100, concurrency=8, deadline_s=60)
        print(f"\n{report}")
        assert report.completed == 100 and report.errors == 0, report.statuses
        # a bomb during the load is refused at once, and the server is still healthy
        bomb = png_header_only(60_000, 60_000)
        response = httpx.post(server.url + "predict", files={"image": ("b.png", bomb, "image/png")})
        assert response.status_code == 413
        assert httpx.get(server.url + "healthz").json() == {"status": "ok"}


def test_memory_is_trimmed_once_requests_stop_not_after_each_one(untrained_model, monkeypatch):
    trims = []
    time.sleep(serve.IDLE_TRIM_SECONDS + 0.1)  # another test's app may still have its trim pending
    monkeypatch.setattr(serve, "trim_memory", lambda: trims.append(time.perf_counter()))
    monkeypatch.setattr(serve, "IDLE_TRIM_SECONDS", 0.3)
    with TestClient(create_app(untrained_model)) as client:
        for _ in range(3):  # one after another, each within the wait: no trim yet
            assert post_image(client, png_bytes(seven())).status_code == 200
        assert trims == []
        stopped = time.perf_counter()
        time.sleep(0.8)
        assert len(trims) == 1 and trims[0] - stopped >= 0.25  # once, after the pause
        for _ in range(serve.UPLOAD_SLOTS - 3):  # a burst: every UPLOAD_SLOTS-th request trims at once
            post_image(client, png_bytes(seven()))
        assert len(trims) == 2
