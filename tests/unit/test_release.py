"""The release bookkeeping agrees with the version (packaging/RELEASING.md)."""

from __future__ import annotations

import datetime
import re
import tomllib
from pathlib import Path

import crate_cli

ROOT = Path(__file__).resolve().parents[2]
HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?$", re.M)


def releases() -> list[tuple[str, str | None]]:
    text = (ROOT / "CHANGELOG.md").read_text()
    return [(m["version"], m["date"]) for m in HEADING.finditer(text)]


def test_the_changelog_starts_with_unreleased_then_this_version() -> None:
    found = releases()
    assert found[0] == ("Unreleased", None)
    assert found[1][0] == crate_cli.__version__, "the newest release is not __version__"
    for version, date in found[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert date is not None, f"release {version} has no date"
        datetime.date.fromisoformat(date)


def test_releases_are_newest_first() -> None:
    found = releases()[1:]
    numbers = [tuple(int(p) for p in v.split(".")) for v, _ in found]
    dates = [d for _, d in found]
    assert numbers == sorted(numbers, reverse=True)
    assert dates == sorted(dates, reverse=True)


def test_this_version_has_release_notes() -> None:
    notes = ROOT / "packaging" / "release-notes" / f"{crate_cli.__version__}.md"
    assert notes.is_file()
    assert notes.read_text().startswith(f"# crate {crate_cli.__version__} ")


def test_the_version_is_written_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "crate_cli.__version__"}
    written = [
        path
        for path in (ROOT / "crate_cli").rglob("*.py")
        if crate_cli.__version__ in path.read_text() and path.name != "__init__.py"
    ]
    assert written == []
