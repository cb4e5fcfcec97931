"""Every citation of the mathematics resolves inside the repository.

Docstrings cite ``docs/math.md §N`` (or a bare ``§N`` in a file that names
docs/math.md); each N must be a numbered heading of docs/math.md. Nothing may
point at material a reader of the repository does not have.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"
CITING_DIRS = ("nifzoo", "launch", "bench", "configs")
SUFFIXES = {".py", ".md", ".sh", ".toml"}
# "§4.2" after "paper " is the paper's own section numbering, not docs/math.md's.
SECTION_RE = re.compile(r"(?<!paper )§(\d+(?:\.\d+)*)")
HEADING_RE = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)
OUTSIDE = ("shared" + "/spec", "shared" + "/paper", "nif-math" + ".md")


def _files(dirs):
  for d in dirs:
    for path in sorted((ROOT / d).rglob("*")):
      if path.suffix in SUFFIXES and path.is_file():
        yield path


def _sections():
  return set(HEADING_RE.findall(MATH.read_text()))


def test_math_doc_has_the_numbered_sections():
  sections = _sections()
  for n in ("1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "2", "3", "4", "4.1",
            "4.2", "5", "5.1", "5.2", "5.3", "5.4", "5.5", "6", "6.1", "6.2"):
    assert n in sections, f"docs/math.md lacks a heading for §{n}"


@pytest.mark.parametrize(
    "path", [p for p in _files(CITING_DIRS) if "§" in p.read_text()],
    ids=lambda p: str(p.relative_to(ROOT)))
def test_section_citations_resolve(path):
  text = path.read_text()
  cited = SECTION_RE.findall(text)
  assert "docs/math.md" in text, (
      f"{path.relative_to(ROOT)} cites {sorted(set(cited))} without naming "
      "docs/math.md")
  missing = sorted(set(cited) - _sections())
  assert not missing, (
      f"{path.relative_to(ROOT)} cites docs/math.md {missing}, which has no "
      "such heading")


def test_some_code_cites_the_math():
  cited = [p for p in _files(("nifzoo",)) if "docs/math.md §" in p.read_text()
           or "``docs/math.md`` §" in p.read_text()]
  assert len(cited) >= 5


def test_nothing_cites_outside_the_repository():
  offenders = []
  for path in _files(CITING_DIRS + ("tests", "docs", "registry", ".ci")):
    text = path.read_text()
    offenders += [f"{path.relative_to(ROOT)}: {o}" for o in OUTSIDE if o in text]
  for path in (ROOT / "README.md", ROOT / "pyproject.toml"):
    offenders += [f"{path.name}: {o}" for o in OUTSIDE if o in path.read_text()]
  assert not offenders, offenders
