"""Running a plan: the runner (dispatch, retries, cache hits, resume, interrupts) and the ports it
talks to — a ``Backend`` that runs one step attempt and a ``TrackingSink`` it tells what
happened — the driver (config → plan → preflight → runner, through its ``Compute`` and
``Tracking`` ports), the driver process's set-up, its reachability probes, the null backend of a
fully cached run, and the reconciliation of runs whose driver died. Ray and MLflow are plugged
in by the composition root, ``cli/wiring.py``.
"""
