"""Docs cannot rot: their code runs, and the events page agrees with `loopkit.EVENTS`.

Every fenced ```python block of README.md and docs/*.md runs, in page order and in
one namespace per page, in a temporary working directory. Blocks that are not
meant to run use another language tag (```text, ```console, ```bash).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loopkit import EVENTS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(BLOCK.findall(page.read_text())):
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as err:  # name the block, so the failing page is obvious
            raise AssertionError(f"{page.name}, python block {i} failed: {err!r}\n{block}") from err


def test_loop_page_documents_every_event_once():
    text = (ROOT / "docs" / "loop.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \|", text, re.M)
    assert sorted(documented) == sorted(EVENTS)
    assert len(documented) == len(set(documented))


def test_mkdocs_nav_names_only_existing_pages():
    nav = re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    missing = [name for name in nav if not (ROOT / "docs" / name).exists()]
    assert not missing


API_BLOCK = re.compile(r"^::: ([\w.]+)\n    options:\n      members:\n((?:        - \w+\n)+)", re.M)


def test_api_pages_document_every_public_name_of_loopkit_and_its_callbacks():
    import importlib

    import loopkit
    import loopkit.callbacks

    documented: dict[str, object] = {}
    pages = sorted((ROOT / "docs" / "api").rglob("*.md"))
    for page in pages:
        for module_name, members in API_BLOCK.findall(page.read_text()):
            module = importlib.import_module(module_name)
            for name in re.findall(r"- (\w+)", members):
                assert name not in documented, f"{name} is documented twice"
                documented[name] = getattr(module, name)
    public = {name: getattr(package, name) for package in (loopkit, loopkit.callbacks) for name in package.__all__}
    assert sorted(documented) == sorted(public)  # a new public name needs its entry on its module's page
    assert all(documented[name] is public[name] for name in public)
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f": {page.relative_to(ROOT / 'docs')}\n" in nav for page in pages)


def test_the_site_links_no_placeholder_url():
    config = (ROOT / "mkdocs.yml").read_text()
    assert "example.invalid" not in config and "example.com" not in config


def test_the_figures_the_pages_show_exist_and_are_made_by_the_figures_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)  # defines FIGURES; runs nothing
    made = {name for _, _, files in make_figures.FIGURES for name in files.values()}
    shown = {name for page in PAGES for name in re.findall(r"\]\(img/([\w./-]+\.png)\)", page.read_text())}
    img = ROOT / "docs" / "img"
    committed = {path.relative_to(img).as_posix() for path in img.rglob("*.png")}
    assert shown <= committed == made  # every figure shown is committed, and the script redraws each
