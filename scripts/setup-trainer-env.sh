#!/usr/bin/env bash
# Create .venv-trainer: the Ultralytics trainer's own environment, apart from the platform's.
#
# Ultralytics switches its own MLflow callback on when mlflow is importable, so the trainer
# must not see the platform's packages. This venv gets torch + torchvision (pinned pair),
# ultralytics and requests from trainer_images/ultralytics/requirements.txt, and only the
# `trainer_sdk` package of this repo, linked into site-packages (no platform_app, no mlflow).
#
# Idempotent: a stamp records a hash of the requirements and of this script; a second run
# with nothing changed returns at once. Usage: scripts/setup-trainer-env.sh [VENV_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-trainer}"
PYTHON="${PYTHON:-python3}"
REQS="$ROOT/trainer_images/ultralytics/requirements.txt"
STAMP="$VENV/.installed"
WANT="$(cat "$REQS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "trainer environment up to date: $VENV"
    exit 0
fi

echo "creating the trainer environment in $VENV (torch wheels: about 2 minutes)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip_install() {  # quiet, minus the notes about index folders this machine's pip.conf lists
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
# torch and torchvision first, pinned together: ultralytics alone may pull another torch
pip_install $(grep -E '^(torch|torchvision)==' "$REQS")
pip_install -r "$REQS"

# Only the SDK package, as a symlink so edits in the repo are live (the Dockerfile copies it).
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$SITE/trainer_sdk"
ln -s "$ROOT/trainer_sdk" "$SITE/trainer_sdk"

# Check the separation: the SDK and ultralytics import, the platform's packages do not.
"$VENV/bin/python" -I - <<'PY'
import importlib.util
import trainer_sdk, ultralytics  # noqa: F401
for name in ("platform_app", "workers", "mlflow"):
    assert importlib.util.find_spec(name) is None, f"{name} must not be importable here"
print(f"trainer environment ready: ultralytics {ultralytics.__version__}, "
      f"trainer_sdk {trainer_sdk.__version__}")
PY
echo "$WANT" > "$STAMP"
