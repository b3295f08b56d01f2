"""The ``rto`` command: ``main`` builds the parser from one module per command group, each
declaring its commands' arguments (``command.Command``): ``run`` (run, resume), ``plan``
(validate, plan), ``runs`` (status, runs, logs, checkpoints), ``jobs`` (submit, jobs, stop),
``down``, ``ui``, ``scaffold`` (init, schema, completion). And the console views
(``progress``: plain lines; ``live``: the terminal's live view; ``status``: what ``rto status``
shows).
"""

from raytrain_orch.cli.main import main

__all__ = ["main"]
