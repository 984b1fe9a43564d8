"""Running a search with Ray Tune: each trial is a lenet run in the search's folder.

    OUT/<name>/search.json         the spec, command-line overrides and base config
    OUT/<name>/tune/               Tune's experiment state (what --resume restores)
    OUT/<name>/trials/trial-<id>/  one lenet run directory per trial (train.evaluate_test
                                   off: the test set is not looked at while choosing)

A trial reports its validation metrics to Tune after every epoch; ASHA stops the
weak ones early (their run ends as finished, status.json saying why). A trial whose
worker or node dies is restarted by Tune (``max_failures``) and resumes its own run
directory from the last epoch checkpoint; a trial that diverges or fails is recorded
as such in its run directory and simply loses. When the driver dies or is
interrupted, ``--resume`` restores Tune's state and finishes only the trials left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import ConfigError, Interrupted, LenetError, UsageError
from ...store.files import read_json_or_empty, write_json
from ...store.recorder import FINISHED, INTERRUPTED, RUNNING, Recorder, read_status
from ...store.runs import read_metrics
from ..cluster import TaskOptions, check_nodes, connect, import_ray
from ..sweep.execute import SKIP, action_for, start_or_resume
from .results import collect
from .spec import STOPPED_BY_SEARCH, SearchSpec, TrialConfigs, check_trials, spec_to_dict


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled values (sent once to the cluster)."""
    configs: TrialConfigs
    trials_dir: str
    threads: int


def trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: train (or, after a dead worker, resume) the run ``params`` give.

    Tune stops a trial (ASHA, the time budget, or at the last epoch) by ending its
    actor right after a report, so every report comes after the run's files are safe:
    epochs before the last are reported once their checkpoint is written, and the last
    one once the run has finished and saved its model."""
    from ray import tune

    torch.set_num_threads(setup.threads)
    run_dir = Path(setup.trials_dir) / f"trial-{tune.get_context().get_trial_id()}"
    cfg = setup.configs.build(setup.configs.sampled(params), name=run_dir.name, out=setup.trials_dir)

    def send(row: dict[str, Any]) -> None:
        tune.report({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def each_epoch(row: dict[str, Any]) -> None:
        if row["epoch"] >= cfg.train.epochs:
            return  # reported below, once the model is saved
        try:
            send(row)
        except SystemExit:  # Tune stopped this trial: report() raises SystemExit to end it
            raise Interrupted(f"{STOPPED_BY_SEARCH} after epoch {row['epoch']}") from None

    # A trial Tune restarts after its worker died continues its run from the checkpoint,
    # as a sweep's run does; a failed one (Tune retries crashes) starts again.
    action = action_for(run_dir, retry_failed=True)
    try:
        if action != SKIP:
            start_or_resume(cfg, run_dir, action, on_epoch=each_epoch)
        rows = read_metrics(run_dir, missing_ok=True)
        if rows:
            send(rows[-1])
    except Interrupted as exc:
        if not str(exc).startswith(STOPPED_BY_SEARCH):
            raise
    except LenetError:
        return  # diverged, or its data is missing: recorded in its run directory; it loses


def mark_unfinished(trials_dir: Path) -> None:
    """Trials the search ended mid-epoch (its time budget) are interrupted, not running."""
    for run_dir in sorted(p for p in trials_dir.iterdir() if p.is_dir()):
        if read_status(run_dir).get("status") == RUNNING:
            done = len(read_metrics(run_dir, missing_ok=True))
            Recorder(run_dir).status(INTERRUPTED, done + 1,
                                     reason=f"{STOPPED_BY_SEARCH} during epoch {done + 1}; the last epoch's "
                                            "checkpoint stands")


def _searcher(spec: SearchSpec):
    if spec.algorithm == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(metric=spec.metric, mode=spec.mode, seed=spec.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.seed)


def _scheduler(spec: SearchSpec, epochs: int):
    if not spec.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    # time_attr "epoch", not Tune's training_iteration: a trial resumed after a dead
    # worker reports from its checkpoint's epoch on, while Tune's count starts again.
    return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(spec.asha.grace_epochs, epochs),
                         reduction_factor=spec.asha.reduction_factor)


def search_dir_for(spec: SearchSpec, out: str | Path) -> Path:
    return Path(out).resolve() / spec.name


def run_search(spec: SearchSpec, out: str | Path = "runs", *, overrides: list[str] | None = None,
               address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
               max_failures: int = 3, resume: bool = False, max_runs: int | None = None,
               log: Callable[[str], None] = print):
    """Search ``spec``'s space on Ray Tune; returns the SearchResult (results.py), whose
    files (summary.md, trials.csv, search.png, best-config.yaml) are in OUT/<name>/.
    More than ``max_runs`` trials are refused before anything starts."""
    check_trials(spec, max_runs)
    configs = TrialConfigs(spec, overrides)  # every value the space can give, validated first
    options = TaskOptions(cpus_per_run, gpus_per_run, max_failures)  # the same checks as a sweep's
    import_ray()
    from ray import tune

    search_dir = search_dir_for(spec, out)
    record = {"spec": spec_to_dict(spec), "overrides": list(overrides or []), "base": configs.base.to_dict()}
    saved = read_json_or_empty(search_dir / "search.json")
    # Tune's saved state is what a search can resume from; a search.json without it is a
    # start that never got going, and starts again.
    started = (search_dir / "tune").is_dir() and tune.Tuner.can_restore(str(search_dir / "tune"))
    if resume:
        if not saved or not started:
            raise UsageError(f"there is no search to resume in {search_dir}; run the same command without "
                             "--resume to start it")
        if saved.get("spec") != record["spec"] or saved.get("overrides") != record["overrides"]:
            raise ConfigError(f"{search_dir} holds a search with another spec or --set; resume it with the "
                              "command that started it, or give this one a new --name")
    elif saved and started:
        raise UsageError(f"{search_dir} already holds a search; add --resume to finish it, or give a new --name "
                         "or --out")
    connection = connect(address)
    try:
        log(f"search {spec.name}: {spec.trials} trials, {spec.algorithm}"
            + (f", ASHA (grace {spec.asha.grace_epochs} epoch(s), keeps 1/{spec.asha.reduction_factor})"
               if spec.asha else ", no early stopping")
            + f", choosing on {spec.metric} ({spec.mode}); on {connection.describe()}")
        options.check_fits(connection)
        base = configs.build({}, name="check", out=str(search_dir))
        check_nodes(search_dir.parent, connection, data=[base.data.path] if base.data.path else [])
        search_dir.mkdir(parents=True, exist_ok=True)
        write_json(search_dir / "search.json", record)
        _fit(spec, configs, search_dir, options, resume, log)
    except KeyboardInterrupt:
        raise Interrupted(f"search interrupted; run the same command with --resume to finish it "
                          f"({search_dir})") from None
    finally:
        connection.shutdown()
    return collect(search_dir, log=log)


def _fit(spec: SearchSpec, configs: TrialConfigs, search_dir: Path, options: TaskOptions, resume: bool,
         log: Callable[[str], None]) -> None:
    from ray import tune

    from .lines import TrialLines  # a tune.Callback: it imports Ray

    trials_dir = search_dir / "trials"
    trials_dir.mkdir(exist_ok=True)
    setup = TrialSetup(configs, str(trials_dir), options.threads)
    trainable = tune.with_resources(tune.with_parameters(trial, setup=setup),
                                    {"cpu": options.cpus_per_run, "gpu": options.gpus_per_run})
    # Tune's own console output (its table, banners) is off: lenet prints one line per trial.
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if resume:  # Tune's saved state holds the space, the searcher, ASHA and the callbacks
        tuner = tune.Tuner.restore(str(search_dir / "tune"), trainable, resume_unfinished=True,
                                   resume_errored=True)
        log(f"resuming: {_count_finished(trials_dir)} trial(s) had finished")
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: dist.tune() for key, dist in configs.space.items()},
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.trials, search_alg=_searcher(spec),
                scheduler=_scheduler(spec, configs.base.train.epochs), time_budget_s=spec.time_budget,
                # A fresh actor per trial: reusing one waits for the stopped trial's thread
                # and, when that takes longer than Tune allows, errors the next trial.
                reuse_actors=False, trial_dirname_creator=lambda t: f"trial-{t.trial_id}"),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(search_dir), verbose=0,
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                callbacks=[TrialLines(configs, spec.trials, log)]))
    with _ctrl_c_stops_tune() as interrupted:
        tuner.fit()
    if interrupted():
        raise KeyboardInterrupt  # Tune saved its state and returned as if done: it was not
    mark_unfinished(trials_dir)


@contextlib.contextmanager
def _ctrl_c_stops_tune():
    """Ctrl-C during ``tuner.fit()``: Tune's graceful stop (it saves its state one last
    time), reached through SIGUSR1, its other stop signal; Tune's own SIGINT handler is
    off because after it ``fit`` returns as if the search had finished, and the search
    would be summarised and closed instead of left to ``--resume``. A second Ctrl-C aborts."""
    said = threading.Event()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield said.is_set
        return

    def on_ctrl_c(signum, frame) -> None:
        if said.is_set():
            raise KeyboardInterrupt
        said.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    def tunes_own_words(record: logging.LogRecord) -> bool:
        # "Stop signal received ..." and "Resume experiment with: Tuner.restore(...)":
        # lenet says instead what to type (the same command plus --resume).
        return not record.getMessage().startswith(("Stop signal received", "Experiment has been interrupted"))

    tune_logger = logging.getLogger("ray.tune.tune")
    previous_handler, previous_env = signal.signal(signal.SIGINT, on_ctrl_c), os.environ.get(
        "TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    tune_logger.addFilter(tunes_own_words)
    try:
        yield said.is_set
    finally:
        tune_logger.removeFilter(tunes_own_words)
        signal.signal(signal.SIGINT, previous_handler)
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


def _count_finished(trials_dir: Path) -> int:
    return sum(1 for d in trials_dir.iterdir() if d.is_dir() and read_status(d).get("status") == FINISHED)
