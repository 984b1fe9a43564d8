"""One self-contained HTML page for a sweep or a run, to hand to students.

Everything is inside the file: images as base64 data: URIs, CSS inline, no scripts
and no links out, so it opens the same from an e-mail, a USB stick or an LMS.
The numbers come from the files the sweep and the runs wrote (sweep.json, status.json,
metrics.jsonl, eval.json), never from memory, so a report can be rebuilt any time.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..errors import RunError
from ..configuration.files import load_file
from ..store.files import atomic_write_text, read_json_or_empty
from ..store.recorder import read_status
from ..store.runs import read_metrics
from .search.results import collect, readable
from .sweep.summary import SUMMARY_COLUMNS, summarize, summary_rows, write_plots

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td, tr.chosen td { background: #fff8e0; } tr.failed td { color: #a00; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
details { margin: 2em 0; } summary { cursor: pointer; font-weight: 600; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def image(path: Path, alt: str) -> str:
    return f'<img src="{data_uri(path)}" alt="{html.escape(alt)}">' if Path(path).is_file() else ""


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (),
          row_classes: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td{" class=num" if j in numeric else ""}>{html.escape(str(c))}</td>'
                        for j, c in enumerate(row))
        out.append(f"<tr{css}>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def page(title: str, body: list[str]) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body)
            + f"\n<p class=\"note\">Made by <code>lenet report</code> on {stamp}.</p>\n</body></html>\n")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------- runs


METRIC_HEADER = ["epoch", "train loss", "train acc", "val acc", "test acc", "lr", "seconds"]


def metrics_table(rows: list[dict[str, Any]]) -> str:
    body = [[r.get("epoch"), _fmt(r.get("train_loss")), _fmt(r.get("train_accuracy")), _fmt(r.get("val_accuracy")),
             _fmt(r.get("test_accuracy")), _fmt(r.get("lr"), 3), _fmt(r.get("epoch_seconds"), 1)] for r in rows]
    return table(METRIC_HEADER, body, numeric=range(7))


def run_sections(run_dir: Path, heading: str = "h2") -> list[str]:
    """Config, metrics, curves and whatever evaluation and inspection files the run has."""
    body = []
    status = read_json_or_empty(run_dir / "status.json")
    if status:
        body.append(f"<p>Status: <b>{html.escape(str(status.get('status')))}</b>"
                    + (f" — {html.escape(str(status['reason']))}" if status.get("reason") else "") + "</p>")
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    if rows:
        body += [f"<{heading}>Training</{heading}>", image(run_dir / "curves.png", "training curves"),
                 metrics_table(rows)]
    evaluation = read_json_or_empty(run_dir / "eval.json")
    if evaluation:
        body.append(f"<{heading}>Evaluation</{heading}>")
        body.append(f"<p>Test accuracy {evaluation['test_accuracy']:.4f} on {evaluation['examples']:,} images.</p>")
        per_class = evaluation.get("per_class_accuracy", {})
        if per_class:
            body.append(table(["class", "accuracy"], [[k, f"{v:.4f}"] for k, v in per_class.items()], numeric=[1]))
        confused = evaluation.get("most_confused", [])
        if confused:
            body.append("<p>Most confused pairs (true → predicted):</p>")
            body.append(table(["true", "predicted", "count"],
                              [[c["true"], c["predicted"], c["count"]] for c in confused], numeric=[2]))
        body.append(image(run_dir / "confusion.png", "confusion matrix"))
        body.append(image(run_dir / "misclassified.png", "misclassified test images"))
    if (run_dir / "filters.png").is_file():
        body += [f"<{heading}>Learned kernels</{heading}>", image(run_dir / "filters.png", "conv kernels")]
    activations = sorted((run_dir / "activations").glob("*.png"))
    if activations:
        body.append(f"<{heading}>Feature maps</{heading}>")
        for path in activations:
            body.append(f"<p class=\"note\">{html.escape(path.stem)}</p>" + image(path, path.stem))
    return body


def run_report(run_dir: Path) -> str:
    config_path = run_dir / "config.yaml"
    config = load_file(config_path) if config_path.is_file() else {}  # bounded, no aliases
    title = f"Run {run_dir.name}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if config:
        model = config.get("model", {})
        dataset = config.get("data", {}).get("dataset")
        body.append(f"<p>{html.escape(str(config.get('preset') or 'custom'))} recipe, model "
                    f"{html.escape(str(model.get('name')))} on {html.escape(str(dataset))}, "
                    f"seed {config.get('seed')}.</p>")
    body += run_sections(run_dir)
    if config:
        body += ["<h2>Config</h2>", f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"]
    return page(title, body)


# --------------------------------------------------------------------------- sweeps


def sweep_report(sweep_dir: Path) -> str:
    summaries, info = summarize(sweep_dir)
    if not (sweep_dir / "accuracy_bars.png").is_file():
        write_plots(sweep_dir, summaries, info)
    title = f"Sweep {info['name']}"
    spec = info.get("spec", {})
    body = [f"<h1>{html.escape(title)}</h1>"]
    if spec.get("description"):
        body.append(f"<p>{html.escape(spec['description'].strip())}</p>")
    base = spec.get("base")
    body.append(f"<p>Base: <code>{html.escape(json.dumps(base) if isinstance(base, dict) else str(base))}</code>; "
                f"seeds {html.escape(str(info.get('seeds')))}; each variant changes the fields listed. "
                "Test accuracy is the final epoch's, mean ± sample standard deviation over the finished seeds "
                "(n). With one seed, differences of a few tenths of a percent are within noise.</p>")
    overrides = info.get("command_line_overrides")
    if overrides:
        body.append(f"<p>Command-line settings for every run: <code>{html.escape(' '.join(overrides))}</code></p>")
    classes = ["baseline" if s.name == info.get("baseline") else ("failed" if s.failed and not s.n else "")
               for s in summaries]
    body += ["<h2>Summary</h2>", table(SUMMARY_COLUMNS, summary_rows(summaries), numeric=[2, 3, 4, 5, 6, 7],
                                       row_classes=classes)]
    notes = [(s.name, s.note) for s in summaries if s.note]
    if notes:
        body.append(table(["variant", "why it is here"], notes))
    body += ["<h2>Test accuracy per variant</h2>", image(sweep_dir / "accuracy_bars.png", "accuracy per variant"),
             "<h2>Curves of all variants</h2>", image(sweep_dir / "curves.png", "curves of all variants")]
    groups = sorted(sweep_dir.glob("curves-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    body += [image(path, path.stem) for path in groups]
    body.append("<h2>Variants</h2>")
    for s in summaries:
        body.append(f"<h3>{html.escape(s.name)}</h3><p>{html.escape(s.changes)}"
                    + (f" — {html.escape(s.note)}" if s.note else "") + "</p>")
        rows, pictures = [], []
        for run in (r for r in info["runs"] if r["variant"] == s.name):
            run_dir = sweep_dir / run["dir"]
            status = read_status(run_dir)
            metrics = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
            last = metrics[-1] if metrics else {}
            rows.append([run["dir"], run["seed"], status.get("status", "pending"), _fmt(last.get("test_accuracy")),
                         len(metrics), _fmt(sum(float(m.get("epoch_seconds") or 0) for m in metrics), 1),
                         status.get("reason", "")])
            if not pictures and (run_dir / "curves.png").is_file():
                pictures.append(image(run_dir / "curves.png", f"{run['dir']} curves"))
        body.append(table(["run", "seed", "status", "test acc", "epochs", "train seconds", "reason"], rows,
                          numeric=[1, 3, 4, 5]))
        body += pictures
    return page(title, body)


# --------------------------------------------------------------------------- searches


def search_report(search_dir: Path) -> str:
    """A search (lenet search): what it searched, the metric against each field, what it
    chose as changes from its base (rounded for reading) and its test accuracy, every
    trial, and the chosen config in full, folded, at the end."""
    summary = read_json_or_empty(search_dir / "summary.json")
    if not summary or "best_changes" not in summary or not (search_dir / "search.png").is_file():
        collect(search_dir, log=lambda _line: None)  # the test set is not looked at again
        summary = read_json_or_empty(search_dir / "summary.json")
    spec = read_json_or_empty(search_dir / "search.json").get("spec", {})
    title = f"Search {summary.get('name', search_dir.name)}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if spec.get("description"):
        body.append(f"<p>{html.escape(spec['description'].strip())}</p>")
    metric = summary.get("metric", "val_accuracy")
    body.append(f"<p>{html.escape(spec.get('algorithm', 'tpe'))} search over "
                + ", ".join(f"<code>{html.escape(k)}</code>" for k in spec.get("search", {}))
                + f" on the base <code>{html.escape(json.dumps(spec.get('base')))}</code>, chosen on "
                f"<code>{html.escape(metric)}</code> (the validation split) among trials that ran all their epochs. "
                "The test set was evaluated once, for the chosen config, after the choice.</p>")
    body += ["<h2>The metric against each searched field</h2>", image(search_dir / "search.png", "search plot")]
    if summary.get("best"):
        changes = [[c["field"] + ("" if c["searched"] else " (follows)"), readable(c["base"]), readable(c["chosen"])]
                   for c in summary["best_changes"]]
        body += ["<h2>Chosen</h2>",
                 f"<p><b>{html.escape(summary['best'])}</b>: {html.escape(metric)} {_fmt(summary.get('best_metric'))}; "
                 f"test accuracy {_fmt(summary.get('test_accuracy'))}. Its changes from the base every trial started "
                 "from (the spec's base, common and --set):</p>",
                 table(["field", "base", "chosen"], changes),
                 "<p class=\"note\">Values to 4 significant digits; summary.json and best-config.yaml keep them "
                 "in full.</p>"]
    else:
        body.append("<p>No trial ran all its epochs, so none was chosen.</p>")
    trials = summary.get("trials", [])
    if trials:
        keys = list(spec.get("search", {}))
        rows = [[t["name"], *(readable(t["values"].get(k)) for k in keys), t["epochs"], t["status"],
                 _fmt(t.get("metric")), _fmt(t.get("best_metric")), _fmt(t.get("seconds"), 1)] for t in trials]
        n = len(keys)
        chosen = ["chosen" if t["name"] == summary.get("best") else "" for t in trials]
        body += ["<h2>Trials</h2>", table(["trial", *keys, "epochs", "status", metric, f"best {metric}", "seconds"],
                                          rows, numeric=[n + 1, n + 3, n + 4, n + 5], row_classes=chosen)]
    best_config = search_dir / "best-config.yaml"
    if summary.get("best") and best_config.is_file():
        body.append("<details><summary>The chosen config in full (best-config.yaml)</summary>"
                    f"<pre>{html.escape(best_config.read_text())}</pre></details>")
    return page(title, body)


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """PATH/report.html (or ``out``) for a sweep, a search or a run directory."""
    path = Path(path)
    if (path / "search.json").is_file():
        text = search_report(path)
    elif (path / "sweep.json").is_file():
        text = sweep_report(path)
    elif (path / "metrics.jsonl").is_file():
        text = run_report(path)
    else:
        raise RunError(f"{path}: not a sweep (sweep.json), a search (search.json) or a run directory "
                       "(metrics.jsonl)")
    target = Path(out) if out else path / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    return target
