"""What a training process prints: rank 0 speaks, every other rank reports only errors, and a
library's repeated warning appears once per run, not once per rank and step.

Called at the edge (commands/train.py) with the rank, BEFORE megatron-core or transformers are
imported: both warn at import time ("Transformer Engine and Apex are not installed...") and again in
loops; on 1,000 ranks that is thousands of identical lines in front of the one that matters.
"""

from __future__ import annotations

import logging
import warnings

LIBRARY_LOGGERS = ("megatron", "transformers", "torch", "nvidia", "PIL")


class OncePerRun(logging.Filter):
    """Drop a WARNING-or-lower record whose logger and text were already emitted in this process."""

    def __init__(self):
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _shown_once(show):
    """`warnings.showwarning` that displays each (category, text) only the first time."""
    shown: set[tuple[type, str]] = set()

    def show_once(message, category, filename, lineno, file=None, line=None):
        key = (category, str(message))
        if key not in shown:
            shown.add(key)
            show(message, category, filename, lineno, file, line)

    show_once.shows_once = True
    return show_once


def configure_logging(rank: int) -> None:
    """Rank 0: INFO, Python warnings once per message, library log lines once per text. Other
    ranks: errors only (warnings ignored, libraries at ERROR)."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%H:%M:%S", force=True)
    if rank != 0:
        warnings.simplefilter("ignore")
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        return
    # "once": the first occurrence of each message text, wherever it comes from (a step loop, or the
    # same warning raised from several call sites).
    warnings.simplefilter("once")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)  # hidden by Python's defaults too
    # "once" keeps its memory in per-module registries that any later filterwarnings() or
    # catch_warnings() (libraries call both) wipes, so the display itself remembers what it showed.
    if not getattr(warnings.showwarning, "shows_once", False):
        warnings.showwarning = _shown_once(warnings.showwarning)
    once = OncePerRun()
    for handler in logging.getLogger().handlers:
        handler.addFilter(once)
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its INFO lists every parameter
