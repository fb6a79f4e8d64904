"""Stream processing between ``<prefix>.metrics`` and the processed topics (docs/architecture.md).

The processing is plain Python (:class:`~trackstream.streams.processor.Processor`); :mod:`trackstream.streams.app`
only wires it to
Kafka with faust-streaming. Importing this package loads neither faust nor aiokafka.
"""

from trackstream.streams.processor import Processor, tune_gc
from trackstream.streams.records import DlqRecord, OutMessage, Output, SourcePosition, StreamsError, output_messages

__all__ = ["DlqRecord", "OutMessage", "Output", "Processor", "SourcePosition", "StreamsError", "output_messages",
           "tune_gc"]
