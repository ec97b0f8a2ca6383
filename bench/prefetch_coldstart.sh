#!/usr/bin/env bash
# Cold start of a real interpreter over a slow link (issue 6, "make the second start fast").
#
# The image: this machine's python3 interpreter and its standard library, copied into
#   src/usr/bin/python3 and src/usr/lib/pythonX.Y (site-packages and dist-packages left out,
#   lib-dynload and __pycache__ kept; mtimes kept so the shipped .pyc files stay valid), built
#   with `strata image create` (zstd, 1 MiB chunks: the defaults). Shared libraries the
#   interpreter links (libc, libm, libz, libexpat, and libssl / libsqlite3 for _ssl / _sqlite3)
#   load from the host, not from the image; they are listed in the JSON.
# The link: strata-blobserver serving the blobs with LATENCY_MS ms per request and
#   BANDWIDTH_MBPS MB/s for all connections together; stratad reads them with the http-proxy
#   backend into an empty blobcache. The bootstrap is a local file in every scenario.
# The workload: `PYTHONHOME=$MNT/usr $MNT/usr/bin/python3 -S -c CODE MODULES` under `env -i`
#   (no site, no bytecode writes): import every module of MODULES, use a few of them (json,
#   decimal, sqlite3, ElementTree, hashlib), check that every loaded module file is under the
#   image's prefix, print a fixed first line and the sorted module names. Its stdout must equal
#   the output of the same command run on the source directory, or the script fails.
#
# Steps:
#   1. record: fresh blobcache, stratad with the access log in first-touch mode and prefetch
#      off, page cache dropped, the workload once, SIGTERM (the log is flushed) -> record.log
#   2. strata image optimize --log record.log -> opt.boot + a re-laid-out blob (hot chunks first,
#      in first-touch order; prefetch table = the files the workload read). The blob server
#      serves the original and the optimized blob from one directory.
#   3. RUNS rounds; each round runs every scenario once, the order rotated by one every round.
#      Per run: empty blobcache dir, `sync; echo 3 > /proc/sys/vm/drop_caches`, blob server
#      counters read, stratad launched, RUNNING awaited (mounted + GET /api/v1/daemon), the
#      workload; counters read again (at workload end); if a prefetch engine is still running,
#      wait for it (at most PF_SETTLE_S); SIGTERM; counters read again (after stop).
#
# Scenarios (stratad: v2 config, http-proxy backend, blobcache, no access log; rafs.batch_size
# left at its default, 1 MiB, in all of them):
#   local  reference, no stratad: the source directory on the local disk, page cache dropped
#   a      original image, prefetch off: every chunk is fetched on demand
#   a_opt  optimized image, prefetch off: what the layout alone does
#   b      original image, prefetch on (prefetch_all false), --prefetch-log record.log
#   c      optimized image, prefetch on (prefetch_all false): the image's prefetch table, set by
#          optimize, drives the prefetch; no log at run time. This is the documented (c).
#   c_log  as c, plus --prefetch-log record.log
#   d      original image, prefetch on with prefetch_all true: the workload starts only when
#          GET /api/v1/metrics/blobcache says data_all_ready (every chunk cached), as after a
#          full image pull; the time includes the download
# prefetch: threads_count PF_THREADS, merging_size 1 MiB.
#
# Reported per scenario (median of RUNS): cold start = stratad launch -> workload exit ("local":
# the workload alone); ready = launch -> RUNNING; workload alone; for d, launch ->
# data_all_ready. Backend requests (the blob server's get_requests + head_requests) and body
# bytes, as differences of its counters, at workload end and after stratad stopped (which
# includes prefetch that ran on after the workload); the prefetch engine's own
# prefetch_requests_count / prefetch_data_amount; demand GETs = GETs after stop - prefetch
# requests. Ratios against a (fewer requests, faster) and d (faster), and the goal of issue 6:
# c needs >= 5x fewer requests than a (after stop, i.e. all of them) and a cold start >= 2x
# faster than a and than d.
#
# Checks, the script fails otherwise: the workload's output (every run), stratad reaching
# RUNNING, no `error`/`panic` in stratad's log, no error replies from the blob server, no
# prefetch errors, an engine running in the prefetch scenarios, the recorded log holding reads,
# d reaching data_all_ready within FULL_TIMEOUT s, the workload finishing within WL_TIMEOUT s.
# Reported under "anomalies": stratad exiting non-zero after SIGTERM, a mount left behind,
# prefetch still running PF_SETTLE_S s after the workload.
#
# Stdout: one JSON object, then a table. Progress goes to stderr. The load average is recorded
# at the start, before every run and at the end: the machine may be shared.
#
# Environment:
#   STRATAD          the daemon (default ${CARGO_TARGET_DIR:-target}/release/stratad)
#   STRATA           the CLI (default: next to STRATAD, else target/release/strata)
#   BLOBSERVER       strata-blobserver (default: next to STRATAD, else target/release/...)
#   REV              the binaries' commit, for the JSON (default: the checkout's HEAD)
#   PYTHON           the interpreter to package (default /usr/bin/python3, else python3 on
#                    PATH; a wrapper such as a pyenv shim is resolved through sys.executable)
#   MODULES          comma-separated modules the workload imports (default: 20 below)
#   RUNS=3           rounds (each runs every scenario once)
#   SCENARIOS        subset / order of "local a a_opt b c c_log d" (the default); a is required
#   LATENCY_MS=10    blob server latency per request
#   BANDWIDTH_MBPS=50   blob server bandwidth, MB (10^6 B) per second, all connections
#   PF_THREADS=4     prefetch threads_count
#   FUSE_THREADS=4   stratad --fuse-threads
#   PF_SETTLE_S=60   longest wait for a running prefetch after the workload, before SIGTERM
#   WL_TIMEOUT=120   seconds one workload run may take before it counts as hung
#   FULL_TIMEOUT=300 seconds d may take to reach data_all_ready
#   KEEP=0           1 keeps the work dir (source tree, images, configs, logs, raw counters);
#                    a failed run always keeps it
#   TMPDIR           parent of the work dir (default /var/tmp)
#
# Needs root (FUSE, drop_caches), /dev/fuse, curl, tar, timeout. Builds and installs nothing.
# Stops only the processes it started (stratad, strata-blobserver; by pid) and unmounts only
# its own mount point under its work dir, also on Ctrl-C.
set -Eeuo pipefail
# A command failing under set -e says where (set -E: also inside functions).
trap 'echo "prefetch_coldstart: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
LATENCY_MS=${LATENCY_MS:-10}
BANDWIDTH_MBPS=${BANDWIDTH_MBPS:-50}
PF_THREADS=${PF_THREADS:-4}
FUSE_THREADS=${FUSE_THREADS:-4}
PF_SETTLE_S=${PF_SETTLE_S:-60}
WL_TIMEOUT=${WL_TIMEOUT:-120}
FULL_TIMEOUT=${FULL_TIMEOUT:-300}
KEEP=${KEEP:-0}
SCENARIOS=${SCENARIOS:-local a a_opt b c c_log d}
DEFAULT_MODULES=json,email.mime.multipart,http.client,urllib.request,xml.etree.ElementTree,asyncio,decimal,sqlite3,argparse,logging,subprocess,csv,datetime,zipfile,tarfile,unittest,hashlib,ssl,pathlib,textwrap
MODULES=${MODULES:-$DEFAULT_MODULES}
T_START=$(date +%s.%N)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
UPTIME_START=$(uptime)

say() { echo "prefetch_coldstart: $*" >&2; }
die_usage() { say "$*"; exit 2; }
fail() { say "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
    die_usage "must run as root (FUSE, drop_caches)"
fi
for v in RUNS LATENCY_MS PF_THREADS FUSE_THREADS PF_SETTLE_S WL_TIMEOUT FULL_TIMEOUT; do
    case ${!v} in
        '' | *[!0-9]*) die_usage "$v=${!v}: expected a non-negative integer" ;;
    esac
done
case $BANDWIDTH_MBPS in
    '' | *[!0-9.]* | *.*.*) die_usage "BANDWIDTH_MBPS=$BANDWIDTH_MBPS: expected a number (0: unlimited)" ;;
esac
[ "$RUNS" -ge 1 ] || die_usage "RUNS must be at least 1"
[ "$PF_THREADS" -ge 1 ] && [ "$FUSE_THREADS" -ge 1 ] || die_usage "PF_THREADS and FUSE_THREADS must be at least 1"
case $MODULES in
    '' | *[!A-Za-z0-9_.,]* | ,* | *, | *,,*) die_usage "MODULES=$MODULES: expected comma-separated module names" ;;
esac
read -r -a SCEN <<<"$SCENARIOS"
HAVE_A=0
for s in "${SCEN[@]}"; do
    case $s in
        local | a | a_opt | b | c | c_log | d) ;;
        *) die_usage "SCENARIOS: unknown scenario '$s' (known: local a a_opt b c c_log d)" ;;
    esac
    [ "$s" = a ] && HAVE_A=1
done
[ "$HAVE_A" = 1 ] || die_usage "SCENARIOS must include a (the baseline)"
for t in curl tar timeout sync env od; do
    command -v "$t" >/dev/null 2>&1 || die_usage "$t is required (this script installs nothing)"
done
[ -c /dev/fuse ] || die_usage "/dev/fuse is missing"

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
STRATAD=${STRATAD:-$BIN/stratad}
next_to_stratad() { # name -> path
    if [ -x "$(dirname "$STRATAD")/$1" ]; then echo "$(dirname "$STRATAD")/$1"; else echo "$BIN/$1"; fi
}
STRATA=${STRATA:-$(next_to_stratad strata)}
BLOBSERVER=${BLOBSERVER:-$(next_to_stratad strata-blobserver)}
for b in STRATAD STRATA BLOBSERVER; do
    [ -x "${!b}" ] || die_usage "$b=${!b} is not an executable (cargo build --release, or set $b)"
done
if [ -z "${REV:-}" ]; then
    REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        REV="$REV+dirty"
    fi
fi

# --- the interpreter -------------------------------------------------------------------------
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3 || true); fi
fi
[ -n "$PYTHON" ] || die_usage "no python3 found; set PYTHON"
PY=$(readlink -f "$PYTHON")
is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }
if ! is_elf "$PY"; then # a wrapper (pyenv shim, script): ask it for the real binary
    PY=$(readlink -f "$("$PYTHON" -c 'import sys; print(sys.executable)')") \
        || die_usage "PYTHON=$PYTHON: could not ask it for sys.executable"
fi
is_elf "$PY" || die_usage "PYTHON=$PYTHON resolves to $PY, which is not an ELF executable"
PYVER=$("$PY" -S -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYFULL=$("$PY" -S -c 'import sys; print(sys.version.split()[0])')
PLATLIB=$("$PY" -S -c 'import sys; print(getattr(sys, "platlibdir", "lib"))')
STDLIB=$("$PY" -S -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
[ -f "$STDLIB/os.py" ] || die_usage "$PY: its standard library $STDLIB has no os.py"
HOST_LIBS=$(ldd "$PY" 2>/dev/null | awk '$2 == "=>" { print $1 " " $3 } $1 ~ /^\// { print $1 }' | tr '\n' ';')

# --- work dir and cleanup ------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-pfbench-XXXXXX")
case $WORK in
    *[[:space:]]*) rmdir "$WORK"; die_usage "work dir '$WORK' contains whitespace; set TMPDIR" ;;
esac
SRC=$WORK/src
MNT=$WORK/mnt
CACHE=$WORK/blobcache
SOCK=$WORK/api.sock
LOGS=$WORK/logs
RUNS_DIR=$WORK/runs
SERVED=$WORK/served
mkdir -p "$MNT" "$CACHE" "$LOGS" "$RUNS_DIR" "$SERVED"
DAEMON_PID=
BS_PID=
ANOMALIES=$WORK/anomalies.txt
: >"$ANOMALIES"

is_mounted() { # exact mount point match in our mount namespace (no stat of a FUSE dir)
    awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo
}

stop_pid() { # pid name: SIGTERM, 10 s, then SIGKILL; waits for it
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "cleanup: $2 pid $pid ignored SIGTERM for 10 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM ERR
    if [ -n "$DAEMON_PID" ]; then
        say "cleanup: stopping stratad pid $DAEMON_PID"
        stop_pid "$DAEMON_PID" stratad
    fi
    if is_mounted "$MNT"; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    if [ -n "$BS_PID" ]; then
        say "cleanup: stopping strata-blobserver pid $BS_PID"
        stop_pid "$BS_PID" strata-blobserver
    fi
    if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
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
now_ns() { date +%s%N; }
jnum() { # key json -> the integer value of "key" (first occurrence), or empty
    { printf '%s' "$2" | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; } || true
}
api() { # path -> body (GET over the API socket)
    curl -s --max-time 5 --unix-socket "$SOCK" "http://x$1"
}

# --- source tree and the workload ----------------------------------------------------------
LIBDEST=$SRC/usr/$PLATLIB/python$PYVER
say "copying $PY ($PYFULL) and $STDLIB (without site-packages, dist-packages) into $SRC"
mkdir -p "$SRC/usr/bin" "$LIBDEST"
cp -p "$PY" "$SRC/usr/bin/python3"
tar -C "$STDLIB" --exclude=site-packages --exclude=dist-packages -cf - . | tar -C "$LIBDEST" -xf - \
    || fail "copying $STDLIB"
SRC_FILES=$(find "$SRC" -type f | wc -l)
SRC_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')

# The workload: argv[1] = MODULES. Output: a fixed line, the results of using a few modules,
# then the sorted names of every loaded module; exit 3 if a module file came from outside the
# image's prefix (the host's standard library).
WL_CODE='
import sys
for name in sys.argv[1].split(","):
    __import__(name)
m = sys.modules
out = []
if "json" in m:
    out.append(m["json"].dumps({"b": [1, 2.5, None], "a": "x"}, sort_keys=True))
if "decimal" in m:
    D = m["decimal"].Decimal
    out.append(str(D(1) / D(7)))
if "sqlite3" in m:
    out.append(str(m["sqlite3"].connect(":memory:").execute("select 6 * 7").fetchone()[0]))
if "xml.etree.ElementTree" in m:
    out.append(m["xml.etree.ElementTree"].fromstring("<a><b>strata</b></a>").find("b").text)
if "hashlib" in m:
    out.append(m["hashlib"].sha256(b"strata").hexdigest()[:16])
prefix = sys.prefix.rstrip("/") + "/"
outside = sorted(k for k, v in list(m.items())
                 if isinstance(getattr(v, "__file__", None), str) and not v.__file__.startswith(prefix))
if outside:
    print("modules loaded from outside %s: %s" % (prefix, outside), file=sys.stderr)
    sys.exit(3)
print("strata-coldstart-ok %d modules" % len(m))
print(" | ".join(out))
print("\n".join(sorted(m)))
'
run_workload() { # root out -> exit status of the workload (124/137: timed out)
    timeout -k 5 "$WL_TIMEOUT" env -i PATH=/usr/bin:/bin PYTHONHOME="$1/usr" PYTHONDONTWRITEBYTECODE=1 \
        "$1/usr/bin/python3" -S -c "$WL_CODE" "$MODULES" >"$2" 2>"$2.err"
}
EXPECTED=$WORK/expected.out
rc=0
run_workload "$SRC" "$EXPECTED" || rc=$?
[ "$rc" = 0 ] || fail "the workload failed on the source directory itself (status $rc): $(head -c 600 "$EXPECTED.err")"
grep -q '^strata-coldstart-ok ' "$EXPECTED" || fail "the workload printed no ok line on the source directory"
rc=0
run_workload "$SRC" "$WORK/expected2.out" || rc=$?
cmp -s "$EXPECTED" "$WORK/expected2.out" || fail "the workload's output differs between two runs on the source directory"
WL_LINE=$(head -1 "$EXPECTED")
say "workload on the source: $WL_LINE; $(sed -n 2p "$EXPECTED")"

check_output() { # out where
    if ! cmp -s "$EXPECTED" "$1"; then
        say "expected (source dir) vs got, first differences:"
        diff "$EXPECTED" "$1" | head -20 >&2 || true
        fail "$2: the workload's output differs from the source directory's (stderr: $(head -c 400 "$1.err"))"
    fi
}

# --- image ---------------------------------------------------------------------------------
BOOT=$WORK/image/bootstrap
BLOBS=$WORK/image/blobs
mkdir -p "$BLOBS"
say "strata image create (zstd, 1 MiB chunks)"
"$STRATA" image create --json -B "$BOOT" -D "$BLOBS" "$SRC" >"$WORK/image-create.json" 2>"$LOGS/image-create.err" \
    || { cat "$LOGS/image-create.err" >&2; fail "strata image create"; }
cp "$BLOBS"/* "$SERVED"/

# --- blob server ---------------------------------------------------------------------------
"$BLOBSERVER" --listen 127.0.0.1:0 --dir "$SERVED" --latency-ms "$LATENCY_MS" \
    --bandwidth-mbps "$BANDWIDTH_MBPS" >"$LOGS/blobserver.out" 2>"$LOGS/blobserver.err" &
BS_PID=$!
ADDR=
for i in $(seq 1 200); do
    kill -0 "$BS_PID" 2>/dev/null || { cat "$LOGS/blobserver.err" >&2; BS_PID=; fail "strata-blobserver exited"; }
    ADDR=$(sed -n '1s/^listening on \(http:[^ ]*\)$/\1/p' "$LOGS/blobserver.out")
    [ -n "$ADDR" ] && break
    sleep 0.05
done
[ -n "$ADDR" ] || fail "strata-blobserver printed no 'listening on' line within 10 s"
bs_stats() { curl -s --max-time 5 "$ADDR/_stats" || fail "GET $ADDR/_stats failed"; }
say "blob server $ADDR (pid $BS_PID): ${LATENCY_MS} ms per request, ${BANDWIDTH_MBPS} MB/s"

# --- stratad configs ---------------------------------------------------------------------------
config() { # prefetch_enable prefetch_all accesslog_path_or_empty
    local al=
    [ -n "$3" ] && al=",
 \"accesslog\":{\"path\":\"$3\",\"mode\":\"first-touch\"}"
    cat <<EOF
{"version":2,
 "backend":{"type":"http-proxy","http-proxy":{"addr":"$ADDR","path":"/blobs"}},
 "cache":{"type":"blobcache","filecache":{"work_dir":"$CACHE"},
  "prefetch":{"enable":$1,"threads_count":$PF_THREADS,"prefetch_all":$2,"merging_size":1048576}}$al}
EOF
}
RECORD_LOG=$WORK/record.log
config false false "$RECORD_LOG" >"$WORK/cfg-record.json"
config false false "" >"$WORK/cfg-off.json"
config true false "" >"$WORK/cfg-prefetch.json"
config true true "" >"$WORK/cfg-all.json"

DAEMONS=0
start_stratad() { # tag config bootstrap [extra stratad args]; sets T_LAUNCH, T_READY
    local tag=$1 cfg=$2 boot=$3 log=$LOGS/stratad.$1.log i rc
    shift 3
    DAEMONS=$((DAEMONS + 1))
    rm -f "$SOCK"
    T_LAUNCH=$(now_ns)
    "$STRATAD" -C "$cfg" -B "$boot" -M "$MNT" --apisock "$SOCK" --fuse-threads "$FUSE_THREADS" \
        --log-level warn "$@" >"$log" 2>&1 &
    DAEMON_PID=$!
    DAEMON_LOG=$log
    for i in $(seq 1 3000); do # >= 30 s
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            rc=0
            wait "$DAEMON_PID" || rc=$?
            DAEMON_PID=
            cat "$log" >&2
            fail "stratad ($tag) exited with status $rc before reaching RUNNING; log above"
        fi
        if is_mounted "$MNT" && [ -S "$SOCK" ]; then
            case $(api /api/v1/daemon 2>/dev/null || true) in
                *RUNNING*) T_READY=$(now_ns); return 0 ;;
            esac
        fi
        sleep 0.01
    done
    cat "$log" >&2
    fail "stratad ($tag, pid $DAEMON_PID) did not reach RUNNING within 30 s; log above"
}

stop_stratad() { # tag
    local pid=$DAEMON_PID i rc=0
    if ! kill -TERM "$pid" 2>/dev/null; then
        wait "$pid" || rc=$?
        DAEMON_PID=
        fail "stratad ($1, pid $pid) had exited before SIGTERM, status $rc (log: $(tail -c 600 "$DAEMON_LOG" | tr '\n' ' '))"
    fi
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
        fail "stratad ($1) logged errors: $(grep -iE 'error|panic' "$DAEMON_LOG" | head -5 | tr '\n' ' ') (log $DAEMON_LOG)"
    fi
}

# --- 1. record -------------------------------------------------------------------------------
say "record: prefetch off, access log first-touch, empty blobcache, page cache dropped"
rm -rf "$CACHE"; mkdir -p "$CACHE"
drop_caches
REC_S0=$(bs_stats)
start_stratad record "$WORK/cfg-record.json" "$BOOT"
REC_T0=$(now_ns)
rc=0
run_workload "$MNT" "$WORK/record.out" || rc=$?
REC_T1=$(now_ns)
[ "$rc" = 0 ] || fail "record: the workload failed with status $rc: $(head -c 600 "$WORK/record.out.err")"
check_output "$WORK/record.out" record
REC_S1=$(bs_stats)
stop_stratad record
[ -s "$RECORD_LOG" ] || fail "record: stratad wrote no access log at $RECORD_LOG"
"$STRATA" accesslog stats --json --top 1000000 "$RECORD_LOG" >"$WORK/record-stats.json" 2>"$LOGS/record-stats.err" \
    || { cat "$LOGS/record-stats.err" >&2; fail "strata accesslog stats $RECORD_LOG"; }
REC_READS=$(jnum read "$(tr -d ' \n' <"$WORK/record-stats.json")")
[ -n "$REC_READS" ] && [ "$REC_READS" -gt 0 ] || fail "record: the access log holds no read events"
say "record: $(( (REC_T1 - REC_T0) / 1000000 )) ms workload, $REC_READS reads in the log"

# --- 2. optimize -----------------------------------------------------------------------------
OPT_BOOT=$WORK/image/opt.bootstrap
OPT_BLOBS=$WORK/image/opt-blobs
mkdir -p "$OPT_BLOBS"
say "strata image optimize --log record.log"
"$STRATA" image optimize --json -B "$BOOT" -D "$BLOBS" --log "$RECORD_LOG" -O "$OPT_BOOT" \
    --output-blob-dir "$OPT_BLOBS" >"$WORK/optimize.json" 2>"$LOGS/optimize.err" \
    || { cat "$LOGS/optimize.err" >&2; fail "strata image optimize"; }
cp "$OPT_BLOBS"/* "$SERVED"/

# --- 3. the scenarios ------------------------------------------------------------------------
scenario_args() { # scenario -> sets S_CFG S_BOOT S_EXTRA
    S_EXTRA=()
    case $1 in
        a) S_CFG=$WORK/cfg-off.json; S_BOOT=$BOOT ;;
        a_opt) S_CFG=$WORK/cfg-off.json; S_BOOT=$OPT_BOOT ;;
        b) S_CFG=$WORK/cfg-prefetch.json; S_BOOT=$BOOT; S_EXTRA=(--prefetch-log "$RECORD_LOG") ;;
        c) S_CFG=$WORK/cfg-prefetch.json; S_BOOT=$OPT_BOOT ;;
        c_log) S_CFG=$WORK/cfg-prefetch.json; S_BOOT=$OPT_BOOT; S_EXTRA=(--prefetch-log "$RECORD_LOG") ;;
        d) S_CFG=$WORK/cfg-all.json; S_BOOT=$BOOT ;;
    esac
}

wait_prefetch_done() { # tag -> 0 when no engine or it finished; waits at most PF_SETTLE_S
    local m i
    for i in $(seq 1 $((PF_SETTLE_S * 50))); do
        m=$(api /api/v1/metrics/blobcache)
        if [ "$(jnum prefetch_workers "$m")" = 0 ] || [ "$(jnum prefetch_end_time_secs "$m")" != 0 ]; then
            return 0
        fi
        sleep 0.02
    done
    anomaly "$1: prefetch still running ${PF_SETTLE_S} s after the workload; stopped anyway"
}

run_scenario() { # scenario round position
    local s=$1 r=$2 pos=$3 tag=$1.$2 out=$RUNS_DIR/$1.$2 rc=0 t_all=0 m i s0 s1 s2 m1 m2 t_wl0 t_wl1
    local load1
    load1=$(cut -d' ' -f1 /proc/loadavg)
    rm -rf "$CACHE"; mkdir -p "$CACHE"
    drop_caches
    if [ "$s" = local ]; then
        T_LAUNCH=$(now_ns); T_READY=$T_LAUNCH
        t_wl0=$(now_ns)
        run_workload "$SRC" "$out.wl" || rc=$?
        t_wl1=$(now_ns)
        [ "$rc" = 0 ] || fail "$tag: the workload failed with status $rc: $(head -c 600 "$out.wl.err")"
        check_output "$out.wl" "$tag"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$pos" "$load1" "$T_LAUNCH" "$T_READY" 0 "$t_wl0" "$t_wl1" >>"$WORK/runs.tsv"
        say "$(printf 'round %s/%s %-6s cold %7.1f ms' "$r" "$RUNS" "$s" "$(( (t_wl1 - T_LAUNCH) / 1000 ))e-3")"
        return 0
    fi
    scenario_args "$s"
    s0=$(bs_stats)
    start_stratad "$tag" "$S_CFG" "$S_BOOT" "${S_EXTRA[@]}"
    if [ "$s" = d ]; then
        for i in $(seq 1 $((FULL_TIMEOUT * 100))); do
            m=$(api /api/v1/metrics/blobcache)
            case $m in *'"data_all_ready":true'*) t_all=$(now_ns); break ;; esac
            if [ "$(jnum prefetch_errors "$m")" != 0 ] && [ -n "$(jnum prefetch_errors "$m")" ]; then
                fail "$tag: prefetch errors while fetching the whole image: $m"
            fi
            kill -0 "$DAEMON_PID" 2>/dev/null || fail "$tag: stratad died while prefetching (log $DAEMON_LOG)"
            sleep 0.01
        done
        [ "$t_all" != 0 ] || fail "$tag: data_all_ready not reached within ${FULL_TIMEOUT} s: $(api /api/v1/metrics/blobcache)"
    fi
    t_wl0=$(now_ns)
    run_workload "$MNT" "$out.wl" || rc=$?
    t_wl1=$(now_ns)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        fail "$tag: the workload did not finish within ${WL_TIMEOUT} s (hang?); stratad log $DAEMON_LOG"
    fi
    [ "$rc" = 0 ] || fail "$tag: the workload failed with status $rc: $(head -c 600 "$out.wl.err")"
    check_output "$out.wl" "$tag"
    s1=$(bs_stats)
    m1=$(api /api/v1/metrics/blobcache)
    wait_prefetch_done "$tag"
    m2=$(api /api/v1/metrics/blobcache)
    stop_stratad "$tag"
    s2=$(bs_stats)
    printf '%s\n' "$s0" >"$out.s0.json"
    printf '%s\n' "$s1" >"$out.s1.json"
    printf '%s\n' "$s2" >"$out.s2.json"
    printf '%s\n' "$m1" >"$out.m1.json"
    printf '%s\n' "$m2" >"$out.m2.json"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$pos" "$load1" "$T_LAUNCH" "$T_READY" "$t_all" "$t_wl0" "$t_wl1" >>"$WORK/runs.tsv"
    # Checks on the counters.
    local e0 e2 perr pw
    e0=$(jnum errors "$s0"); e2=$(jnum errors "$s2")
    [ "$e0" = "$e2" ] || fail "$tag: the blob server sent $((e2 - e0)) error replies (stats before $s0, after $s2)"
    perr=$(jnum prefetch_errors "$m2"); pw=$(jnum prefetch_workers "$m2")
    [ -z "$perr" ] || [ "$perr" = 0 ] || fail "$tag: $perr prefetch requests failed: $m2"
    case $s in
        b | c | c_log | d)
            [ -n "$pw" ] && [ "$pw" != 0 ] || fail "$tag: prefetch is enabled but no prefetch engine ran: $m2" ;;
        *)
            [ -z "$pw" ] || [ "$pw" = 0 ] || fail "$tag: prefetch is off but an engine ran: $m2" ;;
    esac
    local rq0 rq1 rq2
    rq0=$(( $(jnum get_requests "$s0") + $(jnum head_requests "$s0") ))
    rq1=$(( $(jnum get_requests "$s1") + $(jnum head_requests "$s1") ))
    rq2=$(( $(jnum get_requests "$s2") + $(jnum head_requests "$s2") ))
    say "$(printf 'round %s/%s %-6s cold %7.1f ms (ready %5.1f, workload %7.1f)  requests %4d / %4d  MB %6.2f / %6.2f' \
        "$r" "$RUNS" "$s" "$(( (t_wl1 - T_LAUNCH) / 1000 ))e-3" "$(( (T_READY - T_LAUNCH) / 1000 ))e-3" \
        "$(( (t_wl1 - t_wl0) / 1000 ))e-3" $((rq1 - rq0)) $((rq2 - rq0)) \
        "$(( $(jnum bytes_sent "$s1") - $(jnum bytes_sent "$s0") ))e-6" "$(( $(jnum bytes_sent "$s2") - $(jnum bytes_sent "$s0") ))e-6")"
}

: >"$WORK/runs.tsv"
LOADS=()
NS=${#SCEN[@]}
for r in $(seq 1 "$RUNS"); do
    LOADS+=("$(cut -d' ' -f1-3 /proc/loadavg)")
    for p in $(seq 0 $((NS - 1))); do
        run_scenario "${SCEN[$(( (p + r - 1) % NS ))]}" "$r" "$p"
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
UPTIME_END=$(uptime)
T_END=$(date +%s.%N)

# --- report --------------------------------------------------------------------------------
export B_WORK=$WORK B_RUNS=$RUNS B_LAT=$LATENCY_MS B_BW=$BANDWIDTH_MBPS B_PFT=$PF_THREADS \
    B_FUSE=$FUSE_THREADS B_SCEN="${SCEN[*]}" B_MODULES=$MODULES B_PY=$PY B_PYFULL=$PYFULL \
    B_STDLIB=$STDLIB B_LIBDEST=${LIBDEST#"$SRC"} B_HOST_LIBS=$HOST_LIBS B_SRC_FILES=$SRC_FILES \
    B_SRC_BYTES=$SRC_BYTES B_REV=$REV B_LOAD_START="$LOAD_START" B_LOAD_END="$LOAD_END" \
    B_UPTIME_START="$UPTIME_START" B_UPTIME_END="$UPTIME_END" B_LOADS="$(IFS=';'; echo "${LOADS[*]}")" \
    B_WALL=$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }') B_DAEMONS=$DAEMONS \
    B_REC_S0="$REC_S0" B_REC_S1="$REC_S1" B_REC_MS=$(( (REC_T1 - REC_T0) / 1000000 )) \
    B_WL_LINE="$WL_LINE" B_STRATAD_VERSION="$("$STRATAD" --version 2>&1 | head -1)" \
    B_BOOT_BYTES=$(stat -c %s "$BOOT") B_OPT_BOOT_BYTES=$(stat -c %s "$OPT_BOOT") B_PF_SETTLE=$PF_SETTLE_S
"$PY" -S - <<'PY'
import json, os, statistics, datetime

E = os.environ
W = E["B_WORK"]
load = lambda p: json.load(open(p))
scen = E["B_SCEN"].split()
order = [s for s in ["local", "a", "a_opt", "b", "c", "c_log", "d"] if s in scen]
desc = {
    "local": "reference: the source directory on the local disk, no stratad (workload alone)",
    "a": "original image, prefetch off (on-demand reads only)",
    "a_opt": "optimized image, prefetch off (layout alone)",
    "b": "original image, prefetch on, --prefetch-log record.log",
    "c": "optimized image, prefetch on, its prefetch table (set by optimize); the documented (c)",
    "c_log": "optimized image, prefetch on, table + --prefetch-log record.log",
    "d": "original image, prefetch_all: whole image cached (data_all_ready) before the workload",
}

def req(st):
    return st["get_requests"] + st["head_requests"]

runs = {s: [] for s in order}
for line in open(os.path.join(W, "runs.tsv")):
    s, r, pos, load1, t_launch, t_ready, t_all, t_wl0, t_wl1 = line.rstrip("\n").split("\t")
    t_launch, t_ready, t_all, t_wl0, t_wl1 = map(int, (t_launch, t_ready, t_all, t_wl0, t_wl1))
    x = {"round": int(r), "position": int(pos), "loadavg1": float(load1),
         "cold_start_s": (t_wl1 - t_launch) / 1e9, "workload_s": (t_wl1 - t_wl0) / 1e9}
    if s != "local":
        base = os.path.join(W, "runs", "%s.%s" % (s, r))
        s0, s1, s2 = (load(base + ".s%d.json" % i) for i in range(3))
        m1, m2 = load(base + ".m1.json"), load(base + ".m2.json")
        x.update({
            "ready_s": (t_ready - t_launch) / 1e9,
            "all_ready_s": (t_all - t_launch) / 1e9 if t_all else None,
            "requests_at_workload_end": req(s1) - req(s0),
            "requests_after_stop": req(s2) - req(s0),
            "get_after_stop": s2["get_requests"] - s0["get_requests"],
            "head_after_stop": s2["head_requests"] - s0["head_requests"],
            "bytes_at_workload_end": s1["bytes_sent"] - s0["bytes_sent"],
            "bytes_after_stop": s2["bytes_sent"] - s0["bytes_sent"],
            "prefetch_requests": m2.get("prefetch_requests_count", 0),
            "prefetch_bytes": m2.get("prefetch_data_amount", 0),
            "prefetch_chunks": m2.get("prefetch_unmerged_chunks", 0),
            "demand_gets": (s2["get_requests"] - s0["get_requests"]) - m2.get("prefetch_requests_count", 0),
            "cached_chunks_at_workload_end": m1.get("entries_count"),
            "cache_lookups_at_workload_end": m1.get("total"),
            "cache_hits_at_workload_end": m1.get("whole_hits"),
            "data_all_ready_at_workload_end": m1.get("data_all_ready"),
        })
    runs[s].append(x)

def med(s, k):
    v = [r[k] for r in runs[s] if r.get(k) is not None]
    return statistics.median(v) if v else None

KEYS = ["cold_start_s", "ready_s", "workload_s", "all_ready_s", "requests_at_workload_end",
        "requests_after_stop", "get_after_stop", "head_after_stop", "bytes_at_workload_end",
        "bytes_after_stop", "prefetch_requests", "prefetch_bytes", "demand_gets"]
results = {s: {k: med(s, k) for k in KEYS if med(s, k) is not None} for s in order}

def ratio(a, b):
    return None if a is None or not b else a / b

for s in order:
    r = results[s]
    r["fewer_requests_than_a"] = ratio(results["a"].get("requests_after_stop"), r.get("requests_after_stop"))
    r["faster_than_a"] = ratio(results["a"]["cold_start_s"], r["cold_start_s"])
    r["faster_than_d"] = ratio(results.get("d", {}).get("cold_start_s"), r["cold_start_s"])

goal = None
if "c" in results and "d" in results:
    c = results["c"]
    goal = {
        "requests_5x_fewer_than_a": {"value": c["fewer_requests_than_a"], "met": c["fewer_requests_than_a"] >= 5},
        "requests_5x_fewer_than_a_at_workload_end": ratio(results["a"]["requests_at_workload_end"], c["requests_at_workload_end"]),
        "cold_start_2x_faster_than_a": {"value": c["faster_than_a"], "met": c["faster_than_a"] >= 2},
        "cold_start_2x_faster_than_d": {"value": c["faster_than_d"], "met": c["faster_than_d"] >= 2},
    }
    goal["met"] = all(v["met"] for k, v in goal.items() if isinstance(v, dict))

create = load(os.path.join(W, "image-create.json"))
opt = load(os.path.join(W, "optimize.json"))
rec = load(os.path.join(W, "record-stats.json"))
files_read = [f for f in rec.get("top_by_bytes", []) if f.get("bytes_read", 0) > 0]
kinds = {}
for f in files_read:
    p = f["path"]
    k = ".pyc" if p.endswith(".pyc") else ".so" if ".so" in p.rsplit("/", 1)[-1] else ".py" if p.endswith(".py") else "other"
    kinds[k] = kinds.get(k, 0) + 1
rs0, rs1 = json.loads(E["B_REC_S0"]), json.loads(E["B_REC_S1"])

def first(path, key):
    for line in open(path):
        if line.startswith(key):
            return line.split(":", 1)[1].strip()

out = {
    "benchmark": "prefetch_coldstart",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": {
        "nproc": os.cpu_count(), "kernel": os.uname().release,
        "cpu": first("/proc/cpuinfo", "model name"), "mem_total": first("/proc/meminfo", "MemTotal"),
        "loadavg_start": E["B_LOAD_START"].split(), "loadavg_end": E["B_LOAD_END"].split(),
        "loadavg_per_round": [l.split() for l in E["B_LOADS"].split(";")],
        "uptime_start": E["B_UPTIME_START"].strip(), "uptime_end": E["B_UPTIME_END"].strip(),
    },
    "params": {
        "strata_rev": E["B_REV"], "stratad_version": E["B_STRATAD_VERSION"],
        "runs": int(E["B_RUNS"]), "scenarios_in_round_order": scen,
        "order": "rotated by one scenario every round",
        "link": {"latency_ms_per_request": int(E["B_LAT"]), "bandwidth_MB_per_s": float(E["B_BW"]),
                 "server": "strata-blobserver (HEAD + ranged GET, keep-alive)"},
        "prefetch": {"threads_count": int(E["B_PFT"]), "merging_size": 1048576},
        "fuse_threads": int(E["B_FUSE"]), "rafs_batch_size": "default (1 MiB)",
        "pf_settle_s": int(E["B_PF_SETTLE"]),
        "interpreter": {"binary": E["B_PY"], "version": E["B_PYFULL"], "stdlib": E["B_STDLIB"],
                        "in_image": ["/usr/bin/python3", E["B_LIBDEST"]],
                        "left_out": "site-packages, dist-packages",
                        "host_libraries": [l for l in E["B_HOST_LIBS"].split(";") if l]},
        "workload": {"command": "env -i PATH=/usr/bin:/bin PYTHONHOME=$MNT/usr PYTHONDONTWRITEBYTECODE=1 $MNT/usr/bin/python3 -S -c CODE MODULES",
                     "modules": E["B_MODULES"].split(","), "first_line": E["B_WL_LINE"]},
        "image": {"source_files": int(E["B_SRC_FILES"]), "source_bytes": int(E["B_SRC_BYTES"]),
                  "files": create["stats"]["files"], "chunks": create["chunks"],
                  "blob_bytes": create["blob"]["compressed_size"],
                  "uncompressed_bytes": create["blob"]["uncompressed_size"],
                  "bootstrap_bytes": int(E["B_BOOT_BYTES"]),
                  "optimized_bootstrap_bytes": int(E["B_OPT_BOOT_BYTES"]),
                  "hot_chunks": sum(b["hot_chunks"] for b in opt["blobs"]),
                  "hot_bytes": sum(b["hot_bytes"] for b in opt["blobs"]),
                  "prefetch_table_files": len(opt.get("prefetch_files", [])),
                  "build": "strata image create (zstd, 1 MiB chunks, blake3); strata image optimize --log record.log"},
        "record": {"workload_ms": int(E["B_REC_MS"]), "log_events": rec["events"], "ops": rec["ops"],
                   "files_read": len(files_read), "files_read_by_kind": kinds,
                   "bytes_read": sum(f["bytes_read"] for f in files_read),
                   "backend_requests": req(rs1) - req(rs0), "backend_bytes": rs1["bytes_sent"] - rs0["bytes_sent"]},
        "scenarios": {s: desc[s] for s in order},
        "cold_start": "stratad launch -> workload exit (local: workload alone); page cache dropped and blobcache empty before each run",
        "requests": "blob server get_requests + head_requests, differences of its /_stats counters",
        "stratad_daemons_started": int(E["B_DAEMONS"]),
    },
    "results": results,
    "goal_issue6_c": goal,
    "runs": runs,
    "anomalies": [l.rstrip("\n") for l in open(os.path.join(W, "anomalies.txt")) if l.strip()],
    "wall_seconds": float(E["B_WALL"]),
}
print(json.dumps(out, indent=2))

def ms(x):
    return "-" if x is None else "%.0f" % (x * 1000)

def num(x, f="%d"):
    return "-" if x is None else f % x

def xr(x):  # two decimals: 1.97 must not print as 2.0 next to a >= 2 goal
    return "-" if x is None else "%.2fx" % x

print()
p = out["params"]
print("cold start of python3 %s + %d modules over %d ms / %s MB/s; median of %d runs"
      % (p["interpreter"]["version"], len(p["workload"]["modules"]), p["link"]["latency_ms_per_request"],
         "%g" % p["link"]["bandwidth_MB_per_s"], p["runs"]))
hdr = ("scen", "cold ms", "ready", "wl ms", "req@wl", "req@stop", "MB@wl", "MB@stop", "pf req", "demand",
       "fewer vs a", "faster vs a", "faster vs d", "cold runs (ms)")
print("%-6s %8s %6s %7s %7s %8s %7s %8s %6s %6s %10s %11s %11s   %s" % hdr)
for s in order:
    r = results[s]
    print("%-6s %8s %6s %7s %7s %8s %7s %8s %6s %6s %10s %11s %11s   %s" % (
        s, ms(r["cold_start_s"]), ms(r.get("ready_s")), ms(r["workload_s"]),
        num(r.get("requests_at_workload_end")), num(r.get("requests_after_stop")),
        num(None if r.get("bytes_at_workload_end") is None else r["bytes_at_workload_end"] / 1e6, "%.2f"),
        num(None if r.get("bytes_after_stop") is None else r["bytes_after_stop"] / 1e6, "%.2f"),
        num(r.get("prefetch_requests")), num(r.get("demand_gets")),
        xr(r["fewer_requests_than_a"]), xr(r["faster_than_a"]), xr(r["faster_than_d"]),
        ", ".join(ms(x["cold_start_s"]) for x in runs[s])))
if "d" in results:
    print("d: launch -> data_all_ready %s ms (median)" % ms(results["d"].get("all_ready_s")))
img = p["image"]
print("image: %d files, %d chunks, blob %.2f MB (%.2f MB uncompressed), bootstrap %d B; hot set %d chunks, %.2f MB"
      % (img["files"], img["chunks"], img["blob_bytes"] / 1e6, img["uncompressed_bytes"] / 1e6,
         img["bootstrap_bytes"], img["hot_chunks"], img["hot_bytes"] / 1e6))
if goal:
    print("goal (issue 6) for c: %.1fx fewer requests than a (>= 5: %s), %.2fx faster than a (>= 2: %s), %.2fx faster than d (>= 2: %s)"
          % (goal["requests_5x_fewer_than_a"]["value"], "met" if goal["requests_5x_fewer_than_a"]["met"] else "NOT met",
             goal["cold_start_2x_faster_than_a"]["value"], "met" if goal["cold_start_2x_faster_than_a"]["met"] else "NOT met",
             goal["cold_start_2x_faster_than_d"]["value"], "met" if goal["cold_start_2x_faster_than_d"]["met"] else "NOT met"))
print("anomalies: %s" % ("none" if not out["anomalies"] else "; ".join(out["anomalies"])))
print("load average: start %s, end %s; wall %.0f s, %d stratad daemons, %s"
      % (" ".join(out["machine"]["loadavg_start"]), " ".join(out["machine"]["loadavg_end"]),
         out["wall_seconds"], p["stratad_daemons_started"], out["date"]))
PY
