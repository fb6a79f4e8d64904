"""One error root: every error trackstream raises on purpose is a TrackstreamError, and keeps its type over JSON."""

from __future__ import annotations

import pytest

import trackstream
from trackstream.integrations import IntegrationError
from trackstream.producers.errors import FlushTimeoutError, HandleClosedError, ProducerError, SpoolError
from trackstream.producers.kafka import TransportError
from trackstream.schemas.envelope import WireFormatError
from trackstream.schemas.errors import (
    ConfigError,
    MissingDependencyError,
    TrackstreamError,
    error_from_payload,
    error_payload,
    require,
)
from trackstream.schemas.validation import Rejection
from trackstream.sinks.errors import IngestTimeout, QueryError, SinkError, StoreUnavailable
from trackstream.store import StoreBusyError
from trackstream.streams.records import StreamsError

RETRIABLE = {FlushTimeoutError, SpoolError, TransportError, StoreUnavailable, IngestTimeout, StoreBusyError}
NOT_RETRIABLE = {ConfigError, HandleClosedError, QueryError, WireFormatError, Rejection, StreamsError,
                 IntegrationError, SinkError, ProducerError}


def test_every_area_has_a_sub_root_under_the_one_root() -> None:
    for cls in RETRIABLE | NOT_RETRIABLE | {MissingDependencyError}:
        assert issubclass(cls, TrackstreamError), cls
    assert trackstream.TrackstreamError is TrackstreamError
    assert issubclass(WireFormatError, ValueError)  # bad input stays a ValueError for callers catching that
    assert issubclass(IngestTimeout, TimeoutError)
    assert issubclass(MissingDependencyError, ImportError)
    for cls in RETRIABLE:
        assert cls.retriable, cls
    for cls in NOT_RETRIABLE:
        assert not cls.retriable, cls
    assert QueryError("x", retriable=True).retriable
    assert QueryError("x", code=60).code == 60


@pytest.mark.parametrize("error", [
    IngestTimeout("run r not queryable after 1s"),
    QueryError("ClickHouse: Code: 60. Unknown table", code=60),
    StoreUnavailable("down"),
    ConfigError("bad setting"),
    StoreBusyError("locked"),
])
def test_an_error_keeps_class_message_retriable_and_code_across_json(error: TrackstreamError) -> None:
    import orjson

    rebuilt = error_from_payload(orjson.loads(orjson.dumps(error_payload(error))))
    assert type(rebuilt) is type(error)
    assert (str(rebuilt), rebuilt.retriable, rebuilt.code) == (str(error), error.retriable, error.code)


def test_foreign_errors_and_unknown_types_become_the_root() -> None:
    payload = error_payload(OSError("disk"))
    assert payload["type"] == "TrackstreamError"
    assert "OSError" in payload["message"]
    rebuilt = error_from_payload({"type": "NoSuchError", "message": "m", "retriable": True})
    assert type(rebuilt) is TrackstreamError
    assert rebuilt.retriable


@pytest.mark.parametrize("error", [TypeError("points must be an int"), ValueError("v"), KeyError("k")])
def test_bad_argument_errors_cross_as_themselves(error: Exception) -> None:
    rebuilt = error_from_payload(error_payload(error))
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)


def test_a_missing_package_names_the_extra_to_install() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'trackstream\[sinks\]'") as caught:
        require("trackstream_no_such_module", "sinks")
    assert caught.value.extra == "sinks"
