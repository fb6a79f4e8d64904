"""Bridges from ML frameworks into trackstream (optional extra: ``pip install 'trackstream[integrations]'``).

- MLflow (:mod:`trackstream.integrations.mlflow_bridge`): :func:`from_mlflow_run`,
  :func:`get_mlflow_model_metrics`, :func:`import_mlflow_run`, :func:`mlflow_autolog`.
- Hugging Face Transformers (:mod:`trackstream.integrations.hf_callback`): :class:`TrackstreamCallback`.

Names resolve lazily: importing this package loads neither mlflow nor transformers; asking for an MLflow
function loads the bridge (mlflow itself is imported when the function runs), asking for
``TrackstreamCallback`` imports transformers. A missing framework raises :class:`MissingDependencyError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trackstream.integrations._common import SOURCE_NAME_TAG_PREFIX, IntegrationError, to_metric_name
from trackstream.schemas.errors import MissingDependencyError

if TYPE_CHECKING:
    from trackstream.integrations.hf_callback import TrackstreamCallback
    from trackstream.integrations.mlflow_bridge import (
        from_mlflow_run,
        get_mlflow_model_metrics,
        import_mlflow_run,
        mlflow_autolog,
    )

_LAZY = {
    "from_mlflow_run": "mlflow_bridge",
    "get_mlflow_model_metrics": "mlflow_bridge",
    "import_mlflow_run": "mlflow_bridge",
    "mlflow_autolog": "mlflow_bridge",
    "TrackstreamCallback": "hf_callback",
}

__all__ = [
    "SOURCE_NAME_TAG_PREFIX",
    "IntegrationError",
    "MissingDependencyError",
    "TrackstreamCallback",
    "from_mlflow_run",
    "get_mlflow_model_metrics",
    "import_mlflow_run",
    "mlflow_autolog",
    "to_metric_name",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trackstream.integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trackstream.integrations.{module}"), name)
