"""benchmarks/pool50k_study.py: the /usr/bin/time log parser, the peak-memory reader, the copies' effect on their
twins, and the script end to end (the copies' own BH family is `detect_leakage`'s, tested in tests/test_evidence.py)."""

from __future__ import annotations

from .benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("pool50k_study")


def test_time_log_reads_cpu_and_peak_memory(tmp_path):
    log = tmp_path / "g4.log"
    log.write_text("gradient: 4/4 networks\n\tUser time (seconds): 272.09\n\tSystem time (seconds): 13.63\n"
                   "\tMaximum resident set size (kbytes): 1872952\n")
    timing = _module().time_log(log)
    assert abs(timing["cpu_seconds"] - 285.72) < 1e-9
    assert timing["peak_rss_bytes"] == 1872952 * 1024
    assert _module().time_log(tmp_path / "missing.log") is None


def test_peak_resident_is_this_process_own_peak():
    """VmHWM of the current address space: at least the current RSS, and not inherited from a parent."""
    import resource

    peak = _module().peak_resident()
    assert peak["measured_by"] == "VmHWM"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 0 < peak["peak_rss_bytes"] <= rss * 1.01


def test_the_study_runs_end_to_end_on_a_tiny_store(tmp_path):
    """The script as a user runs it, on a tiny trained example store (nothing planted): it fits each network count
    in its own process, scores it the CLI's way and writes the table and the JSON it reports from."""
    import json
    import os
    import subprocess
    import sys

    from .benchmark_scripts import BENCHMARKS
    from .synthetic import trained_example_store

    store = trained_example_store(tmp_path / "runs.h5", models=16)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "pool50k_study.py"), "--out", str(out), "--runs",
                           str(store), "--networks", "2,3"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((out / "pool50k.json").read_text())
    assert [row["networks"] for row in figures["estimates"]] == [2, 3]
    assert figures["planted"] == {"leaks": 0, "flips": 0} and figures["models"] == 16
    for row in figures["estimates"]:
        assert -1 <= row["lds"] <= 1 and row["test_models"] == 8  # half the 16 models held out
        assert (out / f"runs-g{row['networks']}.h5").exists() and row["cpu_minutes"] > 0
    assert "| 2 |" in (out / "pool50k.md").read_text() and "2 networks:" in done.stdout


def test_copy_effects_separate_copies_that_move_their_twin_from_those_that_do_not(tmp_path):
    """Two copies with a real effect on their twin (+1.0, unit noise, 64 models) and two with none: the summary
    reports each group's median effect near its truth and the share of significant Welch tests accordingly."""
    from types import SimpleNamespace

    import numpy as np

    from .synthetic import synthetic_store

    rng = np.random.default_rng(3)
    masks = rng.random((64, 6)) < 0.5
    effects = np.zeros((6, 4))
    effects[0, 0] = effects[1, 1] = 1.0  # sources 0 and 1 raise targets 0 and 1; sources 2 and 3 do nothing
    margins = (masks.astype(float) @ effects + rng.normal(0, 0.5, (64, 4)) + 2.0).astype(np.float32)
    store = synthetic_store(tmp_path / "runs.h5", margins, masks, kind="example")
    copies = [SimpleNamespace(source=s, target=s, confirmed=s < 2) for s in range(4)]
    out = _module().copy_effects(copies, store)
    assert out["models"] == 64
    moved, idle = out["confirmed"], out["not confirmed"]
    assert moved["copies"] == idle["copies"] == 2
    assert abs(moved["median_effect"] - 1.0) < 0.3 and moved["share_p_below_0.05"] == 1.0
    assert abs(idle["median_effect"]) < 0.3 and idle["share_p_below_0.05"] == 0.0
    assert abs(moved["median_twin_margin"] - 2.5) < 0.3 and abs(idle["median_twin_margin"] - 2.0) < 0.3
