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

Bounded for hostile clients: at most UPLOAD_SLOTS bodies are read at once (memory:
each upload is held a few times while it is parsed and decoded), a request waits at
most QUEUE_SECONDS for a slot (then 503), a body must arrive within BODY_SECONDS (then
408), and a connection must send its request line and headers within HEADER_SECONDS
(GuardedH11Protocol), so idle or slow connections are closed instead of holding the
server; /healthz and /model are answered in the event loop, never queued behind work.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import gc
import io
import logging
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
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..data.datasets import data_spec
from ..errors import RunError, UsageError
from .predict import BlankImage, ImageError, ImageTooLarge, Predictor

try:  # POSIX; elsewhere the connection limit is MAX_CONNECTIONS
    import resource
except ImportError:  # pragma: no cover - exercised only on Windows
    resource = None  # type: ignore[assignment]

LOG = logging.getLogger("lenet.use.serve")

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # a phone photo is 2-5 MB; a drawing is ~10 KB
# Bodies read at once: the memory peak is about 8 x 5 MB x the copies made while parsing
# and decoding (every body read at once grows with the clients), and 8 readers keep 4
# inference threads busy.
UPLOAD_SLOTS = 8
QUEUE_SECONDS = 30.0  # how long a request waits for an upload slot before 503
BODY_SECONDS = 30.0  # the whole body must arrive within this: 5 MB at 170 kB/s
HEADER_SECONDS = 10.0  # request line and headers, from the connection or the last response
IDLE_TRIM_SECONDS = 0.5  # no request for this long: the burst is over, its memory goes back
MAX_CONNECTIONS = 1000  # open connections; the rest are refused with 503 (uvicorn)
MAX_PIXELS = 4096 * 4096  # 16.8 M pixels (a 12 MP phone photo fits), ~64 MB decoded as RGBA
MULTIPART_SLACK = 16 * 1024  # boundaries and part headers around the file
CONTENT_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/x-ms-bmp", "image/webp")
STATIC = resources.files("lenet.use") / "static"


def _png_data_url(pixels: Any) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # uint8 (S, S) grey or (S, S, 3) RGB
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
    async def healthz() -> dict[str, str]:  # async: answered in the event loop, never queued
        return {"status": "ok"}

    model_info = {
        "name": predictor.config.name or predictor.model_path.parent.name,
        "model": predictor.config.model.name,
        "dataset": data_spec(predictor.config).name,  # own data: its file or folder's name
        "classes": predictor.class_names,
        "accuracy": predictor.test_accuracy,
        "input": {"size": predictor.size, "channels": predictor.channels,
                  "shape": [predictor.channels, predictor.size, predictor.size],
                  "framing": predictor.preprocess.framing, "normalize": predictor.preprocess.normalize,
                  "mean": predictor.mean, "std": predictor.std,
                  "box": predictor.framing.box if predictor.framing else None,
                  "centre": predictor.framing.centre if predictor.framing else None},
        "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
                   "content_types": list(CONTENT_TYPES)},
    }

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return model_info

    uploads = anyio.Semaphore(UPLOAD_SLOTS)
    in_flight, done = [0], [0]
    idle_trim: list[asyncio.TimerHandle | None] = [None]

    def trim_if_idle() -> None:
        idle_trim[0] = None
        if in_flight[0] == 0:
            trim_memory()

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        in_flight[0] += 1
        if idle_trim[0] is not None:
            idle_trim[0].cancel()  # not idle after all
            idle_trim[0] = None
        try:
            return await answer(request)
        finally:
            in_flight[0] -= 1
            done[0] += 1
            if done[0] % UPLOAD_SLOTS == 0:
                trim_memory()  # another few uploads are done: give their memory back
            elif in_flight[0] == 0:
                # A burst may be over: trim once no request came for a moment, so a client
                # sending one picture after another never waits for a full collection.
                idle_trim[0] = asyncio.get_running_loop().call_later(IDLE_TRIM_SECONDS, trim_if_idle)

    async def answer(request: Request) -> JSONResponse:
        started = time.perf_counter()
        with anyio.move_on_after(QUEUE_SECONDS) as waited:
            await uploads.acquire()
        if waited.cancelled_caught:
            return error(503, "busy", f"{UPLOAD_SLOTS} uploads are being handled; try again in a moment")
        # The slot is held until the picture is decoded and classified: a body read but
        # still queued for an inference thread is memory too.
        try:
            picture = await read_picture(request, max_upload_bytes)
            if isinstance(picture, JSONResponse):
                return picture
            data, name = picture
            prediction = await anyio.to_thread.run_sync(
                lambda: without_frames(predictor.predict, data, name=name, max_pixels=max_pixels,
                                       max_bytes=max_upload_bytes), limiter=limiter)
        except ImageTooLarge as exc:
            return error(413, "too_large", str(exc))
        except BlankImage as exc:
            return error(422, "blank_image", str(exc))
        except ImageError as exc:
            return error(400, "not_an_image", str(exc))
        finally:
            uploads.release()
        result = prediction.to_dict(top_k=3)
        result.pop("file", None)
        result["classes"] = predictor.class_names
        result["input_image"] = _png_data_url(prediction.input)
        result["milliseconds"] = round(1000 * (time.perf_counter() - started), 2)
        return JSONResponse(result)

    return app



def without_frames(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``; an ImageError it raises is raised again without its
    traceback. The traceback's frames hold the decoded picture (tens of MB for a photo),
    and an exception crossing threads keeps them in a reference cycle that only a full
    garbage collection frees, long after a burst of bad uploads."""
    try:
        return function(*args, **kwargs)
    except ImageError as exc:
        raise exc.with_traceback(None) from None


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
    try:
        with anyio.fail_after(BODY_SECONDS):
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    return error(413, "too_large", too_big)
    except TimeoutError:
        return error(408, "timeout", f"the upload did not arrive within {BODY_SECONDS:.0f} s")
    except ClientDisconnect:
        LOG.info("a client left while uploading (%d bytes received)", len(body))
        return error(400, "disconnected", "the client closed the connection during the upload")

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
    if not data:
        return error(400, "not_an_image", f"{name}: empty file (0 bytes), not a picture")
    # What the bytes are decides, not the declared type: only these formats are decoded.
    if picture_format(data) is None:
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return error(415, "unsupported_media_type", f"{name}: a TIFF picture; send PNG, JPEG, GIF, BMP or WebP")
        return error(400, "not_an_image", f"{name}: not a PNG, JPEG, GIF, BMP or WebP picture (by its bytes)")
    return data, name


# Leading bytes of each accepted format: what the file is, whatever the upload says it is.
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
         (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def picture_format(data: bytes) -> str | None:
    """The content type the bytes themselves show (a TIFF sent as image/png is no PNG)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in MAGIC if data.startswith(magic)), None)


def run_server(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
               threads: int = 1, log_level: str = "info", **limits: Any) -> None:
    """Serve until interrupted. ``port`` 0 picks a free port; the URL is printed first.

    ``threads``: torch threads per inference. One image is ~0.1 MFLOP of work, so
    parallelism comes from serving requests side by side, not from splitting one;
    several torch threads per request only fight over the cores.
    """
    import uvicorn

    return_freed_memory()
    torch.set_num_threads(max(1, threads))
    app = create_app(model_path, device=device, **limits)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it a keep-alive response waits for the client's delayed ACK.
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
    print(f"lenet serve: {info.config.model.name} on {data_spec(info.config).name} ({info.model_path}) "
          f"at http://{shown}:{bound_port}/  (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5, http=guarded_protocol(),
                            limit_concurrency=connection_limit())  # beyond it: 503 at once
    uvicorn.Server(config).run(sockets=[sock])


def return_freed_memory() -> None:
    """glibc only: buffers of 1 MiB and more are mapped and unmapped, never kept.

    An upload is held a few times over while parsed and decoded (5 MB bodies, 15-25 MB a
    request). glibc serves such sizes from its heap once a big block has been freed (it
    raises its mmap threshold, up to 32 MB), and a heap rarely shrinks, so a burst of
    uploads would stay in the server for good. With the threshold fixed at 1 MiB and two
    arenas, freed uploads go back to the system at once.
    """
    if _LIBC is None:
        return  # another C library: its own policy applies
    m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
    _LIBC.mallopt(m_mmap_threshold, 1 << 20)
    _LIBC.mallopt(m_arena_max, 2)


def trim_memory() -> None:
    """When a burst of uploads is over: free what only the cycle collector can (a closed
    connection's protocol, request cycle and buffers refer to each other, and large
    buffers do not count towards the collector's allocation thresholds, so they wait,
    about one upload's size each), then hand the free pages inside the heap back to the
    system (glibc's malloc_trim). Tens of milliseconds."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def connection_limit() -> int:
    """MAX_CONNECTIONS, or fewer where the process may not open that many files."""
    if resource is None:
        return MAX_CONNECTIONS
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(16, min(MAX_CONNECTIONS, soft - 64))  # files for the model, logs, uploads
    except (OSError, ValueError):
        return MAX_CONNECTIONS


def guarded_protocol() -> type:
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's line and headers.

    uvicorn times out idle keep-alive connections between requests, but not a client that
    connects and sends nothing, or sends its headers a byte at a time: 256 such
    connections locked every other client out. Here a connection whose request has not
    arrived HEADER_SECONDS after it opened (or after its last response) is closed.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(HEADER_SECONDS, self._headers_too_slow)

        def _cancel_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel_header_deadline()  # the request is here: the app's limits take over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Any) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

    return GuardedH11Protocol


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

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

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
        import httpx  # a test dependency, not the package's: only this test helper needs it

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
