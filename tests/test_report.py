"""`dmtoolkit report`: one self-contained HTML page, checked in headless Chromium when available."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.estimate import compute_influence, fit_datamodels
from dmtoolkit.report import build_report
from tests.test_analyze import class_files, example_files  # noqa: F401  (module-scoped fixtures)


@pytest.fixture(scope="module")
def report_dir(class_files, example_files, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A folder with a class-level and an example-level store, their estimates and a counterfactual file."""
    folder = tmp_path_factory.mktemp("reportdir")
    store, _ = class_files
    shutil.copy(store, folder / "runs.h5")
    shutil.copy(example_files["store"], folder / "ex-runs.h5")
    compute_influence(folder / "runs.h5", folder / "influence.h5", device="cpu", holdout_frac=0.2)
    compute_influence(folder / "ex-runs.h5", folder / "ex-influence.h5", device="cpu", holdout_frac=0.2)
    fit_datamodels(folder / "ex-runs.h5", folder / "ex-datamodels.h5", device="cpu", n_lambdas=10)
    with h5py.File(folder / "cf.h5", "w") as f:
        f.attrs.update({"schema": "dmtoolkit.counterfactual", "order": "bottom", "repeats": 2})
        f["k"], f["accuracy_mean"], f["accuracy_std"] = [0, 2], [0.8, 0.85], [0.01, 0.02]
    with h5py.File(folder / "cf-random.h5", "w") as f:
        f.attrs.update({"schema": "dmtoolkit.counterfactual", "order": "random", "repeats": 2})
        f["k"], f["accuracy_mean"], f["accuracy_std"] = [0, 2], [0.8, 0.78], [0.01, 0.03]
    (folder / "notes.h5").write_text("not hdf5")  # ignored
    return folder


def test_report_contents(report_dir: Path, tmp_path: Path) -> None:
    page = build_report(report_dir, tmp_path / "rep")
    html = page.read_text()
    assert html.count("<img ") >= 8 and 'src="data:image/png;base64,' in html
    assert not re.search(r'src="(?!data:)', html)  # self-contained: no external images or scripts
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(data["runs"]) == 2 and len(data["estimates"]) == 3 and len(data["counterfactuals"]) == 2
    bottom = next(c for c in data["counterfactuals"] if c["order"] == "bottom")
    assert bottom["rows"][1] == {"k": 2, "mean": 0.85, "std": 0.02}
    assert "Counterfactual retraining: all orders" in html
    tasks = {(d["file"], d["task"]) for d in data["detection"]}
    assert ("ex-influence.h5", "leakage") in tasks and ("ex-datamodels.h5", "mislabels") in tasks
    by_file = {e["file"]: e for e in data["estimates"]}
    assert by_file["influence.h5"]["rank"]["top"][0]["name"] == "c1"
    rank = by_file["influence.h5"]["rank"]
    first = rank["top"][0]
    assert rank["level"] == 0.9 and first["low"] < first["influence"] < first["high"]
    assert "90% interval" in html and f"[{first['low']:+.4f}, {first['high']:+.4f}]" in html
    assert rank["interval_note"] in html
    assert by_file["influence.h5"]["lds"]["heldout_models"] == 12
    for name in ("c1", "Leakage", "Mislabels", "no evidence of", "LDS", "Run health", "Detection scores"):
        assert name in html


def test_report_cli_and_errors(report_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(report_dir), "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert Path(res.stdout.strip()).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cli, ["report", str(empty), "-o", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "holds no dmtoolkit HDF5 files" in res.output
    res = runner.invoke(cli, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r3")])
    assert res.exit_code == 1 and "not a folder" in res.output


CHECK = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e.type)); }, true);
window.addEventListener("load", function () {
  setTimeout(function () {
    var imgs = Array.prototype.slice.call(document.images);
    var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
    var out = document.createElement("pre");
    out.id = "chromium-check";
    out.textContent = "RESULT " + JSON.stringify({images: imgs.length, broken: bad, errors: window.__errors});
    document.body.appendChild(out);
  }, 0);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


NEEDS_CHROMIUM = pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                                    reason="chromium not installed (apt-get install -y chromium); CI requires it")


@NEEDS_CHROMIUM
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    assert browser, "chromium is required in CI: apt-get install -y chromium"
    page = build_report(report_dir, tmp_path / "rep")
    html = page.read_text()
    checked = tmp_path / "rep" / "checked.html"
    checked.write_text(html.replace("<head>", "<head>\n" + CHECK, 1))
    profile = tmp_path / "profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    match = re.search(r"RESULT (\{.*?\})\s*</pre>", proc.stdout.replace("&quot;", '"'))
    assert match, f"no check result in Chromium's DOM (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(match.group(1))
    assert result["images"] == html.count("<img ") and result["images"] >= 8
    assert result["broken"] == 0, result
    assert result["errors"] == [], result
    # the page's own check agrees
    assert re.search(r'data-broken="0"', proc.stdout) and "broken</p>" in proc.stdout


@NEEDS_CHROMIUM
def test_broken_image_is_detected(tmp_path: Path) -> None:
    """The check itself fails on a broken image and a script error (guards against a vacuous pass)."""
    browser = _chromium()
    assert browser, "chromium is required in CI: apt-get install -y chromium"
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head>" + CHECK + "</head><body><img src='data:image/png;base64,AAAA'>"
                   "<script>undefinedFunction();</script></body></html>")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", bad.as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    result = json.loads(re.search(r"RESULT (\{.*?\})\s*</pre>", proc.stdout.replace("&quot;", '"')).group(1))
    assert result["broken"] == 1
    assert any("ReferenceError" in e for e in result["errors"]), result
