"""Commands that compare recipes: sweep, search, report. Each only parses its arguments
and calls the library (experiments/)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import EXIT_FAILURE, EXIT_OK, UsageError
from . import run_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train variants x seeds of a config and summarise them",
                       description="Run a sweep spec (YAML: name, base, seeds, common, grid or variants) "
                                   "into OUT/<name>/. Finished runs are skipped and interrupted ones resumed, "
                                   "so re-running the same command finishes a sweep. Exit code 1 if any run "
                                   "failed (after all others ran), 2 for a bad spec.")
    p.add_argument("spec", nargs="?", type=Path, metavar="SPEC.yaml")
    p.add_argument("--exercises", action="store_true",
                   help="the built-in spec answering the chapter's exercises 1-3 (see --show-spec)")
    p.add_argument("--seeds", type=int, help="seeds per variant, overriding the spec's (spec default: 3)")
    add_spec_run_options(p, "sweep", "run", set_note=" (a variant's own fields win)", devices="cpu | cuda | ...")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default: 1)")
    p.add_argument("--retry-failed", action="store_true", help="train failed runs again (default: keep them failed)")
    p.add_argument("--together", dest="together", action="store_true", default=None,
                   help="train runs that share layer shapes in one vmapped process (default: on CUDA only)")
    p.add_argument("--separately", dest="together", action="store_false",
                   help="train every run on its own, even on CUDA")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted sweep: only its unfinished runs train (refused if there is none)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what would happen, train nothing")
    p.add_argument("--show-spec", action="store_true", help="print the spec as YAML and exit")
    add_ray_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("search", help="hyperparameter search on Ray Tune, chosen on the validation split",
                       description="Search a spec's space (YAML: name, base, common, search, metric) with Ray Tune "
                                   "into OUT/<name>/: one lenet run per trial in trials/, ASHA stopping weak trials, "
                                   "then trials.csv, summary.md, search.png and best-config.yaml. The test set is "
                                   "evaluated once, for the chosen config, at the end.")
    p.add_argument("spec", type=Path, metavar="SPEC.yaml")
    p.add_argument("--trials", type=int, help="configs to try (default: the spec's, else 16)")
    p.add_argument("--algorithm", choices=["tpe", "random"], help="tpe (Optuna) or random (default: the spec's, "
                                                                  "else tpe)")
    p.add_argument("--time-budget", metavar="DURATION", help="stop after this long: 3600, 90s, 30m, 2h "
                                                              "(default: the spec's, else none)")
    p.add_argument("--metric", choices=["val_accuracy", "val_loss"], help="what to optimise (default: the spec's, "
                                                                          "else val_accuracy)")
    p.add_argument("--no-asha", action="store_true", help="no early stopping: every trial runs all its epochs")
    p.add_argument("--seed", type=int, help="the searcher's and the trials' seed (default: the spec's, else 0)")
    add_spec_run_options(p, "search", "trial", data_note=", on every node")
    p.add_argument("--resume", action="store_true", help="finish an interrupted search (the same command, plus this)")
    add_ray_options(p, search=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("report", help="one self-contained HTML page of a sweep, a search or a run",
                       description="Write PATH/report.html for a sweep, a search or a run: tables and "
                                   "figures, images embedded, no links out.")
    p.add_argument("path", metavar="SWEEP_OR_RUN", type=Path)
    p.add_argument("--out", type=Path, help="HTML path (default: PATH/report.html)")
    p.set_defaults(func=cmd_report)


def add_spec_run_options(p: argparse.ArgumentParser, folder: str, unit: str, *, set_note: str = "",
                         data_note: str = "", devices: str = "cpu | cuda") -> None:
    """The options `sweep` and `search` share: what every run (or trial) of a spec gets,
    and where its folder goes."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"config field for every {unit}, e.g. --set train.epochs=5{set_note}")
    p.add_argument("--data-dir", help=f"folder holding the datasets{data_note} (default: search)")
    p.add_argument("--device", help=f"auto | {devices} for every {unit} (default: the spec's, auto)")
    p.add_argument("--name", help=f"{folder} directory name (default: the spec's name)")
    p.add_argument("--out", default="runs", help="parent folder (default: runs)")
    p.add_argument("--max-runs", type=int, metavar="N",  # None: the library's MAX_RUNS (sweep/plan.py)
                   help=f"refuse a spec of more {unit}s than this, counted before anything is built "
                        "(default: 10000)")


def add_ray_options(p: argparse.ArgumentParser, search: bool = False) -> None:
    """Where runs execute: this machine's processes, or Ray (pip install -e '.[ray]')."""
    ray = p.add_argument_group("on Ray (pip install -e '.[ray]'; see the README, \"On a cluster\")")
    if not search:
        ray.add_argument("--backend", choices=["local", "ray"], default="local",
                         help="local: this machine's processes (--jobs); ray: one Ray task per run (default: local)")
    ray.add_argument("--address", help="the Ray cluster, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else a local "
                                       "Ray with this machine's cores)")
    ray.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run asks for (default: 1)")
    ray.add_argument("--gpus-per-run", type=float, default=0.0,
                     help="GPUs each run asks for; 0.25 lets four runs share one GPU (default: 0)")
    ray.add_argument("--max-failures", type=int, default=3,
                     help="retries of a run whose worker or node died, from its last checkpoint (default: 3)")


def spec_overrides(args: argparse.Namespace) -> list[str]:
    """--set, --data-dir and --device as the dotted overrides a sweep or search applies to every run."""
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"device={args.device}")
    return overrides


def _absolute(args: argparse.Namespace) -> None:
    """Ray's workers do not share this shell's working directory: paths they get are absolute."""
    from ..experiments.cluster import refuse_uri

    refuse_uri(args.out)
    args.out = str(Path(args.out).resolve())
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).resolve())


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments import sweep
    from ..store.recorder import FINISHED

    if (args.spec is None) == (not args.exercises):
        raise UsageError("give a spec file or --exercises (one of them)")
    spec = sweep.exercises_spec() if args.exercises else sweep.load_spec(args.spec)
    if args.name:
        spec = sweep.parse_spec({**spec.model_dump(exclude_none=True), "name": args.name}, "(--name)")
    if args.show_spec:
        print(sweep.spec_to_yaml(spec), end="")
        return EXIT_OK
    ray = args.backend == "ray"
    if not ray:
        given = [flag for flag, value, default in (("--address", args.address, None), ("--cpus-per-run",
                 args.cpus_per_run, 1.0), ("--gpus-per-run", args.gpus_per_run, 0.0),
                 ("--max-failures", args.max_failures, 3)) if value != default]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --backend ray")
    else:
        if args.jobs != 1:
            raise UsageError("--jobs is for the local backend; on Ray, each run asks for --cpus-per-run and Ray "
                             "runs as many at once as the cluster has room for")
        _absolute(args)
    overrides = spec_overrides(args)
    plan = sweep.plan_sweep(spec, args.out, overrides, args.seeds, max_runs=args.max_runs)
    if args.dry_run:
        print(sweep.format_dry_run(plan, args.retry_failed))
        return EXIT_OK
    if args.resume and not (plan.sweep_dir / "sweep.json").is_file():
        raise UsageError(f"there is no sweep to resume in {plan.sweep_dir}; run the same command without --resume "
                         "to start it")
    tic = time.perf_counter()
    say = lambda line: print(line, flush=True)  # noqa: E731
    if ray:
        outcomes = sweep.run_on_ray(plan, address=args.address, cpus_per_run=args.cpus_per_run,
                              gpus_per_run=args.gpus_per_run, max_failures=args.max_failures,
                              retry_failed=args.retry_failed, together=args.together, log=say)
    else:
        outcomes = sweep.run_sweep(plan, jobs=args.jobs, retry_failed=args.retry_failed, together=args.together,
                                   log=say)
    failed = [o for o in outcomes if o.failed]
    busy = [o for o in outcomes if o.action == "left"]
    finished = sum(1 for o in outcomes if o.status == FINISHED)
    print(f"sweep {plan.name}: {finished} finished, {len(failed)} failed"
          + (f", {len(busy)} being trained by another process" if busy else "")
          + f" in {time.perf_counter() - tic:.0f} s; wrote {plan.sweep_dir}/summary.md, summary.csv, "
          "accuracy_bars.png, curves.png")
    if busy:
        print(f"lenet sweep: {len(busy)} run(s) are being trained by another lenet process; run the same "
              "command again once it has finished to complete the summary", file=sys.stderr)
    if failed:
        print(f"lenet sweep: {len(failed)} run(s) failed; reasons in {plan.sweep_dir}/summary.md "
              "(re-run with --retry-failed to train them again)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_FAILURE if busy else EXIT_OK  # not complete yet: the summary lacks those runs


def cmd_search(args: argparse.Namespace) -> int:
    from ..experiments import search

    spec = search.load_search_spec(args.spec)
    changes = {key: value for key, value in (("name", args.name), ("trials", args.trials),
                                             ("algorithm", args.algorithm), ("metric", args.metric),
                                             ("seed", args.seed),
                                             ("time_budget", search.parse_duration(args.time_budget)))
               if value is not None}
    if args.no_asha:
        changes["asha"] = False
    if changes:
        spec = search.parse_search_spec({**search.spec.spec_to_dict(spec), **changes}, "(command line)")
    _absolute(args)
    overrides = spec_overrides(args)
    tic = time.perf_counter()
    result = search.run_search(spec, args.out, overrides=overrides, address=args.address,
                               cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                               max_failures=args.max_failures, resume=args.resume, max_runs=args.max_runs,
                               log=lambda line: print(line, flush=True))
    print(f"search {spec.name}: {len(result.trials)} trials in {time.perf_counter() - tic:.0f} s; wrote "
          f"{result.search_dir}/summary.md, trials.csv, search.png"
          + (", best-config.yaml" if result.best else ""))
    return EXIT_OK if result.best is not None else EXIT_FAILURE


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments import report

    print(f"wrote {report.write_report(run_arg(args.path), args.out)}")
    return EXIT_OK
