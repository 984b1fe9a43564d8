"""What a person watches while a run trains: a bar over each epoch's batches and, in
Jupyter, the chapter's three curves redrawn after every epoch (d2l's Animator).

    progress "auto"    Jupyter: a notebook bar and the live plot; a terminal: a bar on
                       stderr when the run prints its lines (the CLI); elsewhere nothing
    progress "always"  a bar even where stderr is not a terminal (logs, CI)
    progress "never"   nothing

Outside Jupyter the live plot stays silent: a script or a test never opens a window
or draws a figure nobody sees.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not in a terminal IPython, nor in plain Python)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _EpochView:
    """One epoch's view of the run's notebook bar: the bar lasts the whole run (one bar,
    not one per epoch, in the saved notebook), so closing an epoch leaves it open."""

    def __init__(self, bar: Any):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        pass


class Progress:
    """Bars per epoch, and the live plot in Jupyter; every method is a no-op where
    nothing is to be shown."""

    def __init__(self, mode: str, verbose: bool, title: str = ""):
        notebook = in_notebook()
        self.notebook = notebook and mode != "never"
        self.show_bars = mode == "always" or (mode == "auto" and (notebook or (verbose and sys.stderr.isatty())))
        self.title = title
        self._plot: Any = None  # the IPython display handle, once the first epoch is drawn
        self._bar: Any = None  # Jupyter: the run's one bar, and its display handle
        self._bar_handle: Any = None

    def bar(self, epoch: int, epochs: int, total: int, done: int = 0):
        if not self.show_bars:
            return _NoBar()
        desc = f"epoch {epoch}/{epochs}"
        if self.notebook:
            view = self._notebook_bar(epoch, epochs, total, done, desc)
            if view is not None:
                return view
        return tqdm(total=total, initial=done, disable=False, leave=False, file=sys.stderr, unit="batch",
                    desc=desc, dynamic_ncols=True)

    def _notebook_bar(self, epoch: int, epochs: int, total: int, done: int, desc: str) -> _EpochView | None:
        if self._bar is None:
            try:
                from IPython.display import display
                from tqdm.notebook import tqdm as notebook_tqdm

                # display=False: we show it ourselves, so finish() can replace it in place.
                self._bar = notebook_tqdm(total=epochs * total, initial=(epoch - 1) * total + done, desc=desc,
                                          unit="batch", display=False)
                self._bar_handle = display(self._bar.container, display_id=True)
            except ImportError:  # no ipywidgets: the text bar still works in Jupyter
                return None
        self._bar.set_description(desc, refresh=False)
        return _EpochView(self._bar)

    def epoch(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Redraw the curves of ``history`` in place (Jupyter only)."""
        if not self.notebook or not history:
            return
        from IPython.display import Image, display

        from ..use.figures import curves_figure, figure_png

        picture = Image(data=figure_png(curves_figure([(self.title, history)], title=self.title)))
        if self._plot is None:
            self._plot = display(picture, display_id=True)
        else:
            self._plot.update(picture)

    def finish(self, summary: str) -> None:
        """Jupyter: the bar gives way to one line saying what was done."""
        if self._bar is None:
            return
        from IPython.display import Pretty

        self._bar.close()
        self._bar_handle.update(Pretty(summary))
        self._bar = self._bar_handle = None
