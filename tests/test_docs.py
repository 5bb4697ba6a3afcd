"""The house a newcomer enters: a short README whose links resolve, a documentation site whose
pages are all in its navigation, a config reference that lists exactly what the parser accepts,
and code citations of the design notes that point at sections that exist. (The strict MkDocs
build itself is `make docs`, which CI runs after the tests.)"""

from __future__ import annotations

import re
from pathlib import Path

from bench.config import allowed_keys
from bench.keys import reference_markdown

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_one_page_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert targets, "the README links to the documentation"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_every_docs_page_is_in_the_navigation():
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(nav) == pages


def test_config_reference_lists_every_key_the_parser_accepts():
    keys = re.findall(r"^\| `([a-z_.0-9]+)` \|", reference_markdown(), re.M)
    assert sorted(keys) == sorted(allowed_keys())
    row = next(r for r in reference_markdown().splitlines() if r.startswith("| `train.clip` |"))
    assert "`5.0`" in row and "float >= 0" in row  # the default and the bound of the field
    ais = next(r for r in reference_markdown().splitlines() if r.startswith("| `eval.ais_steps`"))
    assert "not part of the run id" in ais


def test_design_notes_cited_by_the_code_exist():
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs/design.md").read_text(), re.M))
    cited = {}
    for path in [*ROOT.glob("bench/**/*.py"), *ROOT.glob("variants/**/*.py")]:
        for n in re.findall(r"docs/design\.md, section (\d+)", path.read_text()):
            cited.setdefault(n, []).append(path.name)
    assert cited, "the code cites its design notes"
    assert set(cited) <= sections, {n: f for n, f in cited.items() if n not in sections}
    assert not [p for p in [*ROOT.glob("bench/**/*.py"), *ROOT.glob("variants/**/*.py")]
                if re.search(r"(?<!docs/)DESIGN\.md", p.read_text())]


def test_readme_layout_names_every_module_of_the_harness():
    """Every sub-package of bench/ and every module of its layers is named in the README's
    layout (report/ and throughput/ are described by what their modules hold)."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    bench = ROOT / "bench"
    packages = [p for p in bench.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    names = [p.name + "/" for p in packages] + ["profiles/"]
    for folder in [bench] + [p for p in packages if p.name not in ("report", "throughput")]:
        names += [f.name for f in folder.glob("*.py") if f.name != "__init__.py"]
    assert len(names) > 30
    missing = [n for n in names if n not in layout]
    assert not missing, f"modules missing from the README's layout: {missing}"
