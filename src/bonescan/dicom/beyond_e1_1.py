"""bonescan's decisions for identifying content that PS3.15 Table E.1-1 does not list (issue 14, point 3).

The table covers attributes by name; free text and UIDs elsewhere can still carry a name, a date or a
site. Each decision here only removes more than the Basic Profile; the anonymizer applies them and the
residual-PHI scan treats the input values of every cleaned attribute as identifying.

Per attribute (action codes as in the table: X remove, Z empty, D dummy, U keyed UID remapping):

=================================  ====  ======================================================
attribute                          act.  why
=================================  ====  ======================================================
ContentLabel (0070,0080) CS        D     Type 1 in presentation states and segmentations; users
                                         type patient names and dates into it
ContentDescription (0070,0081) LO  Z     Type 2 free text
DocumentTitle (0042,0010) ST       Z     Type 2; PDF titles are usually the file name (names)
ImageID (0054,0400) SH             X     Type 3 NM label, often "<name> WB"
CodingSchemeUID (0008,010C) UI     U     local schemes' UIDs embed a site root and a date
ContextGroupExtensionCreatorUID    U     an organisation's root, often with a date
(0008,010D) UI
=================================  ====  ======================================================

Rules by kind (for attributes outside the table and outside the list above):

* ``CodeMeaning`` of a code from a coding scheme that is not a published terminology (local "99..."
  schemes, "L", "LOCAL", a department's own) is free text: D. Its ``CodingSchemeDesignator`` names
  the site ("99UKHD"): D, the private designator ``LOCAL_SCHEME_DUMMY``. Codes of ``STANDARD_SCHEMES``
  keep both, the meaning being the terminology's text (view codes, radiopharmaceuticals, anatomy).
* Long free text (LT, ST, UT, UC) outside the table: D ("ANONYMOUS"), as the table's D sequences
  already do for SR TextValue. Comments (keyword contains "Comment") and person names (PN): X.
* Every other UI outside the table: U unless it names a class or a transfer syntax (keyword contains
  "Class" or "TransferSyntax") or is registered in PS3.6 (well-known UIDs stay as they are).
* TM outside the table: shifted like the table's C rows (times move with dates).
"""

from __future__ import annotations

# keyword -> action code
ACTIONS: dict[str, str] = {
    "ContentLabel": "D",
    "ContentDescription": "Z",
    "DocumentTitle": "Z",
    "ImageID": "X",
    "CodingSchemeUID": "U",
    "ContextGroupExtensionCreatorUID": "U",
}

# PS3.16 Table 8-1 designators of published terminologies whose CodeMeaning is dictionary text.
STANDARD_SCHEMES = frozenset({
    "DCM", "SCT", "SRT", "SNM3", "LN", "UCUM", "FMA", "RADLEX", "NCIt", "UMLS", "MSH", "I10", "I9C",
    "I10P", "ICD10", "ICD9CM", "ICDO3", "ACR", "UBERON", "NEU", "MDC", "BARI", "ISO639_1", "ISO639_2",
    "ISO3166_1", "RFC5646", "ATC", "RXNORM", "NDC", "HPC", "MGI", "PUBCHEM_CID", "NCBI", "CD2", "C4", "C5",
    "DC", "ITIS_TSN", "NYUMCCG", "IBSI", "ISO_OID", "HGNC", "LNC", "NCDR", "POS", "SNM", "ART", "CHV",
})  # fmt: skip

LONG_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC"})
LOCAL_SCHEME_DUMMY = "99ANONYMOUS"  # PS3.16 8.2: private coding scheme designators start with "99"


def is_local_code(item_scheme: str) -> bool:
    """True if a code of this CodingSchemeDesignator has free-text meaning (not a published scheme)."""
    return item_scheme.strip() not in STANDARD_SCHEMES | {LOCAL_SCHEME_DUMMY}


def keeps_uid(keyword: str) -> bool:
    """True for UI attributes outside the table that name a class or a syntax, never an instance."""
    return "Class" in keyword or "TransferSyntax" in keyword
