"""Copy a sigma sweep's table and figures into docs/NAME and splice the table into README.md.

    python docs/embed_sweep.py runs/sigma-sweep [NAME]       # NAME defaults to sigma-sweep

The README's numbers are then the ones the code produced, between the markers
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``. What it writes is a function of the sweep's
files alone: the figures are copied without their PNG text and time chunks (matplotlib's
version string), so the same sweep leaves ``git status`` clean.
"""

import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("sweep.md", "sweep.csv", "sweep.json")
# ancillary PNG chunks that say who made a picture and when, not what it shows
UNSHOWN = {b"tEXt", b"zTXt", b"iTXt", b"tIME"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def without_metadata(png: bytes) -> bytes:
    """``png`` without its text and time chunks: the same picture, the same bytes whoever drew it."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    out, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        end = at + 12 + length  # length, type, data, CRC
        if png[at + 4 : at + 8] not in UNSHOWN:
            out.append(png[at:end])
        at = end
    return b"".join(out)


def block(sweep: Path, name: str) -> str:
    """The README block of the sweep in ``sweep``: its table and its figures as copied into docs/NAME."""
    data = json.loads((sweep / "sweep.json").read_text())["data"]
    figures = sorted(png.name for png in (sweep / "figures").glob("*.png"))
    return "\n".join(
        [
            f"<!-- {name}:begin -->",
            f"Measured by `make {name}` on `{data}` (table: `docs/{name}/sweep.md`):",
            "",
            (sweep / "sweep.md").read_text().strip(),
            "",
            *[f"![{Path(png).stem}](docs/{name}/figures/{png})" for png in figures],
            f"<!-- {name}:end -->",
        ]
    )


def embedded(readme: str, name: str) -> str | None:
    """The block between ``name``'s markers in ``readme`` (markers included), or ``None``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in readme or end not in readme.split(begin, 1)[1]:
        return None
    return begin + readme.split(begin, 1)[1].split(end, 1)[0] + end


def main(sweep_dir: str, name: str = "sigma-sweep") -> int:
    sweep = Path(sweep_dir)
    target = ROOT / "docs" / name
    readme = (ROOT / "README.md").read_text()
    old = embedded(readme, name)
    if old is None:
        print(f"README.md has no <!-- {name}:begin --> ... <!-- {name}:end --> block", file=sys.stderr)
        return 1
    (target / "figures").mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        (target / table).write_bytes((sweep / table).read_bytes())
    for stale in (target / "figures").glob("*.png"):  # a figure the sweep no longer draws
        if not (sweep / "figures" / stale.name).exists():
            stale.unlink()
    for png in (sweep / "figures").glob("*.png"):
        (target / "figures" / png.name).write_bytes(without_metadata(png.read_bytes()))
    (ROOT / "README.md").write_text(readme.replace(old, block(sweep, name), 1))
    print(f"embedded {sweep}/sweep.md into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
