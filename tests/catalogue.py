"""Template catalogues for tests: the shipped one, and `no-overlay`, a web-service whose tree lacks the development
overlay: exactly the bug this product exists to catch. Made from the shipped template so the two never drift."""

from __future__ import annotations

import shutil
from pathlib import Path

from provisioner.settings import PROJECT_ROOT

SHIPPED_TEMPLATES = PROJECT_ROOT / "templates"
BROKEN_TEMPLATE = "no-overlay"


def catalogue_with_broken_template(destination: Path) -> Path:
    shutil.copytree(SHIPPED_TEMPLATES / "web-service", destination / "web-service")
    broken = destination / BROKEN_TEMPLATE
    shutil.copytree(SHIPPED_TEMPLATES / "web-service", broken)
    manifest = broken / "template.yaml"
    manifest.write_text(manifest.read_text().replace("name: web-service", f"name: {BROKEN_TEMPLATE}", 1))
    shutil.rmtree(broken / "files" / "k8s" / "overlays" / "development")
    return destination
