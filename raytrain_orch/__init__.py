"""raytrain_orch: durable ML training pipelines on Ray, tracked in MLflow.

The public API for driver programs (``jobs/NAME.py``)::

    from raytrain_orch import Artifact, Output, Params, Pipeline, StepContext
"""

from raytrain_orch.context import StepContext
from raytrain_orch.core.errors import ConfigError, InfeasibleError, OrchError, PipelineFailedError
from raytrain_orch.core.pipeline import Params, Pipeline
from raytrain_orch.store.artifacts import Artifact, Output

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ConfigError",
    "InfeasibleError",
    "OrchError",
    "Output",
    "Params",
    "Pipeline",
    "PipelineFailedError",
    "StepContext",
    "__version__",
]
