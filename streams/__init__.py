"""Stream processing between ``<prefix>.metrics`` and the processed topics (DESIGN §1, §4).

The processing is plain Python (:class:`~streams.processor.Processor`); :mod:`streams.app` only wires it to
Kafka with faust-streaming. Importing this package loads neither faust nor aiokafka.
"""

from streams.processor import Processor, tune_gc
from streams.records import DlqRecord, OutMessage, Output, SourcePosition, StreamsError, output_messages

__all__ = ["DlqRecord", "OutMessage", "Output", "Processor", "SourcePosition", "StreamsError", "output_messages",
           "tune_gc"]
