"""Build docs/lenet-chapter.ipynb from the cells below and run it, so the committed
notebook carries the outputs of a real run (`python scripts/make_notebook.py`).
Needs the notebook extra (pip install -e ".[notebook]") and Fashion-MNIST."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "lenet-chapter.ipynb"

CELLS = [
    ("md", """# LeNet, the chapter in code

This notebook walks through the LeNet chapter of *Dive into Deep Learning* with the
`lenet` library: the network and its output shapes, the chapter's training recipe
(sigmoid, average pooling, Xavier init, SGD with lr 0.9, batch 256, 10 epochs) with
its three curves, an evaluation of the trained model, and the exercise that looks at
the first and second layers' activations for sweaters and coats.

Set-up: `pip install -e ".[notebook]"` in a checkout (or `bash scripts/setup.sh notebook`).
The data is found as `lenet train` finds it (`LENET_DATA_DIR`, the user cache,
`/usr/share/datasets`), else downloaded. The whole notebook runs in about two minutes
on a 2-core laptop CPU."""),
    ("code", """%matplotlib inline
import lenet
lenet.__version__"""),
    ("md", """## The data

Fashion-MNIST: 60,000 training and 10,000 test images of 28x28 grey pixels, ten classes
of clothing. `lenet` keeps the whole set in memory as one `uint8` tensor and takes its
batches by indexing a shuffled permutation."""),
    ("code", """data = lenet.load_dataset("fashion-mnist")
print(f"{len(data.train):,} training and {len(data.test):,} test images; classes: {', '.join(data.class_names)}")

from lenet.use.figures import image_grid_figure
image_grid_figure(data.train.images[:16], [data.class_names[int(i)] for i in data.train.labels[:16]],
                  title="the first 16 training images")"""),
    ("md", """## The network

LeNet-5 as the chapter builds it: two convolution blocks (6 then 16 channels of 5x5,
each followed by a sigmoid and 2x2 average pooling), then dense layers of 120, 84 and
10 units. The chapter prints each layer's output shape for one 28x28 input:"""),
    ("code", """print(lenet.summary("d2l"))"""),
    ("md", """## Training

`lenet.config("d2l")` is the chapter's recipe; `lenet.train` runs it in memory and
returns the trained model and its history. In Jupyter a progress bar follows each
epoch and the three curves (train loss, train accuracy, test accuracy) are redrawn
after every epoch, as d2l's `Animator` does. `lenet.train(cfg, out="runs")` would also
write the run directory that `lenet train` makes (config, metrics, checkpoints, model)."""),
    ("code", """cfg = lenet.config("d2l")
run = lenet.train(cfg, data=data)
run"""),
    ("md", """The sigmoid network spends its first epoch near chance (test accuracy 0.10) before it
finds its way; the chapter reports 0.78 to 0.81 after 10 epochs. The history holds every
number behind the curves:"""),
    ("code", """for row in run.history:
    print(f"epoch {row['epoch']:>2}  train loss {row['train_loss']:.3f}  train acc {row['train_accuracy']:.3f}  "
          f"test acc {row['test_accuracy']:.3f}  ({row['epoch_seconds']:.1f} s)")"""),
    ("code", """run.plot()"""),
    ("md", """## Evaluation

Accuracy per class, the confusion matrix, and the most confident mistakes: the shirt
class is the hard one, confused with T-shirts, pullovers and coats."""),
    ("code", """report = lenet.evaluate(run, data=data)
print(report)"""),
    ("code", """report.plot_confusion()"""),
    ("code", """report.plot_mistakes(16)"""),
    ("md", """## Exercise: the first and second layers' activations

The chapter asks what the first and second layers compute for different inputs, such
as sweaters and coats. Each figure shows the input, the model's probabilities, and every
feature map after the sigmoid (before pooling) and after pooling, one colour scale per
layer."""),
    ("code", """from IPython.display import display

for figure in lenet.activations(run, classes=["sweater", "coat"], per_class=1):
    display(figure)"""),
    ("md", """## Going further

The same words work on the command line: `lenet train --preset d2l`, `lenet eval RUN`,
`lenet activations RUN --classes sweater coat`. The chapter's other exercises (max
pooling, other kernel sizes, activations, depths, learning rates, initialisations,
MNIST) run as one reproducible sweep: `lenet sweep --exercises`, with the results in
`docs/exercises.md`."""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
                for kind, text in CELLS]
    return nb


def main() -> int:
    nb = build()
    tic = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.perf_counter() - tic
    nb.metadata["lenet"] = {"executed_seconds": round(seconds, 1)}
    nbformat.write(nb, TARGET)
    print(f"wrote {TARGET} (ran in {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
