"""Copy a sigma sweep's table and figures into docs/NAME and splice the table into README.md.

    python docs/embed_sweep.py runs/sigma-sweep [NAME]       # NAME defaults to sigma-sweep

The README's numbers are then the ones the code produced, between the markers
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.
"""

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(sweep_dir: str, name: str = "sigma-sweep") -> int:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    sweep = Path(sweep_dir)
    target = ROOT / "docs" / name
    (target / "figures").mkdir(parents=True, exist_ok=True)
    for table in ("sweep.md", "sweep.csv", "sweep.json"):
        shutil.copy(sweep / table, target / table)
    for png in (sweep / "figures").glob("*.png"):
        shutil.copy(png, target / "figures" / png.name)
    data = json.loads((sweep / "sweep.json").read_text())["data"]
    block = "\n".join(
        [
            begin,
            f"Measured by `make {name}` on `{data}` (table: `docs/{name}/sweep.md`):",
            "",
            (target / "sweep.md").read_text().strip(),
            "",
            *[f"![{png.stem}](docs/{name}/figures/{png.name})" for png in sorted((target / "figures").glob("*.png"))],
            end,
        ]
    )
    readme = (ROOT / "README.md").read_text()
    if begin not in readme or end not in readme:
        print(f"README.md has no {begin} ... {end} block", file=sys.stderr)
        return 1
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    (ROOT / "README.md").write_text(head + block + tail)
    print(f"embedded {sweep}/sweep.md into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
