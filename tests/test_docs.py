"""The docs site's start page is the README (links rewritten for the site)."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_docs_index_is_the_readme():
    readme = (ROOT / "README.md").read_text()
    expected = re.sub(r"\(docs/([a-z_]+\.md)\)", r"(\1)", readme)
    assert (ROOT / "docs" / "index.md").read_text() == expected, (
        "docs/index.md is stale: regenerate it with "
        "sed 's#(docs/\\([a-z_]*\\.md\\))#(\\1)#g' README.md > docs/index.md"
    )
