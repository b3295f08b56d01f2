"""MLflow, and the only package that imports it: the store (``Tracker``), the outbox that keeps
tracking off the run's path, the run tree (pipeline run → step runs → trials), the champion
rule, system metrics and learning-curve charts.
"""
