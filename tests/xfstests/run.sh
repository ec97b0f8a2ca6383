#!/usr/bin/env bash
# Runs xfstests against stratad's writable overlay (FSTYP=fuse). Privileged tier: needs root and
# a built xfstests tree (not part of this repo), otherwise prints SKIPPED and exits 0.
#
#   XFSTESTS_DIR=/path/to/xfstests [STRATAD=/path/to/stratad] tests/xfstests/run.sh [check args]
#
# With no arguments it runs `./check -E exclude -g generic/quick`; arguments replace the test
# selection (e.g. `generic/001 generic/002`, `-g generic/rw`). -E exclude is always passed.
#
# Environment:
#   XFSTESTS_DIR          built xfstests tree (required)
#   STRATAD               stratad binary (default: stratad on PATH)
#   STRATA_XFS_RESULTS    where results go (default /var/tmp/strata-xfstests-results/<time>)
#   STRATA_XFS_BACKING    xfs (default: two loop-mounted xfs images), ext4, or dir (plain
#                         directories on whatever fs the temp dir is on)
#   STRATA_XFS_IMG_SIZE   size of each backing image (default 12G, sparse)
#   STRATA_WATCHDOG_MIN   minutes without progress before a hung connection is aborted (10)
#   STRATAD_EXTRA_ARGS    extra stratad arguments (see mount.fuse.strata)
#
# Layout of the temp dir it creates (/var/tmp/strata-xfstests.XXXXXX, removed on exit):
#   test/ scratch/            TEST_DIR, SCRATCH_MNT
#   base/strata_test/         backing fs of the test tag (loop image mounted here)
#   base/strata_scratch/      backing fs of the scratch tag (a separate image: scratch tests
#                             that fill their fs must not fill the test fs)
#   base/<tag>.log|.out       stratad's log and stdio per tag (copied into the results)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
skip() {
    echo "SKIPPED xfstests: $*"
    exit 0
}

[[ $(id -u) -eq 0 ]] || skip "needs root (mounts, fusectl, user switching)"
[[ -n ${XFSTESTS_DIR:-} ]] || skip "XFSTESTS_DIR is not set (a built xfstests tree)"
[[ -x $XFSTESTS_DIR/check && -x $XFSTESTS_DIR/ltp/fsstress ]] ||
    skip "XFSTESTS_DIR=$XFSTESTS_DIR is not a built xfstests tree (no check or ltp/fsstress)"
stratad=${STRATAD:-stratad}
stratad=$(command -v "$stratad") || skip "stratad not found (set STRATAD)"
stratad=$(realpath "$stratad")
for u in fsgqa fsgqa2 123456-fsgqa; do
    id "$u" >/dev/null 2>&1 || echo "warning: user $u missing: tests that switch users will not run" >&2
done

backing=${STRATA_XFS_BACKING:-xfs}
img_size=${STRATA_XFS_IMG_SIZE:-12G}
stamp=$(date +%Y%m%d-%H%M%S)
results=${STRATA_XFS_RESULTS:-/var/tmp/strata-xfstests-results/$stamp}
mkdir -p "$results"
results=$(cd "$results" && pwd)

work=$(mktemp -d /var/tmp/strata-xfstests.XXXXXX) || exit 1
# The suites switch to unprivileged users: every ancestor of the mounts must be searchable.
chmod 755 "$work"
helper=/sbin/mount.fuse.strata
helper_backup=
fusectl_mounted=0
watchdog_pid=

# Unmount everything under $work, deepest first (tests may leave their own mounts under the
# test or scratch dir), then stop any daemon the helper started that is still alive.
unmount_all() {
    local mp
    for _ in 1 2 3; do
        mapfile -t mps < <(awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo |
            awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
        [[ ${#mps[@]} -eq 0 ]] && return 0
        for mp in "${mps[@]}"; do
            umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
        done
    done
}

stop_daemons() {
    local p pid
    for p in "$work"/base/pids/*; do
        [[ -f $p ]] || continue
        pid=${p##*/}
        # only our own daemons, still running the binary we gave the helper
        if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$stratad" ]]; then
            kill "$pid" 2>/dev/null
            kill -CONT "$pid" 2>/dev/null
        fi
    done
}

cleanup() {
    [[ -n $watchdog_pid ]] && kill "$watchdog_pid" 2>/dev/null
    # keep the daemons' logs with the results
    mkdir -p "$results/stratad"
    cp "$work"/base/*.log "$work"/base/*.out "$results/stratad/" 2>/dev/null
    unmount_all # FUSE mounts first: their daemons exit on unmount
    sleep 1
    stop_daemons
    unmount_all # then the backing images
    [[ $fusectl_mounted == 1 ]] && umount /sys/fs/fuse/connections 2>/dev/null
    if [[ -n $helper_backup ]]; then
        mv -f "$helper_backup" "$helper"
    else
        rm -f "$helper"
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- backing filesystems ------------------------------------------------------------------------
mkdir -p "$work"/{test,scratch} "$work"/base/{strata_test,strata_scratch}
chmod 755 "$work"/{test,scratch,base}
for tag in strata_test strata_scratch; do
    case $backing in
    xfs | ext4)
        truncate -s "$img_size" "$work/$tag.img"
        if [[ $backing == xfs ]]; then
            mkfs.xfs -q "$work/$tag.img" || exit 1
        else
            mkfs.ext4 -q -F "$work/$tag.img" || exit 1
        fi
        mount -o loop "$work/$tag.img" "$work/base/$tag" || exit 1
        ;;
    dir) ;;
    *)
        echo "STRATA_XFS_BACKING must be xfs, ext4 or dir" >&2
        exit 1
        ;;
    esac
    chmod 755 "$work/base/$tag"
done

# ---- mount helper -------------------------------------------------------------------------------
if [[ -e $helper ]]; then
    cmp -s "$helper" "$here/mount.fuse.strata" || {
        helper_backup=$work/mount.fuse.strata.orig
        cp -p "$helper" "$helper_backup"
    }
fi
install -m 755 "$here/mount.fuse.strata" "$helper"

# ---- fusectl, for the watchdog -------------------------------------------------------------------
if ! grep -q ' - fusectl ' /proc/self/mountinfo; then
    mount -t fusectl fusectl /sys/fs/fuse/connections && fusectl_mounted=1
fi

# ---- run ---------------------------------------------------------------------------------------
export STRATA_XFS_WORK=$work STRATA_XFS_RESULTS=$results STRATAD=$stratad
export HOST_OPTIONS=$here/local.config
out=$results/check.out
[[ $# -gt 0 ]] || set -- -g generic/quick

"$here/watchdog.sh" --minutes "${STRATA_WATCHDOG_MIN:-10}" --under "$work" \
    --progress "$out" --progress "$results" --pids "$work/base/pids" \
    --log "$results/watchdog.log" &
watchdog_pid=$!

{
    echo "stratad:   $stratad ($("$stratad" --version 2>/dev/null | head -n 1))"
    echo "strata:    $(git -C "$here" rev-parse --short HEAD 2>/dev/null) $(git -C "$here" status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
    echo "xfstests:  $XFSTESTS_DIR $(git -C "$XFSTESTS_DIR" rev-parse --short HEAD 2>/dev/null)"
    echo "kernel:    $(uname -r)"
    echo "backing:   $backing"
    echo "args:      -E $here/exclude $*"
    echo "started:   $(date '+%F %T %Z')"
} >"$results/run.info"
cat "$results/run.info"

start=$SECONDS
(cd "$XFSTESTS_DIR" && ./check -E "$here/exclude" "$@") 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
elapsed=$((SECONDS - start))

# ---- summary ------------------------------------------------------------------------------------
# check ends with one line each: "Ran: <every test tried, not-run ones included>",
# "Not run: ...", "Failures: ..." (excluded tests appear in none of them).
list_of() { sed -n "s/^$1: //p" "$out" | tail -n 1; }
ran=$(list_of Ran)
notrun=$(list_of 'Not run')
failed=$(list_of Failures)
n() { wc -w <<<"$1"; }
{
    cat "$results/run.info"
    echo "finished:  $(date '+%F %T %Z')  wall time $((elapsed / 60)) min $((elapsed % 60)) s"
    echo "check exit status: $status"
    tried=$(n "$ran")
    echo "tried $tried: ran $((tried - $(n "$notrun"))) (passed $((tried - $(n "$notrun") - $(n "$failed"))), failed $(n "$failed")), not run $(n "$notrun")"
    echo "failed: $failed"
    if grep -q ABORT "$results/watchdog.log" 2>/dev/null; then
        echo "watchdog aborts:"
        grep ABORT "$results/watchdog.log"
    fi
    for t in $failed; do
        echo "--- $t"
        f=$results/$t.out.bad
        if [[ -f $f ]]; then
            diff -u "$XFSTESTS_DIR/tests/$t.out" "$f" | sed -n '3,$p' | grep '^[-+]' | head -n 6
        else
            grep -A3 "^$t" "$out" | head -n 4
        fi
    done
} >"$results/summary.txt"
echo
echo "summary: $results/summary.txt"
sed -n '/^finished/,/^failed:/p' "$results/summary.txt"
if [[ $(n "$ran") -eq 0 ]]; then
    echo "no test ran: check the selection ($*) and $out" >&2
    exit 1
fi
exit "$status"
