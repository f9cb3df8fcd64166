"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; the same comparisons run CPU against CPU."""

from __future__ import annotations

import pytest
import torch

from .benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run the check")
def test_without_cuda_it_says_so_and_exits_0(gpu_check, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gpu_check: no CUDA GPU on this machine, nothing to check (run it where one is)"]


def test_cpu_against_cpu_agrees_and_a_failure_is_reported(gpu_check, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_check.main(["--devices", "cpu,cpu", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = ["datamodels", "difference-of-means", "regression", "training"]
    assert [line.split()[0] for line in lines[:4]] == names and all(" ok " in line for line in lines[:4])
    assert all("diff 0.00e+00" in line for line in lines[:3])  # same device, deterministic: identical
    assert lines[-1] == "gpu_check: all agree"
    monkeypatch.setattr(gpu_check, "ESTIMATOR_TOLERANCE", -1.0)  # nothing can pass a negative tolerance
    masks, margins = gpu_check.linear_problem(64, 6, 3)
    check = gpu_check.check_estimator("difference-of-means", masks, margins, ("cpu", "cpu"),
                                      gpu_check.ESTIMATOR_TOLERANCE)
    assert not check.passes and "FAIL" in check.line(("cpu", "cpu"))


def test_devices_must_be_two(gpu_check) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--devices", "cpu"])
    assert exit_info.value.code == 2
