"""Topic names and the configuration every component shares (DESIGN §7: keyword > environment > default)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

DEFAULT_TOPIC_PREFIX: Final = "trackstream"


def setting(value: str | None, env_var: str, default: str | None = None) -> str | None:
    """A keyword argument wins over the environment variable, which wins over the default."""
    if value is not None:
        return value
    return os.environ.get(env_var) or default


@dataclass(frozen=True, slots=True)
class Topics:
    """The Kafka topics of one deployment, all under one prefix."""

    prefix: str = DEFAULT_TOPIC_PREFIX

    @classmethod
    def from_env(cls, prefix: str | None = None) -> Topics:
        return cls(setting(prefix, "TRACKSTREAM_TOPIC_PREFIX", DEFAULT_TOPIC_PREFIX) or DEFAULT_TOPIC_PREFIX)

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
