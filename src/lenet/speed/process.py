"""What a lenet process spends outside training: imports and garbage collection.

Two mechanisms, each measured in docs/speed.md:
- the plotting module is imported in a thread while the dataset decodes (zlib works
  outside the GIL), and waited for before the first step, whose work needs both cores;
- Python's cyclic collector is paused while the CLI imports torch and frozen after, and
  at exit: it frees nothing then, and walks some 200,000 objects each pass.
"""

from __future__ import annotations

import gc
import importlib
import sys
import threading
from typing import Callable


def import_in_background(module: str | None) -> Callable[[], None]:
    """Start importing ``module`` (None: nothing) in a thread; returns the function that
    waits for it. A failed import is left for the module's use to report, in context."""
    if module is None or module in sys.modules:
        return lambda: None
    thread = threading.Thread(target=_import_quietly, args=(module,), name=f"import {module}", daemon=True)
    thread.start()
    return thread.join


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - the import at the point of use raises it again
        pass


def collector_paused() -> None:
    """At the start of the lenet process: no collections while the imports run."""
    gc.disable()


def collector_after_imports() -> None:
    """Once the command's imports are done: what they made is frozen (later collections
    skip it) and collections go on as usual."""
    gc.freeze()
    gc.enable()


def collector_at_exit() -> None:
    """After every file is written and closed: nothing is left for a final collection to free."""
    gc.freeze()
