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
        return f"{self.prefix}.metrics"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.metrics.dlq"

    @property
    def points(self) -> str:
        return f"{self.prefix}.points"

    @property
    def steps(self) -> str:
        return f"{self.prefix}.steps"

    @property
    def summaries(self) -> str:
        return f"{self.prefix}.summaries"

    @property
    def entities(self) -> str:
        return f"{self.prefix}.entities"

    def processed(self) -> tuple[str, str, str, str]:
        return (self.points, self.steps, self.summaries, self.entities)
