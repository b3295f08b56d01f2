"""The driver process's set-up: what the libraries may say on its console, and SIGTERM
unwinding it like Ctrl-C (as ``StopRequested``, which carries the signal) so that what it
started is recorded and stopped instead of being left RUNNING.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType, MappingProxyType

from raytrain_orch.core import constants
from raytrain_orch.core.errors import StopRequested

#: The libraries' loggers the driver keeps off the console (their warnings and errors stay, unless
#: said here), and how loud each may be there; ``RTO_VERBOSE=1`` leaves them as they are.
_QUIET = MappingProxyType(
    {
        "ray": logging.ERROR,  # the token-auth banner, Ray Train's driver-side INFO
        "mlflow": logging.WARNING,  # "Creating initial MLflow database tables", "Updating database tables"
        "alembic": logging.WARNING,  # MLflow's migrations
    }
)


def quiet_libraries() -> None:
    """Keep what Ray and MLflow say at INFO (and Ray's warnings) off the console: the run's own
    lines say what happens. Errors still show. (MLflow sets its loggers up when it is imported,
    later, from this variable.)"""
    if constants.VERBOSE:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (a stopped job, a closed terminal) unwind like Ctrl-C. Main thread only, as
    Python requires; call it again after ``ray.init``, which installs a handler of its own."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_requested)


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)
