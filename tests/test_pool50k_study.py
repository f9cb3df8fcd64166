"""benchmarks/pool50k_study.py: the /usr/bin/time log parser and the BH-over-pixel-copies diagnostic."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

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


def test_bh_over_copies_scores_against_planted_leaks():
    # 4 copies: sources 0-2 are planted leaks of targets 5, 6, 7; source 3 copies target 8 but is not planted
    copies = [SimpleNamespace(source=0, target=5, p_value=0.001), SimpleNamespace(source=1, target=6, p_value=0.01),
              SimpleNamespace(source=2, target=7, p_value=0.9), SimpleNamespace(source=3, target=8, p_value=0.02),
              SimpleNamespace(source=4, target=9, p_value=None)]  # a copy the estimate does not cover
    leak_target = np.array([5, 6, 7, -1, -1])
    result = _module().bh_over_copies(SimpleNamespace(copies=copies, fdr=0.05), leak_target, planted_leaks=3)
    # BH at 5% over 4 p-values: sorted 0.001 <= 0.0125, 0.01 <= 0.025, 0.02 <= 0.0375, 0.9 > 0.05 -> 3 flagged
    assert result["copies_tested"] == 4 and result["flagged"] == 3 and result["hits"] == 2
    assert result["precision"] == 2 / 3 and result["recall"] == 2 / 3
