"""What a data team acts on: the leakage evidence as its own HTML page (thumbnails side by side) and as CSV.

Both lead with the copies of target test images found from pixels alone (exact, then near copies, by source
id and target index; contamination whatever the models say), then the pairs influence evidence adds —
look-alikes with significant influence but no near-duplicate pixels — with p, q, pixel score and category,
the thresholds used and the source example ids to remove.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

from dmtoolkit.analyze.results import LeakageReport, LeakPair, SourceCopy
from dmtoolkit.atomic import replacing
from dmtoolkit.report.html import _data_uri, format_p

CSV_COLUMNS = ("category", "remove", "significant_influence", "source", "source_id", "source_label", "target",
               "target_label", "pixel_score", "influence", "p_value", "q_value", "feature_score")

PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>Leakage report: {{ r.file }}</title>
<style>body{font-family:sans-serif;margin:2em} td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
img{image-rendering:pixelated;width:64px;height:64px;border:1px solid #ccc}
.verdict{font-size:1.1em;padding:.6em;border-left:4px solid {{ "#c0392b" if r.copies else "#888" }}}</style></head><body>
<h1>Leakage report</h1>
<p class="verdict"><strong>{{ r.message }}</strong></p>
<p>Source example ids to remove: {{ r.removal_ids | join(", ") if r.removal_ids else "none" }}</p>
<h2>Copies of target test images, from pixels ({{ r.copies | length }})</h2>
<p>{{ r.pixel_evidence }}.</p>
{% if copies %}<table><tr><th>source</th><th>target</th><th>source example</th><th>label</th><th>target</th><th>label</th>
<th>kind</th><th>pixel</th><th>influence</th><th>q</th><th>models</th></tr>
{% for c, src, tgt in copies %}<tr><td><img src="{{ src }}" alt="source"></td><td><img src="{{ tgt }}" alt="target"></td>
<td>{{ c.source_id }}</td><td>{{ c.source_label }}</td><td>{{ c.target }}</td><td>{{ c.target_label }}</td>
<td>{{ c.kind }}</td><td>{{ "%.3f" | format(c.pixel_score) }}</td>
<td>{{ "–" if c.influence is none else "%+.4f" | format(c.influence) }}</td><td>{{ pval(c.q_value) }}</td>
<td>{{ "confirm" if c.confirmed else "do not confirm" if c.confirmed is sameas false else "cannot tell" }}</td></tr>
{% endfor %}</table>{% if r.copies | length > copies | length %}<p>… and {{ r.copies | length - copies | length }} more
(the CSV lists every copy).</p>{% endif %}{% else %}<p>none: no source example copies a target test image.</p>{% endif %}
<h2>Influence evidence</h2>
<p>{{ r.models_add }}.</p>
<p>Estimate: {{ r.file }} ({{ r.estimator }}). Threshold: Benjamini–Hochberg at FDR {{ (100 * r.fdr) | round(2) }}%
on influence p-values ({{ r.evidence }}). {{ r.features }}.</p>
{% for title, rows in groups %}
<h3>{{ title }} ({{ rows | length }})</h3>
{% if rows %}<table><tr><th>#</th><th>source</th><th>target</th><th>source example</th><th>label</th><th>target</th>
<th>label</th><th>influence</th><th>p</th><th>q</th><th>pixel</th><th>features</th><th>category</th></tr>
{% for p, src, tgt in rows %}<tr><td>{{ p.rank }}</td><td><img src="{{ src }}" alt="source"></td>
<td><img src="{{ tgt }}" alt="target"></td><td>{{ p.source_id }}</td><td>{{ p.source_label }}</td><td>{{ p.target }}</td>
<td>{{ p.target_label }}</td><td>{{ "%+.4f" | format(p.influence) }}</td><td>{{ pval(p.p_value) }}</td>
<td>{{ pval(p.q_value) }}</td><td>{{ "%.3f" | format(p.pixel_score) }}</td>
<td>{{ "–" if p.feature_score is none else "%.3f" | format(p.feature_score) }}</td><td>{{ p.category }}</td></tr>
{% endfor %}</table>{% else %}<p>none</p>{% endif %}
{% endfor %}
</body></html>
""")


def _thumbnail(image: np.ndarray) -> str:
    image = np.asarray(image)
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def evidence_rows(report: LeakageReport) -> list[SourceCopy | LeakPair]:
    """Every copy and pair with evidence, copies first: the pixel copies (exact, then near), then flagged pairs
    that are not among them, then influence only (look-alikes)."""
    copied = {(c.source, c.target) for c in report.copies}
    flagged = [p for p in report.flagged if (p.source, p.target) not in copied]
    return [*report.copies, *flagged, *report.influence_only]


def _csv_row(row: SourceCopy | LeakPair) -> list[object]:
    if isinstance(row, SourceCopy):
        return [row.kind, True, "" if row.confirmed is None else row.confirmed, row.source, row.source_id,
                row.source_label, row.target, row.target_label, row.pixel_score, row.influence, row.p_value,
                row.q_value, None]
    return [row.category, row.flagged, row.category in ("likely copy", "influence only"), row.source, row.source_id,
            row.source_label, row.target, row.target_label, row.pixel_score, row.influence, row.p_value, row.q_value,
            row.feature_score]


def write_leakage_csv(report: LeakageReport, out: str | Path, *, force: bool = False,
                      inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """One row per copy or pair with evidence (`evidence_rows`), columns CSV_COLUMNS (empty: not known), through
    the output guard."""
    with replacing(out, force=force, inputs=inputs) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for row in evidence_rows(report):
                writer.writerow(["" if v is None else v for v in _csv_row(row)])
    return Path(out)


def write_leakage_html(report: LeakageReport, out: str | Path, *, force: bool = False, limit: int = 50,
                       inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """The page: the pixel copies, then each influence group's pairs (at most `limit` per group) as thumbnails
    with their evidence."""
    copies = [(c, *map(_thumbnail, report.images_of(c))) for c in report.copies[:limit]]
    groups = []
    for title, pairs in (("Likely copies the models learned from (pixels and significant influence)", report.flagged),
                         ("Strong influence only: look-alikes or altered copies, not pixel copies",
                          report.influence_only)):
        groups.append((title, [(p, *map(_thumbnail, report.images_of(p))) for p in pairs[:limit]]))
    html = PAGE.render(r=report, copies=copies, groups=groups, pval=format_p)
    with replacing(out, force=force, inputs=inputs) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return Path(out)
