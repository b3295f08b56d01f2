"""The ``rto`` command: one module per command group (``main``: run, resume, validate, plan,
status, runs, logs, checkpoints, ui; ``jobs``: submit, jobs, stop; ``scaffold``: init, schema,
completion) and the console views
(``progress``: plain lines; ``live``: the terminal's live view; ``status``: what ``rto status``
shows).
"""

from raytrain_orch.cli.main import main

__all__ = ["main"]
