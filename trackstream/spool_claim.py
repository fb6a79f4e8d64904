"""Which store a spool feeds: the first store to ingest a spool directory claims it (``<spool>/store.json``), and
another store refuses to, so a read with the wrong ``--data-dir`` (or a second ``trackstream local`` on another
store) cannot drain a spool's points into a store nobody reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from trackstream.schemas.errors import ConfigError

CLAIM_FILE: Final = "store.json"


class SpoolClaimed(ConfigError):
    """The spool directory feeds another store. Not retriable: point ``TRACKSTREAM_DATA_DIR`` at that store, or
    ``TRACKSTREAM_SPOOL_DIR`` at a spool of this one."""


def claim_spool(spool_dir: Path, data_dir: Path) -> None:
    """Claim ``spool_dir`` for the store at ``data_dir`` (once; atomically), or raise :class:`SpoolClaimed` if
    another store holds the claim. A claim whose store directory is gone is taken over."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    mine = str(data_dir.expanduser().resolve())
    path = spool_dir / CLAIM_FILE
    try:
        holder = str(json.loads(path.read_text())["data_dir"])
    except FileNotFoundError:
        holder = None
    except (OSError, ValueError, KeyError, TypeError):
        holder = None  # unreadable: taken over, as a missing one
    if holder == mine:
        return
    if holder is not None and Path(holder).is_dir():
        raise SpoolClaimed(
            f"the spool {spool_dir} feeds the store {holder}, not {mine}: set TRACKSTREAM_DATA_DIR={holder} (or "
            f"--data-dir) to read it, or TRACKSTREAM_SPOOL_DIR to another spool for this store. If {holder} is no "
            f"longer used, delete {path}.")
    temporary = path.with_name(f".{CLAIM_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps({"data_dir": mine}) + "\n")
    os.replace(temporary, path)
