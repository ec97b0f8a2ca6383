#!/usr/bin/env bash
# stratad's writable overlay against fuse-overlayfs (Debian package) and kernel overlayfs
# (`mount -t overlay`, the baseline), all in ONE run, with the workloads and correctness checks
# of /work/shared/research/overlay-bench.md section 1:
#   stat_cold stat_warm read_all seq_read rand_read copyup_append copyup_256m whiteout_rm
#   md_create md_fsync md_unlink seq_write untar git compileall, then umount + remount and a
#   persistence check of what the passing workloads changed.
# Every system gets a fresh copy of the same generated lower tree and empty upper/work dirs
# (same filesystem), is mounted, runs every workload back to back, is unmounted, remounted for
# the persistence check and unmounted again. A workload whose check fails is reported FAILED
# (with the check's output) and the run goes on. "cold" workloads run after
# `sync; echo 3 > /proc/sys/vm/drop_caches` (rand_read also has fio's invalidate).
#
# Helpers: bench/overlay_workload.c (timed inner loops, compiled here with gcc -O2) and
# bench/overlay_bench.py (tree generation, workloads + checks, persistence, report).
#
# Output: one JSON object (stdout, or the file OUT names), then a markdown table on stdout:
# each workload's rate and, in parentheses, the ratio system / kovl of this run (>1 = faster
# than the kernel), then every failed check verbatim. Progress goes to stderr.
#
# Environment:
#   SYSTEMS="strata fuse-overlayfs kovl"   systems, run in this order (kovl is the baseline
#                    and is listed first in the table). Also `stratad-rafs`: the lower built once
#                    into a RAFS image (`strata image create -B boot -D blobs lower`, defaults,
#                    untimed) and served as `--lowerdir=boot -D blobs`; each run gets a fresh
#                    copy of the image (the blob dir is also stratad's blobcache, so it starts
#                    cold); its checks compare against the plain source tree.
#                    Also `strata-volatile` and `kovl-volatile`: the same mounted with
#                    `volatile`. stratad's skips only the fsync of copied-up files, the
#                    durability fuse-overlayfs has (it never fsyncs a copy-up), for a
#                    like-for-like copy-up comparison; the kernel's also ignores users'
#                    fsync and syncfs (see md_fsync), so it is faster than that.
#   STRATAD=target/release/stratad (of this repo)   the stratad binary
#   STRATA=$(dirname $STRATAD)/strata if that exists, else target/release/strata
#                    (stratad-rafs only)
#   SCALE=0.25       size of the generated data relative to the spec's (SCALE=1):
#                      tree/      30 000*SCALE files (+30*SCALE files of 1-6 MiB, 200*SCALE
#                                 symlinks) in 3 000*SCALE dirs under 120*SCALE packages
#                      big.bin    1024*SCALE MiB (min 16): seq_read, rand_read reads a quarter
#                                 of its 4 KiB blocks; seq_write writes the same size
#                      untar.tar  20 000*SCALE files in 2 000*SCALE dirs (+1)
#                    unscaled at every SCALE: cu256.bin 256 MiB, cu/ 1000 files, rmme/ 5 261
#                    entries, md_create 10 000 files, md_fsync 1 000, src/ 1 000 modules.
#                    SCALE=0.25: 7 500 files in tree/, 256 MiB big.bin, 5 000-file untar;
#                    a 2-system run (fuse-overlayfs kovl) takes ~1.5 min on 2 cores.
#                    SCALE=1 (the spec's sizes: 33 230-entry tree, 1 GiB, 20 000-file untar)
#                    takes ~4 min for those two.
#   SEED=42          seed of the generated tree (same content for every system)
#   WL_TIMEOUT=600   seconds one workload step may take before it counts as hung (FAILED)
#   OUT=             write the JSON to this file instead of stdout
#   ROUNDS=1         rounds; each mounts every system afresh and runs every workload once, the
#                    systems in an order rotated by one each round. With ROUNDS > 1 each cell is
#                    the median rate over the rounds (the JSON keeps every round's rate and the
#                    spread, (max - min) / median); a workload counts as FAILED if any round
#                    failed it. One round on this kind of shared 2-core machine varies by 30-50 %.
#   KEEP=0           1 keeps the work dir (lower, per-system upper dirs, daemon logs, raw jsonl)
#   TMPDIR=/var/tmp  parent of the work dir
#   PYTHON=python3   interpreter for the helper and the compileall workload
#
# Needs root (mounts, FUSE, drop_caches), gcc, python3, git, tar, and fuse-overlayfs / stratad
# for those systems; fio for rand_read (without it a C fallback does the same reads).
# Installs nothing: apt-get install -y fio fuse-overlayfs git python3
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
SYSTEMS=${SYSTEMS:-"strata fuse-overlayfs kovl"}
STRATAD=${STRATAD:-$ROOT/target/release/stratad}
if [ -z "${STRATA:-}" ]; then
    STRATA=$ROOT/target/release/strata
    [ -x "$(dirname "$STRATAD")/strata" ] && STRATA=$(dirname "$STRATAD")/strata
fi
SCALE=${SCALE:-0.25}
SEED=${SEED:-42}
WL_TIMEOUT=${WL_TIMEOUT:-600}
OUT=${OUT:-}
KEEP=${KEEP:-0}
ROUNDS=${ROUNDS:-1}
PYTHON=${PYTHON:-python3}
T_START=$(date +%s.%N)

say() { echo "overlay_vs_peers [$(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%4.0fs", b - a }')]: $*" >&2; }
die_usage() { say "$*"; exit 2; }

if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: needs root (overlay and FUSE mounts, drop_caches)"
    exit 0
fi
case $SEED in '' | *[!0-9]*) die_usage "SEED=$SEED: expected a non-negative integer" ;; esac
case $WL_TIMEOUT in '' | *[!0-9]*) die_usage "WL_TIMEOUT=$WL_TIMEOUT: expected seconds" ;; esac
case $ROUNDS in '' | 0 | *[!0-9]*) die_usage "ROUNDS=$ROUNDS: expected a positive number of rounds" ;; esac
awk -v s="$SCALE" 'BEGIN { exit !(s ~ /^[0-9]*\.?[0-9]+$/ && s > 0 && s <= 4) }' \
    || die_usage "SCALE=$SCALE: expected a number in (0, 4]"
for s in $SYSTEMS; do
    case $s in
        strata | strata-volatile | stratad-rafs | fuse-overlayfs | kovl | kovl-volatile) ;;
        *) die_usage "unknown system '$s' in SYSTEMS (strata strata-volatile stratad-rafs fuse-overlayfs kovl kovl-volatile)" ;;
    esac
done
[ -n "$SYSTEMS" ] || die_usage "SYSTEMS is empty"
for t in gcc tar git timeout mount umount; do
    command -v "$t" >/dev/null 2>&1 || die_usage "$t is required (this script installs nothing)"
done
PY=$("$PYTHON" -c 'import sys; print(sys.executable)' 2>/dev/null) \
    || die_usage "$PYTHON (python3) is required"
GIT=$(command -v git)
FIO=$(command -v fio || true)
[ -n "$FIO" ] || say "fio not installed: rand_read uses overlay_workload's randread fallback"
case " $SYSTEMS " in
    *" fuse-overlayfs "*) command -v fuse-overlayfs >/dev/null 2>&1 \
        || die_usage "fuse-overlayfs is not installed (apt-get install -y fuse-overlayfs)" ;;
esac
case " $SYSTEMS " in
    *" strata "* | *" strata-volatile "* | *" stratad-rafs "*) [ -x "$STRATAD" ] \
        || die_usage "STRATAD=$STRATAD is not an executable (build it or set STRATAD)" ;;
esac
case " $SYSTEMS " in
    *" stratad-rafs "*) [ -x "$STRATA" ] \
        || die_usage "STRATA=$STRATA is not an executable (needed to build stratad-rafs' image)" ;;
esac
case " $SYSTEMS " in
    *" kovl "* | *" kovl-volatile "*) grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
        grep -qw overlay /proc/filesystems || die_usage "the kernel has no overlay filesystem" ;;
esac
case " $SYSTEMS " in
    *" strata"* | *" fuse-overlayfs "*) [ -c /dev/fuse ] || die_usage "/dev/fuse is missing" ;;
esac

# --- work dir and cleanup --------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-overlay-bench-XXXXXX")
case $WORK in
    *[[:space:]]* | *:* | *,*) rmdir "$WORK"; die_usage "work dir '$WORK' has whitespace, ':' or ','; set TMPDIR" ;;
esac
LOGS=$WORK/logs
RES=$WORK/results
mkdir -p "$LOGS" "$RES"
MOUNTED=() # mount points this script mounted (by path)
CUR_PID=   # the daemon this script started and has not reaped yet (at most one at a time)

is_mounted() { # exact mount point match in our mount namespace (never stats the FUSE dir)
    awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo
}

fuse_abort() { # abort the FUSE connection of OUR mount point $1 (when its daemon hangs)
    local dev
    dev=$(awk -v p="$1" '$5 == p { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | tail -1)
    [ -n "$dev" ] && [ -e "/sys/fs/fuse/connections/$dev/abort" ] \
        && echo 1 >"/sys/fs/fuse/connections/$dev/abort"
}

ours_alive() { # pid: still running AND still our child (never signal a reused pid)
    [ "$(awk '/^PPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" = "$$" ] \
        && [ "$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" != Z ]
}

reap() { # pid: wait for our daemon to exit after its umount; TERM, then KILL if it does not
    local pid=$1 i
    for i in $(seq 1 300); do
        ours_alive "$pid" || break
        sleep 0.1
    done
    if ours_alive "$pid"; then
        say "pid $pid still running 30 s after its umount; SIGTERM"
        ours_alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            ours_alive "$pid" || break
            sleep 0.1
        done
        if ours_alive "$pid"; then say "pid $pid ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    REAP_RC=0
    wait "$pid" 2>/dev/null || REAP_RC=$?
}

cleanup() {
    local rc=$? m i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[$i]}
        if is_mounted "$m"; then
            say "cleanup: umount $m"
            timeout 30 umount "$m" 2>/dev/null || { fuse_abort "$m"; umount -l "$m"; }
        fi
    done
    if [ -n "$CUR_PID" ]; then
        say "cleanup: stopping pid $CUR_PID"
        reap "$CUR_PID"
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

# --- helper, lower tree, assets --------------------------------------------------------------
WL=$WORK/overlay_workload
gcc -O2 -Wall -o "$WL" "$BENCH/overlay_workload.c" || die_usage "gcc failed on bench/overlay_workload.c"
LOWER=$WORK/lower
ASSETS=$WORK/assets
say "generating the lower tree (SCALE=$SCALE, SEED=$SEED) in $LOWER"
T0=$(date +%s.%N)
"$PY" "$BENCH/overlay_bench.py" gen --lower "$LOWER" --assets "$ASSETS" --scale "$SCALE" --seed "$SEED"
sync
GEN_S=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
say "generated in ${GEN_S}s"
IMAGE_S=
case " $SYSTEMS " in
    *" stratad-rafs "*)
        say "building the RAFS image of the lower for stratad-rafs"
        mkdir -p "$WORK/rafs/blobs"
        T0=$(date +%s.%N)
        "$STRATA" image create -B "$WORK/rafs/boot" -D "$WORK/rafs/blobs" "$LOWER" \
            >"$LOGS/image-create.log" 2>&1 \
            || { cat "$LOGS/image-create.log" >&2; die_usage "strata image create failed (log above)"; }
        sync
        IMAGE_S=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        say "image built in ${IMAGE_S}s: $(du -sh "$WORK/rafs" | cut -f1)"
        ;;
esac

# --- systems ---------------------------------------------------------------------------------
declare -A DESC CMD EXITS START_ERR SKIP

# start_sys SYSTEM TAG: mount SYSTEM over $D/{lower,upper,work} at $D/mnt; sets CUR_PID for
# FUSE daemons; returns 1 (with START_ERR set) when it does not come up.
start_sys() {
    local s=$1 tag=$2 log=$LOGS/$1.$2.log i rc
    local L=$D/lower U=$D/upper W=$D/work M=$D/mnt
    CUR_PID=
    case $s in
        kovl | kovl-volatile)
            local extra=
            [ "$s" = kovl-volatile ] && extra=volatile,
            CMD[$s]="mount -t overlay overlay -o ${extra}lowerdir=L,upperdir=U,workdir=W M"
            if ! mount -t overlay overlay -o "${extra}lowerdir=$L,upperdir=$U,workdir=$W" "$M" 2>"$log"; then
                START_ERR[$s]="mount -t overlay${extra:+ -o volatile} failed: $(tr '\n' ' ' <"$log")"
                return 1
            fi
            MOUNTED+=("$M")
            return 0
            ;;
        fuse-overlayfs)
            CMD[$s]="fuse-overlayfs -f -o lowerdir=L,upperdir=U,workdir=W M"
            fuse-overlayfs -f -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M" >"$log" 2>&1 &
            ;;
        strata)
            CMD[$s]="stratad overlay --lowerdir=L --upperdir=U --workdir=W --mountpoint=M --log-file=F"
            "$STRATAD" overlay --lowerdir="$L" --upperdir="$U" --workdir="$W" --mountpoint="$M" \
                --log-file="$LOGS/$s.$tag.daemon.log" >"$log" 2>&1 &
            ;;
        strata-volatile)
            CMD[$s]="stratad overlay --volatile --lowerdir=L --upperdir=U --workdir=W --mountpoint=M --log-file=F"
            "$STRATAD" overlay --volatile --lowerdir="$L" --upperdir="$U" --workdir="$W" --mountpoint="$M" \
                --log-file="$LOGS/$s.$tag.daemon.log" >"$log" 2>&1 &
            ;;
        stratad-rafs)
            CMD[$s]="stratad overlay --lowerdir=BOOT -D BLOBS --upperdir=U --workdir=W --mountpoint=M --log-file=F"
            "$STRATAD" overlay --lowerdir="$D/rafs/boot" -D "$D/rafs/blobs" --upperdir="$U" \
                --workdir="$W" --mountpoint="$M" --log-file="$LOGS/$s.$tag.daemon.log" >"$log" 2>&1 &
            ;;
    esac
    CUR_PID=$!
    MOUNTED+=("$M")
    for i in $(seq 1 600); do # 30 s
        if ! ours_alive "$CUR_PID"; then
            rc=0
            wait "$CUR_PID" || rc=$?
            START_ERR[$s]="$s ($tag) exited with status $rc before mounting: $(tail -c 800 "$log" | tr '\n' ' ')"
            CUR_PID=
            return 1
        fi
        is_mounted "$M" && return 0
        sleep 0.05
    done
    START_ERR[$s]="$s ($tag, pid $CUR_PID) did not mount within 30 s: $(tail -c 800 "$log" | tr '\n' ' ')"
    ours_alive "$CUR_PID" && kill -TERM "$CUR_PID" 2>/dev/null || true
    reap "$CUR_PID"
    CUR_PID=
    is_mounted "$M" && { umount "$M" 2>/dev/null || umount -l "$M"; }
    return 1
}

stop_sys() { # SYSTEM TAG: umount, then wait for the daemon
    local s=$1 tag=$2 M=$D/mnt
    if is_mounted "$M"; then
        if ! timeout 60 umount "$M" 2>>"$LOGS/$s.$tag.log"; then
            say "$s: umount $M failed or hung; aborting the connection and lazy unmount"
            EXITS[$s]+="umount-failed($tag) "
            fuse_abort "$M" || true
            umount -l "$M" || true
        fi
    fi
    if [ -n "$CUR_PID" ]; then
        reap "$CUR_PID"
        EXITS[$s]+="$REAP_RC "
        [ "$REAP_RC" = 0 ] || say "$s ($tag) daemon exited with status $REAP_RC"
        CUR_PID=
    fi
}

tail_logs() { # SYSTEM: the last lines of its daemon's stderr and log file (for the JSON)
    local f
    for f in "$LOGS/$1".*.log; do
        [ -s "$f" ] || continue
        echo "== ${f##*/}"
        tail -n 15 "$f"
    done 2>/dev/null
}

run_py() { # the helper under an outer limit, in case a syscall of its own hangs on a FUSE mount
    timeout -k 10 $((WL_TIMEOUT * 20)) "$PY" "$BENCH/overlay_bench.py" "$@"
}

DESC[kovl]="kernel overlayfs ($(uname -r), default options)"
DESC[fuse-overlayfs]="fuse-overlayfs $(fuse-overlayfs --version 2>/dev/null | awk '/fuse-overlayfs/ { print $NF }' | head -1)"
DESC[strata]="stratad overlay (plain-dir lower)"
DESC[strata-volatile]="stratad overlay --volatile (plain-dir lower; copy-ups not fsynced)"
DESC[kovl-volatile]="kernel overlayfs ($(uname -r), -o volatile)"
DESC[stratad-rafs]="stratad overlay (RAFS lower: strata image create defaults)"

run_round() { # the systems in this round's order
for s in "$@"; do
    D=$WORK/sys/$s.r$ROUND
    say "== $s (round $ROUND of $ROUNDS): copying the lower, mounting"
    mkdir -p "$D/upper" "$D/work" "$D/mnt"
    if [ "$s" = stratad-rafs ]; then
        cp -a "$WORK/rafs" "$D/rafs"
        CHECK_LOWER=$LOWER # the checks' "lower file": the image's (untouched) source
    else
        cp -a "$LOWER" "$D/lower"
        CHECK_LOWER=$D/lower
    fi
    sync
    case $s in
        strata | strata-volatile | stratad-rafs)
            V=$(timeout 5 "$STRATAD" --version 2>/dev/null | head -1 || true)
            [ -n "$V" ] && DESC[$s]="${DESC[$s]/stratad overlay/$V overlay}"
            ;;
    esac
    if start_sys "$s" run; then
        run_py run --system "$s" --mnt "$D/mnt" --lower "$CHECK_LOWER" --assets "$ASSETS" --wl "$WL" \
            --out "$RES/$s.jsonl" --pid "${CUR_PID:-0}" --timeout "$WL_TIMEOUT" --fio "$FIO" \
            --git "$GIT" --python "$PY" \
            || START_ERR[$s]="the workload helper exited with status $? (see stderr)"
        stop_sys "$s" run
        say "$s: remounting for the persistence check"
        # The kernel refuses to mount a volatile upper again while its marker is there
        # (Documentation/filesystems/overlayfs.rst, "Volatile mount"); after a clean umount
        # the upper is whole, so the marker goes.
        [ "$s" = kovl-volatile ] && rm -rf "$D/work/work/incompat/volatile"
        if start_sys "$s" remount; then
            run_py persist --system "$s" --mnt "$D/mnt" --lower "$CHECK_LOWER" --assets "$ASSETS" \
                --wl "$WL" --out "$RES/$s.jsonl" --results "$RES/$s.jsonl" --pid "${CUR_PID:-0}" \
                --timeout "$WL_TIMEOUT" --git "$GIT" --python "$PY" \
                || say "$s: persistence helper exited with status $?"
            stop_sys "$s" remount
        else
            say "$s: ${START_ERR[$s]}"
            echo "{\"system\": \"$s\", \"workload\": \"persistence\", \"status\": \"FAILED\", \"check\": $(printf '%s' "remount failed: ${START_ERR[$s]}" | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >>"$RES/$s.jsonl"
        fi
    else
        say "$s: ${START_ERR[$s]}"
    fi
    tail_logs "$s" >"$RES/$s.logtail" || true
    if [ "$KEEP" != 1 ]; then
        rm -rf "$D"
    fi
done
}

ORDERED=($SYSTEMS)
for ROUND in $(seq 1 "$ROUNDS"); do
    k=$(((ROUND - 1) % ${#ORDERED[@]}))
    run_round "${ORDERED[@]:k}" "${ORDERED[@]:0:k}"
done

# --- report ----------------------------------------------------------------------------------
T_END=$(date +%s.%N)
META=$WORK/meta.json
{
    for s in $SYSTEMS; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "${DESC[$s]:-}" "${CMD[$s]:-}" "${EXITS[$s]:-}" \
            "${START_ERR[$s]:-}" "${SKIP[$s]:-}"
    done
} >"$WORK/systems.tsv"
B_SCALE=$SCALE B_SEED=$SEED B_ROUNDS=$ROUNDS B_GEN_S=$GEN_S B_IMAGE_S="$IMAGE_S" B_WL_TIMEOUT=$WL_TIMEOUT B_FIO="$FIO" \
    B_FIO_V="$([ -n "$FIO" ] && "$FIO" --version 2>/dev/null || true)" \
    B_GIT_V="$("$GIT" --version)" B_TAR_V="$(tar --version | head -1)" \
    B_STRATAD="$STRATAD" B_WALL="$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }')" \
    B_WORKFS="$(stat -f -c %T "$WORK")" B_ASSETS="$ASSETS" B_RES="$RES" \
    "$PY" - "$WORK/systems.tsv" "$META" <<'PY'
import datetime, json, os, sys

E = os.environ
systems_tsv, meta_out = sys.argv[1:3]
m = json.load(open(os.path.join(E["B_ASSETS"], "manifest.json")))

def first(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None

systems, skipped = {}, {}
for line in open(systems_tsv):
    name, desc, cmd, exits, err, skip = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
    info = {"desc": desc, "cmd": cmd, "daemon_exit_status": exits.split()}
    if name in ("strata", "strata-volatile", "stratad-rafs"):
        info["binary"] = E["B_STRATAD"]
        try:
            st = os.stat(E["B_STRATAD"])
            info["binary_mtime"] = datetime.datetime.fromtimestamp(
                st.st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
        except OSError:
            pass
    if err:
        info["error"] = err
    if skip:
        skipped[name] = skip
    tail = os.path.join(E["B_RES"], name + ".logtail")
    if os.path.exists(tail) and os.path.getsize(tail):
        info["log_tail"] = open(tail, errors="replace").read()[-4000:]
    systems[name] = info
meta = {
    "machine": {
        "nproc": os.cpu_count(), "kernel": os.uname().release,
        "cpu": first("/proc/cpuinfo", "model name"), "mem_total": first("/proc/meminfo", "MemTotal"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3], "work_dir_fs": E["B_WORKFS"],
    },
    "params": {
        "scale": float(E["B_SCALE"]), "seed": int(E["B_SEED"]), "rounds": int(E["B_ROUNDS"]),
        "tree_entries": m["tree"]["entries"], "tree_files": m["tree"]["files"],
        "tree_mib": round(m["tree"]["bytes"] / 2**20, 1), "big_mib": m["big"]["mib"],
        "rand_read_blocks": m["big"]["rand_blocks"], "cu256_mib": m["cu256"]["mib"],
        "untar_files": m["untar"]["files"], "untar_dirs": m["untar"]["dirs"],
        "lower_generation_s": float(E["B_GEN_S"]),
        "rafs_image_build_s": float(E["B_IMAGE_S"]) if E["B_IMAGE_S"] else None, "wl_timeout_s": int(E["B_WL_TIMEOUT"]),
        "fio": E["B_FIO_V"] or None, "git": E["B_GIT_V"], "tar": E["B_TAR_V"],
        "units": "MiB/s = 2^20 bytes per second; rates are higher-is-better",
    },
    "systems": systems,
    "skipped": skipped,
    "wall_seconds": float(E["B_WALL"]),
}
json.dump(meta, open(meta_out, "w"), indent=1)
PY

# kovl (the baseline) first in the table, the others in run order
ORDER=""
case " $SYSTEMS " in *" kovl "*) ORDER="kovl" ;; esac
for s in $SYSTEMS; do [ "$s" = kovl ] || ORDER="$ORDER $s"; done
"$PY" "$BENCH/overlay_bench.py" report --results "$RES" --systems "$ORDER" --meta "$META" \
    ${OUT:+--json-out "$OUT"}
[ -z "$OUT" ] || say "JSON written to $OUT"
