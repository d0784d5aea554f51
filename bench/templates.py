"""Synthetic templates for the growth scenario: the shipped web-service template plus N extra rendered files."""

from __future__ import annotations

import shutil
from pathlib import Path

from provisioner.settings import PROJECT_ROOT

BASE_TEMPLATE = "web-service"
EXTRA_DIR = "notes"
# About half a kilobyte of Markdown with a few substitutions, like a typical generated doc.
EXTRA_FILE = """# {{ project.display_name }}: note NUMBER

Owned by {{ params.owner }}; deployed to the `{{ project.environment }}` environment as `{{ project.slug }}`.

- item one: lorem ipsum dolor sit amet, consectetur adipiscing elit
- item two: sed do eiusmod tempor incididunt ut labore et dolore magna aliqua
- item three: ut enim ad minim veniam, quis nostrud exercitation ullamco laboris
"""


def base_file_count() -> int:
    return sum(1 for path in (PROJECT_ROOT / "templates" / BASE_TEMPLATE / "files").rglob("*") if path.is_file())


def growth_template(templates_dir: Path, extra_files: int) -> tuple[str, int]:
    """Create `growth-<total>` in `templates_dir`; returns (template name, total file count)."""
    total = base_file_count() + extra_files
    name = f"growth-{total}"
    target = templates_dir / name
    if target.exists():
        return name, total
    shutil.copytree(PROJECT_ROOT / "templates" / BASE_TEMPLATE, target)
    manifest = target / "template.yaml"
    manifest.write_text(manifest.read_text().replace(f"name: {BASE_TEMPLATE}\n", f"name: {name}\n", 1))
    notes = target / "files" / EXTRA_DIR
    notes.mkdir()
    for number in range(extra_files):
        (notes / f"note-{number:04d}.md").write_text(EXTRA_FILE.replace("NUMBER", str(number)))
    return name, total
