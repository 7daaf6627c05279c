"""Copy a sigma sweep's table and figures into docs/ and splice the table into README.md.

    python docs/embed_sweep.py runs/sigma-sweep

The README's numbers are then the ones the code produced, between the markers
``<!-- sigma-sweep:begin -->`` and ``<!-- sigma-sweep:end -->``.
"""

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- sigma-sweep:begin -->", "<!-- sigma-sweep:end -->"


def main(sweep_dir: str) -> int:
    sweep = Path(sweep_dir)
    target = ROOT / "docs" / "sigma-sweep"
    (target / "figures").mkdir(parents=True, exist_ok=True)
    for name in ("sweep.md", "sweep.csv", "sweep.json"):
        shutil.copy(sweep / name, target / name)
    for png in (sweep / "figures").glob("*.png"):
        shutil.copy(png, target / "figures" / png.name)
    data = json.loads((sweep / "sweep.json").read_text())["data"]
    block = "\n".join(
        [
            BEGIN,
            f"Measured by `make sigma-sweep` on `{data}` (table: `docs/sigma-sweep/sweep.md`):",
            "",
            (target / "sweep.md").read_text().strip(),
            "",
            "![rate-distortion](docs/sigma-sweep/figures/rate_distortion.png)",
            "![identity preservation](docs/sigma-sweep/figures/identity.png)",
            "![decodings of z ~ q(z|x) at each sigma](docs/sigma-sweep/figures/decodings.png)",
            END,
        ]
    )
    readme = (ROOT / "README.md").read_text()
    if BEGIN not in readme or END not in readme:
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    (ROOT / "README.md").write_text(head + block + tail)
    print(f"embedded {sweep}/sweep.md into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
