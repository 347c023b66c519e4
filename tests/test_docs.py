"""The user documentation renders: README.rst and docs/*.rst parse without warnings."""
from __future__ import annotations

from pathlib import Path

import docutils.core
import docutils.utils
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_document_renders_without_warnings(path):
    docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"), source_path=str(path),
        settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL,
                            "report_level": docutils.utils.Reporter.SEVERE_LEVEL + 1})
