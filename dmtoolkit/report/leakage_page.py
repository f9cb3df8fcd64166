"""What a data team acts on: the leakage evidence as its own HTML page (thumbnails side by side) and as CSV.

Both list every pair with evidence — flagged likely copies first, then look-alikes (strong influence only)
and near duplicates whose influence is not significant — with p, q, pixel score and category, the
threshold used and the source example ids to remove.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

from dmtoolkit.analyze.results import LeakageReport, LeakPair
from dmtoolkit.atomic import replacing
from dmtoolkit.report.html import _data_uri, format_p

CSV_COLUMNS = ("category", "flagged", "source", "source_id", "source_label", "target", "target_label", "influence",
               "p_value", "q_value", "pixel_score", "feature_score")

PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>Leakage report: {{ r.file }}</title>
<style>body{font-family:sans-serif;margin:2em} td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
img{image-rendering:pixelated;width:64px;height:64px;border:1px solid #ccc}</style></head><body>
<h1>Leakage report</h1>
<p><strong>{{ r.message }}</strong></p>
<p>Estimate: {{ r.file }} ({{ r.estimator }}). Threshold: Benjamini–Hochberg at FDR {{ (100 * r.fdr) | round(2) }}%
on influence p-values ({{ r.evidence }}); a near duplicate has pixel score &ge; {{ r.near_duplicate }}
(shift-tolerant correlation of the grey images). {{ r.features }}.</p>
<p>Source example ids to remove: {{ r.removal_ids | join(", ") if r.removal_ids else "none" }}</p>
{% for title, rows in groups %}
<h2>{{ title }} ({{ rows | length }})</h2>
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


def evidence_rows(report: LeakageReport) -> list[LeakPair]:
    """Every pair with evidence, flagged first: likely copies, then influence only, then near duplicate only."""
    return [*report.flagged, *report.influence_only, *report.near_duplicate_only]


def write_leakage_csv(report: LeakageReport, out: str | Path, *, force: bool = False,
                      inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """One row per pair with evidence (`evidence_rows`), columns CSV_COLUMNS (through the output guard)."""
    with replacing(out, force=force, inputs=inputs) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for p in evidence_rows(report):
                writer.writerow([getattr(p, c) for c in CSV_COLUMNS])
    return Path(out)


def write_leakage_html(report: LeakageReport, out: str | Path, *, force: bool = False, limit: int = 50,
                       inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """The page: each group's pairs (at most `limit` per group) as thumbnails with their evidence."""
    groups = []
    for title, pairs in (("Likely copies (flagged)", report.flagged),
                         ("Strong influence only: look-alikes, not copies", report.influence_only),
                         ("Near duplicates whose influence is not significant", report.near_duplicate_only)):
        groups.append((title, [(p, *map(_thumbnail, report.images_of(p))) for p in pairs[:limit]]))
    html = PAGE.render(r=report, groups=groups, pval=format_p)
    with replacing(out, force=force, inputs=inputs) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return Path(out)
