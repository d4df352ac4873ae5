"""Static checks on the web page's files: no HTML parsing of strings, nothing fetched from outside."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
SCRIPTS = sorted(STATIC.glob("*.js"))

# Every sink that parses a string as HTML or code.
HTML_SINKS = re.compile(
    r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|createContextualFragment"
    r"|DOMParser|\beval\s*\(|new\s+Function\s*\(|setTimeout\s*\(\s*['\"`]|srcdoc"
)


def test_the_page_files_exist() -> None:
    for name in ("index.html", "app.js", "styles.css"):
        assert (STATIC / name).is_file(), name
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_html_sinks_in_scripts(script: Path) -> None:
    hits = [
        f"{script.name}:{number}: {line.strip()}"
        for number, line in enumerate(script.read_text().splitlines(), 1)
        if HTML_SINKS.search(line)
    ]
    assert hits == []


def test_works_offline_and_has_no_inline_code() -> None:
    for path in STATIC.iterdir():
        if path.suffix not in {".html", ".js", ".css", ".svg"}:
            continue
        text = path.read_text()
        # no CDN, web font or remote resource (the SVG namespace URI is not a fetch)
        remote = [
            url
            for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
            if not url.startswith("http://www.w3.org/")
        ]
        assert remote == [], (path.name, remote)
        assert "@import" not in text and "@font-face" not in text, path.name
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # no inline scripts
    assert re.findall(r"\son[a-z]+\s*=", html) == []  # no inline handlers
    assert 'type="module"' in html


def test_disclaimer_from_seed_is_on_the_page() -> None:
    html = (STATIC / "index.html").read_text()
    for text in (
        "Medical Disclaimer",
        "FOR RESEARCH AND EDUCATIONAL PURPOSES ONLY",
        "Not FDA cleared or CE marked for clinical use",
        "All medical imaging must be reviewed by qualified radiologists",
        "The authors and contributors assume NO responsibility",
    ):
        assert text in html, text
