#!/usr/bin/env bash
# What stratad's access log costs (issue 5): the same image and workloads through stratad with
# the log off, in first-touch mode and in full mode, in one run.
#
# One image (`strata image create --compressor none --aligned-chunk`) of a small-file tree and
# one big file, served by stratad (localfs backend, blobcache, FUSE_THREADS FUSE threads).
# Workloads (bench/workload.c, compiled here with gcc -O2, single thread, CLOCK_MONOTONIC):
#   stat      recursive readdir + lstat of every entry of the mount (the stat storm)
#   read_all  walk small/ and open / read 1 MiB requests to EOF / close every file
#   seq       read big/big.bin in 1 MiB requests
#
# The blobcache is WARM. Before anything is timed, one daemon without a log reads every byte
# of the image (the `digest` workload, whose result must equal the source's), so every chunk
# is in the cache file and no timed run goes to the backend; each run reads stratad's backend
# counter and reports an anomaly if it did. Backend fetches would add noise several times the
# size of the cost being measured. What is cold in every run is the page cache:
#
#   for round in 1..RUNS:
#     for workload in stat read_all seq:
#       WARMUP untimed runs with the log off (same steps, nothing recorded)
#       for mode in off, first-touch, full (the order rotated by one every round):
#         start a fresh stratad (off: no `accesslog` section; else a new log file),
#         sync; echo 3 > /proc/sys/vm/drop_caches; time the workload;
#         wait SETTLE_S (longer than the log's 1 s flush interval), read
#         GET /api/v1/accesslog?limit=1 and /api/v1/metrics/backend, SIGTERM the daemon (it
#         flushes and fsyncs the log), then `strata accesslog stats --json` the log
#
# Reported per workload and mode: the median time over the rounds; ratio = median(mode) /
# median(off); overhead % = (ratio - 1) * 100, against the goal of issue 5 (first-touch < 2 %,
# full < 5 %). Also the median of the per-round paired ratios (the runs of one round and
# workload are adjacent in time), stratad's CPU time for the run (all its threads, from
# /proc/PID/task/*/schedstat, from just before the workload until after SETTLE_S), the part of
# it spent by the `accesslog` writer thread, and the daemon's peak RSS. Log figures per
# workload and mode (medians over the rounds): events recorded / deduped / dropped,
# written_records and written_bytes (API, headers excluded), the log file's size after the
# daemon stopped, access events in the file, and bytes per event = written_bytes /
# written_records, written_bytes / recorded, and (file size - headers) / access events in the
# file. Note that time is taken in the workload process: log work the writer thread does after
# the workload finished (it drains once a second, or when a ring is half full) is not in the
# time, but it is in the CPU columns.
#
# Checks, the script fails otherwise: every run returns the counts the source tree gives
# (entries / files / bytes); the content digest through stratad equals the source's; with the
# log off the API answers that the mount has no log; with the log on the API reports the mode,
# recorded events, written records and bytes, the log file holds more than its header and at
# least one access event, read_all's log names at least as many paths under /small as files
# were read, and seq's names /big/big.bin. Reported under "anomalies" (not fatal): backend reads
# during a timed run, dropped events, write errors, a log writer at normal priority (it could
# not go idle: docs/access-log.md), a full-mode file holding a different number
# of events than the API recorded, daemons that did not exit cleanly.
#
# Stdout: one JSON object, then a table. Progress goes to stderr. The load average is
# recorded at the start, at every round and at the end, and the spread of the off runs per
# workload is printed with the result: on a busy machine it, not the log, can set the
# smallest overhead one run resolves.
#
# Environment:
#   STRATAD          the daemon (default ${CARGO_TARGET_DIR:-target}/release/stratad)
#   STRATA           the CLI (default: next to STRATAD, else target/release/strata)
#   REV              the binaries' commit, for the JSON (default: the checkout's HEAD)
#   RUNS=5           rounds; each runs every workload in every mode once
#   BIG_MB=256       size of big/big.bin (seeded pseudo-random, incompressible)
#   DIRS=100 FILES_PER_DIR=100   small-file tree: DIRS dirs x FILES_PER_DIR files, 100 B..20 KiB
#   FUSE_THREADS=4   stratad --fuse-threads
#   SETTLE_S=1.5     wait after each workload before the log counters are read
#   WARMUP=1         untimed runs (log off) before each workload's timed runs in a round. On
#                    this VM the first read_all after the stat storm takes ~30 % longer and
#                    ~40 % more daemon CPU whatever the mode (0.45-0.49 s against 0.37-0.40
#                    s, 6 of 6 tries; spinning both CPUs first does not help), so without it
#                    the mode that comes first in a round's rotation pays that; 0 turns it off
#   SEED=42          seed of the generated data
#   WL_TIMEOUT=600   seconds one workload run may take before it counts as hung
#   KEEP=0           1 keeps the work dir (tree, image, logs, API answers, runs.jsonl)
#   TMPDIR           parent of the work dir (default /var/tmp)
#
# Needs root (FUSE, drop_caches), /dev/fuse, gcc, python3, timeout, and curl (a python3
# unix-socket client is used when curl is missing). Builds nothing but bench/workload.c and
# installs nothing. Stops only the daemons it started (by pid) and unmounts only its own mount
# point, also on Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
BIG_MB=${BIG_MB:-256}
DIRS=${DIRS:-100}
FILES_PER_DIR=${FILES_PER_DIR:-100}
FUSE_THREADS=${FUSE_THREADS:-4}
SETTLE_S=${SETTLE_S:-1.5}
WARMUP=${WARMUP:-1}
SEED=${SEED:-42}
WL_TIMEOUT=${WL_TIMEOUT:-600}
KEEP=${KEEP:-0}
T_START=$(date +%s.%N)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
UPTIME_START=$(uptime)

say() { echo "accesslog_overhead: $*" >&2; }
die_usage() { say "$*"; exit 2; }
fail() { say "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
    die_usage "must run as root (FUSE, drop_caches)"
fi
for v in RUNS BIG_MB DIRS FILES_PER_DIR FUSE_THREADS SEED WL_TIMEOUT WARMUP; do
    case ${!v} in
        '' | *[!0-9]*) die_usage "$v=${!v}: expected a non-negative integer" ;;
    esac
done
case $SETTLE_S in
    '' | *[!0-9.]* | *.*.*) die_usage "SETTLE_S=$SETTLE_S: expected a number of seconds" ;;
esac
[ "$RUNS" -ge 1 ] || die_usage "RUNS must be at least 1"
[ "$BIG_MB" -ge 1 ] || die_usage "BIG_MB must be at least 1"
[ "$FUSE_THREADS" -ge 1 ] || die_usage "FUSE_THREADS must be at least 1"
[ "$DIRS" -ge 1 ] && [ "$FILES_PER_DIR" -ge 1 ] || die_usage "DIRS and FILES_PER_DIR must be at least 1"
for t in gcc python3 timeout sync; do
    command -v "$t" >/dev/null 2>&1 || die_usage "$t is required (this script installs nothing)"
done
if command -v curl >/dev/null 2>&1; then HAVE_CURL=1; else HAVE_CURL=0; fi
[ -c /dev/fuse ] || die_usage "/dev/fuse is missing"

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
STRATAD=${STRATAD:-$BIN/stratad}
if [ -z "${STRATA:-}" ]; then
    if [ -x "$(dirname "$STRATAD")/strata" ]; then STRATA=$(dirname "$STRATAD")/strata; else STRATA=$BIN/strata; fi
fi
[ -x "$STRATAD" ] || die_usage "STRATAD=$STRATAD is not an executable (build with cargo build --release, or set STRATAD)"
[ -x "$STRATA" ] || die_usage "STRATA=$STRATA is not an executable (set STRATA)"
if [ -z "${REV:-}" ]; then
    REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        REV="$REV+dirty"
    fi
fi

# --- work dir and cleanup ------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-albench-XXXXXX")
case $WORK in
    *[[:space:]]*) rmdir "$WORK"; die_usage "work dir '$WORK' contains whitespace; set TMPDIR" ;;
esac
MNT=$WORK/mnt
CACHE=$WORK/blobcache
SOCK=$WORK/api.sock
LOGS=$WORK/logs
RUNS_DIR=$WORK/runs
mkdir -p "$MNT" "$CACHE" "$LOGS" "$RUNS_DIR"
DAEMON_PID=
ANOMALIES=$WORK/anomalies.txt
: >"$ANOMALIES"

is_mounted() { # exact mount point match in our mount namespace (no stat of a FUSE dir)
    awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo
}

cleanup() {
    local rc=$? i
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
    if is_mounted "$MNT"; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
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

WL=$WORK/workload
gcc -O2 -Wall -o "$WL" "$ROOT/bench/workload.c" || fail "gcc could not build bench/workload.c"

# --- data ----------------------------------------------------------------------------------
SRC=$WORK/src
say "generating $DIRS x $FILES_PER_DIR small files and a $BIG_MB MiB file (seed $SEED) in $SRC"
python3 - "$SRC" "$DIRS" "$FILES_PER_DIR" "$SEED" <<'PY'
import base64, os, random, sys

dest, ndirs, per, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sizes = random.Random(seed)          # file sizes, uniform 100 B .. 20 KiB
bits = random.Random(seed ^ 0x5EED)  # content: base64 text of seeded random bytes
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
SRC_DIGEST=$("$WL" digest "$SRC" | awk '{ print $2, $3, $4, $5 }')
say "expected (entries files bytes): stat ${WANT[stat]}; read_all ${WANT[read_all]}; seq ${WANT[seq]}"

# --- image ---------------------------------------------------------------------------------
BOOT=$WORK/image/bootstrap
BLOBS=$WORK/image/blobs
mkdir -p "$BLOBS"
say "strata image create --compressor none --aligned-chunk"
"$STRATA" image create --compressor none --aligned-chunk -B "$BOOT" -D "$BLOBS" "$SRC" \
    >"$LOGS/image-create.out" 2>&1 || { cat "$LOGS/image-create.out" >&2; fail "image create"; }
mapfile -t BLOB_FILES < <(find "$BLOBS" -maxdepth 1 -type f)
[ "${#BLOB_FILES[@]}" = 1 ] || fail "expected exactly one blob in $BLOBS, found ${#BLOB_FILES[@]}"
BOOT_BYTES=$(stat -c %s "$BOOT")
BLOB_BYTES=$(stat -c %s "${BLOB_FILES[0]}")
say "image: bootstrap $BOOT_BYTES B, blob $BLOB_BYTES B"

# --- stratad -------------------------------------------------------------------------------
write_cfg() { # file mode logpath: a v2 config; mode off has no accesslog section at all
    local al=
    if [ "$2" != off ]; then
        al=",\"accesslog\":{\"path\":\"$3\",\"mode\":\"$2\"}"
    fi
    printf '{"version":2,"backend":{"type":"localfs","localfs":{"dir":"%s"}},"cache":{"type":"blobcache","filecache":{"work_dir":"%s"}}%s}\n' \
        "$BLOBS" "$CACHE" "$al" >"$1"
}

api_get() { # path outfile: GET over the API socket, body to outfile; prints the HTTP status
    if [ "$HAVE_CURL" = 1 ]; then
        curl -s --max-time 5 -o "$2" -w '%{http_code}' --unix-socket "$SOCK" "http://x$1" || true
    else
        python3 - "$SOCK" "$1" "$2" <<'PY' || echo 000
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
head, _, body = data.partition(b"\r\n\r\n")
open(sys.argv[3], "wb").write(body)
print(head.split(b" ")[1].decode() if b" " in head else "000", end="")
PY
    fi
}

DAEMONS=0
start_stratad() { # tag config
    local log=$LOGS/stratad.$1.log i rc
    DAEMONS=$((DAEMONS + 1))
    rm -f "$SOCK"
    "$STRATAD" -C "$2" -B "$BOOT" -M "$MNT" --apisock "$SOCK" --fuse-threads "$FUSE_THREADS" \
        --log-level warn >"$log" 2>&1 &
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
        if is_mounted "$MNT" && [ -S "$SOCK" ] \
            && [ "$(api_get /api/v1/daemon "$LOGS/daemon.json" 2>/dev/null)" = 200 ] \
            && grep -q RUNNING "$LOGS/daemon.json"; then
            return 0
        fi
        sleep 0.05
    done
    cat "$log" >&2
    fail "stratad ($1, pid $DAEMON_PID) did not reach RUNNING within 20 s; log above"
}

stop_stratad() { # tag
    local pid=$DAEMON_PID i rc=0
    [ -n "$pid" ] || fail "stop_stratad without a daemon"
    kill -TERM "$pid"
    for i in $(seq 1 400); do # 20 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        anomaly "stratad pid $pid ($1) still alive 20 s after SIGTERM; sent SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" || rc=$?
    DAEMON_PID=
    if [ "$rc" != 0 ]; then
        anomaly "stratad ($1) exited with status $rc after SIGTERM (log: $(tail -c 600 "$DAEMON_LOG" | tr '\n' ' '))"
    fi
    if is_mounted "$MNT"; then
        anomaly "$MNT still mounted after stratad ($1) exited; unmounting it"
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    if grep -qiE 'error|panic' "$DAEMON_LOG"; then
        anomaly "stratad log ($1) has errors: $(grep -iE 'error|panic' "$DAEMON_LOG" | head -3 | tr '\n' ' ')"
    fi
}

cpu_ns() { # pid [thread name]: on-CPU nanoseconds of the process's threads (or those so named)
    local t sum=0 ns c
    for t in /proc/"$1"/task/*; do
        if [ -n "${2:-}" ]; then
            c=$(cat "$t/comm" 2>/dev/null) || continue
            [ "$c" = "$2" ] || continue
        fi
        ns=$(awk '{ print $1 }' "$t/schedstat" 2>/dev/null) || continue
        [ -n "$ns" ] && sum=$((sum + ns))
    done
    echo "$sum"
}

# --- warm the blobcache (and check the content) --------------------------------------------
write_cfg "$WORK/warmup.json" off ""
say "warming the blobcache: a daemon without a log reads every byte (digest workload)"
start_stratad warmup "$WORK/warmup.json"
rc=0
MNT_DIGEST=$(timeout -k 10 "$WL_TIMEOUT" "$WL" digest "$MNT" 2>"$LOGS/digest.err" | awk '{ print $2, $3, $4, $5 }') || rc=$?
[ "$rc" = 0 ] || { cat "$LOGS/digest.err" >&2; fail "digest through stratad failed with status $rc"; }
WARM_BACKEND_CODE=$(api_get /api/v1/metrics/backend "$LOGS/warmup-backend.json")
stop_stratad warmup
say "digest: source $SRC_DIGEST; stratad $MNT_DIGEST"
[ "$MNT_DIGEST" = "$SRC_DIGEST" ] || fail "content digest through stratad ($MNT_DIGEST) differs from the source's ($SRC_DIGEST)"
[ "$WARM_BACKEND_CODE" = 200 ] || anomaly "warm-up: GET /api/v1/metrics/backend answered $WARM_BACKEND_CODE"
CACHE_KIB=$(du -sk "$CACHE" | cut -f1)
say "blobcache after warm-up: $CACHE_KIB KiB allocated"

# --- the checker of one run ----------------------------------------------------------------
CHECK=$WORK/check_run.py
cat >"$CHECK" <<'PY'
# Reads one run's files (env R_*), appends a JSON line to R_OUT, anomalies to R_ANOM.
# Exits 1 with a message on stderr when the run breaks a hard check.
import json, os, sys

E = os.environ
mode, w = E["R_MODE"], E["R_W"]
where = "%s, %s, round %s" % (w, mode, E["R_ROUND"])

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

fatal, anomalies = [], []
rec = {
    "round": int(E["R_ROUND"]), "workload": w, "mode": mode, "position": int(E["R_POS"]),
    "seconds": float(E["R_SECS"]), "loadavg1": float(E["R_LOAD1"]),
    "stratad_cpu_ms": int(E["R_CPU_NS"]) / 1e6, "writer_cpu_ms": int(E["R_WCPU_NS"]) / 1e6,
    "vm_hwm_kib": int(E["R_HWM"]) if E["R_HWM"].isdigit() else None,
}
backend = load(E["R_BACKEND_JSON"]) if E["R_BACKEND_CODE"] == "200" else None
if backend is None:
    anomalies.append("%s: no backend metrics (HTTP %s)" % (where, E["R_BACKEND_CODE"]))
    rec["backend_read_bytes"] = None
else:
    rec["backend_read_bytes"] = backend.get("read_amount_total")
    if backend.get("read_amount_total"):
        anomalies.append("%s: blobcache not warm, the backend read %s B" % (where, backend["read_amount_total"]))

code = E["R_API_CODE"]
api = load(E["R_API_JSON"]) if code == "200" else None
if mode == "off":
    if api is not None and api.get("mode") not in (None, "off"):
        fatal.append("%s: the log is off but the API reports mode %r" % (where, api.get("mode")))
    if code == "200" and api and api.get("stats", {}).get("recorded"):
        fatal.append("%s: the log is off but the API reports %s recorded events" % (where, api["stats"]["recorded"]))
    rec["api_status"] = int(code) if code.isdigit() else None
else:
    if api is None:
        fatal.append("%s: GET /api/v1/accesslog answered HTTP %s" % (where, code))
    else:
        st = api.get("stats", {})
        for k in ("recorded", "dropped", "deduped", "written_records", "written_bytes",
                  "write_errors", "rotations", "writer_boosts"):
            rec[k] = st.get(k)
        rec["writer_priority"] = api.get("writer_priority")
        if str(api.get("writer_priority", "")).startswith("normal"):
            anomalies.append("%s: the log writer runs at normal priority (%s)" % (where, api["writer_priority"]))
        if api.get("mode") != mode:
            fatal.append("%s: the API reports mode %r" % (where, api.get("mode")))
        if not st.get("recorded") or not st.get("written_records") or not st.get("written_bytes"):
            fatal.append("%s: the log is empty (recorded %s, written_records %s, written_bytes %s)"
                         % (where, st.get("recorded"), st.get("written_records"), st.get("written_bytes")))
        if st.get("write_errors"):
            anomalies.append("%s: %s log write errors (%s)" % (where, st["write_errors"], api.get("last_error")))
        if st.get("dropped"):
            anomalies.append("%s: %s events dropped by the recorder" % (where, st["dropped"]))
    size, nfiles = int(E["R_LOG_BYTES"]), int(E["R_LOG_FILES"])
    rec["log_file_bytes"], rec["log_files"] = size, nfiles
    if size <= 64 * nfiles:
        fatal.append("%s: the log file holds %d B, no more than its header" % (where, size))
    stats = load(E["R_STATS_JSON"])
    if stats is None:
        fatal.append("%s: strata accesslog stats --json gave no JSON" % where)
    else:
        ev = stats.get("events", 0)
        paths = {x["path"] for x in stats.get("first_touch", [])}
        rec["file_events"], rec["file_paths"] = ev, len(paths)
        rec["file_dropped"], rec["file_torn"] = stats.get("dropped"), len(stats.get("torn") or [])
        rec["file_ops"] = stats.get("ops")
        rec["bytes_per_file_event"] = round((size - 64 * nfiles) / ev, 2) if ev else None
        if ev <= 0:
            fatal.append("%s: the log file holds no access events" % where)
        if rec["file_torn"]:
            anomalies.append("%s: torn tail in the log: %s" % (where, stats.get("torn")))
        want_files = int(E["R_WANT"].split()[1])
        if w == "read_all":
            n = sum(1 for p in paths if p.startswith("/small/"))
            if n < want_files:
                fatal.append("%s: the log names %d paths under /small, %d files were read" % (where, n, want_files))
        if w == "seq" and "/big/big.bin" not in paths:
            fatal.append("%s: the log does not name /big/big.bin" % where)
        if mode == "full" and api is not None and ev != api.get("stats", {}).get("recorded"):
            anomalies.append("%s: the file holds %d events, the API recorded %s"
                             % (where, ev, api.get("stats", {}).get("recorded")))
        if api is not None and rec.get("written_bytes") and size - 64 * nfiles < rec["written_bytes"]:
            anomalies.append("%s: the file holds %d B of records, the API wrote %d"
                             % (where, size - 64 * nfiles, rec["written_bytes"]))
    if rec.get("written_records"):
        rec["bytes_per_record"] = round(rec["written_bytes"] / rec["written_records"], 2)
    if rec.get("recorded"):
        rec["bytes_per_recorded"] = round(rec["written_bytes"] / rec["recorded"], 2)

with open(E["R_ANOM"], "a") as f:
    for a in anomalies:
        print("accesslog_overhead: ANOMALY: " + a, file=sys.stderr)
        f.write(a + "\n")
with open(E["R_OUT"], "a") as f:
    f.write(json.dumps(rec) + "\n")
if fatal:
    print("\n".join(fatal), file=sys.stderr)
    sys.exit(1)
PY

# --- one timed run -------------------------------------------------------------------------
RESULTS=$WORK/runs.jsonl
: >"$RESULTS"
declare -A WL_MODE=([stat]=stat [read_all]=readall [seq]=seq)
wl_target() { # workload mountpoint
    case $1 in
        stat) echo "$2" ;;
        read_all) echo "$2/small" ;;
        seq) echo "$2/big/big.bin" ;;
    esac
}

one_run() { # round workload mode position
    local r=$1 w=$2 m=$3 pos=$4 dir=$RUNS_DIR/$1.$2.$3 log= out rc=0 got secs
    local c0 c1 w0 w1 hwm code bcode size=0 nfiles=0 f load1
    mkdir -p "$dir"
    [ "$m" = off ] || log=$dir/access.log
    write_cfg "$dir/stratad.json" "$m" "$log"
    start_stratad "$r.$w.$m" "$dir/stratad.json"
    drop_caches
    load1=$(cut -d' ' -f1 /proc/loadavg)
    c0=$(cpu_ns "$DAEMON_PID")
    w0=$(cpu_ns "$DAEMON_PID" accesslog)
    out=$(timeout -k 10 "$WL_TIMEOUT" "$WL" "${WL_MODE[$w]}" "$(wl_target "$w" "$MNT")" 2>"$dir/wl.err") || rc=$?
    if [ "$rc" != 0 ]; then
        cat "$dir/wl.err" >&2
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            fail "$w ($m, round $r) did not finish within ${WL_TIMEOUT}s (hang?)"
        fi
        fail "$w ($m, round $r) failed with status $rc: $(head -c 400 "$dir/wl.err")"
    fi
    secs=${out%% *}
    got=$(echo "$out" | awk '{ print $2, $3, $4 }')
    say "$(printf 'round %s/%s %-8s %-11s %9.4f s  (%s)' "$r" "$RUNS" "$w" "$m" "$secs" "$got")"
    if [ "$got" != "${WANT[$w]}" ]; then
        fail "$w ($m, round $r): got entries/files/bytes '$got', the source gives '${WANT[$w]}'"
    fi
    sleep "$SETTLE_S"
    c1=$(cpu_ns "$DAEMON_PID")
    w1=$(cpu_ns "$DAEMON_PID" accesslog)
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status" 2>/dev/null || true)
    code=$(api_get "/api/v1/accesslog?limit=1" "$dir/accesslog.json")
    bcode=$(api_get /api/v1/metrics/backend "$dir/backend.json")
    stop_stratad "$r.$w.$m"
    if [ -n "$log" ]; then
        for f in "$log" "$log".[0-9]*; do
            [ -f "$f" ] || continue
            size=$((size + $(stat -c %s "$f")))
            nfiles=$((nfiles + 1))
        done
        "$STRATA" accesslog stats --json "$log" >"$dir/stats.json" 2>"$dir/stats.err" \
            || { cat "$dir/stats.err" >&2; fail "strata accesslog stats $log failed ($w, $m, round $r)"; }
    fi
    R_OUT=$RESULTS R_ANOM=$ANOMALIES R_ROUND=$r R_W=$w R_MODE=$m R_POS=$pos R_SECS=$secs \
        R_LOAD1=$load1 R_CPU_NS=$((c1 - c0)) R_WCPU_NS=$((w1 - w0)) R_HWM=${hwm:-NA} \
        R_API_CODE=$code R_API_JSON=$dir/accesslog.json R_BACKEND_CODE=$bcode \
        R_BACKEND_JSON=$dir/backend.json R_LOG_BYTES=$size R_LOG_FILES=$nfiles \
        R_STATS_JSON=$dir/stats.json R_WANT="${WANT[$w]}" \
        python3 "$CHECK" || fail "$w ($m, round $r): check failed (above)"
}

warm_run() { # round workload: an untimed run with the log off (see WARMUP)
    local r=$1 w=$2 dir=$RUNS_DIR/$1.$2.warmup out rc=0
    mkdir -p "$dir"
    write_cfg "$dir/stratad.json" off ""
    start_stratad "$r.$w.warmup" "$dir/stratad.json"
    drop_caches
    out=$(timeout -k 10 "$WL_TIMEOUT" "$WL" "${WL_MODE[$w]}" "$(wl_target "$w" "$MNT")" 2>"$dir/wl.err") || rc=$?
    stop_stratad "$r.$w.warmup"
    [ "$rc" = 0 ] || fail "warm-up run of $w (round $r) failed with status $rc: $(head -c 400 "$dir/wl.err")"
    say "$(printf 'round %s/%s %-8s %-11s %9.4f s  (untimed)' "$r" "$RUNS" "$w" warm-up "${out%% *}")"
}

MODES=(off first-touch full)
ROUND_LOADS=$WORK/round_loads.tsv
: >"$ROUND_LOADS"
for r in $(seq 1 "$RUNS"); do
    k=$(((r - 1) % 3))
    ORDER=("${MODES[$k]}" "${MODES[$(((k + 1) % 3))]}" "${MODES[$(((k + 2) % 3))]}")
    printf '%s\t%s\t%s\n' "$r" "$(cut -d' ' -f1-3 /proc/loadavg)" "${ORDER[*]}" >>"$ROUND_LOADS"
    say "round $r/$RUNS: order ${ORDER[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for w in stat read_all seq; do
        for _ in $(seq 1 "$WARMUP"); do
            warm_run "$r" "$w"
        done
        for p in 0 1 2; do
            one_run "$r" "$w" "${ORDER[$p]}" "$p"
        done
    done
done

# --- summary -------------------------------------------------------------------------------
T_END=$(date +%s.%N)
export B_RUNS="$RUNS" B_BIG_MB="$BIG_MB" B_DIRS="$DIRS" B_FILES_PER_DIR="$FILES_PER_DIR" \
    B_FUSE_THREADS="$FUSE_THREADS" B_SETTLE_S="$SETTLE_S" B_WARMUP="$WARMUP" B_SEED="$SEED" B_REV="$REV" \
    B_STRATAD="$STRATAD" B_STRATA="$STRATA" B_STRATAD_SHA256="$(sha256sum "$STRATAD" | cut -c1-16)" \
    B_BOOT_BYTES="$BOOT_BYTES" B_BLOB_BYTES="$BLOB_BYTES" B_CACHE_KIB="$CACHE_KIB" \
    B_WALL="$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }')" \
    B_DAEMONS="$DAEMONS" B_WORKFS="$(stat -f -c %T "$WORK")" \
    B_LOAD_START="$LOAD_START" B_UPTIME_START="$UPTIME_START" \
    B_LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)" B_UPTIME_END="$(uptime)" \
    B_CFG="$(write_cfg /dev/stdout full '$WORK/runs/R.W.M/access.log' | sed "s|$WORK|\$WORK|g")" \
    B_WANT_STAT="${WANT[stat]}" B_WANT_READ_ALL="${WANT[read_all]}" B_WANT_SEQ="${WANT[seq]}" \
    B_DIGEST="$SRC_DIGEST"
python3 - "$RESULTS" "$ANOMALIES" "$ROUND_LOADS" <<'PY'
import datetime, json, os, statistics, sys

runs_jsonl, anomalies_txt, round_loads = sys.argv[1:4]
E = os.environ
W = ["stat", "read_all", "seq"]
MODES = ["off", "first-touch", "full"]
GOAL = {"first-touch": 2.0, "full": 5.0}

runs = [json.loads(l) for l in open(runs_jsonl) if l.strip()]
by = {w: {m: sorted((r for r in runs if r["workload"] == w and r["mode"] == m),
                    key=lambda r: r["round"]) for m in MODES} for w in W}

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def rnd(x, n):
    return None if x is None else round(x, n)

def counts(s):
    a, b, c = (int(x) for x in s.split())
    return {"entries": a, "files": b, "bytes": c}

want = {"stat": counts(E["B_WANT_STAT"]), "read_all": counts(E["B_WANT_READ_ALL"]),
        "seq": counts(E["B_WANT_SEQ"])}

def throughput(w, secs):
    if w == "stat":
        return {"entries_per_s": round(want[w]["entries"] / secs)}
    return {"mb_per_s": round(want[w]["bytes"] / 1e6 / secs, 1)}

results, logs, noise = {}, {}, {}
for w in W:
    off = [r["seconds"] for r in by[w]["off"]]
    off_med = med(off)
    off_by_round = {r["round"]: r["seconds"] for r in by[w]["off"]}
    noise[w] = {
        "off_runs_s": off,
        "off_spread_pct": round((max(off) - min(off)) / off_med * 100, 1),
        "off_cv_pct": round(statistics.pstdev(off) / statistics.mean(off) * 100, 1),
    }
    results[w] = {}
    logs[w] = {}
    for m in MODES:
        rs = by[w][m]
        t = [r["seconds"] for r in rs]
        mm = med(t)
        ent = {"median_s": rnd(mm, 5), "runs_s": t, **throughput(w, mm),
               "stratad_cpu_ms_median": rnd(med([r["stratad_cpu_ms"] for r in rs]), 1),
               "writer_cpu_ms_median": rnd(med([r["writer_cpu_ms"] for r in rs]), 1),
               "vm_hwm_mib_max": rnd(max((r["vm_hwm_kib"] or 0) for r in rs) / 1024, 1),
               "loadavg1_at_runs": [r["loadavg1"] for r in rs]}
        if m != "off":
            ratio = mm / off_med
            paired = [r["seconds"] / off_by_round[r["round"]] for r in rs if r["round"] in off_by_round]
            ov = (ratio - 1) * 100
            ent.update({
                "ratio": round(ratio, 4), "overhead_pct": round(ov, 2),
                "paired_ratios": [round(x, 4) for x in paired],
                "paired_ratio_median": rnd(med(paired), 4),
                "paired_overhead_pct": rnd((med(paired) - 1) * 100, 2),
                "goal_pct": GOAL[m], "goal_met": ov < GOAL[m],
            })
            keys = ["recorded", "deduped", "dropped", "written_records", "written_bytes",
                    "log_file_bytes", "file_events", "file_paths", "write_errors", "rotations"]
            lg = {k + "_median": med([r.get(k) for r in rs]) for k in keys}
            lg["dropped_per_run"] = [r.get("dropped") for r in rs]
            for k in ("bytes_per_record", "bytes_per_recorded", "bytes_per_file_event"):
                lg[k + "_median"] = med([r.get(k) for r in rs])
            lg["ops_in_file_round1"] = rs[0].get("file_ops") if rs else None
            logs[w][m] = lg
        results[w][m] = ent

totals = {}
for m in MODES[1:]:
    rs = [r for r in runs if r["mode"] == m]
    s = {k: sum(r.get(k) or 0 for r in rs) for k in
         ("recorded", "deduped", "dropped", "written_records", "written_bytes", "log_file_bytes",
          "file_events", "log_files", "writer_boosts")}
    s["runs"] = len(rs)
    s["bytes_per_record"] = round(s["written_bytes"] / s["written_records"], 2) if s["written_records"] else None
    s["bytes_per_recorded_event"] = round(s["written_bytes"] / s["recorded"], 2) if s["recorded"] else None
    payload = s["log_file_bytes"] - 64 * s["log_files"]
    s["bytes_per_file_event"] = round(payload / s["file_events"], 2) if s["file_events"] else None
    totals[m] = s

worst_noise = max(noise[w]["off_spread_pct"] for w in W)
noise_note = ("off-mode spread (max - min) / median up to %.1f %%: %s" % (
    worst_noise, "larger than the 2 % goal, so overheads of a few % are not resolved by this run"
    if worst_noise > 2.0 else "within the 2 % goal"))

def first(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None

rounds = []
for line in open(round_loads):
    r, la, order = line.rstrip("\n").split("\t")
    rounds.append({"round": int(r), "loadavg": la.split(), "order": order.split()})

machine = {
    "nproc": os.cpu_count(),
    "kernel": os.uname().release,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "cpu": first("/proc/cpuinfo", "model name"),
    "mem_total": first("/proc/meminfo", "MemTotal"),
    "loadavg_at_start": E["B_LOAD_START"].split(),
    "loadavg_at_end": E["B_LOAD_END"].split(),
    "uptime_at_start": E["B_UPTIME_START"].strip(),
    "uptime_at_end": E["B_UPTIME_END"].strip(),
    "work_dir_fs": E["B_WORKFS"],
}
params = {
    "runs": int(E["B_RUNS"]),
    "big_mb": int(E["B_BIG_MB"]),
    "small_dirs": int(E["B_DIRS"]),
    "files_per_dir": int(E["B_FILES_PER_DIR"]),
    "small_file_sizes": "uniform 100..20480 B, base64 text of seeded random bytes",
    "seed": int(E["B_SEED"]),
    "fuse_threads": int(E["B_FUSE_THREADS"]),
    "settle_s": float(E["B_SETTLE_S"]),
    "warmup_runs_per_workload_and_round": int(E["B_WARMUP"]),
    "image": "strata image create --compressor none --aligned-chunk (default 1 MiB chunks)",
    "bootstrap_bytes": int(E["B_BOOT_BYTES"]),
    "blob_bytes": int(E["B_BLOB_BYTES"]),
    "blobcache_kib_after_warmup": int(E["B_CACHE_KIB"]),
    "rev": E["B_REV"],
    "stratad": E["B_STRATAD"], "stratad_sha256_16": E["B_STRATAD_SHA256"], "strata": E["B_STRATA"],
    "stratad_cmd": "stratad -C cfg.json -B bootstrap -M mnt --apisock sock --fuse-threads N --log-level warn",
    "stratad_config": E["B_CFG"] + " (mode off: no accesslog section)",
    "blobcache": "warm: filled once before timing by a daemon reading every byte; every timed "
                 "run checks that the backend read 0 B",
    "page_cache": "sync + echo 3 > /proc/sys/vm/drop_caches after the daemon started, before each run",
    "schedule": "per round, per workload, the three modes back to back, each with a fresh daemon; "
                "the mode order rotates by one per round",
    "workloads": {
        "stat": "readdir + lstat of every entry below the mount root",
        "read_all": "readdir + lstat below small/, open + read(1 MiB) to EOF + close of every file",
        "seq": "read(1 MiB) of big/big.bin to EOF",
    },
    "ratio": "median time of the mode / median time with the log off (>1 = slower)",
    "paired_ratio": "per round, time of the mode / time with the log off in the same round; median",
    "overhead_pct": "(ratio - 1) * 100; goal first-touch < 2, full < 5 (issue 5)",
    "stratad_cpu_ms": "sum of /proc/PID/task/*/schedstat on-CPU time from before the workload "
                      "to SETTLE_S after it; writer_cpu_ms: the accesslog thread alone",
    "bytes_per_record": "API written_bytes / written_records (access, path, process and drop records; headers excluded)",
    "bytes_per_recorded": "API written_bytes / recorded (events taken into the rings)",
    "bytes_per_file_event": "(log file bytes - 64 B header per file) / access events in the file",
    "timer": "CLOCK_MONOTONIC around the workload inside bench/workload.c (gcc -O2)",
    "stratad_daemons_started": int(E["B_DAEMONS"]),
}
out = {
    "benchmark": "accesslog_overhead",
    "machine": machine,
    "params": params,
    "rounds": rounds,
    "results": results,
    "log": logs,
    "log_totals": totals,
    "noise": {"per_workload": noise, "worst_off_spread_pct": worst_noise, "note": noise_note},
    "counts": {**want, "verified": "every run returned exactly these counts (from the source tree)"},
    "content_digest": {"source": E["B_DIGEST"], "stratad_warmup": "equal"},
    "runs": runs,
    "anomalies": [l.rstrip("\n") for l in open(anomalies_txt) if l.strip()],
    "wall_seconds": float(E["B_WALL"]),
}
print(json.dumps(out, indent=2))

def ms(x):
    return "-" if x is None else "%.1f" % (x * 1000)

def tp(w, ent):
    if w == "stat":
        return "%.0f k ent/s" % (ent["entries_per_s"] / 1000)
    return "%.0f MB/s" % ent["mb_per_s"]

print()
print("access log cost through stratad (warm blobcache, page cache dropped before each run); "
      "median of %d rounds, rev %s" % (params["runs"], params["rev"]))
print("%-9s %-12s %9s %13s %7s %9s %8s %-16s %s" % (
    "workload", "mode", "median ms", "throughput", "ratio", "overhead", "paired", "goal", "runs (ms)"))
for w in W:
    for m in MODES:
        e = results[w][m]
        if m == "off":
            cols = ("-", "-", "-", "-")
        else:
            cols = ("%.3f" % e["ratio"], "%+.1f %%" % e["overhead_pct"],
                    "%+.1f %%" % e["paired_overhead_pct"],
                    "< %g %%: %s" % (e["goal_pct"], "met" if e["goal_met"] else "NOT met"))
        print("%-9s %-12s %9s %13s %7s %9s %8s %-16s %s" % (
            w, m, ms(e["median_s"]), tp(w, e), *cols, ", ".join(ms(x) for x in e["runs_s"])))
print("ratio = median / median with the log off; overhead = (ratio - 1) * 100; "
      "paired = median over rounds of (mode / off of the same round) - 1")
print("noise: " + "; ".join("%s off runs spread %.1f %% (cv %.1f %%)" % (
    w, noise[w]["off_spread_pct"], noise[w]["off_cv_pct"]) for w in W) + ". " + noise_note)
print()
print("log, medians over rounds (bytes: API written_bytes; file: size after stop incl. 64 B header)")
print("%-9s %-12s %9s %8s %7s %8s %10s %10s %7s %7s %7s %8s %8s %7s" % (
    "workload", "mode", "recorded", "deduped", "dropped", "records", "bytes", "file B",
    "B/rec", "B/evt", "B/fevt", "cpu ms", "wrt ms", "RSS MiB"))
for w in W:
    for m in MODES:
        e = results[w][m]
        if m == "off":
            print("%-9s %-12s %9s %8s %7s %8s %10s %10s %7s %7s %7s %8.1f %8s %7.1f" % (
                w, m, "-", "-", "-", "-", "-", "-", "-", "-", "-",
                e["stratad_cpu_ms_median"], "-", e["vm_hwm_mib_max"]))
            continue
        g = logs[w][m]
        f = lambda x: "-" if x is None else "%.0f" % x
        f2 = lambda x: "-" if x is None else "%.1f" % x
        print("%-9s %-12s %9s %8s %7s %8s %10s %10s %7s %7s %7s %8.1f %8.1f %7.1f" % (
            w, m, f(g["recorded_median"]), f(g["deduped_median"]), f(g["dropped_median"]),
            f(g["written_records_median"]), f(g["written_bytes_median"]),
            f(g["log_file_bytes_median"]), f2(g["bytes_per_record_median"]),
            f2(g["bytes_per_recorded_median"]), f2(g["bytes_per_file_event_median"]),
            e["stratad_cpu_ms_median"], e["writer_cpu_ms_median"], e["vm_hwm_mib_max"]))
print("B/rec = bytes / records (all record kinds); B/evt = bytes / recorded events; "
      "B/fevt = (file B - headers) / access events in the file; cpu ms = stratad, all threads, "
      "workload + %g s; wrt ms = its accesslog thread; RSS = peak (max over rounds)" % params["settle_s"])
for m, s in totals.items():
    print("all %d %s runs: %d events recorded, %d deduped, %d dropped; %d records, %d B written "
          "-> %.1f B/record, %.1f B/recorded event; files %d B, %d access events -> %.1f B/event; "
          "idle writer raised for falling behind %d times" % (
              s["runs"], m, s["recorded"], s["deduped"], s["dropped"], s["written_records"],
              s["written_bytes"], s["bytes_per_record"] or 0, s["bytes_per_recorded_event"] or 0,
              s["log_file_bytes"], s["file_events"], s["bytes_per_file_event"] or 0,
              s["writer_boosts"]))
c = want
print("counts (every run): stat %(entries)d entries; " % c["stat"]
      + "read_all %(files)d files / %(bytes)d B; " % c["read_all"] + "seq %(bytes)d B" % c["seq"])
print("load average: start %s; rounds %s; end %s" % (
    " ".join(machine["loadavg_at_start"]),
    ", ".join(r["loadavg"][0] for r in rounds), " ".join(machine["loadavg_at_end"])))
print("anomalies: %s" % ("none" if not out["anomalies"] else "; ".join(out["anomalies"])))
print("wall time %.0f s, %d stratad daemons, %s, %s cores, kernel %s" % (
    out["wall_seconds"], params["stratad_daemons_started"], machine["date"], machine["nproc"],
    machine["kernel"]))
PY
