"""The one set of input limits, enforced at every layer (docs/wire-format.md, "Limits").

The SDK raises :class:`ValueError` at the call for a value past a limit; the stream worker dead-letters an envelope
or a metric group past one; so the sinks never meet a value their columns cannot hold, and every record a worker
writes back (outputs, state, dead letters) fits what its encoders and the broker accept.

Why each number:

- names (metric, project, run or model id, param and tag keys): 250 characters, as MLflow's keys;
- tag values: 8,000 characters (MLflow's tag limit); run names 500;
- nesting of params and tags: 32 levels. orjson writes at most 254 levels and the DLQ and state records wrap a value
  in several more, so every encoder on the path can write back whatever was accepted;
- params of one event: 256 KiB encoded;
- an envelope: 4 MiB encoded, at most 1,024 metric groups and 131,072 points, so that its outputs (one point block,
  one cross-rank step aggregate per step and group) split into records under :data:`RECORD_BYTES_MAX`;
- rank and world size: ``0 <= rank < world_size <= 2**24`` (the sink stores them as UInt32);
- steps: int64; times: int64 nanoseconds since the epoch, non-negative.
- one record a worker writes (output, dead letter): at most :data:`RECORD_BYTES_MAX`, under Kafka's default
  ``message.max.bytes`` (1 MiB); larger outputs are split, larger raw payloads cut (with their size and SHA-256).
"""

from __future__ import annotations

from typing import Any, Final

NAME_MAX: Final = 250
RUN_NAME_MAX: Final = 500
TAG_VALUE_MAX: Final = 8_000
NESTING_MAX: Final = 32
PARAMS_BYTES_MAX: Final = 256 * 1024
ENVELOPE_BYTES_MAX: Final = 4 * 1024 * 1024
GROUPS_PER_ENVELOPE_MAX: Final = 1_024
POINTS_PER_ENVELOPE_MAX: Final = 131_072
WORLD_SIZE_MAX: Final = 2**24
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
RECORD_BYTES_MAX: Final = 900 * 1024


def short_repr(value: object, *, max_chars: int = 60) -> str:
    """``repr(value)`` cut to ``max_chars`` characters, for error messages about untrusted input.

    Bounded in work as well as length: containers are shown at most 3 levels and 6 items deep (``reprlib``), so a
    value nested far past Python's recursion limit, or a megabyte string, costs no more than a short one, and an
    integer past Python's digit limit is named by its type.
    """
    import reprlib

    shower = reprlib.Repr()
    shower.maxlevel, shower.maxstring, shower.maxother, shower.maxlong = 3, max_chars, max_chars, max_chars
    try:
        text = shower.repr(value)
    except (ValueError, RecursionError):  # an int past sys.get_int_max_str_digits(); a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def nesting_depth(value: Any, *, limit: int = NESTING_MAX) -> int:
    """How deeply ``value`` nests dicts and lists (a scalar is 0), counting no further than ``limit + 1``.

    Iterative, so a value nested far past Python's recursion limit is measured without a ``RecursionError``.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list | tuple):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            pending.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def rank_problem(rank: object, world_size: object) -> str | None:
    """Why ``(rank, world_size)`` cannot be stored, or ``None``: integers with ``0 <= rank < world_size <= 2**24``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or isinstance(world_size, bool) \
            or not isinstance(world_size, int):
        return f"rank and world_size must be integers, got {short_repr(rank)} and {short_repr(world_size)}"
    if not 1 <= world_size <= WORLD_SIZE_MAX:
        return f"world_size={world_size} is outside 1..{WORLD_SIZE_MAX}"
    if not 0 <= rank < world_size:
        return f"rank={rank} is outside 0..world_size-1 ({world_size - 1})"
    return None


def step_problem(step: object) -> str | None:
    """Why ``step`` is not a storable step (an int64), or ``None``."""
    if isinstance(step, bool) or not isinstance(step, int):
        return f"step must be an integer, got {short_repr(step)}"
    if not INT64_MIN <= step <= INT64_MAX:
        return f"step {step} is outside the int64 range"
    return None


def mapping_problem(what: str, mapping: object, *, value_max: int | None = None) -> str | None:
    """Why ``mapping`` (params or tags) is past a limit, or ``None``.

    Checks: a dict with str keys of 1-:data:`NAME_MAX` characters, nesting at most :data:`NESTING_MAX` levels, and,
    with ``value_max``, str values of at most that many characters (tags).
    """
    if not isinstance(mapping, dict):
        return f"{what} must be a dict, got {type(mapping).__name__}"
    for key, value in mapping.items():
        if not isinstance(key, str) or not 1 <= len(key) <= NAME_MAX:
            return f"{what} key {str(key)[:60]!r} must be a string of 1-{NAME_MAX} characters"
        if value_max is not None and isinstance(value, str) and len(value) > value_max:
            return f"{what}[{key!r}] is {len(value)} characters long, at most {value_max} are allowed"
    depth = nesting_depth(mapping, limit=NESTING_MAX)
    if depth > NESTING_MAX:
        return f"{what} nest more than {NESTING_MAX} levels deep"
    return None
