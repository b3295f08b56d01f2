"""The pure core: config models and overrides, the pipeline and its DAG, the plan (cache keys,
gangs, the cluster spec and the placement check), the admission queue's logic, failure
policies that return decisions, redaction, errors and internal tunables.

Imports no Ray, MLflow, torch or psutil, and nothing outside ``core``; tested without a
cluster in milliseconds (``tests/unit/test_architecture.py`` keeps it so).
"""
