#!/bin/sh
# Creates the compose stack's secret files in deploy/compose/secrets/ with random values; existing files are kept,
# so running it again never rotates anything by accident (delete a file to regenerate it; see docs/operations.md).
# The files are git-ignored. The directory is private to you (0700); the files are 0644 because Docker Compose
# bind-mounts them unchanged and the containers read them as their own unprivileged users.
set -eu

secrets_dir="${1:-$(dirname "$0")/secrets}"
mkdir -p "$secrets_dir"
chmod 0700 "$secrets_dir"

random_value() {
    # 32 random bytes as hex: safe inside a database URL, a kubeconfig and an ini file alike.
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

create() {
    name="$1"
    value="$2"
    file="$secrets_dir/$name"
    if [ -e "$file" ]; then
        echo "kept    $file"
        return
    fi
    printf '%s\n' "$value" > "$file"
    chmod 0644 "$file"
    echo "created $file"
}

create postgres_password "$(random_value)"
create temporal_db_password "$(random_value)"
create provisioner_db_password "$(random_value)"
# The worker and the API read the whole URL (PROVISIONER_DATABASE_URL_FILE); it must carry the role's password.
create provisioner_database_url \
    "postgresql+psycopg://provisioner:$(cat "$secrets_dir/provisioner_db_password")@postgres:5432/provisioner"
create git_token "$(random_value)"
create api_tokens "$(random_value)"
create k3s_token "$(random_value)"
create gitea_secret_key "$(random_value)"
create gitea_internal_token "$(random_value)"
