"""``lightning-dyn report RUN_DIR``: one self-contained HTML file of a finished run.

Config, summary, every logged scalar as curves (drawn here with matplotlib), the logged
figures and tables, all embedded (images as base64), so the file can be mailed or attached
without the run directory. Reads the run with :func:`lightning_dyn._run_records.read_run_dir`;
imports neither torch nor Lightning.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning_dyn._run_records import RunRecord, read_run_dir

_SPLITS = {"train", "val", "validation", "test"}
_MAX_TABLE_ROWS = 50
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0 0 1em 0; } figcaption { font-size: 0.85em; color: #555; }
.note { color: #666; font-size: 0.9em; }
"""


def panel_of(key: str) -> str:
    """The panel a metric is drawn in: ``train/acc`` and ``test/acc`` share ``acc``; other
    metrics share their namespace (``perp_grad/cos/layer1`` -> ``perp_grad/cos``)."""
    parts = key.split("/")
    if len(parts) > 1 and parts[0] in _SPLITS:
        return "/".join(parts[1:])
    return "/".join(parts[:-1]) if len(parts) > 1 else key


def _panel_order(panel: str) -> tuple[int, str]:
    rank = 0 if "acc" in panel else 1 if "loss" in panel else 2
    return rank, panel


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _draw_panel(panel: str, curves: dict[str, tuple[list[float], list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    try:
        finite = [v for _, values in curves.values() for v in values if math.isfinite(v)]
        for key, (steps, values) in sorted(curves.items()):
            style = "o-" if len(steps) < 3 else "-"
            axis.plot(steps, values, style, label=key, linewidth=1.6, markersize=3)
        # Log scale for a positive quantity over decades (a loss), not for a fraction.
        positive = finite and min(finite) > 0 and max(finite) > 1
        if positive and max(finite) / min(finite) > 1e3:
            axis.set_yscale("log")
        axis.set_title(panel)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    return _png_data_uri(buffer.getvalue())


def _image_uri(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(value: Any, files_dir: Path | None) -> str:
    # A W&B table cell holding an image refers to a file under the run's files/ folder.
    if isinstance(value, dict) and value.get("_type") == "image-file" and files_dir:
        path = files_dir / value.get("path", "")
        if path.is_file():
            return f'<img src="{_image_uri(path)}" alt="{html.escape(path.name)}" width="96">'
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _key_value_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v, None)}</td></tr>"
        for k, v in items.items()
    )
    return f"<table>{rows}</table>"


def _curves_section(record: RunRecord) -> str:
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for key, curve in record.curves.items():
        if curve[0]:
            panels.setdefault(panel_of(key), {})[key] = curve
    if not panels:
        return '<p class="note">No scalar was logged.</p>'
    figures = [
        f'<figure><img src="{_draw_panel(name, panels[name])}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(', '.join(sorted(panels[name])))}</figcaption></figure>"
        for name in sorted(panels, key=_panel_order)
    ]
    return f'<div class="panels">{"".join(figures)}</div>'


def _images_section(record: RunRecord) -> str:
    """The latest image of each key (a figure redrawn every N steps: its final state)."""
    if not record.images:
        return '<p class="note">No figure was logged.</p>'
    parts = []
    for key, files in sorted(record.images.items()):
        path = files[-1][1]
        earlier = f", {len(files) - 1} earlier left out" if len(files) > 1 else ""
        caption = f"{key} ({path.relative_to(record.run_dir)}{earlier})"
        parts.append(
            f'<figure><img src="{_image_uri(path)}" alt="{html.escape(key)}" '
            f'style="max-width:100%"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    return "".join(parts)


def _tables_section(record: RunRecord) -> str:
    if not record.tables:
        return '<p class="note">No table was logged.</p>'
    parts = []
    files_dir = next(iter((record.run_dir / "wandb").glob("*run-*/files")), None)
    for caption, columns, rows in record.tables:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(v, files_dir)}</td>" for v in row) + "</tr>"
            for row in rows[:_MAX_TABLE_ROWS]
        )
        more = len(rows) - _MAX_TABLE_ROWS
        tail = f'<p class="note">{more} more rows.</p>' if more > 0 else ""
        parts.append(f"<h3>{html.escape(caption)}</h3><table><tr>{head}</tr>{body}</table>{tail}")
    return "".join(parts)


def render_report(record: RunRecord) -> str:
    """The HTML text of the report of ``record``."""
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = "".join(f"<li>{html.escape(s)}</li>" for s in record.sources)
    summary = _key_value_table(record.summary) if record.summary else "<p>none</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>lightning-dyn report: {html.escape(record.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>lightning-dyn report: {html.escape(record.name)}</h1>
<p class="note">{html.escape(str(record.run_dir.resolve()))}, made {made}, from:</p>
<ul>{sources}</ul>
<h2>Summary</h2>{summary}
<h2>Curves</h2>{_curves_section(record)}
<h2>Figures</h2>{_images_section(record)}
<h2>Tables</h2>{_tables_section(record)}
<h2>Config</h2><details open>{_key_value_table(record.config)}</details>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``<run_dir>/report.html``)."""
    record = read_run_dir(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(record), encoding="utf-8")
    return path
