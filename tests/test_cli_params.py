"""The CLI's parameter types: `--targets A:B` and `--k 0,5,10` become the slice and list the library takes.

Each parser is checked against an independent reference (a regular expression) over valid and invalid
strings, and through the command line: a malformed value is one line `error: ...`, exit 1, before any file is
opened or written. What the values may be (inside the store's targets, fewer than the classes) stays the
library's check, tested in test_estimate_datamodels.py and test_recommend.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dmtoolkit.analyze.options import COUNTERFACTUAL_KS
from dmtoolkit.analyze.retrain import check_ks
from dmtoolkit.cli import Checkpoints, Device, IntList, ProjDim, ShardSpec, TargetRange, cli
from dmtoolkit.errors import UserError
from tests.synthetic import synthetic_store

ROOT = Path(__file__).resolve().parent.parent
SIDE = r"\s*(-?\d+)?\s*"
ends = st.one_of(st.none(), st.integers(-10**6, 10**6))


@given(start=ends, stop=ends, pad=st.sampled_from(["", " ", "  "]))
def test_target_range_reads_every_a_colon_b(start: int | None, stop: int | None, pad: str) -> None:
    text = f"{pad}{'' if start is None else start}{pad}:{pad}{'' if stop is None else stop}{pad}"
    assert TargetRange().convert(text, None, None) == slice(start, stop)


@given(st.text(alphabet="0123456789:- ab,.", max_size=12))
def test_target_range_agrees_with_a_regular_expression(text: str) -> None:
    match = re.fullmatch(f"{SIDE}:{SIDE}", text)
    if match:
        start, stop = (None if g is None else int(g) for g in match.groups())
        assert TargetRange().convert(text, None, None) == slice(start, stop)
    else:
        with pytest.raises(UserError) as error:
            TargetRange().convert(text, None, None)
        assert str(error.value) == (f"targets {text!r} is not of the form A:B; give e.g. 0:64 "
                                    "(either side may be empty)")


def test_target_range_passes_a_slice_through() -> None:
    assert TargetRange().convert(slice(2, 5), None, None) == slice(2, 5)


@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=8), st.sampled_from([",", ", ", " ,"]))
def test_int_list_reads_comma_separated_integers_in_order(numbers: list[int], comma: str) -> None:
    assert IntList("k").convert(comma.join(map(str, numbers)), None, None) == numbers


@given(st.text(alphabet="0123456789,- a.", max_size=12))
def test_int_list_agrees_with_a_regular_expression(text: str) -> None:
    parts = [part for part in text.split(",") if part.strip()]
    if not all(re.fullmatch(r"\s*-?\d+\s*", part) for part in parts):
        with pytest.raises(UserError) as error:
            IntList("k").convert(text, None, None)
        assert str(error.value) == f"k {text!r} is not a comma-separated list of integers, e.g. 0,5,10"
    elif not parts:
        with pytest.raises(UserError, match=r"^k is empty; give e.g. 0,5,10$"):
            IntList("k").convert(text, None, None)
    else:
        assert IntList("k").convert(text, None, None) == [int(part) for part in parts]


def test_the_counterfactual_default_is_the_library_default_and_shown_as_typed() -> None:
    assert IntList("k").convert(COUNTERFACTUAL_KS, None, None) == list(COUNTERFACTUAL_KS) == [0, 5, 10]
    assert IntList("k").convert("0,5,10", None, None) == [0, 5, 10]
    help_text = " ".join(CliRunner().invoke(cli, ["counterfactual", "--help"]).output.split())
    assert "--k K,K,..." in help_text and "[default: 0, 5, 10]" in help_text


def test_the_library_takes_typed_values_only() -> None:
    """A string reaching the library is a programming error (the CLI parses), not a user's typo."""
    assert check_ks((4, 0, 4, 2), 5) == [0, 2, 4]
    with pytest.raises(TypeError, match=r"ks must be a list of integers such as \[0, 5, 10\], not '0,5'"):
        check_ks("0,5", 10)
    with pytest.raises(UserError, match=r"^k=5 is out of range: remove between 0 and 4 of 5 classes$"):
        check_ks([0, 5], 5)


@pytest.mark.parametrize("args, message", [
    (["datamodels", "{tmp}/missing.h5", "-o", "{tmp}/d.h5", "--targets", "1:2:3"],
     "error: targets '1:2:3' is not of the form A:B; give e.g. 0:64 (either side may be empty)"),
    (["influence", "{tmp}/missing.h5", "-o", "{tmp}/i.h5", "--targets", "a:"],
     "error: targets 'a:' is not of the form A:B; give e.g. 0:64 (either side may be empty)"),
    (["recommend", "{tmp}/missing.h5", "--k", "0,two"],
     "error: k '0,two' is not a comma-separated list of integers, e.g. 0,5,10"),
    (["counterfactual", "{tmp}/missing.yaml", "--influence", "{tmp}/missing.h5", "--k", " , ", "-o", "{tmp}/c.h5"],
     "error: k is empty; give e.g. 0,5,10"),
    (["train", "{tmp}/missing.h5", "--shard", "3/3", "-o", "{tmp}/s.h5"],
     "error: --shard '3/3': write it as I/N with 0 <= I < N, e.g. --shard 3/16"),
    (["gradient", "{tmp}/missing.h5", "-o", "{tmp}/g.h5", "--checkpoints", "ten"],
     "error: --checkpoints 'ten': a count (3) or comma-separated epochs (10,20,30)"),
    (["gradient", "{tmp}/missing.h5", "-o", "{tmp}/g.h5", "--proj-dim", "-3"],
     "error: --proj-dim '-3': auto or a dimension ≥ 0 (0: no projection), e.g. 512"),
])
def test_a_malformed_value_is_one_line_before_any_file_is_read(tmp_path: Path, args: list[str], message: str) -> None:
    """The inputs do not exist: the value is refused as it is parsed, before the command opens anything."""
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1 and result.output == message + "\n"
    assert list(tmp_path.iterdir()) == []


def test_shard_and_checkpoints_values_reach_the_command_typed() -> None:
    assert ShardSpec().convert("2/5", None, None) == (2, 5)
    assert ProjDim().convert("auto", None, None) is None and ProjDim().convert("0", None, None) == 0
    assert Checkpoints().convert("3", None, None) == 3 and Checkpoints().convert("10,20,30", None, None) == (10, 20, 30)


def test_device_auto_is_none_for_the_library() -> None:
    assert [Device().convert(name, None, None) for name in ("auto", "cpu", "cuda")] == [None, "cpu", "cuda"]
    result = CliRunner().invoke(cli, ["influence", "x.h5", "-o", "y.h5", "--device", "gpu"])
    assert result.exit_code == 2 and "Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda'" in result.output


def test_help_of_every_command_with_a_parameter_type_stays_torch_free() -> None:
    """The types import their library parsers (torch, for --checkpoints) only when a command runs."""
    code = ("import sys; from click.testing import CliRunner; from dmtoolkit.cli import cli; "
            "codes = [CliRunner().invoke(cli, [c, '--help']).exit_code for c in "
            "('gradient', 'train', 'datamodels', 'recommend', 'counterfactual')]; "
            "print(codes, sorted(m for m in ('torch', 'numpy', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[0, 0, 0, 0, 0] []", out.stdout + out.stderr


@pytest.mark.parametrize("spec, columns", [("4:", (4, 7)), (":3", (0, 3)), ("2:5", (2, 5))])
def test_an_open_ended_range_is_completed_by_the_store(tmp_path: Path, spec: str, columns: tuple[int, int]) -> None:
    """`--targets 4:` parses to slice(4, None); the library fills in the store's 7 targets."""
    store = synthetic_store(tmp_path / "runs.h5", np.random.default_rng(0).normal(size=(16, 7)).astype(np.float32))
    out = tmp_path / "influence.h5"
    result = CliRunner().invoke(cli, ["influence", str(store), "-o", str(out), "--targets", spec, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        assert (int(f.attrs["target_start"]), int(f.attrs["target_stop"])) == columns
        assert f["coef"].shape == (6, columns[1] - columns[0])
