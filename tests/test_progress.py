"""What a person watches while training: bars, and in Jupyter the live plot of the curves.

The notebook tests run a real Jupyter kernel (nbclient + ipykernel), as the chapter's
readers do; outside Jupyter the same calls must stay silent.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from lenet.training.progress import Progress, in_notebook


def run_notebook(cells: list[str], timeout: int = 120) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    NotebookClient(nb, timeout=timeout, kernel_name="python3").execute()
    return nb


def outputs_of(cell) -> tuple[list[str], str]:
    """(the MIME types the cell displayed, its printed text)."""
    kinds, text = [], ""
    for output in cell.outputs:
        if output.output_type == "stream":
            text += output.text
        elif output.output_type in ("display_data", "execute_result"):
            kinds += list(output.data)
    return kinds, text


@pytest.mark.slow  # a real Jupyter kernel: about 8 s
def test_in_jupyter_training_shows_a_bar_and_redraws_the_curves_every_epoch(tiny_data_dir):
    nb = run_notebook([
        "import lenet\n"
        "from IPython.display import DisplayHandle\n"
        "updates = []\n"
        "draw = DisplayHandle.update\n"
        "def counted(self, obj, **kw):\n"
        "    updates.append(type(obj).__name__)\n"
        "    return draw(self, obj, **kw)\n"
        "DisplayHandle.update = counted\n"
        f"cfg = lenet.config('keras-v2-scaled', epochs=3, data_dir={str(tiny_data_dir)!r}, device='cpu')\n"
        "run = lenet.train(cfg)\n"
        "print('history', len(run.history), 'updates', updates)",
        # progress "never": nothing at all, even in Jupyter
        "run = lenet.train(cfg.model_copy(update={'train': cfg.train.model_copy(update={'progress': 'never'})}))",
    ])
    kinds, text = outputs_of(nb.cells[0])
    # One picture of the curves, drawn after epoch 1 and redrawn after epochs 2 and 3; one
    # bar (tqdm's notebook widget) for the run, replaced at the end by what was done.
    assert "history 3 updates ['Image', 'Image', 'Pretty']" in text
    assert kinds.count("image/png") == 1
    bars = [o for o in nb.cells[0].outputs if o.output_type == "display_data" and "image/png" not in o.data]
    assert len(bars) == 1 and "3 epoch(s) of" in bars[0].data["text/plain"]
    assert "Traceback" not in text and "batch/s" not in text  # the widget, not a text bar on stderr
    assert outputs_of(nb.cells[1]) == ([], "")


def test_outside_jupyter_progress_is_silent(capsys):
    assert not in_notebook()
    progress = Progress("auto", verbose=False, title="run")
    bar = progress.bar(1, 1, total=10)
    bar.update(10)
    bar.close()
    progress.epoch([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_accuracy": 0.5}])
    assert capsys.readouterr() == ("", "")


def test_progress_always_draws_a_text_bar_on_stderr(capsys):
    bar = Progress("always", verbose=False).bar(2, 5, total=4)
    bar.update(4)
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 2/5" in err and "/4 [" in err


@pytest.mark.slow
def test_the_chapter_notebook_runs_top_to_bottom(real_data_dir, tmp_path, monkeypatch):
    """docs/lenet-chapter.ipynb, executed by a real kernel on the real data: any error fails."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "docs" / "lenet-chapter.ipynb"
    nb = nbformat.read(source, as_version=4)
    monkeypatch.setenv("LENET_DATA_DIR", str(real_data_dir))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    text = json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"])
    assert "61,706" in text and "image/png" in text
