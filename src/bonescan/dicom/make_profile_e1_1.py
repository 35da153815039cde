"""Generate ``profile_e1_1.py`` (DICOM PS3.15 Table E.1-1 as data) from machine-readable sources.

Run ``python -m bonescan.dicom.make_profile_e1_1`` to rewrite the table, ``--check`` to fail if the
committed one differs (``tests/dicom/test_profile_e1_1.py`` does the same).

Sources, merged by tag:

* ``ps3_15_e1_1_2024e.json`` (committed next to this file): ``standard/confidentiality_profile_attributes.json``
  of innolitics/dicom-standard (MIT, see ``ps3_15_e1_1_2024e.LICENSE.txt``), last changed in commit
  8670abdd9ad16c61af5146ef857899699bdd9c5f, parsed from the standard's HTML edition 2024e. It has
  every column of the table: the Basic Profile and the ten option columns.
* ``dicom-anonymizer`` 2.1.0 (BSD-3-Clause, a pinned dev dependency),
  ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``: the Basic Profile column of
  edition 2026c (per-action tag lists, attribute names as comments). It adds the rows newer than
  2024e (gender identity, names to use, pronouns ...); it has no option columns.

Merge rules: the Basic Profile code is the 2026c one, and must equal the 2024e code on every row both
have (else generation fails); option columns come from 2024e. A row only in 2026c gets no option codes
except "C" in the Retain Longitudinal Modified Dates column when the attribute is a date or time (VR
DA/DT/TM in pydicom's dictionary, or, for attributes newer than it, a name ending in Date, Time or
DateTime) -- the rule the 2024e column follows for 162 of its 165 temporal rows (not for the birth date
and time, which the option does not retain, nor GPS Time Stamp); it is the one judgement in the table.
Keywords are pydicom's; attributes newer than pydicom 3.0's dictionary get one made from the name.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag

HERE = Path(__file__).resolve().parent
SOURCE_2024E = HERE / "ps3_15_e1_1_2024e.json"
SOURCE_2024E_SHA256 = "a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6"
TARGET = HERE / "profile_e1_1.py"
EDITION = "2026c"

# source column -> Row field, in the order of PS3.15 Table E.1-1
OPTION_COLUMNS = {
    "rtnLongModifDatesOpt": "modified_dates",
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_full_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
_ACTION_LISTS = {  # dicom-anonymizer list name -> Basic Profile code
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}  # fmt: skip
_ENTRY = re.compile(r"\((0x[0-9A-Fa-f]{4}),\s*(0x[0-9A-Fa-f]{4})(?:,\s*(0x[0-9A-Fa-f]{4}),\s*(0x[0-9A-Fa-f]{4}))?\),?\s*#\s*(.+)")


class SourceRow(NamedTuple):
    tag: int  # single tag, or the value of a repeating-group row
    mask: int  # 0xFFFFFFFF for a single tag
    name: str
    basic: str
    options: dict[str, str]


class SourceError(ValueError):
    """The sources disagree or are not the pinned files."""


def load_2024e(path: Path = SOURCE_2024E) -> dict[int, SourceRow]:
    """Single-tag rows of the innolitics 2024e file (repeating groups and private rows are rules)."""
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != SOURCE_2024E_SHA256:
        raise SourceError(f"{path.name} is not the pinned innolitics file (sha256 differs)")
    rows = {}
    for entry in json.loads(raw):
        ident = entry["id"]
        if not re.fullmatch(r"[0-9a-fA-F]{8}", ident):
            continue  # (50XX,XXXX), (60XX,3000), (60XX,4000), (GGGG,EEEE) odd: handled as repeating rows/rules
        options = {field: entry.get(column, "") for column, field in OPTION_COLUMNS.items()}
        tag = int(ident, 16)
        rows[tag] = SourceRow(tag, 0xFFFFFFFF, entry["name"], entry["basicProfile"], options)
    return rows


def load_2026c() -> dict[tuple[int, int], SourceRow]:
    """Every row of dicom-anonymizer's 2026c database, keyed by (value, mask)."""
    try:
        from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as db
    except ImportError as exc:  # a dev dependency: `pip install dicom-anonymizer==2.1.0`
        raise SourceError("dicom-anonymizer 2.1.0 (dev dependency) is needed to generate the table") from exc
    text = inspect.getsource(db)
    names: dict[tuple[int, ...], str] = {}
    for m in _ENTRY.finditer(text):
        key = tuple(int(g, 16) for g in m.groups()[:4] if g is not None)
        names[key] = m[5].strip()
    rows: dict[tuple[int, int], SourceRow] = {}
    for list_name, code in _ACTION_LISTS.items():
        for entry in getattr(db, list_name):
            if len(entry) == 2:
                value, mask = (entry[0] << 16) | entry[1], 0xFFFFFFFF
            else:
                value, mask = (entry[0] << 16) | entry[1], (entry[2] << 16) | entry[3]
            if (value, mask) in rows:
                raise SourceError(f"({value >> 16:04X},{value & 0xFFFF:04X}) listed under two actions")
            rows[(value, mask)] = SourceRow(value, mask, names.get(tuple(entry), ""), code, {})
    return rows


def keyword(tag: int, name: str) -> str:
    """pydicom's keyword, or one made from the standard's name ("Person Names to Use Sequence")."""
    known = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
    if known:
        return known
    words = re.findall(r"[A-Za-z0-9]+", name.replace("'s", ""))
    return "".join(w[0].upper() + w[1:] for w in words)


def is_temporal(tag: int, name: str) -> bool:
    if dictionary_has_tag(tag):
        return dictionary_VR(tag) in ("DA", "DT", "TM")
    return re.search(r"(Date|Time|DateTime)$", name.strip()) is not None


def merge(rows_2024e: dict[int, SourceRow], rows_2026c: dict[tuple[int, int], SourceRow]) -> dict[str, Any]:
    """The table: {"rows": [(tag, keyword, basic, *options)], "repeating": [(value, mask, keyword, basic)]}."""
    single = {value: row for (value, mask), row in rows_2026c.items() if mask == 0xFFFFFFFF}
    for tag, old in rows_2024e.items():
        new = single.get(tag)
        if new is None:
            raise SourceError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is in 2024e but not in 2026c")
        if new.basic != old.basic:
            raise SourceError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): 2024e says {old.basic}, 2026c {new.basic}")
    out_rows = []
    for tag in sorted(single):
        row = single[tag]
        if tag in rows_2024e:
            options = rows_2024e[tag].options
            name = rows_2024e[tag].name
        else:
            name = row.name
            options = {f: "" for f in OPTION_COLUMNS.values()}
            options["modified_dates"] = "C" if is_temporal(tag, name) else ""
        values = [options[f] for f in OPTION_COLUMNS.values()]
        while len(values) > 1 and not values[-1]:
            values.pop()  # Row's later fields default to ""
        out_rows.append((tag, keyword(tag, name), row.basic, *values))
    repeating = [
        (value, mask, keyword(value, row.name).replace("Xx", ""), row.basic)
        for (value, mask), row in sorted(rows_2026c.items())
        if mask != 0xFFFFFFFF
    ]
    return {"rows": out_rows, "repeating": repeating}


_HEADER = '''"""DICOM PS3.15 Table E.1-1: the Application Level Confidentiality Profile attributes, as data.

GENERATED by ``python -m bonescan.dicom.make_profile_e1_1`` -- do not edit; see that module for the
sources (innolitics/dicom-standard 2024e JSON with every option column, committed; dicom-anonymizer
2.1.0's 2026c Basic Profile lists, a dev dependency) and the merge rules. ``tests/dicom/
test_profile_e1_1.py`` checks that this file is what the generator makes.

Codes are verbatim from the standard: Basic Profile X, Z, D, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*; option
columns K (keep), C (clean), or "" (the Basic Profile applies). Private attributes (odd groups, action
X) are handled by rule, not rows.
"""

from __future__ import annotations

from typing import NamedTuple

EDITION = "{edition}"
OPTION_CODE = "113107"  # Retain Longitudinal Temporal Information with Modified Dates Option (CID 7050)
BASIC_CODE = "113100"  # Basic Application Confidentiality Profile (CID 7050)

ACTION_CODES = frozenset({{"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}})


class Row(NamedTuple):
    """One attribute of Table E.1-1 (option columns in the table's order after the Basic Profile)."""

    tag: int  # (gggg,eeee) as 0xggggeeee
    keyword: str
    basic: str  # Basic Profile action code
    modified_dates: str = ""  # "C" under the Retain Longitudinal ... Modified Dates Option, else ""
    retain_safe_private: str = ""
    retain_uids: str = ""
    retain_device_identity: str = ""
    retain_institution_identity: str = ""
    retain_patient_characteristics: str = ""
    retain_full_dates: str = ""
    clean_descriptors: str = ""
    clean_structured_content: str = ""
    clean_graphics: str = ""


class RepeatingRow(NamedTuple):
    """A Table E.1-1 row naming a whole repeating group: tag & mask == value."""

    value: int
    mask: int
    keyword: str
    basic: str


# fmt: off
ROWS: tuple[Row, ...] = tuple(Row(*r) for r in (
'''

_FOOTER = """))
# fmt: on

REPEATING_ROWS: tuple[RepeatingRow, ...] = (
{repeating}
)

BY_TAG: dict[int, Row] = {{row.tag: row for row in ROWS}}
"""


def render(table: dict[str, Any], edition: str = EDITION) -> str:
    """The text of ``profile_e1_1.py`` for ``table`` (see ``merge``)."""
    lines = [_HEADER.format(edition=edition)]
    for tag, *rest in table["rows"]:
        lines.append(f"    (0x{tag:08x}, " + ", ".join(json.dumps(v) for v in rest) + "),\n")
    repeating = "\n".join(
        f"    RepeatingRow(0x{value:08X}, 0x{mask:08X}, {json.dumps(kw)}, {json.dumps(basic)}),"
        for value, mask, kw, basic in table["repeating"]
    )
    return "".join(lines) + _FOOTER.format(repeating=repeating)


def generate() -> str:
    """The table's text from the pinned sources."""
    return render(merge(load_2024e(), load_2026c()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table differs")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        same = TARGET.read_text() == text
        print(f"{TARGET.name} {'matches' if same else 'DIFFERS from'} its sources")  # a CLI: print is its output
        return 0 if same else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
