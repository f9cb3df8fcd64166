"""Every result type's JSON, pinned: what `to_json()` returned when each type still had a hand-written one.

`tests/pinned_result_json.json` holds, for each instance of `tests/result_instances.py`, the dict the hand-written
`to_json` gave (captured before the results moved to the generic conversion of `dmtoolkit.display.JsonResult`), and
for each store of `summary_stores` what `store_summary` returned (a dict then) and the text `store info` printed.
A key dropped, added or renamed, or a value changed, fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.result_instances import instances, plain_json, summary_stores

PINNED = json.loads((Path(__file__).parent / "pinned_result_json.json").read_text())
INSTANCES = instances()




def key_orders(value: Any, path: str = "") -> dict[str, list[str]]:
    """The key order of every dict inside `value`, by its path ("" for the top)."""
    if isinstance(value, dict):
        orders = {path: list(value)}
        for key, item in value.items():
            orders.update(key_orders(item, f"{path}.{key}"))
        return orders
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in key_orders(item, f"{path}[{i}]").items()}
    return {}


def normalized(data: dict[str, Any], text: str, folder: Path) -> dict[str, Any]:
    """A store summary's JSON and text without what differs from run to run (folder, time, version, the hash of
    an import record, which holds the folder)."""
    data = json.loads(json.dumps(data).replace(str(folder), "FOLDER"))
    digest = data["recipe_hash"]
    data.update(recipe_hash="HASH", created="CREATED", package_version="VERSION")
    return {"json": data, "text": text.replace(str(folder), "FOLDER").replace(digest[:12], "HASH")}


def test_every_result_type_is_pinned() -> None:
    assert set(INSTANCES) == set(PINNED["results"])
    assert {type(r).__name__ for r in INSTANCES.values()} >= {
        "ClassRanking", "Subpopulation", "Explanation", "CounterfactualResult", "Recommendation", "LeakageReport",
        "MislabelReport", "DemoSummary", "LdsResult", "ReliabilityReport", "EstimateAnalyses", "EstimateSection",
        "CounterfactualSection", "DetectionRow", "Answer"}


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_json_is_what_the_hand_written_to_json_gave(name: str) -> None:
    data = INSTANCES[name].to_json()
    assert plain_json(data), data
    assert json.loads(json.dumps(data)) == PINNED["results"][name]
    assert key_orders(data) == key_orders(PINNED["results"][name])  # report.json keeps its order too


def test_store_summary_json_and_text_are_unchanged(tmp_path: Path) -> None:
    from dmtoolkit.store_checks import store_summary

    for name, path in summary_stores(tmp_path).items():
        summary = store_summary(path)
        data = summary.to_json()
        assert plain_json(data)
        assert normalized(data, str(summary), tmp_path) == PINNED["store_summary"][name], name
        assert key_orders(data) == key_orders(PINNED["store_summary"][name]["json"])
        assert summary.models.completed == data["models"]["completed"] and summary.path == data["path"]
        assert (summary.planted is None) == ("planted" not in data) and summary.to_frame().shape == (3, 5)


# the conversion itself ----------------------------------------------------------------------------------------
def test_plain_converts_nested_values_numpy_and_paths() -> None:
    import numpy as np

    from dmtoolkit.display import plain

    value = {1: (np.float32(0.5), np.int64(3), np.bool_(True), np.str_("a")), "p": Path("x/y.h5"),
             "a": np.arange(3).reshape(1, 3), "n": None}
    assert plain(value) == {"1": [0.5, 3, True, "a"], "p": "x/y.h5", "a": [[0, 1, 2]], "n": None}
    assert plain_json(plain(value))
    with pytest.raises(TypeError, match="set has no JSON form"):
        plain({1, 2})


def test_fields_say_how_they_are_written() -> None:
    from dataclasses import dataclass

    from dmtoolkit.display import JsonResult, json_field, not_in_json

    @dataclass(frozen=True)
    class Inner(JsonResult):
        x: int

    @dataclass(frozen=True)
    class Outer(JsonResult):
        name: str = json_field("class")
        inner: Inner | None = json_field(omit="none", default=None)
        notes: tuple[str, ...] = json_field(omit="empty", default=())
        pair: tuple[int, int] = json_field(default=(1, 2), convert=lambda p: {"a": p[0], "b": p[1]})
        image: object = not_in_json()

        json_derived = ("upper", ("size", "length"))
        json_order = ("size", "pair")

        @property
        def upper(self) -> str:
            return self.name.upper()

        @property
        def length(self) -> int:
            return len(self.name)

    assert list(Outer("ab").to_json().items()) == [("size", 2), ("pair", {"a": 1, "b": 2}), ("class", "ab"),
                                                   ("upper", "AB")]
    full = Outer("ab", Inner(4), ("n",), image=object()).to_json()
    assert full["inner"] == {"x": 4} and full["notes"] == ["n"] and "image" not in full
    assert Outer("ab", Inner(4)) == Outer("ab", Inner(4), image=object())  # images stay out of equality

    @dataclass(frozen=True)
    class Typo(JsonResult):
        x: int
        json_order = ("y",)

    with pytest.raises(TypeError, match=r"Typo.json_order names no field or derived key: \['y'\]"):
        Typo(1).to_json()
    with pytest.raises(ValueError, match="omit must be"):
        json_field(omit="never")
