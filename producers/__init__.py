"""trackstream producers: the SDK a training job imports (docs/metrics.md, docs/configuration.md).

``start_run`` / ``model`` open handles whose log calls only append to an in-memory buffer; one background
flusher per process encodes envelopes and delivers them to Kafka or to the local spool. Light on purpose:
orjson and the standard library only; aiokafka is imported when Kafka is first used.
"""

from trackstream.producers.errors import TrackstreamError
from trackstream.producers.handles import Model, Run, flush, model, start_run

__all__ = ["Model", "Run", "TrackstreamError", "flush", "model", "start_run"]
