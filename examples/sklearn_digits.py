"""Write scikit-learn's bundled 8x8 digits (1,797 pictures, UCI's "Optical Recognition of
Handwritten Digits", installed with scikit-learn, no download) as a folder of PNG files,
one subfolder per digit: the layout `lenet train --data` reads.

    python examples/sklearn_digits.py digits/
    lenet train --data digits/ --image-size 28 --preset speedrun-mnist --epochs 15
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write(root: Path) -> int:
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 ink -> 0..255 grey
    for i, (picture, label) in enumerate(zip(pixels, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture, mode="L").save(folder / f"{i:04d}.png")
    return len(pixels)


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "digits")
    print(f"{write(root)} pictures in {root}/<digit>/")
