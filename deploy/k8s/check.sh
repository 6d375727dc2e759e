#!/usr/bin/env bash
# Static checks of the Kubernetes manifests (CI cannot run Kubernetes): parses
# every manifest and checks it against deploy/compose.yaml, the Dockerfile and
# docs/kubernetes.md, then breaks copies of them in known ways to make sure the
# check notices (check.py --self-test). PyYAML goes into target/py-venv, the
# project's Python venv. Extra arguments go to check.py (see check.py --help).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/target/py-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  "$venv/bin/pip" install -q pyyaml
fi
py="$venv/bin/python"
"$py" "$root/deploy/k8s/check.py" "$@"
if [ $# -eq 0 ]; then
  "$py" "$root/deploy/k8s/check.py" --self-test
fi
