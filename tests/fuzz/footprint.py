"""What provisioning leaves behind, across all projects on a test stack: to prove a refused request made nothing."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client as kube
from sqlalchemy import select

from provisioner.db import session_factory
from provisioner.db.models import Project
from tests.stack import FLUX_GROUPS, Stack


@dataclass(frozen=True)
class Footprint:
    """Everything provisioning creates, across all projects."""

    repositories: frozenset[str]  # entries of the git server's data directory
    records: frozenset[str]  # slugs with a database row
    namespaces: frozenset[str]
    flux_objects: frozenset[str]  # "Kind/namespace/name"

    def added_since(self, before: Footprint) -> Footprint:
        return Footprint(
            self.repositories - before.repositories,
            self.records - before.records,
            self.namespaces - before.namespaces,
            self.flux_objects - before.flux_objects,
        )


def footprint(stack: Stack) -> Footprint:
    repos_dir = stack.settings.git_repos_dir
    repositories = frozenset(entry.name for entry in repos_dir.iterdir()) if repos_dir.exists() else frozenset()
    with session_factory(stack.settings.effective_database_url)() as session:
        records = frozenset(session.scalars(select(Project.slug)))
    namespaces = frozenset(
        str(namespace.metadata.name)
        for namespace in kube.CoreV1Api(stack.api).list_namespace().items
        if namespace.metadata
    )
    flux_objects: set[str] = set()
    for kind, (group, version, plural) in FLUX_GROUPS.items():
        listed = kube.CustomObjectsApi(stack.api).list_cluster_custom_object(group, version, plural)
        assert isinstance(listed, dict)
        flux_objects.update(
            f"{kind}/{item['metadata']['namespace']}/{item['metadata']['name']}" for item in listed["items"]
        )
    return Footprint(repositories, records, namespaces, frozenset(flux_objects))


def project_footprint(slug: str) -> Footprint:
    """What provisioning `slug` creates, and nothing else."""
    return Footprint(
        frozenset({f"{slug}.git"}),
        frozenset({slug}),
        frozenset({slug}),
        frozenset(f"{kind}/{slug}/{slug}" for kind in FLUX_GROUPS),
    )
