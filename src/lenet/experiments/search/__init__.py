"""Hyperparameter search on Ray Tune: a space over any dotted config field, chosen on
the validation split, the test set looked at once at the end.

    spec.py     the YAML spec: base, common, search (choice/uniform/loguniform/randint),
                metric, trials, algorithm (tpe | random), asha, time_budget; validated
    run.py      run_search(): one Tune trial per config, each a lenet run directory in
                OUT/<name>/trials/; ASHA stops weak trials; --resume restores Tune's state
    lines.py    one printed line per trial as it ends
    results.py  trials.csv, summary.md, search.png, best-config.yaml, the chosen test accuracy

Ray is optional (pip install -e '.[ray]'): spec.py and results.py work without it.
"""

from .results import SearchResult, Trial, collect
from .run import run_search, search_dir_for
from .spec import Distribution, SearchSpec, TrialConfigs, load_search_spec, parse_duration, parse_search_spec

__all__ = ["SearchResult", "Trial", "collect", "run_search", "search_dir_for", "Distribution", "SearchSpec",
           "TrialConfigs", "load_search_spec", "parse_duration", "parse_search_spec"]
