"""Python code blocks in the README and the method cards run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs" / "methods").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{doc.name}:{i}")
    for doc in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL))
]


def test_the_docs_have_code_blocks() -> None:
    assert BLOCKS, "README.md and docs/methods/*.md should show runnable examples"


@pytest.mark.parametrize("block", BLOCKS)
def test_code_block_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # Lightning writes lightning_logs/ into the working directory
    exec(compile(block, "<doc>", "exec"), {"__name__": "__doc_example__"})
