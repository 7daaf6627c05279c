"""``report.md`` (and ``report.html``): the run's numbers and pictures on one page.

The report is rebuilt from what the run directory holds, so ``fit`` and ``evaluate``
both refresh it and neither needs to know what the other wrote.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from ..diagnostics.verdicts import beside
from ..errors import UserError
from ..storage.atomic import read_json, write_text
from .layout import EVALUATION

__all__ = ["write_report", "markdown_table"]

CELL = re.compile(r"(?<!\\)\|")  # a cell boundary: a pipe not escaped as \|
TRAIN_FIGURES = [
    ("elbo.png", "ELBO per datapoint during training"),
    ("reconstructions.png", "Test images (top) and decodings of several z ~ q(z|x)"),
    ("samples.png", "Decodings of z ~ p(z)"),
    ("samples_by_class.png", "Decodings of z ~ p(z), one row per class y"),
]
WORKFLOW_FIGURES = [
    ("khat.png", "PSIS k̂ per test point (Yao et al. 2018): < 0.5 good, 0.5–0.7 usable, > 0.7 unreliable"),
    ("khat_worst.png", "Test points with the largest k̂"),
    ("prior_predictive.png", "Prior predictive draws x ~ p(x|z), z ~ p(z)"),
    ("posterior_predictive.png", "Posterior predictive draws x' ~ p(x|z), z ~ q(z|x)"),
    ("ppc.png", "Posterior predictive check on image statistics"),
    ("sbc.png", "Simulation-based calibration: ECDF difference of ranks with 95% bands"),
]


NAME_LISTS = ("latent_sites", "observed_sites")  # lists of a user program's site names, shown in the table


def _figures(lines: list[str], figures: list[tuple[str, str]], folder: Path, prefix: str, absent: dict) -> None:
    """Each figure that was drawn, with its caption; for one that was not, the reason the run recorded."""
    for name, caption in figures:
        if (folder / name).is_file():
            lines += [f"![{caption}]({prefix}{name})", "", f"*{caption}*", ""]
        elif isinstance(absent, dict) and isinstance(absent.get(name), str):
            lines += [f"*{caption} (`{name}`): not drawn, {absent[name]}.*", ""]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row and one row of cells a list (the one table writer of reports)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _table(d: dict, notes: dict[str, str] | None = None) -> list[str]:
    """Quantity and value, and where ``notes`` has one for the quantity, its verdict beside it."""
    rows = [[k, _fmt(v)] for k, v in d.items() if not isinstance(v, (dict, list))]
    rows += [[k, ", ".join(f"`{s}`" for s in v)] for k, v in d.items() if k in NAME_LISTS and isinstance(v, list)]
    if not notes:
        return markdown_table(["quantity", "value"], rows).splitlines()
    rows = [row + [notes.get(row[0], "").replace("|", "\\|")] for row in rows]  # q(z|x): a pipe, not a cell
    return markdown_table(["quantity", "value", "verdict"], rows).splitlines()


def _read(path: Path) -> dict | None:
    """A JSON table, or ``None`` where it is missing or unreadable (the report shows what it can)."""
    try:
        value = read_json(path, "table")
    except UserError:
        return None
    return value if isinstance(value, dict) else None


def _versions(table: dict) -> list[str]:
    """One line naming the library versions that produced ``table``'s numbers, where it records them."""
    versions = table.get("versions")
    if not isinstance(versions, dict) or not versions:
        return []
    return ["Produced with " + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".", ""]


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    metrics, evaluation = _read(run_dir / "metrics.json"), _read(run_dir / EVALUATION / "evaluation.json")
    lines = [f"# ppl_vae run `{run_dir.name}`", ""]
    if metrics:
        lines += ["## Training", "", *_table(metrics), "", *_versions(metrics)]
    _figures(lines, TRAIN_FIGURES, run_dir / "figures", "figures/", (metrics or {}).get("figures_absent", {}))
    if evaluation:
        settings = _read(run_dir / EVALUATION / "settings.json") or {}
        data, point = settings.get("data") or {}, settings.get("checkpoint") or {}
        lines += ["## Bayesian workflow", ""]
        if data.get("name") and "epoch" in point:
            lines += [f"Evaluated on `{data['name']}` after epoch {point['epoch']} (step {point.get('step')}).", ""]
        lines += [*_table(evaluation, beside(evaluation.get("verdicts", {}))), "", *_versions(evaluation)]
        figures = run_dir / EVALUATION / "figures"
        _figures(lines, WORKFLOW_FIGURES, figures, f"{EVALUATION}/figures/", evaluation.get("figures_absent", {}))
    text = "\n".join(lines)
    write_text(run_dir / "report.md", text)
    write_text(run_dir / "report.html", _html(lines))
    return run_dir / "report.md"


def _html(lines: list[str]) -> str:
    """The same page as HTML: headings, one table per run of table rows, figures with captions."""
    body, in_table = [], False
    for line in lines:
        is_row = line.startswith("|")
        if in_table and not is_row:
            body.append("</table>")
        if is_row and not in_table:
            body.append("<table>")
        in_table = is_row
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            caption, src = line[2:].split("](", 1)
            body.append(
                f'<figure><img src="{html.escape(src[:-1])}" style="max-width:100%">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        elif is_row and not line.startswith("| ---"):
            cells = [html.escape(c.strip().replace("\\|", "|")) for c in CELL.split(line.strip().strip("|"))]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if in_table:
        body.append("</table>")
    return "<!doctype html><meta charset='utf-8'><title>ppl_vae report</title>\n" + "\n".join(body) + "\n"
