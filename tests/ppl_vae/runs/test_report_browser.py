"""report.html in a real browser: headless Chromium (Debian's package) loads the page of a trained and
evaluated run; no image is broken, and the screenshot shows a page, not a blank."""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => [i.getAttribute("src"), i.complete, i.naturalWidth]);
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify(images);
  document.body.appendChild(probe);
});
</script>
"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium without a sandbox (CI runs as root), a GPU, or any network of its own."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium) before the tests")
        pytest.skip("chromium is not installed here (apt-get install chromium); CI installs and runs it")
    import ppl_vae
    from ppl_vae.config import EvalConfig
    from ppl_vae.runs.evaluation import evaluate_run
    from tests.conftest import tiny_config

    run = ppl_vae.fit(tiny_config(train={"epochs": 2}), tmp_path_factory.mktemp("browser") / "run", progress=False)
    tiny = EvalConfig(k=5, points=20, gap_points=0, sbc_simulations=20, sbc_draws=9, idata_points=5, idata_draws=2)
    evaluate_run(run, tiny, progress=False)  # its figures live one folder deeper: their links are checked too
    return run.path / "report.html"


def test_every_image_of_the_report_loads_in_chromium(report, tmp_path):
    page = report.read_text(encoding="utf-8")
    probe = report.with_name("probe.html")  # beside the report, so its relative links resolve the same
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = chromium(tmp_path / "profile", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium exited {done.returncode} without the probe's answer: {done.stderr[-2000:]}"
    images = json.loads(html.unescape(found.group(1)))
    sources = [src for src, _, _ in images]
    assert len(images) >= 6, sources  # training's three figures and the evaluation's
    assert any(src.startswith("evaluation/") for src in sources), sources
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert set(sources) == set(re.findall(r'<img src="([^"]+)"', page))  # every figure the page names, and no other


def test_the_report_renders_a_page_not_a_blank(report, tmp_path):
    import matplotlib.image

    shot = tmp_path / "page.png"
    done = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    assert shot.is_file(), f"chromium exited {done.returncode} without a screenshot: {done.stderr[-2000:]}"
    pixels = matplotlib.image.imread(shot)[..., :3]  # (3000, 1200, 3)
    assert pixels.shape[:2] == (3000, 1200)
    ink = (pixels < 0.9).any(axis=-1)  # anything darker than the page's white: text, tables, figures
    assert ink.mean() > 0.02, "the screenshot is (almost) blank"
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows[-1] - rows[0] > 1000, "the page's content does not reach down the window"
