"""Sweeps: one base config, a set of variants, N seeds each, trained and summarised.

    spec.py     the YAML spec: name, base, seeds, common, grid or variants (validated)
    plan.py     spec -> SweepPlan: every run's config resolved and validated first
    execute.py  run_sweep(): runs/<sweep>/<variant>-s<seed>/ per run; skips finished runs,
                resumes interrupted ones, records failed ones and goes on
    ray_backend.py  run_on_ray(): the same, each run a Ray task (--backend ray)
    summary.py  summary.md, summary.csv, summary.json, accuracy_bars.png, curves.png

The sweep's result is its directory: every number in summary.md is recomputed from
the run directories, so a summary is never out of date with the runs it describes.
"""

from .execute import (KEEP_FAILED, RESUME, SKIP, START, RunOutcome, action_for, batch_groups, dry_run_lines,
                      execute_run, execute_together, format_dry_run, run_sweep, start_or_resume, write_plan)
from .ray_backend import RayBackend, run_on_ray
from .plan import PlannedRun, SweepPlan, VariantPlan, format_changes, format_value, grid_variants, plan_sweep
from .spec import SweepSpec, VariantSpec, exercises_spec, load_spec, parse_spec, spec_to_yaml
from .summary import (SUMMARY_COLUMNS, VariantSummary, best_epoch, load_sweep, mean_curve, summarize, summary_csv,
                      summary_markdown, summary_rows, write_plots, write_summary)

__all__ = [
    "KEEP_FAILED", "RESUME", "SKIP", "START", "RunOutcome", "action_for", "batch_groups", "dry_run_lines",
    "execute_run", "execute_together", "format_dry_run", "run_sweep", "start_or_resume", "write_plan",
    "RayBackend", "run_on_ray", "PlannedRun", "SweepPlan", "VariantPlan",
    "format_changes", "format_value", "grid_variants", "plan_sweep", "SweepSpec", "VariantSpec", "exercises_spec",
    "load_spec", "parse_spec", "spec_to_yaml", "SUMMARY_COLUMNS", "VariantSummary", "best_epoch", "load_sweep",
    "mean_curve", "summarize", "summary_csv", "summary_markdown", "summary_rows", "write_plots", "write_summary",
]
