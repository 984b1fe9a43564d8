"""What a ``--data PATH`` holds, told apart by what is there, and read (sources.py says
the formats; each has its reader module)."""

from __future__ import annotations

from pathlib import Path

from . import arrays, cifar, folder
from ..errors import DataError
from .sources import Arrays, ReadOptions, finish


def read_path(path: str | Path, options: ReadOptions | None = None) -> Arrays:
    """The data at ``path``, finished (see the module's docstring); DataError if it is
    none of the formats, naming what was looked for."""
    options = options or ReadOptions()
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (--data takes an image folder, a .csv, a .npz, "
                        "or a folder of IDX or CSV files)")
    if path.is_file():
        suffix = path.name.lower()
        if suffix.endswith(".csv") or suffix.endswith(".csv.gz"):
            found = arrays.read_csv(path)
        elif suffix.endswith(".npz"):
            found = arrays.read_npz(path)
        else:
            raise DataError(f"{path}: a file --data cannot read (it reads .csv and .npz files, "
                            "and folders of pictures, IDX or CSV files)")
    elif cifar.is_cifar10_folder(path):
        found = cifar.read_cifar10(path)
    elif arrays.is_idx_folder(path):
        found = arrays.read_idx_folder(path)
    elif arrays.is_csv_folder(path):
        found = arrays.read_csv_folder(path)
    else:
        found = folder.read_folder(path, options)
    return finish(found, options, path)
