#!/usr/bin/env bash
# Make (or reuse) the interop venv at DIR: the [interop] extra's requirements (MediaPipe), read from
# pyproject.toml, and neither TensorFlow nor keras-fpn: the standard runtimes run there, in a child
# process of tests/interop (KERAS_FPN_INTEROP_PYTHON=DIR/bin/python).
#   bash tests/interop/make_venv.sh DIR [--with-tasklib]
# --with-tasklib adds tflite-support (the TFLite Task Library). It is not part of CI: its wheel
# imports only with the system library libusb-1.0-0 present (apt-get install libusb-1.0-0), and it
# pins protobuf<4, so it cannot share an environment with TensorFlow 2.21 (protobuf>=6.31.1).
# A venv made from the same requirements is reused (DIR/.requirements records them).
set -euo pipefail
DIR="${1:?usage: make_venv.sh DIR [--with-tasklib]}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
mapfile -t REQS < <(python3 - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
for r in tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["interop"]:
    print(r)
PY
)
if [ "${2:-}" = "--with-tasklib" ]; then REQS+=("tflite-support==0.4.4"); fi
WANT="$(printf '%s\n' "${REQS[@]}")"
if [ -x "$DIR/bin/python" ] && [ "$(cat "$DIR/.requirements" 2>/dev/null)" = "$WANT" ]; then
  echo "interop venv: reusing $DIR (${REQS[*]})"
  exit 0
fi
rm -rf "$DIR"
python3 -m venv "$DIR"
"$DIR/bin/python" -m pip install -q --upgrade pip
"$DIR/bin/python" -m pip install -q "${REQS[@]}"
"$DIR/bin/python" -c "import mediapipe; from mediapipe.tasks.python import vision"
printf '%s\n' "${REQS[@]}" > "$DIR/.requirements"
echo "interop venv: made $DIR (${REQS[*]})"
