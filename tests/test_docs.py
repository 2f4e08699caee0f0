"""Design citations point at docs/design.md, and every section or issue id they name exists there.

Comments, configs and the README cite design facts as ``docs/design.md §3.5`` (a section),
``docs/design.md B14`` (a known issue of the reference implementation) or ``docs/design.md P3`` (a
performance note); several ids may follow one ``docs/design.md``, separated by commas, slashes or
"and". A bare ``§3.5``, ``B14`` or "spec §" is a citation nobody can open. "paper §x" cites the paper.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SCANNED_DIRS = ("libra", "conf", "experiments", "sweeps", "perf", "tests", "hydra_plugins", "scripts")
SCANNED_FILES = ("README.md", "run.py", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".txt"}

REF = r"(?:§\d+(?:\.\d+)?|[BP]\d{1,2}\b)"
CITATION = re.compile(rf"docs/design\.md((?:(?:\s*[,/]\s*|\s+and\s+|\s+){REF})+)")
UNCITED = re.compile(r"\b[Ss]pec\s*[§BP]\d|\b[BP]\d{1,2}\b|(?<!paper )§\s*\d")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED_DIRS:
        files += [
            p
            for p in sorted((ROOT / folder).rglob("*"))
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def citations(line: str) -> list[str]:
    return [ref for m in CITATION.finditer(line) for ref in re.findall(REF, m.group(1))]


def design_ids() -> set[str]:
    ids = set()
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"## (\d+)\. |### (\d+\.\d+) ", line):
            ids.add(f"§{m.group(1) or m.group(2)}")
        elif m := re.match(r"### ([BP]\d{1,2}) ", line):
            ids.add(m.group(1))
    return ids


def test_the_citation_pattern_reads_lists_and_leaves_bare_codes():
    line = "(docs/design.md §5.2, §6.4/§6.6 and B17) but B18 and §7.1 are bare; paper §3.1 is fine"
    assert citations(line) == ["§5.2", "§6.4", "§6.6", "B17"]
    assert UNCITED.findall(CITATION.sub("", line)) == ["B18", "§7"]
    assert UNCITED.findall("as spec §2.4 says, and spec B14") == ["spec §2", "spec B1"]


def test_design_doc_has_the_numbered_sections_and_issue_ids():
    ids = design_ids()
    assert {"§1", "§2.4", "§3.5", "§7.3", "B6", "B14", "P6"} <= ids


def test_no_line_cites_a_document_readers_cannot_open():
    bad = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if hits := UNCITED.findall(CITATION.sub("", line)):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {hits} in {line.strip()!r}")
    hint = "cite docs/design.md instead (e.g. 'docs/design.md §2.4', 'docs/design.md B14'):\n"
    assert not bad, hint + "\n".join(bad)


def test_every_cited_section_and_issue_exists_in_the_design_doc():
    ids = design_ids()
    missing = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            missing += [f"{path.relative_to(ROOT)}:{n}: {ref}" for ref in citations(line) if ref not in ids]
    assert not missing, "cited but not a heading of docs/design.md:\n" + "\n".join(missing)
