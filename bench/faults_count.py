"""Counts of one store for bench/faults.py, read through trackstream's query API in a process of its own.

    python bench/faults_count.py DATA_DIR PROJECT [--run RUN_ID]

chDB binds one store per process, so the benchmark reads each scenario's store here, once nothing owns it (or
through its owner's query API when one runs). The spool given to the reader is an empty directory: a count must
not ingest anything. Prints one JSON line: ``stored`` (points FINAL), ``rows`` and ``unique`` (the raw table, no
FINAL: rows and distinct (entity, metric, generation, rank, step)), and ``run`` (points FINAL of ``--run``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson

# the ranks' points only: rank 2**32 - 1 holds the cross-rank means of multi-rank series, which nobody sent
RANKS = "rank != 4294967295"
STORED = f"SELECT count() FROM points FINAL WHERE project = {{p:String}} AND {RANKS}"
RAW = ("SELECT count(), uniqExact(entity_type, entity_id, metric, generation, rank, step) FROM points "
       f"WHERE project = {{p:String}} AND {RANKS}")
RUN = f"SELECT count() FROM points FINAL WHERE project = {{p:String}} AND entity_id = {{run:String}} AND {RANKS}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("project")
    parser.add_argument("--run", default=None)
    args = parser.parse_args(argv)
    from trackstream import _query
    from trackstream.schemas.settings import StoreSettings

    with tempfile.TemporaryDirectory(prefix="faults-empty-spool-") as empty:
        reader = _query.reader(StoreSettings(data_dir=args.data_dir), spool_dir=empty)
        params = {"p": args.project}
        result = {"stored": int(reader.sql(STORED, params)[0][0])}
        rows, unique = reader.sql(RAW, params)[0]
        result.update(rows=int(rows), unique=int(unique))
        if args.run:
            result["run"] = int(reader.sql(RUN, {**params, "run": args.run})[0][0])
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
