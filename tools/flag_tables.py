"""Write the flag tables of docs/*.md from the config dataclasses (`--check`: exit 1 when one is stale).

    python tools/flag_tables.py [--check]

A table sits between `<!-- flags: module.Class -->` and `<!-- /flags -->` (distill.cli_args.fill_flag_tables).
"""
import argparse
import sys
from pathlib import Path

from distill.cli_args import fill_flag_tables

DOCS = Path(__file__).resolve().parents[1] / "docs"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is stale")
    check = parser.parse_args().check
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        filled = fill_flag_tables(text)
        if filled != text:
            stale.append(page.name)
            if not check:
                page.write_text(filled, encoding="utf-8")
    print(("stale: " if check else "rewrote: ") + (", ".join(stale) or "none"))
    sys.exit(1 if check and stale else 0)
