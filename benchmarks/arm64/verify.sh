#!/usr/bin/env bash
# verify.sh - run the fpn_edge runtime on given .tflite models inside an emulated arm64
# Debian bookworm userland (Raspberry Pi OS 64-bit base) and compare it with x86.
#
# Usage (as root, from anywhere):
#   benchmarks/arm64/verify.sh MODEL.tflite [MODEL.tflite ...]
#
# Writes benchmarks/results/arm64.md and arm64.json. Slow and manual (minutes, ~650 MB in
# $ROOT): not part of the default test run. See benchmarks/arm64/README.md.
#
# Env knobs (defaults in brackets):
#   ROOT [/tmp/arm64root]        the arm64 root (built by the shared tool if missing)
#   ARM64_TOOL [<repo>/../shared/tools/arm64-userland.sh]
#   SETUP [auto]                 auto: reuse ROOT if it has python3, else build it; always: run setup
#   IMAGES_DIR [$KERAS_FPN_DATA/raccoon/images]   N_IMAGES [8]  (first N names, sorted)
#   CPUS ["cortex-a72 cortex-a76"]   (Pi 4, Pi 5; qemu CPU models)
#   THREADS [1]  RUNS [5]  WARMUP [1]   (bench settings; keep runs short under emulation)
#   HOST_VENV [<repo>/.venv]     x86 reference (its fpn-edge / python)
#   RESULTS [<repo>/benchmarks/results]
#   KEEP_VENV [0]                1: reuse the arm64 venv /opt/fpn-venv instead of a fresh install
#   STEP_TIMEOUT [1800]          seconds per emulated command
#   BOX_TOL [0.5] SCORE_TOL [0.001]   tolerances (pixels, score) for "same detections"
set -euo pipefail

T_START=$(date +%s.%N)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROOT=${ROOT:-/tmp/arm64root}
ARM64_TOOL=${ARM64_TOOL:-$(cd "$REPO/.." && pwd)/shared/tools/arm64-userland.sh}
SETUP=${SETUP:-auto}
DATA=${KERAS_FPN_DATA:-$(cd "$REPO/.." && pwd)/shared/data}
IMAGES_DIR=${IMAGES_DIR:-$DATA/raccoon/images}
N_IMAGES=${N_IMAGES:-8}
CPUS=${CPUS:-cortex-a72 cortex-a76}
THREADS=${THREADS:-1}
RUNS=${RUNS:-5}
WARMUP=${WARMUP:-1}
HOST_VENV=${HOST_VENV:-$REPO/.venv}
RESULTS=${RESULTS:-$REPO/benchmarks/results}
KEEP_VENV=${KEEP_VENV:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
BOX_TOL=${BOX_TOL:-0.5}
SCORE_TOL=${SCORE_TOL:-0.001}

GUEST_DIR=/opt/fpn-verify        # inside the root
GUEST_VENV=/opt/fpn-venv         # inside the root: the "Pi user's" venv
VW=$ROOT$GUEST_DIR               # the same directory seen from the host
TIMINGS=$VW/out/timings.tsv

die() { echo "verify.sh: error: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
phase_t0=0
phase() { phase_t0=$(date +%s.%N); log ">>> $*"; }
phase_done() {  # record "name<TAB>seconds"
  local dt; dt=$(awk -v a="$phase_t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  printf '%s\t%s\n' "$1" "$dt" >> "$TIMINGS"; log "<<< $1: ${dt}s"
}

# -- arguments ------------------------------------------------------------------------------
[ $# -ge 1 ] || { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (chroot, mounts)"
[ -f "$ARM64_TOOL" ] || die "shared tool not found: $ARM64_TOOL (set ARM64_TOOL)"
"$HOST_VENV/bin/python" -c 'import numpy, PIL, ai_edge_litert' 2>/dev/null \
  || die "HOST_VENV=$HOST_VENV lacks numpy / Pillow / ai-edge-litert"
[ -d "$IMAGES_DIR" ] || die "IMAGES_DIR not found: $IMAGES_DIR"
MODELS=()
declare -A SEEN=()
for m in "$@"; do
  [ -f "$m" ] || die "$m: model file not found"
  case "$m" in *.tflite) ;; *) die "$m: not a .tflite file" ;; esac
  b=$(basename "$m")
  [ -z "${SEEN[$b]:-}" ] || die "two models named $b: the table is keyed by file name, rename one"
  SEEN[$b]=1
  MODELS+=("$(cd "$(dirname "$m")" && pwd)/$b")
done
mapfile -t IMAGES < <(find "$IMAGES_DIR" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) \
                        -printf '%f\n' | LC_ALL=C sort | head -n "$N_IMAGES")
[ "${#IMAGES[@]}" -ge 1 ] || die "no images in $IMAGES_DIR"

# -- the arm64 userland (shared tool) -------------------------------------------------------
mount_for() {  # (re)do the root's mounts with a fake cpuinfo for CPU model $1, via the shared tool
  # `shell` sets up binfmt + mounts + the cpuinfo bind for ARM_CPU, then starts a shell inside,
  # which exits at once on /dev/null.
  ARM_CPU=$1 ROOT=$ROOT bash "$ARM64_TOOL" shell < /dev/null > /dev/null
}
in_arm() {  # in_arm CPU 'command line': run inside the root, clean env, QEMU_CPU pinned
  timeout "$STEP_TIMEOUT" chroot "$ROOT" /usr/bin/env -i QEMU_CPU="$1" \
    PATH=$GUEST_VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
    PIP_CERT=/etc/ssl/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    /bin/bash -c "$2"
}

rm -rf "$VW"
if [ "$SETUP" = always ] || [ ! -x "$ROOT/usr/bin/python3" ] || [ ! -f "$ROOT/etc/ssl/host-ca-bundle.crt" ]; then
  SETUP_LOG=$(mktemp /tmp/arm64-setup.XXXXXX.log)
  phase "arm64 userland: $ARM64_TOOL setup (log $SETUP_LOG)"
  ROOT=$ROOT bash "$ARM64_TOOL" setup > "$SETUP_LOG" 2>&1 || { tail -30 "$SETUP_LOG"; die "setup failed"; }
  mkdir -p "$VW/out"; phase_done "userland setup"
else
  phase "arm64 userland: reusing $ROOT"
  mkdir -p "$VW/out"; phase_done "userland reuse"
fi
mkdir -p "$VW/models" "$VW/images" "$VW/dist"
mount_for "${CPUS%% *}"
in_arm "${CPUS%% *}" 'test "$(uname -m)" = aarch64' || die "the root does not run as aarch64"

# -- wheel (host) and a device-style install (arm64) ----------------------------------------
phase "wheel of the project (x86 host) and install of keras-fpn[edge] inside arm64"
SRC=$(mktemp -d /tmp/arm64-src.XXXXXX)
trap 'rm -rf "$SRC"' EXIT
# a snapshot of the working tree (tracked + untracked, not ignored): no build/ left in the repo
(cd "$REPO" && git ls-files -z -c -o --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$SRC"
git -C "$REPO" rev-parse HEAD > "$VW/out/git_commit.txt"
git -C "$REPO" status --porcelain -- edge pyproject.toml > "$VW/out/git_dirty.txt"
"$HOST_VENV/bin/pip" wheel -q --no-deps "$SRC" -w "$VW/dist" > "$VW/out/wheel.log" 2>&1 \
  || { cat "$VW/out/wheel.log"; die "pip wheel failed"; }
WHEEL=$(cd "$VW/dist" && ls keras_fpn-*.whl | head -1)
# the x86 reference runs the same fpn_edge code: the wheel unpacked first on PYTHONPATH (the host
# venv's editable install follows the working tree, which may change while this runs)
"$HOST_VENV/bin/python" -m zipfile -e "$VW/dist/$WHEEL" "$VW/x86_pkg"
x86py() { PYTHONPATH=$VW/x86_pkg "$HOST_VENV/bin/python" "$@"; }
# the [edge] extra's requirements, read from the wheel's METADATA (stays in sync with pyproject)
mapfile -t EDGE_REQS < <("$HOST_VENV/bin/python" - "$VW/dist/$WHEEL" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
for line in z.read(meta).decode().splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" in line and '"edge"' in line.split(";", 1)[1]:
        print(line.split(":", 1)[1].split(";", 1)[0].strip().replace(" ", ""))
EOF
)
[ "${#EDGE_REQS[@]}" -ge 1 ] || die "no [edge] requirements in $WHEEL"
log "wheel $WHEEL; [edge] = ${EDGE_REQS[*]}"
REQ_ARGS=$(printf "'%s' " "${EDGE_REQS[@]}")
# `pip install 'WHEEL[edge]'` would also install the base dependencies (tensorflow, ...): a device
# installs the package without dependencies plus only the [edge] extra's (README "Raspberry Pi").
FRESH_VENV=0
if [ "$KEEP_VENV" != 1 ] || [ ! -x "$ROOT$GUEST_VENV/bin/python" ]; then
  FRESH_VENV=1
  in_arm "${CPUS%% *}" "rm -rf $GUEST_VENV && python3 -m venv $GUEST_VENV"
fi
in_arm "${CPUS%% *}" "set -e; pip install --no-deps --force-reinstall $GUEST_DIR/dist/$WHEEL && pip install $REQ_ARGS" \
  > "$VW/out/pip_arm64.log" 2>&1 || { tail -30 "$VW/out/pip_arm64.log"; die "pip install inside arm64 failed"; }
cp "$HERE/edge_probe.py" "$VW/edge_probe.py"
in_arm "${CPUS%% *}" "python $GUEST_DIR/edge_probe.py env $GUEST_DIR/out/env_arm64.json"
x86py "$HERE/edge_probe.py" env "$VW/out/env_x86.json" > /dev/null
if in_arm "${CPUS%% *}" "python -c 'import tensorflow'" 2> "$VW/out/import_tensorflow_arm64.txt"; then
  die "import tensorflow works inside the arm64 venv: the device install is not TF-free"
fi
log "import tensorflow inside arm64: $(tail -1 "$VW/out/import_tensorflow_arm64.txt")"
phase_done "wheel + arm64 install"

# -- stage models and images ----------------------------------------------------------------
for m in "${MODELS[@]}"; do cp "$m" "$VW/models/"; done
for i in "${IMAGES[@]}"; do cp "$IMAGES_DIR/$i" "$VW/images/"; done
G_IMAGES=(); H_IMAGES=()
for i in "${IMAGES[@]}"; do G_IMAGES+=("$GUEST_DIR/images/$i"); H_IMAGES+=("$VW/images/$i"); done
G_IMAGES_Q=$(printf "'%s' " "${G_IMAGES[@]}")

# -- run: x86 reference, then each emulated CPU ---------------------------------------------
run_x86() {  # model basename
  local b=$1 o=$VW/out/x86/$1; mkdir -p "$o"
  phase "x86 $b"
  x86py -m fpn_edge.cli detect "$VW/models/$b" "${H_IMAGES[@]}" --out "$o/detect" --threads "$THREADS" --quiet
  x86py "$HERE/edge_probe.py" dump "$VW/models/$b" "$o/raw.npz" "${H_IMAGES[@]}" --threads "$THREADS"
  x86py -m fpn_edge.cli bench "$VW/models/$b" --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" \
    --image "${H_IMAGES[0]}" --json --out "$o/bench.json" --quiet > /dev/null
  phase_done "x86 $b"
}
run_arm() {  # cpu model-basename
  local cpu=$1 b=$2 g=$GUEST_DIR/out/$1/$2; mkdir -p "$VW/out/$cpu/$b"
  phase "arm64 $cpu $b (qemu emulation)"
  in_arm "$cpu" "set -e; cd $GUEST_DIR
    fpn-edge detect models/$b $G_IMAGES_Q --out $g/detect --threads $THREADS --quiet
    python edge_probe.py dump models/$b $g/raw.npz $G_IMAGES_Q --threads $THREADS
    fpn-edge bench models/$b --threads $THREADS --runs $RUNS --warmup $WARMUP --image ${G_IMAGES[0]} \
      --json --out $g/bench.json --quiet > /dev/null"
  phase_done "arm64 $cpu $b"
}

for m in "${MODELS[@]}"; do run_x86 "$(basename "$m")"; done
for cpu in $CPUS; do
  mount_for "$cpu"
  in_arm "$cpu" "grep -m1 '^CPU part' /proc/cpuinfo" > "$VW/out/cpuinfo_$cpu.txt"
  for m in "${MODELS[@]}"; do run_arm "$cpu" "$(basename "$m")"; done
done
mount_for "${CPUS%% *}"   # leave the root mounted as the shared tool's default would

T_END=$(date +%s.%N)
# -- compare and report ---------------------------------------------------------------------
QEMU_VER=$( (qemu-aarch64-static --version 2>/dev/null || true) | head -1)
MODEL_ARGS=(); for m in "${MODELS[@]}"; do MODEL_ARGS+=(--model "$m"); done
set +e
"$HOST_VENV/bin/python" "$HERE/compare.py" --work "$VW" --cpus "$CPUS" "${MODEL_ARGS[@]}" \
  --start "$T_START" --results "$RESULTS" --wheel "$WHEEL" --edge-reqs "${EDGE_REQS[*]}" \
  --images-dir "$IMAGES_DIR" --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" \
  --qemu "$QEMU_VER" --root "$ROOT" --repo "$REPO" --box-tol "$BOX_TOL" --score-tol "$SCORE_TOL" \
  --end "$T_END" --fresh-venv "$FRESH_VENV"
rc=$?
set -e
exit $rc
