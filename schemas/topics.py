"""The Kafka topics of one deployment, all named under one prefix (``KafkaSettings.topic_prefix``)."""

from __future__ import annotations

from dataclasses import dataclass

from trackstream.schemas.settings import DEFAULT_TOPIC_PREFIX


@dataclass(frozen=True, slots=True)
class Topics:
    """The Kafka topics of one deployment, all under one prefix."""

    prefix: str = DEFAULT_TOPIC_PREFIX

    @property
    def metrics(self) -> str:
        """``<prefix>.metrics``: the envelopes producers send, keyed by entity key."""
        return f"{self.prefix}.metrics"

    @property
    def dlq(self) -> str:
        """``<prefix>.metrics.dlq``: rejected envelopes and metric groups, keyed by the source message's key."""
        return f"{self.prefix}.metrics.dlq"

    @property
    def points(self) -> str:
        """``<prefix>.points``: one point block per accepted envelope."""
        return f"{self.prefix}.points"

    @property
    def steps(self) -> str:
        """``<prefix>.steps``: cross-rank step aggregates."""
        return f"{self.prefix}.steps"

    @property
    def entities(self) -> str:
        """``<prefix>.entities``: run and model lifecycle states."""
        return f"{self.prefix}.entities"

    @property
    def alerts(self) -> str:
        """``<prefix>.alerts``: alert transitions (fired, resolved) the stream evaluates, keyed by entity key."""
        return f"{self.prefix}.alerts"

    @property
    def alert_rules(self) -> str:
        """``<prefix>.alert_rules``: alert rules, keyed by rule id (compacted: the newest version of each)."""
        return f"{self.prefix}.alert_rules"

    @property
    def sink_dlq(self) -> str:
        """``<prefix>.sink.dlq``: processed records the sink worker could not decode or store."""
        return f"{self.prefix}.sink.dlq"

    def processed(self) -> tuple[str, str, str]:
        """The three topics of processed records: ``(points, steps, entities)`` (the sink worker consumes
        :meth:`sink_inputs`)."""
        return (self.points, self.steps, self.entities)

    def sink_inputs(self) -> tuple[str, str, str, str]:
        """Every topic the sink worker consumes: the processed topics and the alerts,
        ``(points, steps, entities, alerts)``."""
        return (*self.processed(), self.alerts)
