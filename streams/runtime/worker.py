"""The Faust worker process: logging that never carries record content, no spinner."""

from __future__ import annotations

import faulthandler
import logging
from typing import Any

import faust

# Third-party loggers whose DEBUG output includes record keys and values.
CONTENT_LOGGERS = ("aiokafka", "faust", "mode", "kafka", "rocksdict")


class EnforcerWorker(faust.Worker):
    """A Faust worker for the enforcer.

    ``--log-level debug`` applies to the enforcer's own loggers only: the Kafka
    client's debug logs print whole records, and post text must never reach a log.
    Faust's terminal spinner is off (it installs a DEBUG handler on the root logger,
    which costs a log record per event).
    """

    def __init__(self, app: faust.App, loglevel: str, **kwargs: Any) -> None:
        self._enforcer_level = loglevel
        # a crash in native code (the fast path, RocksDB, librdkafka) leaves the Python
        # stack of every thread on stderr: code locations only, never record content
        faulthandler.enable(all_threads=True)
        base = "info" if loglevel == "debug" else loglevel
        super().__init__(app, loglevel=base, quiet=True, redirect_stdouts=False, **kwargs)
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """No spinner handler; cap content-bearing loggers at INFO."""
        self.spinner = None
        for name in CONTENT_LOGGERS:
            lib = logging.getLogger(name)
            lib.setLevel(max(level, logging.INFO))
        own = logging.getLogger("streams")
        own.setLevel(logging.DEBUG if self._enforcer_level == "debug" else level)
