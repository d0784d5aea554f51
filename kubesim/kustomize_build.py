"""kustomize-controller's build step, with the real kustomize: `kubectl kustomize` from this venv.

Upstream (fluxcd/kustomize-controller `internal/controller/kustomization_controller.go` reconcile/generate/build, and
fluxcd/pkg `kustomize/kustomize_generator.go`): the artifact is extracted into /tmp/kustomization-<n>, the path must
exist ("kustomization path not found: ..."), the generator writes a kustomization.yaml when the path has none
(listing the manifests it finds) and sets the Kustomization's targetNamespace, patches and images in it, then
kustomize builds it with load restrictions off and plugins disabled. Errors read "kustomize build failed: <error>",
Ready=False reason BuildFailed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import yaml

from provisioner.binaries import bundled_binary

JsonObj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
BUILD_TIMEOUT = 60.0
# The Kustomization spec fields the generator copies into kustomization.yaml (kustomize_generator.go WriteFile).
GENERATOR_FIELDS = ("targetNamespace", "patches", "images")


class BuildError(Exception):
    """A failure kustomize-controller reports as Ready=False reason BuildFailed; str() is its message."""


class PathNotFound(Exception):
    """spec.path is not in the artifact (Ready=False reason ArtifactFailed)."""


class _KubeYamlLoader(yaml.SafeLoader):
    """YAML as Kubernetes reads it (YAML 1.2 core): `on`/`yes` and timestamps stay strings."""


_KubeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_KubeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_documents(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=_KubeYamlLoader) if d is not None]  # a SafeLoader


def extract_artifact(tarball: Path, work_dir: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(work_dir, filter="data")


def resolve_path(work_dir: Path, spec_path: str) -> Path:
    """The directory spec.path names inside the artifact; PathNotFound with upstream's message when it is absent."""
    path = Path(os.path.normpath(work_dir / (spec_path or "./").lstrip("/")))
    if not path.is_relative_to(work_dir) or not path.exists():
        raise PathNotFound(f"kustomization path not found: stat {path}: no such file or directory")
    return path


def kustomization_file(directory: Path) -> Path | None:
    return next((directory / n for n in KUSTOMIZATION_FILES if (directory / n).is_file()), None)


def generate(directory: Path, spec: JsonObj) -> None:
    """kustomize_generator.go WriteFile: make sure `directory` has a kustomization file, then set the Kustomization's
    targetNamespace (kustomize then sets it on every namespaced object), patches and images in it."""
    existing = kustomization_file(directory)
    document: Any
    if existing is None:
        existing = directory / "kustomization.yaml"
        document = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                    "resources": _scan(directory)}
    elif not any(spec.get(field) for field in GENERATOR_FIELDS):
        return  # nothing to add: the file stays byte for byte
    else:
        try:
            document = yaml.safe_load(existing.read_text()) or {}
        except yaml.YAMLError:
            return  # left as it is: kustomize reports the error in its own words
        if not isinstance(document, dict):
            return
    if spec.get("targetNamespace"):
        document["namespace"] = spec["targetNamespace"]
    for patch in spec.get("patches") or []:
        entry: JsonObj = {"patch": patch.get("patch", "")}
        if patch.get("target"):
            entry["target"] = dict(patch["target"])
        document.setdefault("patches", []).append(entry)
    for image in spec.get("images") or []:
        images = document.setdefault("images", [])
        replaced = next((i for i, known in enumerate(images) if known.get("name") == image.get("name")), None)
        if replaced is None:
            images.append(dict(image))
        else:
            images[replaced] = dict(image)
    existing.write_text(yaml.safe_dump(document, sort_keys=False))


def _scan(directory: Path) -> list[str]:
    """generateKustomization: every YAML manifest under `directory`, and each sub-directory with its own
    kustomization file (not descended into), as resources relative to `directory`."""
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        here = Path(root)
        for name in sorted(dirs):
            if kustomization_file(here / name) is not None:
                found.append("./" + (here / name).relative_to(directory).as_posix())
        dirs[:] = sorted(d for d in dirs if kustomization_file(here / d) is None)
        for name in sorted(files):
            path = here / name
            if path.suffix not in (".yaml", ".yml"):
                continue
            try:
                load_documents(path.read_text())
            except (yaml.YAMLError, UnicodeDecodeError) as error:
                # WriteFile wraps it as fmt.Errorf("%v %v", err, CleanDirectory(...)): the second is a nil error.
                raise BuildError(f"failed to decode Kubernetes YAML from {path}: {error} <nil>") from error
            found.append("./" + path.relative_to(directory).as_posix())
    return sorted(found)


def build(directory: Path, timeout: float = BUILD_TIMEOUT) -> list[JsonObj]:
    """`kustomize build directory` (generator.SecureBuild: load restrictions off); the objects, or BuildError."""
    command = [bundled_binary("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise BuildError("kustomize build failed: context deadline exceeded") from error
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        message = "\n".join(lines).removeprefix("error: ") or f"kubectl exited with {done.returncode}"
        raise BuildError(f"kustomize build failed: {message}")
    try:
        objects = load_documents(done.stdout)
    except yaml.YAMLError as error:
        raise BuildError(f"kustomize build failed: {error}") from error
    for obj in objects:
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind") or not (
            isinstance(metadata, dict) and metadata.get("name")
        ):
            # build(): "check if resources conform to the Kubernetes API conventions".
            raise BuildError(f"failed to decode Kubernetes apiVersion, kind and name from: {yaml.safe_dump(obj)}")
    return objects


class BuildCache:
    """Successful builds by (artifact digest, path, generator fields): the same inputs give the same objects, so
    periodic reconciles of an unchanged revision re-apply without running kustomize again. Thread-safe."""

    def __init__(self, size: int = 128) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._builds: OrderedDict[str, list[JsonObj]] = OrderedDict()

    @staticmethod
    def key(digest: str, spec: JsonObj) -> str:
        inputs = {field: spec.get(field) for field in GENERATOR_FIELDS}
        return json.dumps([digest, spec.get("path") or "./", inputs], sort_keys=True)

    def get(self, key: str) -> list[JsonObj] | None:
        with self._lock:
            found = self._builds.get(key)
            if found is None:
                return None
            self._builds.move_to_end(key)
            return copy.deepcopy(found)

    def put(self, key: str, objects: list[JsonObj]) -> None:
        with self._lock:
            self._builds[key] = copy.deepcopy(objects)
            self._builds.move_to_end(key)
            while len(self._builds) > self._size:
                self._builds.popitem(last=False)
