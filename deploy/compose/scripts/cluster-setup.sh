#!/bin/sh
# One-shot set-up of the K3s cluster of the compose stack, run in the flux-cli image (it has `flux` and `kubectl`):
#   1. install Flux's source-controller and kustomize-controller (`flux install` applies; re-running is harmless);
#   2. apply the provisioner's Namespace, ServiceAccount and least-privilege RBAC from deploy/kubernetes;
#   3. write the worker's kubeconfig: the ServiceAccount's token, not the cluster-admin one, so the compose stack
#      exercises exactly the permissions a real deployment grants.
# Inputs: $ADMIN_KUBECONFIG (written by K3s), $K3S_SERVER_URL (how containers reach the API server),
# $WORKER_KUBECONFIG (output), $WORKER_UID (the image's user, who must read it), /deploy/kubernetes (manifests).
set -eu

: "${ADMIN_KUBECONFIG:=/k3s-output/kubeconfig.yaml}"
: "${K3S_SERVER_URL:=https://k3s:6443}"
: "${WORKER_KUBECONFIG:=/kube/config}"
: "${WORKER_UID:=10001}"
: "${MANIFESTS:=/deploy/kubernetes}"
namespace=provisioner-system
service_account=provisioner
token_secret=provisioner-worker-token

# K3s writes its kubeconfig for 127.0.0.1; the other containers reach it by service name (a --tls-san of K3s).
export KUBECONFIG=/tmp/admin.kubeconfig
sed "s#https://127.0.0.1:6443#${K3S_SERVER_URL}#" "$ADMIN_KUBECONFIG" > "$KUBECONFIG"

flux install --components=source-controller,kustomize-controller --timeout=10m

kubectl apply -f "$MANIFESTS/namespace.yaml" -f "$MANIFESTS/serviceaccount.yaml" -f "$MANIFESTS/rbac.yaml"

# A long-lived ServiceAccount token (the token controller fills the Secret). The compose worker is not a pod, so it
# has no projected token; in Kubernetes the worker uses its pod's token instead (deploy/kubernetes/configmap.yaml).
kubectl apply -f - <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: $token_secret
  namespace: $namespace
  annotations:
    kubernetes.io/service-account.name: $service_account
type: kubernetes.io/service-account-token
EOF

token=""
attempt=1
while [ -z "$token" ]; do
    token="$(kubectl --namespace "$namespace" get secret "$token_secret" -o 'jsonpath={.data.token}')"
    if [ -z "$token" ]; then
        if [ "$attempt" -ge 60 ]; then
            echo "the token controller did not fill secret $namespace/$token_secret" >&2
            exit 1
        fi
        attempt=$((attempt + 1))
        sleep 1
    fi
done

ca_data="$(kubectl config view --raw -o 'jsonpath={.clusters[0].cluster.certificate-authority-data}')"
umask 077
rm -f "$WORKER_KUBECONFIG"
# Written through a here-document, so the token never appears on a command line.
cat > "$WORKER_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: k3s
    cluster:
      server: $K3S_SERVER_URL
      certificate-authority-data: $ca_data
users:
  - name: $service_account
    user:
      token: $(printf '%s' "$token" | base64 -d)
contexts:
  - name: provisioner
    context:
      cluster: k3s
      user: $service_account
current-context: provisioner
EOF
chown "$WORKER_UID:$WORKER_UID" "$WORKER_KUBECONFIG"
chmod 0400 "$WORKER_KUBECONFIG"

# Fail here, not in the first provisioning run, if the RBAC does not grant what the worker needs.
for check in "create namespaces" "patch namespaces" "get namespaces" "delete namespaces" \
    "create gitrepositories.source.toolkit.fluxcd.io" "patch kustomizations.kustomize.toolkit.fluxcd.io"; do
    # shellcheck disable=SC2086 # the verb and the resource are two words on purpose
    kubectl --kubeconfig="$WORKER_KUBECONFIG" auth can-i $check --all-namespaces >/dev/null
done
echo "cluster ready: Flux installed, worker kubeconfig written to $WORKER_KUBECONFIG"
