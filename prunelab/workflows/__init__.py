"""Workflows: what runs the layers below in order (the top of the package, under the CLI).

config -> data -> model + method -> trainer -> result -> analysis -> plots -> notebook

* :mod:`.stages` — the four stages of a pruning run (pretrain, learn, prune, fine-tune);
* :mod:`.pipeline` — :func:`run_pipeline`, the stages in order in one resumable run directory;
* :mod:`.iterative` — :func:`iterative_prune`, shrink/retrain rounds (BAR's iterative baselines);
* :mod:`.runs` — ``prunelab info``/``eval``/``compact`` on run directories of any result kind;
* :mod:`.subruns` — :class:`SubRuns`, the "run or reuse, collect, list missing" helper of studies.

Dense training is :func:`prunelab.train.run.train` (re-exported here as :func:`train`).
"""

from ..train.run import train
from .iterative import iterative_prune
from .pipeline import run_pipeline
from .runs import compact_run, evaluate_run, run_info
from .subruns import SubRuns, is_done

__all__ = ["train", "run_pipeline", "iterative_prune", "compact_run", "evaluate_run", "run_info", "SubRuns",
           "is_done"]
