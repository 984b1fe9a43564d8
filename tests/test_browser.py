"""The page as a person uses it: headless Chromium draws digits with the mouse and uploads clothes.

The browser is Debian's chromium (LENET_CHROMIUM, default /usr/bin/chromium) driven by
Python Playwright; nothing is downloaded. The server is the real one (`lenet serve` in a
child process on 127.0.0.1). Where chromium is missing these tests skip, except under
LENET_REQUIRE_REAL_DATA=1 (CI), where they fail. LENET_SCREENSHOT_DIR=DIR saves screenshots.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lenet.use.serve import ServerProcess
import models_fixture
from models_fixture import require_real_data

CHROMIUM = os.environ.get("LENET_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = os.environ.get("LENET_SCREENSHOT_DIR")

# Session fixtures, trained once for all test modules (see models_fixture.py).
fashion_model = models_fixture.fashion_model
mnist_model = models_fixture.mnist_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    problem = None
    if not Path(CHROMIUM).is_file():
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium, or set LENET_CHROMIUM)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "python playwright is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("LENET_REQUIRE_REAL_DATA"):
            pytest.fail(problem)
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def mnist_server(mnist_model):
    with ServerProcess(mnist_model) as server:
        yield server


class Page:
    """One tab on the server's page, with what it requested and complained about."""

    def __init__(self, browser, url: str):
        self.url = url
        self.page = browser.new_page(viewport={"width": 960, "height": 640})
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]")
        self.predictions = 0

    def wait_for_prediction(self) -> str:
        self.predictions += 1
        # a selector, not wait_for_function: the page's CSP forbids evaluating strings
        self.page.wait_for_selector(f"body[data-predictions='{self.predictions}']", state="attached", timeout=15_000)
        return self.page.text_content("#label").strip()

    def draw(self, strokes: list[np.ndarray]) -> str:
        """Draw strokes given in [0, 1] canvas coordinates, press Predict, read the label."""
        self.page.click("#clear")
        box = self.page.locator("#canvas").bounding_box()
        mouse = self.page.mouse
        for stroke in strokes:
            xs = box["x"] + stroke[:, 0] * box["width"]
            ys = box["y"] + stroke[:, 1] * box["height"]
            mouse.move(xs[0], ys[0])
            mouse.down()
            for x, y in zip(xs[1:], ys[1:], strict=True):
                mouse.move(x, y)
            mouse.up()
        self.page.click("#predict")
        return self.wait_for_prediction()

    def upload(self, path: Path) -> str:
        self.page.set_input_files("#file", str(path))
        return self.wait_for_prediction()

    def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            self.page.wait_for_timeout(400)  # let the bars finish growing
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / name))

    def assert_self_contained(self) -> None:
        outside = [u for u in self.requests if not u.startswith(self.url) and not u.startswith(("data:", "blob:"))]
        assert outside == [], f"the page loaded from elsewhere: {outside}"
        assert self.console_errors == []


# --------------------------------------------------------------------------- strokes


def smooth(points: list[tuple[float, float]], samples: int = 8) -> np.ndarray:
    """A Catmull-Rom curve through ``points``: the path a hand would take."""
    p = np.array([points[0], *points, points[-1]], dtype=float)
    out = [p[1]]
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        for t in np.linspace(0, 1, samples + 1)[1:]:
            out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.array(out)


def line(points: list[tuple[float, float]], samples: int = 8) -> np.ndarray:
    """Straight segments through ``points`` (sharp corners, as in a 4 or a 7)."""
    p = np.array(points, dtype=float)
    out = [p[0]]
    for a, b in zip(p[:-1], p[1:], strict=True):
        out += [a + (b - a) * t for t in np.linspace(0, 1, samples + 1)[1:]]
    return np.array(out)


def ellipse(cx: float, cy: float, rx: float, ry: float, points: int = 36) -> np.ndarray:
    t = np.linspace(-np.pi / 2, 1.6 * np.pi, points)  # a little past the start, as a hand closes a 0
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


# Digits as a person draws them on the canvas, in [0, 1] canvas coordinates (x right, y down).
SYNTHETIC_DIGITS: dict[int, list[np.ndarray]] = {
    0: [ellipse(0.5, 0.5, 0.2, 0.32)],
    1: [line([(0.52, 0.18), (0.47, 0.82)])],
    2: [smooth([(0.3, 0.32), (0.38, 0.2), (0.52, 0.16), (0.66, 0.22), (0.68, 0.36), (0.58, 0.5),
                (0.42, 0.65), (0.3, 0.8)]), line([(0.3, 0.8), (0.72, 0.8)])],
    3: [smooth([(0.3, 0.22), (0.45, 0.15), (0.62, 0.18), (0.67, 0.3), (0.58, 0.42), (0.45, 0.47), (0.6, 0.52),
                (0.7, 0.64), (0.64, 0.78), (0.48, 0.84), (0.3, 0.79)])],
    4: [line([(0.32, 0.18), (0.28, 0.55), (0.72, 0.55)]), line([(0.62, 0.2), (0.62, 0.85)])],
    5: [line([(0.7, 0.18), (0.34, 0.18), (0.31, 0.46)]),
        smooth([(0.31, 0.46), (0.48, 0.42), (0.64, 0.5), (0.68, 0.65), (0.6, 0.8), (0.44, 0.85), (0.3, 0.8)])],
    6: [smooth([(0.62, 0.15), (0.48, 0.28), (0.37, 0.45), (0.32, 0.62), (0.36, 0.78), (0.5, 0.85), (0.64, 0.78),
                (0.66, 0.64), (0.55, 0.55), (0.4, 0.58), (0.33, 0.66)])],
    7: [line([(0.28, 0.2), (0.72, 0.2), (0.45, 0.85)])],
    8: [smooth([(0.62, 0.24), (0.5, 0.16), (0.36, 0.22), (0.37, 0.36), (0.5, 0.46), (0.64, 0.56), (0.66, 0.72),
                (0.52, 0.84), (0.36, 0.76), (0.36, 0.6), (0.5, 0.47), (0.62, 0.38), (0.63, 0.26)])],
    9: [smooth([(0.64, 0.28), (0.52, 0.17), (0.37, 0.24), (0.35, 0.38), (0.48, 0.46), (0.62, 0.4), (0.65, 0.28)]),
        line([(0.65, 0.28), (0.63, 0.55), (0.6, 0.85)])],
}


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning (1984) of a boolean image: lines one pixel wide."""
    image = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = image
            # neighbours P2..P9, clockwise from north
            n = [np.roll(np.roll(p, dy, 0), dx, 1) for dy, dx in
                 ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))]
            count = sum(n)
            transitions = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(int) for i in range(8))
            if step == 0:
                cond = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                cond = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            remove = (p == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & cond
            if remove.any():
                image = image & ~remove
                changed = True
        if not changed:
            return image[1:-1, 1:-1].astype(bool)


def traced_strokes(digit: np.ndarray) -> list[np.ndarray]:
    """The strokes of a 28x28 test digit: its skeleton walked pixel to pixel, in canvas coordinates."""
    todo = {tuple(p) for p in np.argwhere(skeleton(digit > 96))}
    neighbours = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]

    def degree(p):
        return sum((p[0] + dy, p[1] + dx) in todo for dy, dx in neighbours)

    strokes = []
    while todo:
        start = min(todo, key=lambda p: (degree(p), p))  # an end of a line where there is one
        path = [start]
        todo.discard(start)
        while True:
            r, c = path[-1]
            ahead = [(r + dy, c + dx) for dy, dx in neighbours if (r + dy, c + dx) in todo]
            if not ahead:
                break
            nxt = min(ahead, key=lambda q: abs(q[0] - r) + abs(q[1] - c))  # prefer straight steps
            path.append(nxt)
            todo.discard(nxt)
        points = np.array(path, dtype=float)[:, ::-1]  # (row, col) -> (x, y)
        strokes.append((points + 0.5) / 28)
    return strokes


# --------------------------------------------------------------------------- the tests


def first_of_each_class(dataset: str, data_dir: Path, classes) -> dict[int, np.ndarray]:
    from lenet.data.datasets import load_dataset

    test = load_dataset(dataset, data_dir).test
    labels = test.labels.numpy()
    return {c: test.images[int(np.flatnonzero(labels == c)[0]), 0].numpy() for c in classes}


def test_digits_drawn_on_the_canvas_are_recognised(browser, mnist_server):
    real = first_of_each_class("mnist", require_real_data("mnist"), range(10))
    page = Page(browser, mnist_server.url)
    drawn = {d: page.draw(strokes) for d, strokes in SYNTHETIC_DIGITS.items()}
    page.screenshot("serve.png")
    traced = {d: page.draw(traced_strokes(real[d])) for d in range(10)}
    page.assert_self_contained()
    bars = page.page.locator("#bars li").count()
    drawn_right = sum(str(d) == label for d, label in drawn.items())
    traced_right = sum(str(d) == label for d, label in traced.items())
    print(f"\nsynthetic strokes: {drawn_right}/10 right {drawn}"
          f"\ntraced from the test set's first digit of each class: {traced_right}/10 right {traced}")
    assert bars == 10
    assert drawn_right >= 9 and traced_right >= 9


def test_a_fashion_picture_uploaded_is_recognised(browser, fashion_model, tmp_path):
    from lenet.data.datasets import get_spec

    data_dir = require_real_data("fashion-mnist")
    names = get_spec("fashion-mnist").class_names
    # Trouser, Bag, Ankle boot: classes LeNet gets right > 95% of the time even after one epoch.
    pictures = first_of_each_class("fashion-mnist", data_dir, (1, 8, 9))
    with ServerProcess(fashion_model) as server:
        page = Page(browser, server.url)
        assert page.page.get_attribute("#tab-upload", "aria-selected") == "true"  # clothes: upload first
        labels = {}
        for c, image in pictures.items():
            path = tmp_path / f"{names[c].replace('/', '-')}.png"
            Image.fromarray(image).resize((112, 112), Image.Resampling.BICUBIC).save(path)  # a bigger picture
            labels[c] = page.upload(path)
        page.screenshot("serve-fashion.png")
        seen = page.page.get_attribute("#model-input", "src")
        page.assert_self_contained()
    print(f"\nuploaded: {labels}")
    assert {c: names[c] for c in pictures} == labels
    assert seen.startswith("data:image/png;base64,")


def test_errors_are_shown_on_the_page(browser, mnist_server, tmp_path):
    page = Page(browser, mnist_server.url)
    page.page.click("#predict")  # nothing drawn yet
    assert page.page.text_content("#error") == "Draw something first."
    (tmp_path / "notes.png").write_text("not a picture")
    page.upload(tmp_path / "notes.png")
    assert "notes.png: not a PNG, JPEG" in page.page.text_content("#error") and page.page.is_visible("#error")
