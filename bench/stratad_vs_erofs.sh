#!/usr/bin/env bash
# stratad (FUSE, blobcache) against the kernel's erofs driver, both serving the SAME image built
# with `strata image create --compressor none --aligned-chunk` (kernel erofs is the ceiling).
#
# Workloads (bench/workload.c, compiled here with gcc -O2, single thread, CLOCK_MONOTONIC):
#   stat      recursive readdir + lstat of every entry of the mount
#   read_all  walk small/ (readdir + lstat) and open / read 1 MiB requests to EOF / close each file
#   seq       read big/big.bin in 1 MiB requests
# States, each measured RUNS times (the median is reported):
#   cold        erofs: fresh mount; stratad: fresh daemon over an EMPTY blobcache dir; then
#               `sync; echo 3 > /proc/sys/vm/drop_caches`, then the run
#   warm        the same run again right after the cold one (same mount / daemon)
#   cache_warm  stratad only: stop that daemon, drop caches, start a new daemon over the filled
#               blobcache, drop caches again, run (blobcache warm, page cache cold)
# ratio = stratad time / erofs time (>1 = stratad slower); cache_warm is divided by erofs cold
# (both page-cache cold). Every run must return the counts the source tree gives (entries /
# files / bytes), and with VERIFY=1 an order-independent digest of paths, modes, sizes and
# contents must match the source through both mounts; the script fails otherwise.
#
# Stdout: one JSON object, then a table. Progress goes to stderr.
#
# Environment:
#   RUNS=3          runs per workload, state and system
#   BIG_MB=512      size of big/big.bin (seeded pseudo-random, incompressible)
#   THREADS=4       stratad --thread-num
#   DIRS=200 FILES_PER_DIR=100   small-file tree: DIRS dirs x FILES_PER_DIR files, 100 B..20 KiB
#   SEED=42         seed of the generated data
#   VERIFY=1        content digest through both mounts after the timed runs (0 = counts only)
#   WL_TIMEOUT=600  seconds one workload run may take before it counts as hung
#   KEEP=1          keep the work dir (tree, image, logs, raw tsv files)
#   TMPDIR          parent of the work dir (default /var/tmp)
#
# Needs root (mount, losetup, drop_caches, FUSE), gcc, losetup, mount, python3, timeout, and
# curl (a python3 unix-socket client is used when curl is missing). Installs nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
BIG_MB=${BIG_MB:-512}
THREADS=${THREADS:-4}
DIRS=${DIRS:-200}
FILES_PER_DIR=${FILES_PER_DIR:-100}
SEED=${SEED:-42}
VERIFY=${VERIFY:-1}
WL_TIMEOUT=${WL_TIMEOUT:-600}
KEEP=${KEEP:-0}
T_START=$(date +%s.%N)

say() { echo "stratad_vs_erofs: $*" >&2; }
die_usage() { say "$*"; exit 2; }
fail() { say "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
    die_usage "must run as root (kernel mounts, loop devices, FUSE, drop_caches)"
fi
for v in RUNS BIG_MB THREADS DIRS FILES_PER_DIR SEED WL_TIMEOUT; do
    case ${!v} in
        '' | *[!0-9]*) die_usage "$v=${!v}: expected a non-negative integer" ;;
    esac
done
[ "$RUNS" -ge 1 ] || die_usage "RUNS must be at least 1"
[ "$BIG_MB" -ge 1 ] || die_usage "BIG_MB must be at least 1"
[ "$THREADS" -ge 1 ] || die_usage "THREADS must be at least 1"
[ "$DIRS" -ge 1 ] && [ "$FILES_PER_DIR" -ge 1 ] || die_usage "DIRS and FILES_PER_DIR must be at least 1"
for t in gcc losetup mount umount python3 timeout cargo; do
    command -v "$t" >/dev/null 2>&1 || die_usage "$t is required (this script installs nothing)"
done
if command -v curl >/dev/null 2>&1; then HAVE_CURL=1; else HAVE_CURL=0; fi
grep -qw erofs /proc/filesystems || modprobe erofs 2>/dev/null || true
grep -qw erofs /proc/filesystems || die_usage "the kernel has no erofs filesystem"
[ -c /dev/fuse ] || die_usage "/dev/fuse is missing"

# --- work dir and cleanup ------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-bench-XXXXXX")
case $WORK in
    *[[:space:]]*) rmdir "$WORK"; die_usage "work dir '$WORK' contains whitespace; set TMPDIR" ;;
esac
MNT_E=$WORK/mnt-erofs
MNT_S=$WORK/mnt-stratad
CACHE=$WORK/blobcache
SOCK=$WORK/api.sock
LOGS=$WORK/logs
mkdir -p "$MNT_E" "$MNT_S" "$LOGS"
DAEMON_PID=
LOOPS=()
ANOMALIES=$WORK/anomalies.txt
: >"$ANOMALIES"

is_mounted() { # exact mount point match in our mount namespace (no stat of a FUSE dir)
    awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo
}

cleanup() {
    local rc=$? l i
    set +e
    trap - EXIT INT TERM
    if [ -n "$DAEMON_PID" ]; then
        say "cleanup: stopping stratad pid $DAEMON_PID"
        kill -TERM "$DAEMON_PID" 2>/dev/null
        for i in $(seq 1 100); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            say "cleanup: stratad pid $DAEMON_PID ignored SIGTERM for 10 s; SIGKILL"
            kill -KILL "$DAEMON_PID" 2>/dev/null
        fi
        wait "$DAEMON_PID" 2>/dev/null
    fi
    for m in "$MNT_S" "$MNT_E"; do
        if is_mounted "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m"
        fi
    done
    for l in "${LOOPS[@]}"; do
        losetup -d "$l" || say "cleanup: losetup -d $l failed"
    done
    if [ "$KEEP" = 1 ]; then
        say "kept work dir $WORK"
    elif awk -v w="$WORK/" 'index($5, w) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        say "cleanup: something is still mounted under $WORK; NOT removing it"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

anomaly() { say "ANOMALY: $*"; echo "$*" >>"$ANOMALIES"; }

# --- build ---------------------------------------------------------------------------------
say "cargo build --release"
(cd "$ROOT" && cargo build --release >&2)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
STRATA=$BIN/strata
STRATAD=$BIN/stratad
[ -x "$STRATA" ] && [ -x "$STRATAD" ] || fail "$STRATA or $STRATAD was not built"
STRATA_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    STRATA_REV="$STRATA_REV+dirty"
fi
WL=$WORK/workload
gcc -O2 -Wall -o "$WL" "$ROOT/bench/workload.c" || fail "gcc could not build bench/workload.c"

# --- data ----------------------------------------------------------------------------------
SRC=$WORK/src
say "generating $DIRS x $FILES_PER_DIR small files and a $BIG_MB MiB file (seed $SEED) in $SRC"
python3 - "$SRC" "$DIRS" "$FILES_PER_DIR" "$SEED" <<'PY'
import base64, os, random, sys

dest, ndirs, per, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sizes = random.Random(seed)          # file sizes, uniform 100 B .. 20 KiB
bits = random.Random(seed ^ 0x5EED)  # content: base64 text of seeded random bytes (compressible)
for d in range(ndirs):
    sub = os.path.join(dest, "small", "d%03d" % d)
    os.makedirs(sub)
    for f in range(per):
        n = sizes.randint(100, 20480)
        raw = bits.getrandbits(8 * (n * 3 // 4 + 3)).to_bytes(n * 3 // 4 + 3, "little")
        with open(os.path.join(sub, "f%03d.dat" % f), "wb") as out:
            out.write(base64.b64encode(raw)[:n])
os.makedirs(os.path.join(dest, "big"))
PY
"$WL" gen "$SRC/big/big.bin" "$BIG_MB" "$SEED"

# Expected counts: the workloads over the source tree itself.
declare -A WANT
WANT[stat]=$("$WL" stat "$SRC" | awk '{ print $2, $3, $4 }')
WANT[read_all]=$("$WL" readall "$SRC/small" | awk '{ print $2, $3, $4 }')
WANT[seq]=$("$WL" seq "$SRC/big/big.bin" | awk '{ print $2, $3, $4 }')
say "expected (entries files bytes): stat ${WANT[stat]}; read_all ${WANT[read_all]}; seq ${WANT[seq]}"

# --- image ---------------------------------------------------------------------------------
BOOT=$WORK/image/bootstrap
BLOBS=$WORK/image/blobs
mkdir -p "$BLOBS"
say "strata image create --compressor none --aligned-chunk"
T0=$(date +%s.%N)
"$STRATA" image create --compressor none --aligned-chunk -B "$BOOT" -D "$BLOBS" "$SRC" \
    >"$LOGS/image-create.out" 2>&1 || { cat "$LOGS/image-create.out" >&2; fail "image create"; }
T1=$(date +%s.%N)
IMAGE_BUILD_S=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.3f", b - a }')
mapfile -t BLOB_FILES < <(find "$BLOBS" -maxdepth 1 -type f)
[ "${#BLOB_FILES[@]}" = 1 ] || fail "expected exactly one blob in $BLOBS, found ${#BLOB_FILES[@]}"
BLOB=${BLOB_FILES[0]}
BOOT_BYTES=$(stat -c %s "$BOOT")
BLOB_BYTES=$(stat -c %s "$BLOB")
say "image built in ${IMAGE_BUILD_S}s: bootstrap $BOOT_BYTES B, blob $BLOB_BYTES B"

# --- kernel erofs --------------------------------------------------------------------------
attach() { # file -> prints the loop device, remembered for cleanup
    local dev
    dev=$(losetup -f --show -r "$1") || fail "losetup -f --show -r $1"
    LOOPS+=("$dev")
    LAST_LOOP=$dev
}
attach "$BOOT"
BOOT_LOOP=$LAST_LOOP
attach "$BLOB"
BLOB_LOOP=$LAST_LOOP
say "loop devices: bootstrap $BOOT_LOOP, blob $BLOB_LOOP"

mount_erofs() {
    mount -t erofs -o "ro,device=$BLOB_LOOP" "$BOOT_LOOP" "$MNT_E" \
        || fail "mount -t erofs -o ro,device=$BLOB_LOOP $BOOT_LOOP $MNT_E"
}
umount_erofs() {
    umount "$MNT_E" || fail "umount $MNT_E"
}

# --- stratad -------------------------------------------------------------------------------
CFG=$WORK/stratad.json
cat >"$CFG" <<EOF
{"device":{"backend":{"type":"localfs","config":{"dir":"$BLOBS"}},
 "cache":{"type":"blobcache","config":{"work_dir":"$CACHE"}}},
 "mode":"direct","digest_validate":false,"iostats_files":false,"enable_xattr":true,
 "fs_prefetch":{"enable":false}}
EOF

api_daemon() { # GET /api/v1/daemon over the API socket; prints the body
    if [ "$HAVE_CURL" = 1 ]; then
        curl -s --max-time 2 --unix-socket "$SOCK" http://x/api/v1/daemon
    else
        python3 - "$SOCK" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"GET /api/v1/daemon HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
sys.stdout.write(data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace"))
PY
    fi
}

DAEMONS=0
start_stratad() { # tag
    local log=$LOGS/stratad.$1.log i body rc
    DAEMONS=$((DAEMONS + 1))
    rm -f "$SOCK"
    "$STRATAD" --config "$CFG" --bootstrap "$BOOT" --mountpoint "$MNT_S" --apisock "$SOCK" \
        --thread-num "$THREADS" --log-level warn >"$log" 2>&1 &
    DAEMON_PID=$!
    DAEMON_LOG=$log
    for i in $(seq 1 400); do # 20 s
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            rc=0
            wait "$DAEMON_PID" || rc=$?
            DAEMON_PID=
            cat "$log" >&2
            fail "stratad ($1) exited with status $rc before reaching RUNNING; log above"
        fi
        if is_mounted "$MNT_S" && [ -S "$SOCK" ]; then
            body=$(api_daemon 2>/dev/null || true)
            case $body in *RUNNING*) return 0 ;; esac
        fi
        sleep 0.05
    done
    cat "$log" >&2
    fail "stratad ($1, pid $DAEMON_PID) did not reach RUNNING within 20 s; log above"
}

RSS=$WORK/rss.tsv
: >"$RSS"
stop_stratad() { # workload run phase
    local pid=$DAEMON_PID hwm rss thr i rc=0
    [ -n "$pid" ] || fail "stop_stratad without a daemon"
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    thr=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${hwm:-NA}" "${rss:-NA}" "${thr:-NA}" >>"$RSS"
    kill -TERM "$pid"
    for i in $(seq 1 400); do # 20 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        anomaly "stratad pid $pid ($1 run $2 $3) still alive 20 s after SIGTERM; sent SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" || rc=$?
    DAEMON_PID=
    if [ "$rc" != 0 ]; then
        anomaly "stratad ($1 run $2 $3) exited with status $rc after SIGTERM (log: $(tail -c 600 "$DAEMON_LOG" | tr '\n' ' '))"
    fi
    if is_mounted "$MNT_S"; then
        anomaly "$MNT_S still mounted after stratad ($1 run $2 $3) exited; unmounting it"
        umount "$MNT_S" 2>/dev/null || umount -l "$MNT_S"
    fi
    if grep -qiE 'error|panic' "$DAEMON_LOG"; then
        anomaly "stratad log ($1 run $2 $3) has errors: $(grep -iE 'error|panic' "$DAEMON_LOG" | head -3 | tr '\n' ' ')"
    fi
}

# --- one timed run -------------------------------------------------------------------------
RESULTS=$WORK/runs.tsv
: >"$RESULTS"
declare -A WL_MODE=([stat]=stat [read_all]=readall [seq]=seq)
wl_target() { # workload mountpoint
    case $1 in
        stat) echo "$2" ;;
        read_all) echo "$2/small" ;;
        seq) echo "$2/big/big.bin" ;;
    esac
}
timed() { # workload system state run mountpoint
    local w=$1 sys=$2 state=$3 run=$4 out err=$LOGS/wl.err secs got rc=0
    out=$(timeout -k 10 "$WL_TIMEOUT" "$WL" "${WL_MODE[$w]}" "$(wl_target "$w" "$5")" 2>"$err") || rc=$?
    if [ "$rc" != 0 ]; then
        cat "$err" >&2
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            fail "$w on $sys ($state, run $run) did not finish within ${WL_TIMEOUT}s (hang?)"
        fi
        fail "$w on $sys ($state, run $run) failed with status $rc: $(head -c 400 "$err")"
    fi
    secs=${out%% *}
    got=$(echo "$out" | awk '{ print $2, $3, $4 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$sys" "$state" "$run" "$secs" "$got" | tr ' ' '\t' >>"$RESULTS"
    say "$(printf 'run %s/%s %-8s %-7s %-10s %9.4f s  (%s)' "$run" "$RUNS" "$w" "$sys" "$state" "$secs" "$got")"
    if [ "$got" != "${WANT[$w]}" ]; then
        fail "$w on $sys ($state, run $run): got entries/files/bytes '$got', the source gives '${WANT[$w]}'"
    fi
}

CACHE_KIB=$WORK/cache.tsv
: >"$CACHE_KIB"
measure_erofs() { # workload run
    mount_erofs
    drop_caches
    timed "$1" erofs cold "$2" "$MNT_E"
    timed "$1" erofs warm "$2" "$MNT_E"
    umount_erofs
}
measure_stratad() { # workload run
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    start_stratad "$1.$2.cold"
    drop_caches
    timed "$1" stratad cold "$2" "$MNT_S"
    timed "$1" stratad warm "$2" "$MNT_S"
    stop_stratad "$1" "$2" cold_warm
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$(du -sk "$CACHE" | cut -f1)" \
        "$(du -sk --apparent-size "$CACHE" | cut -f1)" >>"$CACHE_KIB"
    drop_caches
    start_stratad "$1.$2.cache_warm"
    drop_caches
    timed "$1" stratad cache_warm "$2" "$MNT_S"
    stop_stratad "$1" "$2" cache_warm
}

WORKLOADS="stat read_all seq"
for run in $(seq 1 "$RUNS"); do
    for w in $WORKLOADS; do
        # Alternate which system goes first so slow drift and first-run effects hit both alike.
        if [ $((run % 2)) = 1 ]; then
            measure_erofs "$w" "$run"
            measure_stratad "$w" "$run"
        else
            measure_stratad "$w" "$run"
            measure_erofs "$w" "$run"
        fi
    done
done

# --- content check -------------------------------------------------------------------------
DIGESTS=$WORK/digests.tsv
: >"$DIGESTS"
digest_of() { # label dir
    local out rc=0
    out=$(timeout -k 10 "$WL_TIMEOUT" "$WL" digest "$2" 2>"$LOGS/digest.err") || rc=$?
    [ "$rc" = 0 ] || { cat "$LOGS/digest.err" >&2; fail "digest through $1 failed with status $rc"; }
    printf '%s\t%s\n' "$1" "$(echo "$out" | awk '{ print $2, $3, $4, $5 }')" >>"$DIGESTS"
    say "digest $1: $(echo "$out" | awk '{ print $2, $3, $4, $5 }')"
}
if [ "$VERIFY" = 1 ]; then
    say "verifying content: digest of every path, mode, size and byte (source, erofs, stratad)"
    digest_of source "$SRC"
    mount_erofs
    digest_of erofs "$MNT_E"
    umount_erofs
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    start_stratad verify.cold
    digest_of stratad_empty_blobcache "$MNT_S"
    stop_stratad verify 0 cold_warm_verify
    drop_caches
    start_stratad verify.cache_warm
    digest_of stratad_filled_blobcache "$MNT_S"
    stop_stratad verify 0 cache_warm_verify
    if [ "$(cut -f2 "$DIGESTS" | sort -u | wc -l)" != 1 ]; then
        cat "$DIGESTS" >&2
        fail "content digests differ between the source and the mounts (above)"
    fi
fi

# --- summary -------------------------------------------------------------------------------
T_END=$(date +%s.%N)
export B_RUNS="$RUNS" B_BIG_MB="$BIG_MB" B_THREADS="$THREADS" B_DIRS="$DIRS" \
    B_FILES_PER_DIR="$FILES_PER_DIR" B_SEED="$SEED" B_VERIFY="$VERIFY" B_STRATA_REV="$STRATA_REV" \
    B_BOOT_BYTES="$BOOT_BYTES" B_BLOB_BYTES="$BLOB_BYTES" B_IMAGE_BUILD_S="$IMAGE_BUILD_S" \
    B_WALL="$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }')" \
    B_DAEMONS="$DAEMONS" B_WORKFS="$(stat -f -c %T "$WORK")" B_CFG="$(tr -d '\n' <"$CFG" | sed "s|$WORK|\$WORK|g")" \
    B_WANT_STAT="${WANT[stat]}" B_WANT_READ_ALL="${WANT[read_all]}" B_WANT_SEQ="${WANT[seq]}"
python3 - "$RESULTS" "$RSS" "$CACHE_KIB" "$ANOMALIES" "$DIGESTS" <<'PY'
import datetime, json, os, statistics, sys

runs_tsv, rss_tsv, cache_tsv, anomalies_txt, digests_tsv = sys.argv[1:6]
E = os.environ
W = ["stat", "read_all", "seq"]
STATES = {"erofs": ["cold", "warm"], "stratad": ["cold", "warm", "cache_warm"]}

times = {w: {s: {st: [] for st in sts} for s, sts in STATES.items()} for w in W}
for line in open(runs_tsv):
    w, system, state, run, secs, *_ = line.rstrip("\n").split("\t")
    times[w][system][state].append(float(secs))

def med(xs):
    return statistics.median(xs) if xs else None

def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None

def r5(x):
    return None if x is None else round(x, 5)

results = {}
for w in W:
    e = {st: med(times[w]["erofs"][st]) for st in STATES["erofs"]}
    s = {st: med(times[w]["stratad"][st]) for st in STATES["stratad"]}
    results[w] = {
        "erofs": {k: r5(v) for k, v in e.items()},
        "stratad": {k: r5(v) for k, v in s.items()},
        "ratio": {
            "cold": ratio(s["cold"], e["cold"]),
            "warm": ratio(s["warm"], e["warm"]),
            "cache_warm": ratio(s["cache_warm"], e["cold"]),
        },
    }

rss = {}
for line in open(rss_tsv):
    w, run, phase, hwm, vmrss, thr = line.rstrip("\n").split("\t")
    num = lambda x: int(x) if x.isdigit() else None
    rss.setdefault(w, {}).setdefault(phase, []).append(
        {"run": int(run), "vm_hwm_kib": num(hwm), "vm_rss_kib": num(vmrss), "threads": num(thr)})
hwms = [r["vm_hwm_kib"] for w in rss for p in rss[w] for r in rss[w][p] if r["vm_hwm_kib"]]
peak = {
    "unit": "KiB",
    "note": "VmHWM / VmRSS / Threads of /proc/<pid>/status read just before SIGTERM; "
            "cold_warm = the daemon that served the cold and warm runs, cache_warm = the one "
            "started over the filled blobcache",
    "max_vm_hwm_kib": max(hwms) if hwms else None,
    "per_workload_max_vm_hwm_kib": {
        w: {p: max((r["vm_hwm_kib"] or 0) for r in rs) for p, rs in ph.items()}
        for w, ph in rss.items()},
    "daemons": rss,
}

cache = {}
for line in open(cache_tsv):
    w, run, kib, app = line.rstrip("\n").split("\t")
    cache.setdefault(w, []).append({"run": int(run), "allocated_kib": int(kib), "apparent_kib": int(app)})

def counts(s):
    a, b, c = (int(x) for x in s.split())
    return {"entries": a, "files": b, "bytes": c}

digests = {}
if os.path.exists(digests_tsv):
    for line in open(digests_tsv):
        label, rest = line.rstrip("\n").split("\t")
        digests[label] = rest.split()[-1]

def first(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None

machine = {
    "nproc": os.cpu_count(),
    "kernel": os.uname().release,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "cpu": first("/proc/cpuinfo", "model name"),
    "mem_total": first("/proc/meminfo", "MemTotal"),
    "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    "work_dir_fs": E["B_WORKFS"],
}
params = {
    "runs": int(E["B_RUNS"]),
    "big_mb": int(E["B_BIG_MB"]),
    "threads": int(E["B_THREADS"]),
    "small_dirs": int(E["B_DIRS"]),
    "files_per_dir": int(E["B_FILES_PER_DIR"]),
    "small_file_sizes": "uniform 100..20480 B, base64 text of seeded random bytes",
    "seed": int(E["B_SEED"]),
    "image": "strata image create --compressor none --aligned-chunk (default 1 MiB chunks)",
    "bootstrap_bytes": int(E["B_BOOT_BYTES"]),
    "blob_bytes": int(E["B_BLOB_BYTES"]),
    "image_build_s": float(E["B_IMAGE_BUILD_S"]),
    "strata_rev": E["B_STRATA_REV"],
    "erofs_mount": "losetup -f --show -r (bootstrap, blob); mount -t erofs -o ro,device=<blob loop> <bootstrap loop>",
    "stratad_cmd": "stratad --config cfg.json --bootstrap B --mountpoint M --apisock S --thread-num THREADS --log-level warn",
    "stratad_config": E["B_CFG"],
    "workloads": {
        "stat": "readdir + lstat of every entry below the mount root",
        "read_all": "readdir + lstat below small/, open + read(1 MiB) to EOF + close of every file",
        "seq": "read(1 MiB) of big/big.bin to EOF",
    },
    "states": {
        "cold": "fresh mount (stratad: fresh daemon, empty blobcache), sync + drop_caches, run",
        "warm": "same run again on the same mount",
        "cache_warm": "stratad only: new daemon over the filled blobcache, drop_caches, run",
    },
    "ratio": "stratad / erofs median time (>1 = slower); cache_warm is divided by erofs cold",
    "timer": "CLOCK_MONOTONIC around the workload inside bench/workload.c (gcc -O2)",
    "stratad_daemons_started": int(E["B_DAEMONS"]),
}
out = {
    "machine": machine,
    "params": params,
    "results": results,
    "runs": times,
    "counts": {"stat": counts(E["B_WANT_STAT"]), "read_all": counts(E["B_WANT_READ_ALL"]),
               "seq": counts(E["B_WANT_SEQ"]),
               "verified": "every run returned exactly these counts (from the source tree)"},
    "content_digest": digests or "not checked (VERIFY=0)",
    "stratad_rss": peak,
    "stratad_blobcache_after_cold_warm": cache,
    "anomalies": [l.rstrip("\n") for l in open(anomalies_txt) if l.strip()],
    "wall_seconds": float(E["B_WALL"]),
}
print(json.dumps(out, indent=2))

def ms(x):
    return "-" if x is None else "%.1f" % (x * 1000)

print()
print("stratad vs kernel erofs, same image (--compressor none --aligned-chunk); median of %d runs, ms"
      % params["runs"])
print("%-9s %-11s %10s %10s %8s   %s" % ("workload", "state", "erofs", "stratad", "ratio", "stratad runs (ms)"))
for w in W:
    r = results[w]
    for st in ["cold", "warm", "cache_warm"]:
        e = r["erofs"]["cold" if st == "cache_warm" else st]
        label = st if st != "cache_warm" else "cache_warm*"
        rr = r["ratio"][st]
        print("%-9s %-11s %10s %10s %8s   %s" % (
            w, label, ms(e), ms(r["stratad"][st]), "-" if rr is None else "%.2fx" % rr,
            ", ".join(ms(x) for x in times[w]["stratad"][st])))
print("* cache_warm: stratad over a filled blobcache with page cache dropped, against erofs cold")
c = out["counts"]
print("counts (every run): stat %(entries)d entries; " % c["stat"]
      + "read_all %(files)d files / %(bytes)d B; " % c["read_all"]
      + "seq %(bytes)d B" % c["seq"])
if digests:
    print("content digest (source = erofs = stratad): %s" % ", ".join("%s %s" % kv for kv in digests.items()))
print("stratad peak RSS (VmHWM, MiB): " + "; ".join(
    "%s %s" % (w, " / ".join("%s %.1f" % (p, v / 1024) for p, v in ph.items()))
    for w, ph in peak["per_workload_max_vm_hwm_kib"].items()))
print("anomalies: %s" % ("none" if not out["anomalies"] else "; ".join(out["anomalies"])))
print("wall time %.0f s, %d stratad daemons, %s, %s cores, kernel %s" % (
    out["wall_seconds"], params["stratad_daemons_started"], machine["date"], machine["nproc"], machine["kernel"]))
PY
