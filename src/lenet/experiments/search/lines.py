"""What a search prints while it runs: one line per trial as it ends (Tune's own
progress table is off). Imported only where Ray is installed."""

from __future__ import annotations

import json
from typing import Any, Callable

from ray import tune

from .spec import TrialConfigs


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value).replace(" ", "")


class TrialLines(tune.Callback):
    def __init__(self, configs: TrialConfigs, total: int, log: Callable[[str], None]):
        self.configs, self.total, self.log, self.done = configs, total, log, 0

    def _label(self, trial: Any) -> str:
        values = self.configs.sampled(trial.config)
        return ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in values.items())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        result = trial.last_result or {}
        metric = self.configs.spec.metric
        epochs = self.configs.base.train.epochs
        value = result.get(metric)
        if value is None:
            what = "no result (diverged or failed: see its train.log)"
        else:
            what = f"{metric} {value:.4f}"
            if result.get("epoch", epochs) < epochs:
                what += f", stopped early after epoch {result.get('epoch')}"
        self.log(f"[{self.done}/{self.total}] trial-{trial.trial_id} ({self._label(trial)}): {what}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.log(f"trial-{trial.trial_id}: its worker died; Tune restarts it and it resumes from its last "
                 "checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] trial-{trial.trial_id} ({self._label(trial)}): FAILED after "
                 "--max-failures retries")
