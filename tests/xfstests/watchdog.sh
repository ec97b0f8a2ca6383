#!/usr/bin/env bash
# Un-sticks a hung xfstests run: xfstests has no per-test timeout, and a FUSE request the daemon
# never answers blocks the test (and every `df` on the machine) forever. Aborting the connection
# through fusectl makes every pending and future request on it fail with ENOTCONN; the test then
# fails, check unmounts the dead mount and the next test mounts a fresh daemon.
#
#   watchdog.sh --minutes N --progress FILE [--progress FILE...] --under DIR --log FILE
#
# Every 30 s it samples each FUSE mount whose mount point is under DIR (`waiting` in its fusectl
# directory = requests sent and not yet answered). A connection is aborted when it has had
# requests outstanding at every sample for N minutes AND no progress file has changed for N
# minutes (a slow test keeps printing or its connection drains now and then; a deadlocked
# request does neither). Before aborting it records the running test, the daemon's thread
# states and kernel stacks, and a gdb backtrace when gdb is available, in the log.
# Runs until killed. Needs root and fusectl (mounted on /sys/fs/fuse/connections by run.sh).
set -u

minutes=10
progress=()
under=
log=/dev/stderr
pids_dir=
while [[ $# -gt 0 ]]; do
    case $1 in
    --minutes) minutes=$2 ;;
    --progress) progress+=("$2") ;;
    --under) under=$2 ;;
    --log) log=$2 ;;
    --pids) pids_dir=$2 ;; # the helper's $STRATA_XFS_BASE/pids: daemon pid -> "tag dir"
    *)
        echo "watchdog.sh: unknown argument $1" >&2
        exit 1
        ;;
    esac
    shift 2
done
[[ -n $under ]] || {
    echo "watchdog.sh: --under DIR is required" >&2
    exit 1
}
conn=/sys/fs/fuse/connections
limit=$((minutes * 60))
interval=${STRATA_WATCHDOG_INTERVAL:-30}

say() { echo "$(date '+%F %T') watchdog: $*" >>"$log"; }

# Newest mtime (epoch seconds) among the progress files and the files directly in their dirs
# (check writes the test's .full next to its results).
last_progress() {
    local newest=0 t f
    for f in ${progress[@]+"${progress[@]}"}; do
        t=$(find "$f" -maxdepth 2 -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)
        t=${t%.*}
        [[ -n $t && $t -gt $newest ]] && newest=$t
    done
    echo "$newest"
}

# "minor mountpoint source" of each FUSE mount under $under. Reads only mountinfo: stat or df
# on a hung mount would hang the watchdog too.
fuse_mounts() {
    local line f r
    while IFS= read -r line; do
        read -r -a f <<<"${line%% - *}"
        read -r -a r <<<"${line#* - }"
        [[ ${r[0]} == fuse || ${r[0]} == fuse.* ]] || continue
        [[ ${f[4]} == "$under"/* ]] || continue
        echo "${f[2]#*:} ${f[4]} ${r[1]}"
    done </proc/self/mountinfo
}

current_test() {
    local f
    for f in ${progress[@]+"${progress[@]}"}; do
        [[ -f $f ]] && grep -oE '^[a-z0-9]+/[0-9]+' "$f" | tail -n 1
    done | tail -n 1
}

# The daemon serving mount point $1, from the helper's pid files.
daemon_of() {
    local p
    [[ -n $pids_dir && -d $pids_dir ]] || return
    for p in "$pids_dir"/*; do
        [[ -f $p ]] || continue
        if [[ $(cut -d' ' -f2- "$p") == "$1" ]] && kill -0 "${p##*/}" 2>/dev/null; then
            echo "${p##*/}"
        fi
    done | tail -n 1
}

dump_daemon() {
    local pid=$1 t fuse_wait=0 w
    say "daemon pid $pid threads (tid state wchan, kernel stack):"
    for t in /proc/"$pid"/task/*; do
        w=$(cat "$t/wchan" 2>/dev/null)
        [[ $w == request_wait_answer || $w == fuse_* ]] && fuse_wait=1
        echo "  ${t##*/} $(awk '{print $3}' "$t/stat" 2>/dev/null) $w"
        sed 's/^/      /' "$t/stack" 2>/dev/null
    done >>"$log"
    # gdb's attach waits for every thread to stop, which a thread blocked in a FUSE request
    # (the daemon calling into its own mount) never does; killing gdb then leaves the daemon
    # stopped. So only attach when no thread waits on FUSE, bound it, and resume afterwards.
    if [[ $fuse_wait == 1 ]]; then
        say "gdb skipped: a daemon thread is blocked in a FUSE request (on its own mount?)"
    elif command -v gdb >/dev/null; then
        say "gdb backtrace of $pid:"
        timeout -s KILL 60 gdb -p "$pid" -batch -nx -ex 'set pagination off' \
            -ex 'thread apply all bt' </dev/null >>"$log" 2>&1
        kill -CONT "$pid" 2>/dev/null
    fi
}

# Every process waiting for a FUSE answer (the test's blocked syscalls), with kernel stacks.
dump_waiters() {
    local d w
    say "processes blocked in FUSE requests:"
    for d in /proc/[0-9]*; do
        w=$(cat "$d/wchan" 2>/dev/null) || continue
        [[ $w == request_wait_answer ]] || continue
        echo "  ${d##*/} $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-200)"
        sed 's/^/      /' "$d/stack" 2>/dev/null
    done >>"$log"
}

declare -A busy_since=() # minor -> first sample of the current run of waiting > 0
say "started: abort after ${minutes} min without progress, mounts under $under"
while :; do
    sleep "$interval"
    now=$(date +%s)
    seen=()
    while read -r minor mp src; do
        [[ -n $minor ]] || continue
        seen+=("$minor")
        waiting=$(cat "$conn/$minor/waiting" 2>/dev/null || echo 0)
        if [[ $waiting -eq 0 ]]; then
            unset "busy_since[$minor]"
            continue
        fi
        [[ -n ${busy_since[$minor]:-} ]] || busy_since[$minor]=$now
        (( now - busy_since[$minor] >= limit )) || continue
        (( now - $(last_progress) >= limit )) || continue
        say "ABORT test=$(current_test) mount=$mp source=$src conn=$minor waiting=$waiting" \
            "busy for $((now - busy_since[$minor]))s, no progress for $((now - $(last_progress)))s"
        pid=$(daemon_of "$mp")
        dump_waiters
        [[ -n $pid ]] && dump_daemon "$pid"
        echo 1 >"$conn/$minor/abort" && say "aborted connection $minor"
        unset "busy_since[$minor]"
    done < <(fuse_mounts)
    # forget connections that went away
    for m in "${!busy_since[@]}"; do
        [[ " ${seen[*]} " == *" $m "* ]] || unset "busy_since[$m]"
    done
done
