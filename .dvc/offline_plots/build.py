"""Build template.html, the page `dvc plots show` fills (`plots.html_template` in .dvc/config), with the
vendored Vega, Vega-Lite and Vega-Embed builds inlined, so the plots render with no network.

    python .dvc/offline_plots/build.py          # after replacing a file in vendor/ (README.md says how)

DVC fills a template by string replacement: `{plot_divs}` (required) becomes the plots, `{refresh_tag}`
the auto-refresh meta tag, and its scripts placeholder the renderers' <script> tags, which for Vega
point at cdn.jsdelivr.net. This template leaves that placeholder out and carries the scripts itself;
inlined rather than linked, the page works wherever it is written (`dvc plots show -o DIR`) or copied.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
TEMPLATE = HERE / "template.html"


class Vendored(NamedTuple):
    file: str  # in vendor/, copied from the npm package's build/
    package: str
    version: str
    licence: str  # beside the script in vendor/
    sha256: str


# Load order matters: vega-lite needs the `vega` global, vega-embed both. The 5.x / 6.x lines are those
# DVC's own templates target (their specs declare the Vega-Lite v5 schema).
SCRIPTS = (
    Vendored("vega.min.js", "vega", "5.33.1", "LICENSE.vega",
             "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8"),
    Vendored("vega-lite.min.js", "vega-lite", "5.23.0", "LICENSE.vega-lite",
             "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f"),
    Vendored("vega-embed.min.js", "vega-embed", "6.29.0", "LICENSE.vega-embed",
             "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da"),
)  # fmt: skip

DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")  # dvc_render.html.HTML.embed

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>bonescan - DVC plots</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""

SCRIPT = """    <!-- {package}@{version}, vendor/{file} ({licence}; bundled packages: vendor/THIRD_PARTY_LICENSES.txt) -->
    <script type="text/javascript">
{code}
    </script>"""


def inline_script(entry: Vendored) -> str:
    """The vendored file as an inline <script>, after checking it is the recorded build and safe to inline.

    Raises:
        ValueError: the file differs from the recorded build, or holds text that would end the <script>
            element early or that DVC would replace.
    """
    data = (VENDOR / entry.file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ValueError(
            f"vendor/{entry.file} has sha256 {digest}, not that of {entry.package}@{entry.version} "
            f"({entry.sha256}); update SCRIPTS in {Path(__file__).name} when upgrading"
        )
    code = data.decode("utf-8")
    for text in ("</script", "<!--", *DVC_PLACEHOLDERS):
        if text in code.lower():
            raise ValueError(f"vendor/{entry.file} contains {text!r}: it cannot be inlined in a DVC template")
    return SCRIPT.format(code=code, **entry._asdict())


def build() -> str:
    """The template's text."""
    return PAGE.format(scripts="\n".join(inline_script(entry) for entry in SCRIPTS))


def main() -> None:
    TEMPLATE.write_text(build(), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
