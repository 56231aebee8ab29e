"""The curation report: one HTML page (no JavaScript, no plotting library) with the counts,
histograms of the measurements (inline SVG, kept and rejected clips stacked, the thresholds
marked) and thumbnails of kept clips and of each rejection reason (the PNG files the job wrote
under output_dir/thumbs/ with --report)."""

from __future__ import annotations

import collections
import html
import math
import os

import numpy as np

from sora_jax.captioning import manifest

REPORT = "report.html"
# (field, label, log scale, (threshold fields of filters.Thresholds))
MEASURES = (
    ("duration", "duration (s)", False, ()),
    (
        "motion",
        "motion (mean |luma change| over measure.motion_seconds)",
        False,
        ("min_motion", "max_motion"),
    ),
    ("sharpness", "sharpness (Laplacian variance, log10)", True, ("min_sharpness",)),
    ("brightness", "brightness (mean luma, 0..1)", False, ("min_brightness", "max_brightness")),
    ("aesthetic", "aesthetic score", False, ("min_aesthetic",)),
    ("text_area", "text area (fraction)", False, ("max_text_area",)),
)
_W, _H, _PAD = 360, 140, 24


def histogram_svg(kept, rejected, bins: int = 24, log: bool = False, marks=()) -> str:
    """An inline SVG bar chart of two value lists (kept green, rejected red, stacked; at least
    one value), with dashed vertical lines at the `marks` near the data."""
    f = (lambda v: math.log10(max(v, 1e-6))) if log else (lambda v: float(v))
    k = np.asarray([f(v) for v in kept], np.float64)
    r = np.asarray([f(v) for v in rejected], np.float64)
    both = np.concatenate([k, r])
    lo, hi = float(both.min()), float(both.max())
    # A threshold far outside the data (e.g. max_motion = 1) would squash the bars into one
    # bin: only marks within one data span of the data are drawn.
    span = hi - lo if hi - lo > 1e-9 else max(abs(lo), 1.0) * 0.5
    marks = [f(m) for m in marks]
    marks = [m for m in marks if lo - span <= m <= hi + span]
    lo, hi = min([lo, *marks]), max([hi, *marks])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    hk, _ = np.histogram(k, edges)
    hr, _ = np.histogram(r, edges)
    top = max(int((hk + hr).max()), 1)
    bw = (_W - 2 * _PAD) / bins
    x = lambda v: _PAD + (v - lo) / (hi - lo) * (_W - 2 * _PAD)  # noqa: E731
    parts = [f'<svg width="{_W}" height="{_H}" xmlns="http://www.w3.org/2000/svg">']
    base = _H - _PAD
    for i in range(bins):
        for count, below, colour in ((hk[i], 0, "#3a3"), (hr[i], hk[i], "#c33")):
            if count:
                h = count / top * (base - 8)
                y = base - below / top * (base - 8) - h
                parts.append(
                    f'<rect x="{_PAD + i * bw:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" '
                    f'height="{h:.1f}" fill="{colour}"/>'
                )
    for m in marks:
        parts.append(
            f'<line x1="{x(m):.1f}" x2="{x(m):.1f}" y1="4" y2="{base}" stroke="#33c" '
            f'stroke-dasharray="3,2"/>'
        )
    parts.append(f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{base}" y2="{base}" stroke="#000"/>')
    for v, anchor in ((lo, "start"), (hi, "end")):
        parts.append(
            f'<text x="{x(v):.1f}" y="{_H - 6}" font-size="10" text-anchor="{anchor}">'
            f"{v:.3g}</text>"
        )
    parts.append(f'<text x="{_PAD}" y="12" font-size="10">max {top}</text></svg>')
    return "".join(parts)


def _thumbs(rows, limit: int) -> str:
    cells = []
    for row in rows[:limit]:
        tip = html.escape(
            f"{row['id']} | {row.get('duration', 0):.2f}s motion {row.get('motion', 0):.4f} "
            f"sharpness {row.get('sharpness', 0):.0f} brightness {row.get('brightness', 0):.2f}"
            + (f" | duplicate of {row['duplicate_of']}" if row.get("duplicate_of") else "")
        )
        img = (
            f'<img src="{html.escape(row["thumbnail"])}" title="{tip}" height="72">'
            if row.get("thumbnail")
            else f'<span title="{tip}">[no thumbnail]</span>'
        )
        cells.append(
            f"<figure>{img}<figcaption>{html.escape(str(row['id']))[-40:]}</figcaption></figure>"
        )
    return "<div class=grid>" + "".join(cells) + "</div>"


def render(kept: list[dict], rejected: list[dict], thresholds, thumbnails: int = 24) -> str:
    """The report page of kept and rejected clip rows."""
    reasons = collections.Counter(r for row in rejected for r in row.get("reasons", []))
    out = [
        "<!doctype html><meta charset=utf-8><title>curation report</title>",
        "<style>body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap}"
        "figure{margin:3px;font-size:9px;text-align:center}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}.charts{display:flex;flex-wrap:wrap}"
        ".charts div{margin:4px}</style>",
        "<h1>Curation report</h1>",
        f"<p>{len(kept)} clips kept, {len(rejected)} rejected "
        '(<span style="color:#3a3">kept</span> / <span style="color:#c33">rejected</span>'
        " in the histograms; dashed: thresholds).</p>",
        "<table><tr><th>rejection reason</th><th>clips</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(reasons.items())
        )
        + "</table><div class=charts>",
    ]
    for field, label, log, names in MEASURES:
        k = [row[field] for row in kept if row.get(field) is not None]
        r = [row[field] for row in rejected if row.get(field) is not None]
        if not k and not r:
            continue
        marks = [getattr(thresholds, n) for n in names]
        marks = [m for m in marks if not (log and m <= 0)]
        out.append(
            f"<div><b>{html.escape(label)}</b><br>{histogram_svg(k, r, log=log, marks=marks)}</div>"
        )
    out.append("</div>")
    out.append(f"<h2>Kept ({len(kept)})</h2>" + _thumbs(kept, thumbnails))
    for reason in sorted(reasons):
        rows = [row for row in rejected if reason in row.get("reasons", [])]
        out.append(
            f"<h2>Rejected: {html.escape(reason)} ({len(rows)})</h2>" + _thumbs(rows, thumbnails)
        )
    return "\n".join(out) + "\n"


def write(output_dir: str, thresholds, thumbnails: int = 24) -> str:
    """Writes output_dir/report.html from the merged manifests; returns its path."""
    from apache_beam.io.filesystems import FileSystems

    kept = manifest.read_jsonl(os.path.join(output_dir, "manifest.jsonl"))
    rejected = manifest.read_jsonl(os.path.join(output_dir, "rejected.jsonl"))
    path = os.path.join(output_dir, REPORT)
    with FileSystems.create(path) as f:
        f.write(render(kept, rejected, thresholds, thumbnails).encode("utf-8"))
    return path
