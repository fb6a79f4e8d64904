"""`import trackstream` runs inside training jobs: it must not pull in anything heavy."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("faust", "pydantic", "clickhouse_connect", "chdb", "pyarrow", "numpy", "pandas", "mlflow", "transformers",
         "aiokafka", "matplotlib", "rich")


def test_import_trackstream_and_producers_loads_nothing_heavy() -> None:
    code = (
        "import sys, trackstream, trackstream.producers, trackstream.schemas\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"


def test_query_functions_resolve_lazily_without_loading_the_sinks() -> None:
    code = ("import trackstream, sys\nfrom trackstream import _query\n"
            "assert trackstream.compare is _query.compare and trackstream.sql is _query.sql\n"
            "print('trackstream.sinks' in sys.modules, 'chdb' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"
