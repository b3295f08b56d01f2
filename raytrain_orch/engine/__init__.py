"""Running a plan: the runner (dispatch, retries, cache hits, resume, interrupts) and the ports it
talks to — a ``Backend`` that runs one step attempt and a ``TrackingSink`` it tells what
happened — the driver's wiring (config → plan → preflight → runner, with the Ray backend and the
MLflow run tree plugged in), and the reconciliation of runs whose driver died.
"""
