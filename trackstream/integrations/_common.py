"""What both integrations share: the error root, the optional-dependency gate and the metric-name mapping.

Metric-name mapping (deterministic, stateless, documented in :func:`to_metric_name`): MLflow and Hugging Face
accept names trackstream does not (``recall@10``, ``custom:loss``, names over 250 characters). Such a name is
never dropped: it is logged under a mapped name and the original is kept in the run tag
``source_metric_name/<mapped name>``.
"""

from __future__ import annotations

import hashlib
import re
from types import ModuleType
from typing import Final

from trackstream.schemas import errors
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.names import METRIC_NAME_MAX, is_valid_metric_name

SOURCE_NAME_TAG_PREFIX: Final = "source_metric_name/"
_DISALLOWED: Final = re.compile(r"[^A-Za-z0-9_\-./ ]")
_HASH_HEX: Final = 8


class IntegrationError(TrackstreamError):
    """Root of the errors raised by :mod:`trackstream.integrations`."""


def require(module: str) -> ModuleType:
    """Import ``module`` (mlflow, transformers) or raise :class:`MissingDependencyError` naming the extra."""
    return errors.require(module, "integrations")


def to_metric_name(name: str) -> str:
    """The trackstream metric name for a framework's metric ``name``.

    A valid name (1-250 characters of letters, digits, ``_ - . /`` and space) is returned unchanged. Any other
    name becomes: every disallowed character replaced by ``_``, cut to 241 characters, then ``.`` and the first
    8 hex digits of the SHA-256 of the original name (UTF-8), e.g. ``recall@10`` -> ``recall_10.<8 hex>``.
    The hash keeps the mapping injective in practice (``a:b`` and ``a_b`` stay apart) without any state, so
    every process and every re-import maps a name the same way.
    """
    if is_valid_metric_name(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    stem = _DISALLOWED.sub("_", name)[: METRIC_NAME_MAX - _HASH_HEX - 1]
    return f"{stem}.{digest}"


def source_name_tags(names: dict[str, str]) -> dict[str, str]:
    """Run tags recording the original of every mapped metric name (``{mapped: original}`` in)."""
    return {f"{SOURCE_NAME_TAG_PREFIX}{mapped}": original for mapped, original in names.items() if mapped != original}
