"""A sweep's results: per-variant statistics over seeds, as tables and figures.

    summarize(sweep_dir)      recomputed from the run directories listed in sweep.json,
                              so a summary is never out of date with the runs it describes
    write_summary(sweep_dir)  summary.md, summary.csv, summary.json, accuracy_bars.png, curves.png
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import RunError
from ...store.files import atomic_write_text, write_json
from ...store.recorder import FAILED_STATUSES, FINISHED, failure_reason, read_status
from ...store.runs import read_metrics
from .plan import format_changes

CURVES_PER_GROUP = 7  # + the baseline = 8 lines, within tab10's distinct colours
# Final-epoch metrics beside the test accuracy, where the runs have them (a validation
# split, test-time augmentation, a moving average of the weights): name in the table.
EXTRA_METRICS = {"val_accuracy": "val accuracy", "val_accuracy_tta": "val accuracy, TTA",
                 "test_accuracy_tta": "test accuracy, TTA", "test_accuracy_raw": "test accuracy, raw weights"}


def short(reason: str | None, limit: int = 90) -> str:
    """The first sentence of a reason, cut to ``limit`` characters."""
    text = (reason or "").split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class VariantSummary:
    name: str
    changes: str
    parameters: int
    mult_adds: int
    accuracies: list[float]  # final test accuracy of each finished seed
    best_epochs: list[int]
    train_seconds: list[float]
    failed: list[str]  # reasons
    pending: int
    note: str | None = None
    extras: dict[str, list[float]] = field(default_factory=dict)  # EXTRA_METRICS key -> per finished seed

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); NaN for fewer than two."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / (self.n - 1))

    @property
    def best_epoch(self) -> int | None:
        return round(sum(self.best_epochs) / len(self.best_epochs)) if self.best_epochs else None

    @property
    def mean_seconds(self) -> float:
        return sum(self.train_seconds) / len(self.train_seconds) if self.train_seconds else math.nan

    @property
    def status(self) -> str:
        parts = [f"{self.n} finished"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({short(self.failed[0], 70)})")
        if self.pending:
            parts.append(f"{self.pending} pending")
        return ", ".join(parts)

    def accuracy_text(self) -> str:
        return mean_std_text(self.accuracies)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for fewer than two)."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def mean_std_text(values: list[float]) -> str:
    if not values:
        return "—"
    m, sd = mean_std(values)
    return f"{m:.4f}" if len(values) < 2 else f"{m:.4f} ± {sd:.4f}"


def best_epoch(rows: list[dict[str, Any]]) -> int | None:
    """The epoch of the highest validation accuracy, or test accuracy without a split."""
    key = "val_accuracy" if any(r.get("val_accuracy") is not None for r in rows) else "test_accuracy"
    scored = [(r[key], r["epoch"]) for r in rows if r.get(key) is not None]
    if not scored:
        return None
    top = max(score for score, _ in scored)
    return min(epoch for score, epoch in scored if score == top)  # the first epoch to reach it


def load_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise RunError(f"{sweep_dir}: no sweep.json; is this a sweep directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def summarize(sweep_dir: str | Path) -> tuple[list[VariantSummary], dict[str, Any]]:
    """Per-variant statistics recomputed from the run directories listed in sweep.json."""
    sweep_dir = Path(sweep_dir)
    info = load_sweep(sweep_dir)
    summaries = []
    for v in info["variants"]:
        s = VariantSummary(v["name"], format_changes(v["changes"]), v["parameters"], v["mult_adds"],
                           [], [], [], [], 0, v.get("note"))
        for run in (r for r in info["runs"] if r["variant"] == v["name"]):
            run_dir = sweep_dir / run["dir"]
            status = read_status(run_dir)
            rows = read_metrics(run_dir, missing_ok=True)
            if status.get("status") == FINISHED and rows:
                s.accuracies.append(float(rows[-1]["test_accuracy"]))
                epoch = best_epoch(rows)
                if epoch is not None:
                    s.best_epochs.append(epoch)
                s.train_seconds.append(sum(float(r.get("epoch_seconds") or 0) for r in rows))
                for key in EXTRA_METRICS:
                    if rows[-1].get(key) is not None:
                        s.extras.setdefault(key, []).append(float(rows[-1][key]))
            elif status.get("status") in FAILED_STATUSES:
                s.failed.append(failure_reason(status))
            else:
                s.pending += 1
        summaries.append(s)
    return summaries, info


SUMMARY_COLUMNS = ["variant", "differs from base", "parameters", "mult-adds", "test accuracy",
                   "n", "best epoch", "train seconds", "status"]


def summary_rows(summaries: list[VariantSummary]) -> list[list[str]]:
    rows = []
    for s in summaries:
        rows.append([s.name, s.changes, f"{s.parameters:,}", f"{s.mult_adds:,}", s.accuracy_text(), str(s.n),
                     "—" if s.best_epoch is None else str(s.best_epoch),
                     "—" if math.isnan(s.mean_seconds) else f"{s.mean_seconds:.1f}", s.status])
    return rows


def summary_markdown(summaries: list[VariantSummary], info: dict[str, Any]) -> str:
    seeds = info.get("seeds", [])
    lines = [f"# Sweep `{info['name']}`", ""]
    if info.get("spec", {}).get("description"):
        lines += [info["spec"]["description"].strip(), ""]
    base = info.get("spec", {}).get("base")
    overrides = info.get("command_line_overrides") or []
    if overrides:
        lines += ["Set on the command line for every run (a variant's own fields win): "
                  + ", ".join(f"`{o}`" for o in overrides) + ".", ""]
    baseline = f"`{info['baseline']}`" if info.get("baseline") else "none (the base itself is not run)"
    lines += [f"Base: `{json.dumps(base) if isinstance(base, dict) else base}`; seeds: {seeds}; "
              f"baseline variant: {baseline}. Test accuracy is the final epoch's, "
              "mean ± sample std over the finished seeds (n); best epoch is the epoch of the highest "
              "validation accuracy (test accuracy without a validation split), mean over seeds.", ""]
    lines.append("| " + " | ".join(SUMMARY_COLUMNS) + " |")
    lines.append("|" + "|".join(["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---"]) + "|")
    for row in summary_rows(summaries):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    keys = [k for k in EXTRA_METRICS if any(k in s.extras for s in summaries)]
    if keys:
        lines += ["", "Other final-epoch accuracies, mean ± sample std over the finished seeds:", "",
                  "| variant | " + " | ".join(EXTRA_METRICS[k] for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for s in summaries:
            lines.append(f"| {s.name} | " + " | ".join(mean_std_text(s.extras.get(k, [])) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(summaries: list[VariantSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "differs_from_base", "parameters", "mult_adds", "test_accuracy_mean",
                     "test_accuracy_std", "n", "best_epoch", "train_seconds_mean", "finished", "failed",
                     "pending", "failure_reason"])
    def number(x: Any) -> Any:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else x

    for s in summaries:
        writer.writerow([s.name, s.changes, s.parameters, s.mult_adds,
                         number(round(s.mean, 6) if s.n else None), number(round(s.std, 6) if s.n > 1 else None),
                         s.n, number(s.best_epoch), number(round(s.mean_seconds, 2) if s.train_seconds else None),
                         s.n, len(s.failed), s.pending, s.failed[0] if s.failed else ""])
    return buffer.getvalue()


def mean_curve(runs_rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-epoch mean of train loss and accuracies over seeds (epochs all seeds reached)."""
    epochs = min(len(rows) for rows in runs_rows)
    out = []
    for i in range(epochs):
        row: dict[str, Any] = {"epoch": i + 1}
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
            values = [rows[i].get(key) for rows in runs_rows]
            if all(v is not None for v in values):
                row[key] = sum(values) / len(values)
        out.append(row)
    return out


def write_summary(sweep_dir: str | Path, plots: bool = True) -> list[VariantSummary]:
    """summary.md, summary.csv and summary.json; with ``plots`` also the two figures."""
    sweep_dir = Path(sweep_dir)
    summaries, info = summarize(sweep_dir)
    atomic_write_text(sweep_dir / "summary.md", summary_markdown(summaries, info))
    atomic_write_text(sweep_dir / "summary.csv", summary_csv(summaries))
    write_json(sweep_dir / "summary.json", {
        "name": info["name"], "baseline": info.get("baseline"), "seeds": info.get("seeds"),
        "variants": [{"name": s.name, "differs_from_base": s.changes, "parameters": s.parameters,
                      "mult_adds": s.mult_adds, "test_accuracies": s.accuracies,
                      "test_accuracy_mean": s.mean if s.n else None, "test_accuracy_std": s.std if s.n > 1 else None,
                      "best_epoch": s.best_epoch, "train_seconds_mean": s.mean_seconds if s.train_seconds else None,
                      "failed": s.failed, "pending": s.pending, "note": s.note,
                      "other_final_accuracies": s.extras} for s in summaries],
    })
    if plots:
        write_plots(sweep_dir, summaries, info)
    return summaries


def write_plots(sweep_dir: Path, summaries: list[VariantSummary], info: dict[str, Any]) -> list[Path]:
    from ...use.figures import plot_accuracy_bars, plot_curves  # matplotlib: loaded only to draw

    done = [s for s in summaries if s.n]
    written = []
    if not done:
        return written
    baseline = next((s.mean for s in done if s.name == info.get("baseline")), None)
    seeds = info.get("seeds", [])
    written.append(plot_accuracy_bars(
        [s.name for s in done], [s.mean for s in done], [s.std for s in done], sweep_dir / "accuracy_bars.png",
        title=f"{info['name']}: final test accuracy, mean ± std over {len(seeds)} seed(s)", baseline=baseline))
    curves = []
    for s in done:
        finished = [sweep_dir / r["dir"] for r in info["runs"] if r["variant"] == s.name
                    and read_status(sweep_dir / r["dir"]).get("status") == FINISHED]
        rows = [r for r in (read_metrics(d, missing_ok=True) for d in finished) if r]
        if rows:
            curves.append((s.name, mean_curve(rows)))
    if curves:
        written.append(plot_curves(curves, sweep_dir / "curves.png",
                                   title=f"{info['name']}: mean over seeds per variant"))
    # Past 10 lines the colours repeat (tab10), so big sweeps also get groups of
    # CURVES_PER_GROUP variants, each with the baseline drawn for reference.
    for stale in sweep_dir.glob("curves-*.png"):
        stale.unlink()
    if len(curves) > 10:
        reference = [c for c in curves if c[0] == info.get("baseline")]
        others = [c for c in curves if c[0] != info.get("baseline")]
        for number, start in enumerate(range(0, len(others), CURVES_PER_GROUP), start=1):
            group = reference + others[start:start + CURVES_PER_GROUP]
            last = start + len(group) - len(reference)
            title = f"{info['name']}: variants {start + 1}-{last} of {len(others)}"
            written.append(plot_curves(group, sweep_dir / f"curves-{number}.png",
                                       title=title + (" and the baseline" if reference else "")))
    return written
