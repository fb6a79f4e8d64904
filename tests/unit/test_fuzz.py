"""100,000 mutated envelopes through the stream processor with no unhandled exception (tests/fuzz/)."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_envelopes.py"
RUNS = 100_000


def test_a_hundred_thousand_mutated_envelopes_raise_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    # libFuzzer's RSS limit reads the process's peak RSS, which Linux carries over from this (forked) test process:
    # the harness gets its default 2 GiB on top of what the suite had grown to.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={RUNS}", "-seed=1", "-max_len=65536", "-timeout=20",
         f"-rss_limit_mb={2048 + inherited_mb}",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    output = result.stdout + result.stderr
    finding = output.find("=== Uncaught Python exception")  # atheris prints the traceback before libFuzzer's summary
    assert result.returncode == 0, output[finding:][:4000] if finding >= 0 else output[-4000:]
    done = re.search(r"Done (\d+) runs", output)
    assert done is not None, output[-2000:]
    assert int(done.group(1)) >= RUNS
    assert len(list(corpus.iterdir())) > 32  # the fuzzer found new paths beyond the seeds
