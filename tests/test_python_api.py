"""The Python API: `import dmtoolkit as dm` is light, every public name resolves, and docs/python-api.md runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dmtoolkit as dm

from .conftest import ROOT

DOC = ROOT / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_import_dmtoolkit_is_light() -> None:
    code = "import sys, dmtoolkit; print(sorted(m for m in ('torch', 'numpy', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_public_name_resolves_and_is_documented() -> None:
    text = DOC.read_text()
    for name in dm.__all__:
        assert getattr(dm, name) is not None
        assert f"`{name}`" in text, f"{name} is public but docs/python-api.md does not mention it"
    with pytest.raises(AttributeError):
        dm.no_such_name  # noqa: B018


def test_estimators_follow_the_sklearn_conventions() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    X = rng.random((40, 6)) < 0.5
    Y = (X @ rng.normal(size=(6, 3))).astype(np.float32)
    for name in dm.estimator_names(from_arrays=True):  # the gradient estimator retrains from a store (test_gradient)
        est = dm.make_estimator(name)
        assert est.fit(X, Y) is est
        assert est.coef_.shape == (6, 3) and est.intercept_.shape == (3,)
        assert est.predict(X).shape == Y.shape


def test_every_code_block_of_the_python_api_page_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6
    namespace: dict[str, object] = {"__name__": "__python_api_doc__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
            except Exception as error:  # name the block that failed
                raise AssertionError(f"docs/python-api.md code block {i + 1} failed: {error!r}\n{block}") from error
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "[]" in out and "0 pending" in out and "True" in out and "False" not in out, out
    assert (tmp_path / "report" / "index.html").exists()
