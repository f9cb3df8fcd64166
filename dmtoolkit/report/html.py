"""`dmtoolkit report`: one self-contained HTML page from whatever run stores and estimates a folder holds."""

from __future__ import annotations

import base64
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import jinja2

from dmtoolkit.errors import UserError

RUN_SCHEMA = "dmtoolkit.run"
ESTIMATE_SCHEMAS = ("dmtoolkit.influence", "dmtoolkit.datamodels")
COUNTERFACTUAL_SCHEMA = "dmtoolkit.counterfactual"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _schema(path: Path) -> str | None:
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r", locking=False) as f:
            schema = f.attrs.get("schema")
            return str(schema) if schema is not None else None
    except OSError:
        return None


def scan(directory: Path) -> dict[str, list[Path]]:
    """HDF5 files under `directory` (recursively) grouped by what they are."""
    found: dict[str, list[Path]] = {"runs": [], "estimates": [], "counterfactuals": []}
    for path in sorted(directory.rglob("*.h5")):
        if path.name.startswith("."):
            continue
        schema = _schema(path)
        if schema == RUN_SCHEMA:
            found["runs"].append(path)
        elif schema in ESTIMATE_SCHEMAS:
            found["estimates"].append(path)
        elif schema == COUNTERFACTUAL_SCHEMA:
            found["counterfactuals"].append(path)
    return found


def _try(section: dict[str, Any], key: str, fn, *args, **kwargs) -> Any:
    """Run one analysis; a failure becomes a note in the report instead of stopping it."""
    try:
        return fn(*args, **kwargs)
    except UserError as error:
        section.setdefault("notes", []).append(f"{key}: {error}")
    return None


def _estimate_section(path: Path, runs: list[Path], top: int, subpops: int) -> dict[str, Any]:
    from dmtoolkit.analyze.classes import rank_classes, subpopulation, target_images
    from dmtoolkit.analyze.estimates import load_estimate
    from dmtoolkit.analyze.examples import detect_leakage, detect_mislabels
    from dmtoolkit.estimate.lds import evaluate
    from dmtoolkit.report import plots

    est = load_estimate(path)
    section: dict[str, Any] = {"file": path.name, "estimator": est.estimator, "kind": est.kind,
                               "shape": list(est.matrix.shape), "store": str(est.store_path), "images": []}
    store = est.store_path if est.store_path is not None and est.store_path.exists() else None
    if store is None:  # the store may have moved together with the folder: match by name
        store = next((r for r in runs if est.store_path is not None and r.name == est.store_path.name), None)
    if est.kind == "class":
        ranking = _try(section, "rank", rank_classes, path, top=top)
        if ranking:
            section["rank"] = ranking
            shown = ranking["top"] + [e for e in ranking["bottom"][::-1] if e not in ranking["top"]]
            section["images"].append(("Source classes by mean influence", _data_uri(plots.bar_chart(
                [e["name"] for e in shown], [e["influence"] for e in shown], "Mean influence over all targets"))))
            if store is not None:
                for entry in ranking["top"][:subpops]:
                    sub = _try(section, "subpop", subpopulation, path, entry["name"], n=8)
                    if sub:
                        images = target_images(store, [t["target"] for t in sub["targets"]])
                        png = plots.image_grid(images, [f"{t['name']}\n{t['influence']:+.3f}" for t in sub["targets"]],
                                               f"Targets most helped by {entry['name']}")
                        section["images"].append((f"Subpopulation of {entry['name']}", _data_uri(png)))
    if est.kind == "example" and store is not None:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "pairs.png"
            leak = _try(section, "leakage", detect_leakage, path, top=top, store=store, png=png)
            if leak:
                section["leakage"] = leak
                section["images"].append(("Leakage candidates, source | target", _data_uri(png.read_bytes())))
        mis = _try(section, "mislabels", detect_mislabels, path, top=top, store=store)
        if mis:
            section["mislabels"] = mis
    if store is not None:
        lds = _try(section, "LDS", evaluate, store, path)
        if lds:
            section["lds"] = {k: lds[k] for k in ("lds_mean", "lds_median", "heldout_models", "undefined_targets")}
            section["images"].append(("LDS over target examples", _data_uri(plots.histogram(
                lds["histogram"]["edges"], lds["histogram"]["counts"], "Spearman LDS",
                f"LDS ({lds['heldout_models']} held-out models)"))))
    else:
        section.setdefault("notes", []).append(f"run store {est.store_path} not found: no images, leakage or LDS")
    return section


def _counterfactual_section(path: Path) -> dict[str, Any]:
    from dmtoolkit.report import plots

    with h5py.File(path, "r") as f:
        k, mean, std = f["k"][()].tolist(), f["accuracy_mean"][()], f["accuracy_std"][()]
        order, repeats = str(f.attrs["order"]), int(f.attrs["repeats"])
    png = plots.line_plot({order: (k, mean, std)}, "classes removed (k)", "target accuracy", f"Counterfactual ({order})")
    return {"file": path.name, "order": order, "repeats": repeats,
            "rows": [{"k": a, "mean": float(b), "std": float(c)} for a, b, c in zip(k, mean, std)],
            "image": _data_uri(png)}


def build_report(directory: str | Path, out_dir: str | Path, *, top: int = 10, subpops: int = 3) -> Path:
    """Write OUT_DIR/index.html (images inline) and OUT_DIR/report.json; returns the HTML path."""
    from dmtoolkit.store_checks import store_summary

    directory, out_dir = Path(directory), Path(out_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a folder; give the folder holding run stores and estimates")
    found = scan(directory)
    if not any(found.values()):
        raise UserError(f"{directory}: holds no dmtoolkit HDF5 files (run stores, influence, datamodels)")
    runs = [store_summary(p) for p in found["runs"]]
    estimates = [_estimate_section(p, found["runs"], top, subpops) for p in found["estimates"]]
    counterfactuals = [_counterfactual_section(p) for p in found["counterfactuals"]]
    combined = None
    if len(counterfactuals) > 1:  # paper Fig. 2a: the orders side by side
        from dmtoolkit.report import plots

        combined = _data_uri(plots.line_plot(
            {f"{c['order']} ({c['file']})": ([r["k"] for r in c["rows"]], [r["mean"] for r in c["rows"]],
                                              [r["std"] for r in c["rows"]]) for c in counterfactuals},
            "classes removed (k)", "target accuracy", "Counterfactual retraining, all orders"))
    detection = []
    for e in estimates:
        if "leakage" in e and "planted" in e["leakage"]:
            detection.append({"file": e["file"], "task": "leakage", **e["leakage"]["planted"]})
        if "mislabels" in e and "planted" in e["mislabels"]:
            detection.append({"file": e["file"], "task": "mislabels", **e["mislabels"]["planted"]})
    env = jinja2.Environment(loader=jinja2.PackageLoader("dmtoolkit.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    html = env.get_template("report.html.j2").render(
        directory=str(directory), created=time.strftime("%Y-%m-%d %H:%M:%S"), runs=runs, estimates=estimates,
        counterfactuals=counterfactuals, combined_counterfactual=combined, detection=detection)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    page.write_text(html, encoding="utf-8")
    strip = lambda s: {k: v for k, v in s.items() if k not in ("images", "image")}
    (out_dir / "report.json").write_text(json.dumps(
        {"runs": runs, "estimates": [strip(e) for e in estimates],
         "counterfactuals": [strip(c) for c in counterfactuals], "detection": detection}, indent=2, default=str))
    return page
