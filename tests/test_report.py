"""`dmtoolkit report`: one self-contained HTML page, checked in headless Chromium when available."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.analyze import load_estimate
from dmtoolkit.analyze.reliability import reliability_report
from dmtoolkit.analyze.results import ClassEffect, ClassRanking, LeakageReport, SourceCopy
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import compute_influence, fit_datamodels
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.report import build_report
from dmtoolkit.report.summary import (
    EstimateTrust,
    StoreTrust,
    classes_answer,
    leakage_answer,
    negative_heading,
    trust_answer,
)
from dmtoolkit.store_import import import_arrays
from tests.synthetic import synthetic_store


@pytest.fixture(scope="module")
def report_dir(class_files, example_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
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


@pytest.fixture(scope="module")
def report_page(report_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of `report_dir`, built once for the tests that only read it."""
    return build_report(report_dir, tmp_path_factory.mktemp("rep") / "rep")


def summary_of(html: str) -> str:
    """The first-screen answers: the HTML of the summary section."""
    start = html.index('<section id="summary"')
    return html[start:html.index("</section>", start)]


def test_report_contents(report_page: Path) -> None:
    page = report_page
    tmp_path = page.parent.parent
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
    # the answers come first, then class level, then example level; every note is said once
    order = [html.index(f'<section id="{name}"') for name in ("summary", "class-level", "example-level", "notes")]
    assert order == sorted(order)
    assert html.index('<section id="summary"') < html.index("<img ")
    assert html.count(rank["interval_note"]) == 1
    for note in data["notes"]:
        assert html.count(f'id="note-{note["number"]}"') == 1


def test_summary_names_classes_with_intervals(report_page: Path) -> None:
    """The summary names the most helpful and the most harmful class, each with its interval, as rank gives them."""
    summary = summary_of(report_page.read_text())
    data = json.loads((report_page.parent / "report.json").read_text())
    by_file = {e["file"]: e for e in data["estimates"]}
    ranking = by_file["influence.h5"]["rank"]
    best, worst = ranking["top"][0], ranking["bottom"][0]
    assert best["name"] == "c1" and worst["name"] == "c4" and worst["high"] < 0  # the fixture's planted effects
    assert "Helps most: c1. Hurts most: c4." in summary
    for e in (best, worst):
        assert f"{e['influence']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]" in summary
    assert "90% interval" in summary
    answers = {a["key"]: a for a in data["summary"]}
    assert list(answers) == ["classes", "removal", "leakage", "mislabels", "trust"]
    # removal: the recommendation, then the retrained check from the counterfactual file in the folder
    rec = by_file["influence.h5"]["recommend"]
    assert rec["message"][:1].upper() + rec["message"][1:] in summary
    assert ["2 most negative", "0.850", "0.020", "2"] in answers["removal"]["rows"]
    # why recommend chose what it chose, and how far to trust it, under its removal candidates (escaped as HTML)
    page = html.unescape(report_page.read_text())
    assert rec["chosen"]["k"] == 1 and rec["reason"].startswith("why k = 1: ") and rec["reason"] in page
    assert rec["trust"]["statement"].startswith("how far to trust it: the ") and rec["trust"]["regime"] == "near"
    assert rec["trust"]["statement"] in page and rec["trust"]["confirm"] in page
    assert rec["trust"]["confirm"].startswith("confirm by retraining before acting: dmtoolkit counterfactual ")
    # leakage: the planted copies (source 2 -> target 4, 7 -> target 1) named first, as contamination
    assert answers["leakage"]["tone"] == "bad" and "Contamination" in answers["leakage"]["verdict"]
    assert {r[0]: r[2] for r in answers["leakage"]["rows"]} == {"ex2": "4", "ex7": "1"}
    # trust: the class store's reliability and every estimate's LDS with its interval
    trust = answers["trust"]
    lds = by_file["influence.h5"]["lds"]
    assert any(r[0] == "influence.h5: LDS (difference-of-means)" and
               r[1] == f"{lds['lds_mean']:+.2f} [{lds['lds_interval'][0]:+.2f}, {lds['lds_interval'][1]:+.2f}]"
               for r in trust["rows"])


def _effects(values: list[float]) -> tuple[ClassEffect, ...]:
    return tuple(ClassEffect(i, f"k{i}", v, v - 0.1, v + 0.1) for i, v in enumerate(values))


def test_most_negative_column_is_labelled_honestly() -> None:
    assert negative_heading(_effects([-0.3, -0.2])) == "most negative"
    assert negative_heading(_effects([0.01, 0.2])) == "least positive (none negative)"
    assert negative_heading(_effects([-0.3, 0.2])) == "most negative first (≥ 0: helps least)"
    top, bottom = _effects([0.9, 0.5]), _effects([0.02, 0.05])
    ranking = ClassRanking("f.h5", "influence", None, 10, top + bottom, (), top, bottom, bottom, 0.9, "note")
    answer = classes_answer(ranking, "f.h5", lambda text: 1)
    assert answer.verdict == "Helps most: k0. No class hurts on average: every mean influence is positive."
    assert ("least positive (none negative)", "k0", "+0.020 [-0.080, +0.120]") in answer.rows


def test_negative_lds_warns_with_the_models_needed(tmp_path: Path) -> None:
    """A store whose held-out models behave opposite to the fitted ones: LDS < 0, and the summary says so,
    with the models the store's own split halves ask for."""
    rng = np.random.default_rng(3)
    m, P, T = 96, 6, 8
    masks = rng.random((m, P)) < 0.5
    signal = masks @ rng.normal(size=(P, T))
    names = [f"k{i}" for i in range(P)]
    first = import_arrays(tmp_path / "probe.h5", masks, signal, unit_names=names, target_labels=np.arange(T) % 2)
    compute_influence(first, tmp_path / "probe-influence.h5", device="cpu", holdout_frac=0.25)
    held = load_estimate(tmp_path / "probe-influence.h5").test_rows
    margins = signal + 0.1 * rng.normal(size=(m, T))
    margins[held] = -signal[held]  # held-out models: every effect reversed
    folder = tmp_path / "folder"
    folder.mkdir()
    store = import_arrays(folder / "runs.h5", masks, margins.astype(np.float32), unit_names=names,
                          target_labels=np.arange(T) % 2)
    compute_influence(store, folder / "influence.h5", device="cpu", holdout_frac=0.25)
    assert np.array_equal(load_estimate(folder / "influence.h5").test_rows, held)
    lds = evaluate(store, folder / "influence.h5")
    assert lds.lds_mean is not None and lds.lds_mean < 0
    needed = reliability_report(store).stores[0].ranking.needed["0.8"]

    html = build_report(folder, tmp_path / "rep").read_text()
    summary = summary_of(html)
    trust = {a["key"]: a for a in json.loads((tmp_path / "rep" / "report.json").read_text())["summary"]}["trust"]
    assert trust["tone"] == "bad" and "no better than chance" in trust["verdict"]
    assert f"influence.h5: {lds.verdict.removeprefix('verdict: ')}. Do not act on its ranking alone" in summary
    expected = (f"about {-(-needed // 1):,.0f} for a reproducible class ranking" if needed is not None
                else "too few for its split halves to agree at all")
    assert expected in summary and "runs.h5 has 96 models" in summary
    assert 'role="alert"' in summary and summary.index('role="alert"') < summary.index('class="cards"')


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


def _seconds_free(data: object) -> object:
    """JSON with the one wall-clock figure (the feature model's training seconds) blanked out."""
    if isinstance(data, dict):
        return {k: re.sub(r", [0-9]+ s\)", ", N s)", v) if k == "features" and isinstance(v, str) else _seconds_free(v)
                for k, v in data.items()}
    return [_seconds_free(v) for v in data] if isinstance(data, list) else data


def test_report_writes_the_numbers_the_commands_print(report_dir: Path, report_page: Path) -> None:
    """Each analysis in report.json is what its command prints with --json (the report's --top, default 10)."""
    shown = {e["file"]: e for e in json.loads((report_page.parent / "report.json").read_text())["estimates"]}
    runner = CliRunner()

    def printed(*args: str) -> dict:
        res = runner.invoke(cli, [*args, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    cls, ex = str(report_dir / "influence.h5"), str(report_dir / "ex-influence.h5")
    assert shown["influence.h5"]["rank"] == printed("rank", cls)
    assert shown["influence.h5"]["recommend"] == printed("recommend", cls)
    assert _seconds_free(shown["ex-influence.h5"]["leakage"]) == _seconds_free(
        printed("leakage", ex, "--top", "10", "--device", "cpu"))
    assert shown["ex-influence.h5"]["mislabels"] == printed("mislabels", ex, "--top", "10")
    lds = printed("evaluate", str(report_dir / "runs.h5"), "--estimate", cls)
    assert shown["influence.h5"]["lds"] == {k: lds[k] for k in shown["influence.h5"]["lds"]}
    assert shown["influence.h5"]["rank"]["top"][0]["name"] == "c1"  # the fixture's planted helper, not an empty match


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
def test_report_renders_in_headless_chromium(report_page: Path, tmp_path: Path) -> None:
    browser = _chromium()
    assert browser, "chromium is required in CI: apt-get install -y chromium"
    html = report_page.read_text()
    checked = tmp_path / "checked.html"
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


SCREEN = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var box = function (el) { var r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; };
    var cards = Array.prototype.map.call(document.querySelectorAll("#summary .card.answer"), function (card) {
      return {id: card.id, heading: box(card.querySelector("h3")), verdict: box(card.querySelector(".verdict"))};
    });
    // sort the all-classes table by influence, as a click on its heading does
    var table = document.querySelector("#class-level details table.sortable");
    table.querySelectorAll("thead th")[2].click();
    var sorted = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return parseFloat(r.cells[2].getAttribute("data-v")); });
    var out = document.createElement("pre");
    out.id = "screen-check";
    out.textContent = "SCREEN " + JSON.stringify({height: window.innerHeight, width: window.innerWidth,
      first: document.querySelector("main").firstElementChild.id, cards: cards, sorted: sorted});
    document.body.appendChild(out);
  }, 0);
});
</script>"""


@NEEDS_CHROMIUM
@pytest.mark.parametrize("size", [(1440, 900), (1280, 720)])
def test_summary_is_on_the_first_screen(report_page: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    """At desktop and laptop sizes every answer's question and verdict are visible without scrolling; the
    page opens with the summary; a click on a heading sorts a table."""
    browser = _chromium()
    assert browser, "chromium is required in CI: apt-get install -y chromium"
    checked = tmp_path / "screen.html"
    checked.write_text(report_page.read_text().replace("<head>", "<head>\n" + SCREEN, 1))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={size[0]},{size[1]}",
           "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    match = re.search(r"SCREEN (\{.*?\})\s*</pre>", proc.stdout.replace("&quot;", '"'))
    assert match, f"no check result in Chromium's DOM (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(match.group(1))
    assert result["first"] == "summary"
    assert result["width"] == size[0] and 0 < result["height"] <= size[1]
    assert [c["id"] for c in result["cards"]] == [f"answer-{k}" for k in
                                                  ("classes", "removal", "leakage", "mislabels", "trust")]
    for card in result["cards"]:
        assert 0 <= card["heading"]["top"] and card["verdict"]["bottom"] <= result["height"], (size, card)
    assert len(result["sorted"]) == 6 and result["sorted"] == sorted(result["sorted"])


def test_trust_answer_says_what_a_small_store_needs() -> None:
    """Pure: a class store below 0.8 names its reliability and the models for 0.8; an example-level estimate with
    LDS <= 0 is called no better than chance and told to train more; a good store is trusted."""
    small = StoreTrust("runs.h5", "class", 48, 0.01, 0.025, {"0.8": 7627.4, "0.9": 17159.0})
    answer = trust_answer([small], [EstimateTrust("influence.h5", "class", "influence", "runs.h5", 0.17,
                                                  (0.16, 0.21), 6)])
    assert answer.tone == "warn"
    assert answer.verdict == ("Not yet: runs.h5's class ranking has reliability +0.03 at 48 models, about 7,628 "
                              "needed for 0.8.")
    assert any("about 7,628 for a reproducible class ranking (0.8), 17,159 for 0.9" in c for c in answer.caveats)
    example = StoreTrust("ex.h5", "example", 32)
    answer = trust_answer([example], [EstimateTrust("ex-influence.h5", "example", "influence", "ex.h5", -0.064,
                                                    (-0.1, 0.0), 8)])
    assert answer.tone == "bad" and "no better than chance" in answer.verdict
    assert answer.caveats == (
        "ex.h5: the ranking of source examples by mean influence is not yet reproducible (ex.h5 has 32 models, too "
        "few for its split halves to agree at all; train several times more); flagged copies and mislabels rest on "
        "their own evidence (FDR).",
        "ex-influence.h5: LDS -0.064: no better than chance. Do not act on its flags alone; to answer: ex.h5 has 32 "
        "models, too few for its split halves to agree at all; train several times more.")
    good = StoreTrust("runs.h5", "class", 1024, 0.75, 0.86, {"0.8": 700.0, "0.9": 1500.0})
    answer = trust_answer([good], [EstimateTrust("influence.h5", "class", "influence", "runs.h5", 0.31,
                                                 (0.25, 0.37), 200)])
    assert answer.tone == "good" and answer.caveats == ()
    assert ("influence.h5: LDS (influence)", "+0.31 [+0.25, +0.37]", "200 held-out models") in answer.rows
    faint = EstimateTrust("ex.h5", "example", "influence", "runs.h5", 0.06, (0.02, 0.10), 40,
                          verdict="verdict: weak (LDS 0.060 [0.020, 0.100]): better than chance but predicts little")
    answer = trust_answer([good], [faint])
    assert answer.tone == "warn" and answer.verdict.startswith("Partly: ex.h5 predicts held-out models only weakly")
    assert answer.caveats == ("ex.h5: weak (LDS 0.060 [0.020, 0.100]): better than chance but predicts little.",)


def test_copies_lead_even_when_influence_finds_no_evidence() -> None:
    """The trial's case: influence finds no evidence while two source images are pixel copies of test images; the
    summary calls it contamination and names them first, the models' reading after."""
    copies = (SourceCopy(15, "src/15", "6", 625, "6", 1.0, True, 0.01, 0.4, 0.9, False),
              SourceCopy(1, "src/1", "6", 16, "6", 0.999, False, 0.01, 0.4, 0.9, False))
    report = LeakageReport("ex.h5", "influence", "influence", True, (), message="contamination: 2 source examples "
                           "copy target test images", evidence="one-sided p-values", copies=copies,
                           models_add="what the models add: influence confirms 0 of 2 at FDR 5%")
    answer = leakage_answer(report, "ex.h5", lambda text: 1)
    assert answer.tone == "bad"
    assert answer.verdict == "Contamination: 2 source images copy a target test image. Remove src/15, src/1."
    assert answer.rows == (("src/15", "6", "625", "6", "1.000", "no"), ("src/1", "6", "16", "6", "0.999", "no"))
    assert "What the models add: influence confirms 0 of 2 at FDR 5% (ex.h5)." in answer.evidence

def test_analyse_store_is_what_store_info_and_reliability_print(class_files: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """The report's store facts come from one analysis: the same summary `store info` prints and the same
    reliability `dmtoolkit reliability` prints; a store too small for a reliability gets the refusal as a note."""
    from dmtoolkit.analyze import analyse_store
    from dmtoolkit.store_checks import store_summary

    store, _ = class_files
    analysed = analyse_store(store)
    assert analysed.note is None and analysed.path == store
    assert analysed.summary.to_json() == store_summary(store).to_json()
    assert analysed.reliability.to_json() == reliability_report(store).stores[0].to_json()
    rng = np.random.default_rng(3)
    small = synthetic_store(tmp_path / "small.h5", rng.normal(size=(6, 4)).astype(np.float32),
                            completed=np.arange(6) < 3)
    few = analyse_store(small)
    assert few.reliability is None and few.summary.models.completed == 3
    with pytest.raises(UserError) as refused:
        reliability_report(small)
    assert few.note == f"reliability: {refused.value}"


def test_the_answers_come_from_the_estimate_with_the_strongest_evidence() -> None:
    """Of the estimates that can flag, the summary answers from the one whose errors have the most degrees of
    freedom (an 8-network gradient estimate over a 4-network one, whatever their file names); ties keep the
    page order; without errors, the first."""
    from dmtoolkit.analyze.overview import EstimateAnalyses
    from dmtoolkit.report.html import EstimateSection, _primary

    def section(name: str, dof: float, errors: bool = True) -> EstimateSection:
        analyses = EstimateAnalyses(Path(name), "gradient", "example", (4, 3), "run.h5", "run.h5", errors,
                                    mislabels=object(), error_dof=dof if errors else 0)
        return EstimateSection(analyses)

    four, eight, none = section("a-4.h5", 3), section("b-8.h5", 7), section("c.h5", 0, errors=False)
    assert _primary([four, eight, none], "mislabels").file == "b-8.h5"
    assert _primary([none, four, section("d-4.h5", 3)], "mislabels").file == "a-4.h5"
    assert _primary([none, section("e.h5", 0, errors=False)], "mislabels").file == "c.h5"
    assert _primary([none], "leakage") is None
