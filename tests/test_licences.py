"""Specification of the licence policy: bonescan is Apache-2.0, so no default dependency is GPL/AGPL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.licences import direct_dependencies, installed_licence, is_copyleft

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.mark.parametrize(
    ("licence", "copyleft"),
    [
        ("GNU General Public License v3 (GPLv3)", True),
        ("GPL-3.0-or-later", True),
        ("AGPL-3.0-only", True),
        ("GNU Affero General Public License v3", True),
        ("GNU Lesser General Public License v2 or later (LGPLv2+)", False),
        ("LGPL-2.1-only", False),
        ("Apache-2.0", False),
        ("MIT License", False),
    ],
)
def test_gpl_and_agpl_count_as_copyleft_and_lgpl_does_not(licence, copyleft):
    assert is_copyleft(licence) is copyleft


def test_no_default_dependency_is_gpl_or_agpl_only_optional_extras_may_be():
    groups = direct_dependencies(PYPROJECT)
    assert groups["pydicom"] == "default" and groups.get("pylibjpeg-libjpeg") == "gpl-decoders"
    offenders = {
        name: licence
        for name, group in groups.items()
        if group == "default" and (licence := installed_licence(name)) and is_copyleft(licence)
    }
    assert not offenders, f"GPL/AGPL default dependencies (move them to an optional extra): {offenders}"
