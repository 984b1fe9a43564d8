"""A web page and a JSON API to try a trained model: FastAPI, served by uvicorn.

    GET  /          the page (static/: index.html, app.js, style.css; no CDN, works offline):
                    draw on a canvas or drop a picture, see the 28x28 input and the probabilities
    POST /predict   multipart field "image" -> {label, index, confidence, probabilities, ...}
    GET  /model     name, dataset, classes, test accuracy, limits
    GET  /healthz   {"status": "ok"}

Every bad request gets a 4xx JSON answer {"error": code, "detail": message}. Limits are
checked before work is done: the body is read in chunks and cut off at max_upload_bytes,
the picture's size is read from its header before any pixel is decoded, and inference
runs in worker threads (at most ``workers`` at a time), so the event loop keeps answering.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import RunError, UsageError
from .predict import BlankImage, ImageError, ImageTooLarge, Predictor

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # a phone photo is 2-5 MB; a drawing is ~10 KB
MAX_PIXELS = 4096 * 4096  # 16.8 M pixels (a 12 MP phone photo fits), ~64 MB decoded as RGBA
MULTIPART_SLACK = 16 * 1024  # boundaries and part headers around the file
CONTENT_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/x-ms-bmp", "image/webp")
STATIC = resources.files("lenet") / "static"


def _png_data_url(pixels: Any) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # uint8 (28, 28): grayscale
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def create_app(model_path: str | Path, *, device: str = "cpu", max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, workers: int | None = None,
               predictor: Predictor | None = None) -> FastAPI:
    """The FastAPI app for one model (run directory or .safetensors file)."""
    predictor = predictor or Predictor(model_path, device)
    # Inference is CPU work: more threads than cores only queue inside torch. The rest
    # of the requests wait here, while health checks and the page are still answered.
    limiter = anyio.CapacityLimiter(workers or max(1, min(4, os.cpu_count() or 1)))
    static_dir = Path(str(STATIC))

    # The API documentation pages load their scripts from a CDN: off, the server stays offline.
    app = FastAPI(title="lenet", docs_url=None, redoc_url=None)
    app.state.predictor = predictor

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        return error(500, "internal_error", f"{type(exc).__name__}: the server could not handle this request")

    # The page: same-origin files only, and the browser is told so (no CDN can sneak in).
    page_headers = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:",
                    "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static_dir / "index.html", media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    model_info = {
        "name": predictor.config.name or predictor.model_path.parent.name,
        "model": predictor.config.model.name,
        "dataset": predictor.dataset,
        "classes": predictor.class_names,
        "accuracy": predictor.test_accuracy,
        "input": {"size": predictor.config.model.input_size, "normalize": predictor.config.data.normalize,
                  "mean": predictor.mean, "std": predictor.std, "box": predictor.framing.box,
                  "centre": predictor.framing.centre},
        "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
                   "content_types": list(CONTENT_TYPES)},
    }

    @app.get("/model")
    def model() -> dict[str, Any]:
        return model_info

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        picture = await read_picture(request, max_upload_bytes)
        if isinstance(picture, JSONResponse):
            return picture
        data, name = picture
        try:
            prediction = await anyio.to_thread.run_sync(
                lambda: predictor.predict(data, name=name, max_pixels=max_pixels, max_bytes=max_upload_bytes),
                limiter=limiter)
        except ImageTooLarge as exc:
            return error(413, "too_large", str(exc))
        except BlankImage as exc:
            return error(422, "blank_image", str(exc))
        except ImageError as exc:
            return error(400, "not_an_image", str(exc))
        result = prediction.to_dict(top_k=3)
        result.pop("file", None)
        result["classes"] = predictor.class_names
        result["input_image"] = _png_data_url(prediction.input)
        result["milliseconds"] = round(1000 * (time.perf_counter() - started), 2)
        return JSONResponse(result)

    return app



def error(status: int, code: str, detail: str) -> JSONResponse:
    """Every failure the API reports: {"error": code, "detail": message}."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def read_picture(request: Request, max_upload_bytes: int) -> tuple[bytes, str] | JSONResponse:
    """(the picture's bytes, its file name) from a multipart upload, or the 4xx answer.

    The body is read in chunks and cut off at the limit (a chunked upload has no
    content-length to trust), then parsed as a form with one file at most."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        got = media_type or "no content type"
        return error(415, "unsupported_media_type",
                     f"send the picture as multipart/form-data in the field 'image' (got {got})")
    limit = max_upload_bytes + MULTIPART_SLACK
    too_big = f"upload over the limit of {max_upload_bytes / 2**20:.0f} MB"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return error(413, "too_large", too_big)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            return error(413, "too_large", too_big)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except StarletteHTTPException as exc:
        return error(400, "bad_multipart", f"malformed multipart body: {exc.detail}")
    try:
        upload = form.get("image")
        if upload is None:
            return error(422, "missing_field", "no field 'image' in the form; send the picture as image=@file")
        if isinstance(upload, str):
            return error(422, "not_a_file", "the field 'image' must be a file, not text")
        upload_type = (upload.content_type or "").split(";")[0].strip().lower()
        if upload_type not in CONTENT_TYPES:
            return error(415, "unsupported_media_type",
                         f"pictures of type {upload_type or 'unknown'} are not accepted; "
                         f"send one of {', '.join(CONTENT_TYPES)}")
        data = await upload.read()
        name = upload.filename or "upload"
    finally:
        await form.close()
    if len(data) > max_upload_bytes:
        return error(413, "too_large", too_big)
    return data, name


def run_server(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
               threads: int = 1, log_level: str = "info", **limits: Any) -> None:
    """Serve until interrupted. ``port`` 0 picks a free port; the URL is printed first.

    ``threads``: torch threads per inference. One image is ~0.1 MFLOP of work, so
    parallelism comes from serving requests side by side, not from splitting one;
    several torch threads per request only fight over the cores (measured: 1.3 ms
    per image with one thread, 40+ ms with two on a busy 2-core machine).
    """
    import torch
    import uvicorn

    torch.set_num_threads(max(1, threads))
    app = create_app(model_path, device=device, **limits)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP. Without it a keep-alive response waits for a delayed ACK: measured 48 ms instead
    # of 2 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; try another --port") from None
    bound_port = sock.getsockname()[1]
    info = app.state.predictor
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"lenet serve: {info.config.model.name} on {info.dataset} ({info.model_path}) "
          f"at http://{shown}:{bound_port}/  (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5,
                            limit_concurrency=256)  # beyond that: 503 at once, not a queue without end
    uvicorn.Server(config).run(sockets=[sock])


class ServerProcess:
    """`lenet serve` in a child process on 127.0.0.1 and a free port, for tests and benchmarks.

    >>> with ServerProcess("runs/x") as server:
    ...     httpx.get(server.url + "healthz")
    """

    def __init__(self, model_path: str | Path, *extra: str, startup_timeout: float = 60.0):
        self.model_path = Path(model_path)
        self.extra = extra
        self.startup_timeout = startup_timeout
        self.url = ""
        self._log = tempfile.NamedTemporaryFile(prefix="lenet-serve-", suffix=".log", delete=False)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def __enter__(self) -> "ServerProcess":
        command = [sys.executable, "-m", "lenet", "serve", str(self.model_path), "--host", "127.0.0.1",
                   "--port", "0", "--log-level", "warning", *self.extra]
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RunError(f"`{' '.join(command)}` exited with {self._process.returncode}:\n{self.log}")
            for line in self.log.splitlines():
                if " at http://" in line:
                    self.url = line.split(" at ", 1)[1].split()[0]
            if self.url and self._healthy():
                return self
            time.sleep(0.1)
        self.__exit__()
        raise RunError(f"the server did not start within {self.startup_timeout:.0f} s:\n{self.log}")

    def _healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: Any) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # SIGTERM: uvicorn shuts down gracefully
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
