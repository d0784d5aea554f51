#!/bin/sh
# Registers the provisioner's search attributes (Keyword) on the Temporal namespace, once; re-running changes
# nothing. Uses the `temporal` CLI with Temporal's env config (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS/API key).
# The same as `provisioner.temporal.register_search_attributes`, for a cluster the worker must not administer.
set -eu

namespace="${TEMPORAL_NAMESPACE:-default}"
attributes="ProjectSlug ProjectTemplate ProjectStatus"
attempts="${WAIT_ATTEMPTS:-60}"

# auto-setup registers the namespace shortly after the server reports healthy: wait until it answers.
attempt=1
until temporal operator search-attribute list --namespace "$namespace" >/dev/null 2>&1; do
    if [ "$attempt" -ge "$attempts" ]; then
        echo "namespace $namespace did not become available" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 2
done

existing="$(temporal operator search-attribute list --namespace "$namespace")"
for name in $attributes; do
    if printf '%s\n' "$existing" | grep -qw -- "$name"; then
        echo "search attribute $name already registered on $namespace"
    else
        temporal operator search-attribute create --namespace "$namespace" --name "$name" --type Keyword
        echo "registered search attribute $name (Keyword) on $namespace"
    fi
done
