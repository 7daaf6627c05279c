"""``report.md`` (and ``report.html``): the run on one page, read from the top.

A summary first — the headline numbers with their uncertainty, one line on whether to trust them
(from :func:`~ppl_vae.diagnostics.verdicts.reliability`), the data, the program, the training,
the versions and the date — then the pictures, then the diagnostics grouped as they are read
(fit, reliability of the estimate, calibration, gaps), each with its unit and its verdict, then
the full config, and last an appendix of every other recorded number. The page is rebuilt from
what the run directory holds, so ``fit`` and ``evaluate`` both refresh it and neither needs to
know what the other wrote. ``report.html`` is the same Markdown rendered by ``markdown-it-py``
with a stylesheet; figures are linked relative to the run directory.
"""

from __future__ import annotations

import datetime
import html
import tomllib
from pathlib import Path

from ..diagnostics.summary import Summary
from ..diagnostics.verdicts import beside, reliability
from ..errors import UserError
from ..storage.atomic import read_json, write_text
from .layout import EVALUATION
from .schema import read_evaluation

__all__ = ["write_report", "markdown_table", "render_html"]

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

NATS = "nats per datapoint"
# The diagnostics as they are read: group -> [(field of the evaluation's Summary, what it is, unit)].
GROUPS: dict[str, list[tuple[str, str, str]]] = {
    "Fit": [
        ("log_px", "held-out log p(x), IWAE-K", NATS),
        ("log_px_se", "its standard error over test points", NATS),
        ("elbo", "held-out ELBO", NATS),
        ("kl", "rate: KL(q(z|x) ‖ p(z))", NATS),
        ("distortion", "distortion: E_q[−log p(x|z)]", NATS),
        ("mse", "mean squared error of the decodings", "per datapoint"),
        ("active_units", "active latent units (Cov_x E_q[z] > 0.01)", "units"),
        ("accuracy", "classification accuracy of q(y|x)", "fraction"),
    ],
    "Reliability of the estimate": [
        ("khat_mean", "mean PSIS k̂", ""),
        ("khat_max", "largest PSIS k̂", ""),
        ("khat_frac_gt_0_7", "share of test points with k̂ > 0.7 (unreliable)", "fraction"),
        ("khat_frac_0_5_to_0_7", "share with 0.5 < k̂ ≤ 0.7 (usable)", "fraction"),
        ("log_px_mc_se", "Monte Carlo SE of one point's log p(x), mean over points", NATS),
        ("log_px_mc_se_rms", "the same, root mean square over points", NATS),
        ("k", "importance samples K per point", ""),
        ("n_points", "test points", ""),
    ],
    "Calibration": [("sbc_pvalue", "SBC: p-value of uniform ranks (Bonferroni over coordinates)", "")],
    "Gaps (Cremer et al. 2018)": [
        ("approximation_gap", "approximation gap: log p(x) − ELBO of the best q in the family", "nats"),
        ("amortization_gap", "amortization gap: ELBO of the best q − ELBO of the encoder's", "nats"),
        ("gap_points", "test points refined", ""),
    ],
}
HIDDEN = {"verdicts", "versions", "figures_absent", "schema"}  # shown elsewhere on the page, not as rows
STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tr:nth-child(even) td { background: #fbfcfd; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: .1rem .3rem;
       border-radius: 4px; }
img { max-width: 100%; border: 1px solid #eaeef2; }
blockquote { margin: 1rem 0; padding: .6rem 1rem; border-left: 4px solid #1a7f37; background: #f0fff4; }
blockquote.warn { border-color: #cf222e; background: #fff5f5; }
em { color: #57606a; }
"""


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row and one row of cells a list (the one table writer of reports).

    Cells are written as given: a pipe inside one is the caller's to escape (:func:`_cell`)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    """``value`` as one table cell: formatted, its pipes escaped (``q(z|x)``), on one line."""
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" if isinstance(v, str) else _fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _read(path: Path) -> dict | None:
    """A JSON table, or ``None`` where it is missing or unreadable (the report shows what it can)."""
    try:
        value = read_json(path, "table")
    except UserError:
        return None
    return value if isinstance(value, dict) else None


def _read_evaluation(run_dir: Path) -> Summary | None:
    """The run's evaluation, or ``None`` where it has none that this ppl_vae can read."""
    try:
        return read_evaluation(run_dir)
    except UserError:
        return None


def _config(run_dir: Path) -> dict:
    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _figures(lines: list[str], figures: list[tuple[str, str]], folder: Path, prefix: str, absent) -> None:
    """Each figure that was drawn, with its caption; for one that was not, the reason the run recorded."""
    for name, caption in figures:
        if (folder / name).is_file():
            lines += [f"![{caption}]({prefix}{name})", "", f"*{caption}*", ""]
        elif isinstance(absent, dict) and isinstance(absent.get(name), str):
            lines += [f"*{caption} (`{name}`): not drawn, {absent[name]}.*", ""]


def _program(metrics: dict) -> str:
    """What was run: a user's program by its files and sites, a built-in one by its parts."""
    if "model" in metrics:
        sha = metrics.get("model_sha256", "")
        text = f"user program `{metrics['model']}`" + (f" (sha256 {sha[:12]}…)" if sha else "")
        if metrics.get("guide") and metrics["guide"] != metrics["model"]:
            text += f", guide `{metrics['guide']}`"
        sites = [f"latent {_fmt(metrics['latent_sites'])}"] if metrics.get("latent_sites") else []
        sites += [f"observed {_fmt(metrics['observed_sites'])}"] if metrics.get("observed_sites") else []
        plate = f", data plate `{metrics['data_plate']}`" if metrics.get("data_plate") else ""
        return text + (f"; sites: {'; '.join(sites)}" if sites else "") + plate
    parts = [f"{metrics.get('likelihood', '?')} likelihood"]
    if metrics.get("likelihood", "").startswith("normal"):
        parts[0] += f" (σ = {metrics.get('sigma')})"
    parts += [f"{metrics.get('prior', '?')} prior", f"{metrics.get('guide', '?')} guide"]
    return "built-in VAE: " + ", ".join(parts) + f", latent dimension {metrics.get('latent_dim', '?')}"


def _summary(run_dir: Path, metrics: dict | None, evaluation: Summary | None, config: dict) -> list[str]:
    lines = ["## Summary", ""]
    if evaluation:
        lines += [
            f"**log p(x) = {evaluation.log_px:.2f} ± {evaluation.log_px_se:.2f} {NATS}** "
            f"(IWAE-{evaluation.k} on {evaluation.n_points} test points; ± one standard error over points) · "
            f"ELBO {evaluation.elbo:.2f} · KL {evaluation.kl:.2f} nats",
            "",
        ]
        trustworthy, line = reliability(evaluation)
        lines += [f"> {'✅' if trustworthy else '⚠️'} **Reliability:** {line}.", ""]
    elif metrics:
        lines += [
            f"**test ELBO = {metrics['test_elbo']:.2f} {NATS}** after {metrics.get('epochs')} epochs "
            f"(`ppl-vae evaluate {run_dir}` adds log p(x) and its diagnostics)",
            "",
        ]
    rows = []
    data = config.get("data", {})
    if metrics:
        size = f"{metrics.get('n_train', '?')} training and {metrics.get('n_test', '?')} test points"
        labelled = f", {metrics['n_labelled']} labelled" if metrics.get("n_labelled") else ""
        rows.append(["data", f"`{metrics.get('data', data.get('name', '?'))}`: {size}{labelled}"])
        rows.append(["program", _cell(_program(metrics))])
        best = f", best validation epoch {metrics['best_epoch']} kept" if metrics.get("best_epoch") else ""
        params = metrics.get("parameters")
        params = f"{params:,}" if isinstance(params, int) else "?"
        seconds = metrics.get("seconds") if isinstance(metrics.get("seconds"), (int, float)) else 0.0
        rows.append(
            [
                "training",
                f"{metrics.get('epochs')} epochs in {seconds:.1f} s, {metrics.get('step', '?')} step, "
                f"{params} parameters{best}",
            ]
        )
    versions = (metrics or {}).get("versions") or (evaluation and evaluation.versions)
    if isinstance(versions, dict) and versions:
        rows.append(["versions", ", ".join(f"{name} {version}" for name, version in versions.items())])
    stamp = run_dir / "metrics.json"
    if stamp.is_file():
        when = datetime.datetime.fromtimestamp(stamp.stat().st_mtime, datetime.UTC)
        rows.append(["trained", when.strftime("%Y-%m-%d %H:%M UTC")])
    if rows:
        lines += markdown_table(["", ""], rows).splitlines() + [""]
    return lines


def _diagnostics(evaluation: Summary, settings: dict) -> list[str]:
    notes = beside(evaluation.verdicts)
    lines = ["## Diagnostics", ""]
    data, point = settings.get("data") or {}, settings.get("checkpoint") or {}
    if data.get("name") and "epoch" in point:
        lines += [f"Evaluated on `{data['name']}` after epoch {point['epoch']} (step {point.get('step')}).", ""]
    for group, keys in GROUPS.items():
        rows = [
            [_cell(what), _cell(getattr(evaluation, key)), unit, _cell(notes.get(key, ""))]
            for key, what, unit in keys
            if getattr(evaluation, key) is not None
        ]
        if rows:
            lines += [
                f"### {group}",
                "",
                *markdown_table(["quantity", "value", "unit", "verdict"], rows).splitlines(),
                "",
            ]
    return lines


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    metrics, evaluation = _read(run_dir / "metrics.json"), _read_evaluation(run_dir)
    config = _config(run_dir)
    lines = [f"# ppl_vae run `{run_dir.name}`", "", *_summary(run_dir, metrics, evaluation, config)]
    lines += ["## Figures", ""]
    _figures(lines, TRAIN_FIGURES, run_dir / "figures", "figures/", (metrics or {}).get("figures_absent", {}))
    if evaluation:
        figures = run_dir / EVALUATION / "figures"
        _figures(lines, WORKFLOW_FIGURES, figures, f"{EVALUATION}/figures/", evaluation.figures_absent)
        lines += _diagnostics(evaluation, _read(run_dir / EVALUATION / "settings.json") or {})
    if config and metrics and "model" in metrics:  # a user's program: the built-in model's options did not run
        config["model"] = {k: v for k, v in config.get("model", {}).items() if k in ("program", "latent_dim")}
        config["guide"] = {k: v for k, v in config.get("guide", {}).items() if k == "name"}
    if config:
        rows = [
            [f"`{section}.{key}`", f"`{value}`"] for section, values in config.items() for key, value in values.items()
        ]
        lines += [
            "## Configuration",
            "",
            "From `config.toml`:",
            "",
            *markdown_table(["option", "value"], rows).splitlines(),
            "",
        ]
    shown = {key for keys in GROUPS.values() for key, _, _ in keys} | HIDDEN
    rest = [[f"`{k}`", _cell(v)] for k, v in (metrics or {}).items() if k not in HIDDEN]
    recorded = sorted(evaluation.to_json().items()) if evaluation else []  # as evaluation.json lists them
    rest += [[f"`evaluation.{k}`", _cell(v)] for k, v in recorded if k not in shown]
    if rest:
        lines += [
            "## Appendix: every other recorded number",
            "",
            *markdown_table(["key", "value"], rest).splitlines(),
            "",
        ]
    text = "\n".join(lines)
    write_text(run_dir / "report.md", text)
    write_text(run_dir / "report.html", render_html(text, f"ppl_vae run {run_dir.name}"))
    return run_dir / "report.md"


def render_html(markdown: str, title: str) -> str:
    """The Markdown page as a standalone HTML document: CommonMark with tables, and a stylesheet."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = body.replace("<blockquote>\n<p>⚠️", '<blockquote class="warn">\n<p>⚠️')
    return (
        f"<!doctype html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n<title>{html.escape(title)}</title>\n"
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
