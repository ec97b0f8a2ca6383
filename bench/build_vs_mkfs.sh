#!/usr/bin/env bash
# Build one source tree with `strata image create` and with `mkfs.erofs` (uncompressed and
# -zlz4), each RUNS times (default 3), and compare median wall time, source MB/s and output
# size. Prints a JSON object, then a table, on stdout; progress goes to stderr.
#
# Environment:
#   SRC=<dir>   build this existing tree instead of generating one
#   SCALE=<f>   size of the generated tree as a fraction of the reference tree of
#               /work/shared/research/rafs-read-anchors.md §1 (synth/ + big/big.bin;
#               1 = 3,000 dirs x 10 files + 1 GiB). Default 0.25: 750 dirs, 7,500 files, 256 MiB.
#   SEED=<n>    seed of the generated tree (default 42, as in the reference recipe)
#   RUNS=<n>    runs per tool (default 3; the median is reported)
#   TOOLS="..." subset of: strata-zstd strata-lz4_block strata-none mkfs.erofs mkfs.erofs-lz4
#   KEEP=1      keep the work dir (tree, outputs, logs) instead of removing it
#   TMPDIR      parent of the work dir (default /var/tmp)
#
# As root the page cache is dropped before every run (`sync; echo 3 > /proc/sys/vm/drop_caches`),
# so the source is read cold; otherwise runs are warm and the JSON says so.
set -euo pipefail

if ! command -v mkfs.erofs >/dev/null 2>&1; then
    echo "build_vs_mkfs: mkfs.erofs is not installed; scripts/install-deps.sh installs erofs-utils" \
        "(or: apt-get install erofs-utils)." >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE=${SCALE:-0.25}
SEED=${SEED:-42}
RUNS=${RUNS:-3}
KEEP=${KEEP:-0}
ALL_TOOLS="strata-zstd strata-lz4_block strata-none mkfs.erofs mkfs.erofs-lz4"
TOOLS=${TOOLS:-$ALL_TOOLS}

say() { echo "build_vs_mkfs: $*" >&2; }

if ! command -v python3 >/dev/null 2>&1; then
    echo "build_vs_mkfs: python3 is needed to generate the tree and summarise the runs." >&2
    exit 2
fi
for t in $TOOLS; do
    case " $ALL_TOOLS " in
        *" $t "*) ;;
        *) echo "build_vs_mkfs: unknown tool '$t' (choose from: $ALL_TOOLS)" >&2; exit 2 ;;
    esac
done
case " $TOOLS " in
    *" mkfs.erofs "*) ;;
    *) echo "build_vs_mkfs: TOOLS must include mkfs.erofs (the ratios are relative to it)" >&2; exit 2 ;;
esac

say "cargo build --release"
(cd "$ROOT" && cargo build --release --bin strata >&2)
STRATA=${CARGO_TARGET_DIR:-$ROOT/target}/release/strata
[ -x "$STRATA" ] || { echo "build_vs_mkfs: $STRATA was not built" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-build-vs-mkfs.XXXXXX")
cleanup() {
    if [ "$KEEP" = 1 ]; then
        say "kept work dir $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- the source tree ---------------------------------------------------------------------
if [ -n "${SRC:-}" ]; then
    [ -d "$SRC" ] || { echo "build_vs_mkfs: SRC=$SRC is not a directory" >&2; exit 2; }
    SRC=$(cd "$SRC" && pwd)
    GENERATED=false
else
    SRC=$WORK/src
    GENERATED=true
    say "generating tree (SCALE=$SCALE SEED=$SEED) in $SRC"
    python3 - "$SRC" "$SCALE" "$SEED" <<'PY'
import base64, os, random, sys

dest, scale, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
# Reference recipe (rafs-read-anchors.md §1): for a in 0..29, b in 0..99 a leaf dir
# synth/dAA/sBBB with 10 files fC.dat of randint(100, 20480) bytes of base64 text, plus
# big/big.bin of 1 GiB random bytes. Sizes come from Random(seed) in that same order, so
# SCALE=1 SEED=42 gives the reference sizes; the content (os.urandom there) comes from a
# second seeded generator here, so the tree is identical on every run.
sizes = random.Random(seed)
content = random.Random(seed + 1)
leaves = max(1, round(3000 * scale))
for i in range(leaves):
    d = os.path.join(dest, "synth", "d%02d" % (i // 100), "s%03d" % (i % 100))
    os.makedirs(d)
    for c in range(10):
        size = sizes.randint(100, 20480)
        data = base64.b64encode(content.randbytes(size * 3 // 4 + 3))[:size]
        with open(os.path.join(d, "f%d.dat" % c), "wb") as f:
            f.write(data)
big = int((1 << 30) * scale) // (1 << 20) * (1 << 20)
if big > 0:
    os.makedirs(os.path.join(dest, "big"))
    with open(os.path.join(dest, "big", "big.bin"), "wb") as f:
        left = big
        while left:
            n = min(left, 1 << 20)
            f.write(content.randbytes(n))
            left -= n
PY
fi

read -r SRC_FILES SRC_DIRS SRC_BYTES < <(python3 - "$SRC" <<'PY'
import os, stat, sys
files = dirs = size = 0
for top, ds, fs in os.walk(sys.argv[1]):
    dirs += len(ds)
    for name in fs:
        st = os.lstat(os.path.join(top, name))
        if stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
print(files, dirs, size)
PY
)
say "source: $SRC_FILES files, $SRC_DIRS dirs, $SRC_BYTES bytes"

# --- how runs are taken ------------------------------------------------------------------
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    COLD=true
else
    COLD=false
    say "not root (or drop_caches not writable): page cache is NOT dropped, runs are warm"
fi
if [ -x /usr/bin/time ]; then GNU_TIME=/usr/bin/time; else GNU_TIME=; fi

OUT=$WORK/out
RESULTS=$WORK/runs.tsv
: >"$RESULTS"

# CMD=(...): the command line of one tool, building into $OUT/<tool>.
set_cmd() {
    local o=$OUT/$1
    case $1 in
        strata-zstd) CMD=("$STRATA" image create --json --compressor zstd -B "$o/bootstrap" -D "$o/blobs" "$SRC") ;;
        strata-lz4_block) CMD=("$STRATA" image create --json --compressor lz4_block -B "$o/bootstrap" -D "$o/blobs" "$SRC") ;;
        strata-none) CMD=("$STRATA" image create --json --compressor none -B "$o/bootstrap" -D "$o/blobs" "$SRC") ;;
        mkfs.erofs) CMD=(mkfs.erofs "$o/image.erofs" "$SRC") ;;
        mkfs.erofs-lz4) CMD=(mkfs.erofs -zlz4 "$o/image.erofs" "$SRC") ;;
    esac
}

now() { date +%s.%N; }
diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }

run_once() { # tool run
    local tool=$1 run=$2 o=$OUT/$1 log=$WORK/logs/$1.$2 t0 t1 t2 user=- sys=- rss=- bytes
    set_cmd "$tool"
    rm -rf "$o"
    mkdir -p "$o" "$WORK/logs"
    sync
    if [ "$COLD" = true ]; then echo 3 >/proc/sys/vm/drop_caches; fi
    t0=$(now)
    if [ -n "$GNU_TIME" ]; then
        "$GNU_TIME" -f "%U %S %M" -o "$log.time" "${CMD[@]}" >"$log.out" 2>&1
    else
        "${CMD[@]}" >"$log.out" 2>&1
    fi
    t1=$(now)
    sync # not part of the wall time; reported separately as "+sync"
    t2=$(now)
    if [ -n "$GNU_TIME" ]; then read -r user sys rss <"$log.time"; fi
    bytes=$(find "$o" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$(diff_s "$t0" "$t1")" \
        "$(diff_s "$t1" "$t2")" "$user" "$sys" "$rss" "$bytes" >>"$RESULTS"
    say "$(printf '%-16s run %s: %7.2f s, %s output bytes' "$tool" "$run" "$(diff_s "$t0" "$t1")" "$bytes")"
}

# Round robin (run 1 of every tool, then run 2, ...) so slow drift hits every tool alike.
for run in $(seq 1 "$RUNS"); do
    for tool in $TOOLS; do
        run_once "$tool" "$run"
    done
done

MKFS_VERSION=$(grep -m1 -o 'mkfs.erofs [0-9][0-9.]*' "$WORK"/logs/mkfs.erofs.1.out || echo unknown)
STRATA_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    STRATA_REV="$STRATA_REV+dirty"
fi
CMDS=$WORK/commands.tsv
: >"$CMDS"
for tool in $TOOLS; do
    set_cmd "$tool"
    line=$(printf '%q ' "${CMD[@]}")
    line=${line//"$WORK"/'$WORK'}
    line=${line//"$STRATA"/target/release/strata}
    printf '%s\t%s\n' "$tool" "${line% }" >>"$CMDS"
done

# --- summary -----------------------------------------------------------------------------
export B_TOOLS="$TOOLS" B_SRC="$SRC" B_GENERATED="$GENERATED" B_SCALE="$SCALE" B_SEED="$SEED" \
    B_RUNS="$RUNS" B_COLD="$COLD" B_FILES="$SRC_FILES" B_DIRS="$SRC_DIRS" B_BYTES="$SRC_BYTES" \
    B_STRATA_REV="$STRATA_REV" B_MKFS_VERSION="$MKFS_VERSION"
python3 - "$RESULTS" "$CMDS" <<'PY'
import datetime, json, os, platform, statistics, sys

env = os.environ
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cmds = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if l.strip())
order = env["B_TOOLS"].split()
generated = env["B_GENERATED"] == "true"
cold = env["B_COLD"] == "true"
src_bytes = int(env["B_BYTES"])

def median_or_none(vals):
    return None if "-" in vals else statistics.median(float(v) for v in vals)

tools = {}
for t in order:
    rs = [r for r in rows if r[0] == t]
    wall = [float(r[2]) for r in rs]
    med = statistics.median(wall)
    user, sysc, rss = (median_or_none([r[i] for r in rs]) for i in (4, 5, 6))
    sizes = sorted({int(r[7]) for r in rs})
    tools[t] = {
        "command": cmds[t],
        "runs_s": [round(w, 3) for w in wall],
        "median_s": round(med, 3),
        "mb_per_s": round(src_bytes / 1e6 / med, 1),
        "median_with_sync_s": round(statistics.median(float(r[2]) + float(r[3]) for r in rs), 3),
        "user_s": None if user is None else round(user, 2),
        "sys_s": None if sysc is None else round(sysc, 2),
        "max_rss_mib": None if rss is None else round(rss / 1024, 1),
        "output_bytes": sizes[-1],
        "output_bytes_same_every_run": len(sizes) == 1,
    }
base = tools["mkfs.erofs"]
for v in tools.values():
    v["time_ratio_to_mkfs_erofs"] = round(v["median_s"] / base["median_s"], 2)
    v["size_ratio_to_mkfs_erofs"] = round(v["output_bytes"] / base["output_bytes"], 3)
    v["output_to_source"] = round(v["output_bytes"] / src_bytes, 3)

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), "?")
mem_kib = next((int(l.split()[1]) for l in open("/proc/meminfo")
                if l.startswith("MemTotal")), 0)
doc = {
    "benchmark": "build_vs_mkfs",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    },
    "versions": {"strata": env["B_STRATA_REV"], "mkfs.erofs": env["B_MKFS_VERSION"]},
    "page_cache_dropped_before_each_run": cold,
    "runs_per_tool": int(env["B_RUNS"]),
    "source": {
        "path": "$WORK/src" if generated else env["B_SRC"],
        "generated": generated,
        "scale": float(env["B_SCALE"]) if generated else None,
        "seed": int(env["B_SEED"]) if generated else None,
        "files": int(env["B_FILES"]),
        "dirs": int(env["B_DIRS"]),
        "bytes": src_bytes,
    },
    "tools": tools,
}
print(json.dumps(doc, indent=2))
print()
print("source: %s files, %s dirs, %.1f MB; %s runs per tool (median); page cache %s"
      % (env["B_FILES"], env["B_DIRS"], src_bytes / 1e6, env["B_RUNS"],
         "dropped before each run" if cold else "NOT dropped (warm runs)"))
hdr = ("tool", "median s", "runs s", "MB/s", "+sync s", "user/sys s", "RSS MiB",
       "output bytes", "time x", "size x")
table = [hdr]
for t, v in tools.items():
    table.append((
        t,
        "%.2f" % v["median_s"],
        " ".join("%.2f" % w for w in v["runs_s"]),
        "%.0f" % v["mb_per_s"],
        "%.2f" % v["median_with_sync_s"],
        "-" if v["user_s"] is None else "%.2f/%.2f" % (v["user_s"], v["sys_s"]),
        "-" if v["max_rss_mib"] is None else "%.1f" % v["max_rss_mib"],
        "{:,}".format(v["output_bytes"]),
        "%.2f" % v["time_ratio_to_mkfs_erofs"],
        "%.3f" % v["size_ratio_to_mkfs_erofs"],
    ))
width = [max(len(r[i]) for r in table) for i in range(len(hdr))]
for i, r in enumerate(table):
    print("  ".join(c.ljust(width[j]) if j == 0 else c.rjust(width[j]) for j, c in enumerate(r)))
    if i == 0:
        print("  ".join("-" * w for w in width))
print("time x, size x: median wall time and output bytes relative to mkfs.erofs (uncompressed);"
      " < 1 means faster / smaller.")
PY
