"""Pure logic of the integrations: metric-name mapping, value filtering, lazy imports, the dependency gate."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trackstream.integrations import SOURCE_NAME_TAG_PREFIX, MissingDependencyError, to_metric_name
from trackstream.integrations._common import require, source_name_tags
from trackstream.schemas.names import is_valid_metric_name


@pytest.mark.parametrize("name", ["loss", "eval/accuracy", "train loss", "lr-0.1_x", "a" * 250])
def test_valid_names_are_unchanged(name: str) -> None:
    assert to_metric_name(name) == name


@pytest.mark.parametrize("name", ["recall@10", "custom:loss", "f1(macro)", "", "é", "a" * 251, "x" * 300 + ":"])
def test_invalid_names_map_to_valid_deterministic_names(name: str) -> None:
    mapped = to_metric_name(name)
    assert is_valid_metric_name(mapped)
    assert mapped == to_metric_name(name)
    assert mapped != name


def test_mapping_is_readable_and_keeps_apart_names_that_sanitize_alike() -> None:
    assert to_metric_name("recall@10").startswith("recall_10.")
    assert to_metric_name("a:b") != to_metric_name("a;b")
    assert to_metric_name("a:b") != "a_b"


def test_mapping_is_stable_across_processes() -> None:
    code = "from trackstream.integrations import to_metric_name; print(to_metric_name('recall@10'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == to_metric_name("recall@10")


def test_source_name_tags_record_only_mapped_names() -> None:
    tags = source_name_tags({"loss": "loss", to_metric_name("p@1"): "p@1"})
    assert tags == {f"{SOURCE_NAME_TAG_PREFIX}{to_metric_name('p@1')}": "p@1"}


def test_importing_integrations_loads_no_framework() -> None:
    code = ("import sys, trackstream, trackstream.integrations\n"
            "print([m for m in ('mlflow', 'transformers', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_missing_dependency_names_the_extra() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'trackstream\[integrations\]'") as caught:
        require("a_package_that_is_not_installed_anywhere")
    assert isinstance(caught.value, ImportError)


def test_unknown_attribute_raises_attribute_error() -> None:
    from trackstream import integrations

    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = integrations.no_such_thing


class _Tensor:
    """Stands in for a torch tensor (torch is not installed here): numel() and item() are what is used."""

    def __init__(self, *values: float) -> None:
        self.values = values

    def numel(self) -> int:
        return len(self.values)

    def item(self) -> float:
        if len(self.values) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return self.values[0]


def test_as_number_keeps_numbers_unwraps_single_elements_and_drops_the_rest() -> None:
    hf = pytest.importorskip("trackstream.integrations.hf_callback")
    np = pytest.importorskip("numpy")
    assert type(hf.as_number(3)) is int
    assert hf.as_number(3) == 3
    assert hf.as_number(0.5) == 0.5
    assert hf.as_number(np.float32(0.25)) == 0.25
    assert hf.as_number(np.array([1.5])) == 1.5
    assert hf.as_number(_Tensor(2.5)) == 2.5
    for dropped in (True, "x", None, [1.0], {"a": 1}, _Tensor(1.0, 2.0), np.array([1.0, 2.0]), _Tensor(True)):
        assert hf.as_number(dropped) is None, dropped
