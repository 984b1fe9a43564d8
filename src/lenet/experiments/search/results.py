"""A search's results, recomputed from its trials' run directories (like a sweep's).

    collect(search_dir)    trials.csv      one row per trial: its values, epochs, status, metric
                           search.png      the metric against each searched field
                           best-config.yaml  the chosen config, for `lenet train --config`
                           summary.md      for reading: values to 4 significant digits
                           summary.json    the choice and its changes from the base, in full
                           and, once, the chosen config's test accuracy

The choice uses only the validation metric of trials that ran all their epochs (a
trial ASHA stopped was judged at a rung, not at the end). The test set is then looked
at exactly once, for the chosen trial's model, after the choice is made.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ...errors import RunError
from ...store.files import atomic_write_text, read_json_or_empty, write_json
from ...store.recorder import FINISHED, INTERRUPTED, read_status
from ...configuration.build import flatten
from ...store.runs import load_run_config, read_metrics
from ...use import evaluation
from .spec import STOPPED_BY_SEARCH, SearchSpec, TrialConfigs, parse_search_spec

# Fields that say where a trial's run went, not what it computed.
BOOKKEEPING = ("name", "out")


@dataclass
class Trial:
    name: str
    values: dict[str, Any]  # searched field -> value
    epochs: int  # epochs done
    status: str  # finished | stopped early | diverged | failed | running | not started
    metric: float | None  # the last epoch's
    best_metric: float | None  # over its epochs
    seconds: float

    @property
    def complete(self) -> bool:
        return self.status == FINISHED


@dataclass
class SearchResult:
    search_dir: Path
    spec: SearchSpec
    trials: list[Trial]
    best: Trial | None
    test_accuracy: float | None = None
    files: list[Path] = field(default_factory=list)
    # The chosen config against the base: [{"field", "base", "chosen", "searched"}], full precision.
    best_changes: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        best = (f", best {self.best.name} {self.spec.metric} {self.best.metric:.4f}" if self.best and
                self.best.metric is not None else "")
        return f"SearchResult({self.search_dir}, {len(self.trials)} trials{best})"


def load_trials(search_dir: Path, configs: TrialConfigs) -> list[Trial]:
    trials = []
    folder = search_dir / "trials"
    dirs = sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime) if folder.is_dir() \
        else []
    for run_dir in dirs:
        if not (run_dir / "config.yaml").is_file():
            continue
        cfg = flatten(load_run_config(run_dir).to_dict())
        values = {key: cfg.get(key) for key in configs.space}
        rows = read_metrics(run_dir, missing_ok=True)
        status = read_status(run_dir)
        scores = [r.get(configs.spec.metric) for r in rows if r.get(configs.spec.metric) is not None]
        pick = max if configs.spec.mode == "max" else min
        state = status.get("status", "not started")
        if state == INTERRUPTED and str(status.get("reason", "")).startswith(STOPPED_BY_SEARCH):
            state = "stopped early"
        trials.append(Trial(run_dir.name, values, len(rows), state, scores[-1] if scores else None,
                            pick(scores) if scores else None, sum(r.get("epoch_seconds", 0.0) for r in rows)))
    return trials


def choose(trials: list[Trial], mode: str) -> Trial | None:
    complete = [t for t in trials if t.complete and t.metric is not None and math.isfinite(t.metric)]
    if not complete:
        return None
    return (max if mode == "max" else min)(complete, key=lambda t: t.metric)


def collect(search_dir: str | Path, *, evaluate_test: bool = True, log: Callable[[str], None] = print
            ) -> SearchResult:
    """Tables, plot, best config and the chosen config's test accuracy, from the trials."""
    search_dir = Path(search_dir)
    record = read_json_or_empty(search_dir / "search.json")
    if not record:
        raise RunError(f"{search_dir}: no search.json; is this a lenet search folder?")
    spec = parse_search_spec(record["spec"], str(search_dir / "search.json"))
    configs = TrialConfigs(spec, record.get("overrides"))
    trials = load_trials(search_dir, configs)
    best = choose(trials, spec.mode)
    result = SearchResult(search_dir, spec, trials, best)
    previous = read_json_or_empty(search_dir / "summary.json")
    if best is not None:
        best_dir = search_dir / "trials" / best.name
        result.files.append(write_best_config(best_dir, search_dir / "best-config.yaml"))
        result.best_changes = changes_from_base(best_dir, configs)
        if previous.get("best") == best.name and previous.get("test_accuracy") is not None:
            result.test_accuracy = previous["test_accuracy"]  # looked at once already
        elif evaluate_test:
            result.test_accuracy = evaluation.evaluate(best_dir, keep_images=False).accuracy
    result.files += write_tables(result, configs)
    result.files.append(plot_search(result, configs, search_dir / "search.png"))
    if best is not None:
        log(f"best: {best.name} ({', '.join(f'{k}={readable(v)}' for k, v in best.values.items())}), "
            f"{spec.metric} {best.metric:.4f}"
            + (f"; its test accuracy, looked at once after choosing: {result.test_accuracy:.4f}"
               if result.test_accuracy is not None else ""))
    else:
        log("no trial ran all its epochs, so none is chosen; see summary.md")
    return result


def write_best_config(run_dir: Path, path: Path) -> Path:
    """The chosen trial's config as a file `lenet train --config` takes: the trial's own
    bookkeeping (name, folder, no test evaluation) removed."""
    cfg = load_run_config(run_dir)
    tree = cfg.to_dict()
    for key in ("name", "out"):
        tree.pop(key, None)
    tree["train"]["evaluate_test"] = True
    tree["train"]["progress"] = "auto"
    header = (f"# chosen by `lenet search` ({run_dir.parent.parent.name}): trial {run_dir.name}\n"
              f"#   lenet train --config {path.name}\n")
    atomic_write_text(path, header + yaml.safe_dump(tree, sort_keys=False))
    return path


def changes_from_base(run_dir: Path, configs: TrialConfigs) -> list[dict[str, Any]]:
    """The chosen trial's config against the base every trial started from (base, common,
    --set): each searched field, then any other field that differs (a searched model.name
    brings its variant's fields along)."""
    chosen = flatten(load_run_config(run_dir).to_dict())
    base = flatten(configs.base.to_dict())
    others = [k for k in chosen if k not in configs.space and k not in BOOKKEEPING and chosen[k] != base.get(k)]
    return [{"field": k, "base": base.get(k), "chosen": chosen.get(k), "searched": k in configs.space}
            for k in [*configs.space, *others]]


def readable(value: Any) -> str:
    """A value for reading: floats to 4 significant digits, inside lists too (the files
    that are read back, summary.json, trials.csv and best-config.yaml, keep them whole)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(readable(v) for v in value) + "]"
    return value if isinstance(value, str) else json.dumps(value)


def _csv_cell(value: Any) -> str:
    # repr: the shortest text that reads back as the same float.
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def write_tables(result: SearchResult, configs: TrialConfigs) -> list[Path]:
    spec, trials = result.spec, result.trials
    keys = list(configs.space)
    columns = ["trial", *keys, "epochs", "status", spec.metric, f"best_{spec.metric}", "seconds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for t in trials:
        writer.writerow([t.name, *(_csv_cell(t.values[k]) for k in keys), t.epochs, t.status,
                         "" if t.metric is None else f"{t.metric:.6f}",
                         "" if t.best_metric is None else f"{t.best_metric:.6f}", f"{t.seconds:.1f}"])
    csv_path = result.search_dir / "trials.csv"
    atomic_write_text(csv_path, buffer.getvalue())

    best = result.best
    order = sorted(trials, key=lambda t: (t.metric is None, -(t.metric or 0) if spec.mode == "max"
                                          else (t.metric or 0)))
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    lines = [f"# Search {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [f"- base: {spec.base if isinstance(spec.base, str) else json.dumps(spec.base)}; "
              f"{configs.base.train.epochs} epochs per trial; validation split {configs.base.data.val_split:g}",
              "- searched: " + "; ".join(f"`{k}` {d.describe()}" for k, d in configs.space.items()),
              f"- {spec.algorithm} search, {len(trials)} of {spec.trials} trials run ("
              + ", ".join(f"{n} {s}" for s, n in counts.items()) + "), "
              + (f"ASHA grace {spec.asha.grace_epochs} epoch(s), reduction factor {spec.asha.reduction_factor}"
                 if spec.asha else "no early stopping"),
              f"- chosen on `{spec.metric}` ({'higher' if spec.mode == 'max' else 'lower'} is better) at the last "
              "epoch, among the trials that ran all their epochs; the test set was not evaluated during the search",
              ""]
    if best is not None:
        lines += ["## Chosen", "", f"**{best.name}**, {spec.metric} **{best.metric:.4f}**; its changes from the "
                  "base (values to 4 significant digits, in full in summary.json and best-config.yaml):", "",
                  "| field | base | chosen |", "|---|---|---|"]
        lines += [f"| `{c['field']}`{'' if c['searched'] else ' (follows)'} | {readable(c['base'])} | "
                  f"{readable(c['chosen'])} |" for c in result.best_changes]
        lines += [""]
        if result.test_accuracy is not None:
            lines += [f"Test accuracy of the chosen config, evaluated once after the choice: "
                      f"**{result.test_accuracy:.4f}**", ""]
        lines += ["Train it again (this config, its validation split included): "
                  "`lenet train --config best-config.yaml`", ""]
    lines += ["## Trials", "", "![the metric against each searched field](search.png)", "",
              "| trial | " + " | ".join(f"`{k}`" for k in keys) + f" | epochs | status | {spec.metric} |",
              "|---|" + "---|" * len(keys) + "---:|---|---:|"]
    for t in order:
        mark = " **(chosen)**" if best is not None and t.name == best.name else ""
        metric = "" if t.metric is None else f"{t.metric:.4f}"
        lines.append(f"| {t.name}{mark} | " + " | ".join(readable(t.values[k]) for k in keys)
                     + f" | {t.epochs} | {t.status} | {metric} |")
    md_path = result.search_dir / "summary.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    json_path = result.search_dir / "summary.json"
    write_json(json_path, {
        "name": spec.name, "metric": spec.metric, "mode": spec.mode,
        "best": best.name if best else None, "best_values": best.values if best else None,
        "best_changes": result.best_changes,
        "best_metric": best.metric if best else None, "test_accuracy": result.test_accuracy,
        "trials": [t.__dict__ for t in trials]})
    return [csv_path, md_path, json_path]


def plot_search(result: SearchResult, configs: TrialConfigs, path: Path) -> Path:
    """One panel per searched field: each trial's metric against its value; trials ASHA
    stopped are hollow, the chosen one a star."""
    from matplotlib.figure import Figure  # matplotlib loads only when a figure is drawn

    from ...use.figures import save_figure

    keys = list(configs.space)
    spec = result.spec
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        dist = configs.space[key]
        labels = [json.dumps(c) for c in dist.args] if dist.kind == "choice" else None
        for i, t in enumerate(result.trials):
            value = t.metric
            if value is None:
                continue
            # Choices: a small fixed offset per trial, so trials with one value do not hide each other.
            x = labels.index(json.dumps(t.values[key])) + 0.06 * (i % 5 - 2) if labels else t.values[key]
            chosen = result.best is not None and t.name == result.best.name
            ax.scatter([x], [value], s=140 if chosen else 36, marker="*" if chosen else "o",
                       facecolors=("C3" if chosen else "C0") if t.complete else "none",
                       edgecolors="C3" if chosen else "C0", zorder=3 if chosen else 2)
        if labels:
            ax.set_xticks(range(len(labels)), [readable(c) for c in dist.args], rotation=20)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif dist.log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(spec.metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"search {spec.name}: {spec.metric} per trial (filled: all epochs; hollow: stopped early; "
                 "star: chosen)", fontsize=10)
    return save_figure(fig, path)
