"""benchmarks/pool50k_study.py: the /usr/bin/time log parser (the copies' own BH family is now `detect_leakage`'s,
tested in tests/test_evidence.py)."""

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
