#!/usr/bin/env python3
"""Helper of bench/overlay_vs_peers.sh: lower-tree generation, the workloads with their
correctness checks, the remount-persistence check, and the JSON + markdown report.

Workloads and checks follow /work/shared/research/overlay-bench.md section 1 (see the header of
overlay_vs_peers.sh for what SCALE changes). The timed inner loops run in overlay_workload.c
(compiled by the script); external tools (rm, tar, git, python3 -m compileall, fio) are timed
here around the subprocess. Nothing here mounts or unmounts: the script does that.

  overlay_bench.py gen     --lower DIR --assets DIR --scale S --seed N
  overlay_bench.py run     --system NAME --mnt DIR --lower DIR --assets DIR --wl BIN --out FILE
                           [--pid PID] [--timeout S] [--fio PATH] [--workloads a,b,...]
  overlay_bench.py persist --system NAME --mnt DIR --assets DIR --wl BIN --out FILE [--pid PID]
  overlay_bench.py report  --results DIR --systems "a b c" --meta FILE [--json-out FILE]

`run` writes one JSON object per workload (JSON lines) to --out; `persist` writes one object.
A failed check never stops the run: the workload is recorded FAILED with the check's output.
"""
import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
import zlib

MiB = 1 << 20
CU256_MIB = 256  # copyup_256m keeps its size at every SCALE
CU256_OFF = 100 * MiB
CU256_MARK = b"OVL!"
RAND_CHECK_BLOCKS = 256
SEQW_CHECK_BLOCKS = 32
MD_DIRS, MD_PER, MD_SIZE = 100, 100, 1024  # md_create: 10 000 files in 100 dirs, 1 KiB each
MD_FSYNC_FILES = 1000
GIT_FILES = 1000  # src/: 1000 modules in 100 dirs
WORKLOADS = [
    "stat_cold", "stat_warm", "read_all", "seq_read", "rand_read", "copyup_append",
    "copyup_256m", "whiteout_rm", "md_create", "md_fsync", "md_unlink", "seq_write", "untar",
    "git", "compileall",
]
UNITS = {
    "stat_cold": "entries/s", "stat_warm": "entries/s", "read_all": "MiB/s",
    "seq_read": "MiB/s", "rand_read": "IOPS", "copyup_append": "files/s",
    "copyup_256m": "MiB/s", "whiteout_rm": "entries/s", "md_create": "files/s",
    "md_fsync": "files/s", "md_unlink": "files/s", "seq_write": "MiB/s", "untar": "files/s",
    "git": "files/s", "compileall": "files/s",
}
BASELINE = "kovl"


def md_content(g, size=MD_SIZE):
    """Content of md file with global index g (overlay_workload.c content_byte)."""
    return bytes(((g * 131 + j * 7 + 13) & 0xFF) for j in range(size))


def crc_file(path):
    c = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                return c
            c = zlib.crc32(b, c)


def block_crcs(path, nblocks=None):
    out = []
    with open(path, "rb") as f:
        while nblocks is None or len(out) < nblocks:
            b = f.read(MiB)
            if not b:
                break
            out.append(zlib.crc32(b))
    return out


# ---- gen ------------------------------------------------------------------------------------

def write_random(path, rng, size):
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def gen_big(path, rng, mib):
    crcs = []
    with open(path, "wb") as f:
        for _ in range(mib):
            b = rng.randbytes(MiB)
            crcs.append(zlib.crc32(b))
            f.write(b)
    return crcs


def py_module(rng, pi, mi):
    lines = ['"""Generated module p%02d/m%d (strata overlay benchmark)."""' % (pi, mi),
             "import math", "", "CONST = %d" % rng.randint(0, 1 << 30), ""]
    for k in range(rng.randint(4, 14)):
        a, b, c = rng.randint(1, 999), rng.randint(2, 9), rng.randint(1, 30)
        lines += [
            "def f%d(x, y=%d):" % (k, a),
            "    z = x * %d + y" % a,
            "    if z %% %d == 0:" % b,
            "        return math.sqrt(abs(z))",
            "    return [z + i for i in range(%d)]" % c,
            "",
        ]
    lines += ["class C%d:" % mi, "    value = %d" % rng.randint(0, 1 << 20), "",
              "    def get(self):", "        return self.value + CONST", ""]
    return "\n".join(lines).encode()


def cmd_gen(a):
    scale, seed = a.scale, a.seed
    lower, assets = a.lower, a.assets
    os.makedirs(lower)
    os.makedirs(assets, exist_ok=True)
    m = {"scale": scale, "seed": seed}

    # tree/: site-packages-like
    rng = random.Random(seed * 1000 + 1)
    npkg = max(1, round(120 * scale))
    ndirs = max(npkg, round(3000 * scale))
    nfiles = max(1, round(30000 * scale))
    nbig = max(1, round(30 * scale))
    nsym = round(200 * scale)
    root = os.path.join(lower, "tree")
    os.makedirs(root)
    dirs = []  # (relpath, depth)
    for p in range(npkg):
        rel = "pkg%03d" % p
        os.mkdir(os.path.join(root, rel))
        dirs.append((rel, 1))
    while len(dirs) < ndirs:
        parent, depth = rng.choice(dirs)
        if depth >= 7:
            continue
        rel = "%s/d%04d" % (parent, len(dirs))
        os.mkdir(os.path.join(root, rel))
        dirs.append((rel, depth + 1))
    files = []
    tbytes = tcrc = 0
    exts = [".py", ".py", ".py", ".pyi", ".txt", ".json", ".so"]
    for i in range(nfiles):
        d = rng.choice(dirs)[0]
        size = int(min(20000, max(100, rng.lognormvariate(7.378, 1.0))))  # median ~1.6 KB
        rel = "%s/f%05d%s" % (d, i, rng.choice(exts))
        data = rng.randbytes(size)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        files.append(rel)
        tbytes += size
        tcrc += zlib.crc32(data)
    for i in range(nbig):
        d = rng.choice(dirs)[0]
        size = rng.randint(1, 6) * MiB
        rel = "%s/big%02d.bin" % (d, i)
        data = rng.randbytes(size)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        files.append(rel)
        tbytes += size
        tcrc += zlib.crc32(data)
    for i in range(nsym):
        d = rng.choice(dirs)[0]
        target = rng.choice(files)
        os.symlink(os.path.relpath(target, d), os.path.join(root, d, "link%03d" % i))
    m["tree"] = {"entries": len(dirs) + len(files) + nsym, "dirs": len(dirs), "files": len(files),
                 "symlinks": nsym, "bytes": tbytes, "crcsum": tcrc}

    # big.bin (seq_read, rand_read) and cu256.bin (copyup_256m): 1 MiB blocks, CRC per block
    big_mib = max(16, round(1024 * scale))
    rng = random.Random(seed * 1000 + 2)
    m["big"] = {"path": "big.bin", "mib": big_mib,
                "crcs": gen_big(os.path.join(lower, "big.bin"), rng, big_mib),
                # the spec reads a quarter of the file (65 536 of 262 144 blocks at 1 GiB)
                "rand_blocks": big_mib * 256 // 4}
    rng = random.Random(seed * 1000 + 3)
    m["cu256"] = {"path": "cu256.bin", "mib": CU256_MIB,
                  "crcs": gen_big(os.path.join(lower, "cu256.bin"), rng, CU256_MIB)}

    # cu/: 1000 files of 0.5-8 KB in 50 dirs
    rng = random.Random(seed * 1000 + 4)
    cu = []
    for d in range(50):
        os.makedirs(os.path.join(lower, "cu", "c%02d" % d))
        for k in range(20):
            rel = "cu/c%02d/x%03d" % (d, k)
            data = rng.randbytes(rng.randint(512, 8192))
            with open(os.path.join(lower, rel), "wb") as f:
                f.write(data)
            cu.append([rel, len(data), zlib.crc32(data)])
    m["cu"] = cu

    # rmme/: 5000 files in 250 leaf dirs (261 dirs with rmme itself); first child is a00
    rng = random.Random(seed * 1000 + 5)
    n = 0
    for a_ in range(10):
        for b_ in range(25):
            d = os.path.join(lower, "rmme", "a%02d" % a_, "b%02d" % b_)
            os.makedirs(d)
            for f_ in range(20):
                write_random(os.path.join(d, "f%02d" % f_), rng, rng.randint(64, 4096))
                n += 1
    m["rmme"] = {"files": n, "dirs": 1 + 10 + 250, "entries": n + 261}

    # src/: 1000 valid python modules in 100 dirs
    rng = random.Random(seed * 1000 + 6)
    for pi in range(100):
        d = os.path.join(lower, "src", "p%02d" % pi)
        os.makedirs(d)
        for mi in range(10):
            with open(os.path.join(d, "m%d.py" % mi), "wb") as f:
                f.write(py_module(rng, pi, mi))
    m["src"] = {"modules": GIT_FILES, "dirs": 100}

    # untar.tar (outside the lower): node_modules-like
    rng = random.Random(seed * 1000 + 7)
    ufiles = max(10, round(20000 * scale))
    udirs = max(2, round(2000 * scale))
    tdirs = ["node_modules"]
    p = 0
    while len(tdirs) < udirs + 1:
        tdirs.append("node_modules/p%04d" % p)
        if len(tdirs) < udirs + 1:
            tdirs.append("node_modules/p%04d/lib" % p)
        p += 1
    per_dir = {d: [] for d in tdirs[1:]}
    ubytes = 0
    for i in range(ufiles):
        d = rng.choice(tdirs[1:])
        size = int(min(65536, max(20, rng.lognormvariate(6.9, 1.0))))  # median ~1 KB
        per_dir[d].append(("f%05d.js" % i, size, 0o755 if rng.random() < 0.05 else 0o644))
        ubytes += size
    tar_path = os.path.join(assets, "untar.tar")
    mtime0 = 1700000000
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as t:
        def add_dir(name):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, mtime0 + rng.randint(0, 10**7)
            ti.uname = ti.gname = "root"
            t.addfile(ti)
        add_dir("node_modules")
        for d in tdirs[1:]:
            add_dir(d)
            for name, size, mode in per_dir[d]:
                ti = tarfile.TarInfo(d + "/" + name)
                ti.size, ti.mode, ti.mtime = size, mode, mtime0 + rng.randint(0, 10**7)
                ti.uname = ti.gname = "root"
                t.addfile(ti, io.BytesIO(rng.randbytes(size)))
    m["untar"] = {"tar": tar_path, "files": ufiles, "dirs": len(tdirs), "bytes": ubytes,
                  "tar_bytes": os.path.getsize(tar_path)}
    with open(os.path.join(assets, "manifest.json"), "w") as f:
        json.dump(m, f)
    t = m["tree"]
    print("generated: tree %d entries (%d dirs, %d files, %d symlinks, %.1f MiB); big.bin %d MiB; "
          "cu256.bin %d MiB; cu 1000 files; rmme %d entries; src 1000 modules; untar.tar %d files "
          "/ %d dirs (%.1f MiB)" % (t["entries"], t["dirs"], t["files"], t["symlinks"],
                                    t["bytes"] / MiB, big_mib, CU256_MIB, m["rmme"]["entries"],
                                    ufiles, len(tdirs), ubytes / MiB), file=sys.stderr)


# ---- run ------------------------------------------------------------------------------------

class Failed(Exception):
    """A workload or its check failed; the message is the check output."""


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def mounted(mnt):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()[4].replace("\\040", " ")
            if p == mnt:
                return True
    return False


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def daemon_stats(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        pass
    return out


class Runner:
    def __init__(self, a):
        self.a = a
        self.mnt = a.mnt
        self.lower = getattr(a, "lower", None)
        with open(os.path.join(a.assets, "manifest.json")) as f:
            self.m = json.load(f)
        self.wl = a.wl
        self.pid = a.pid
        self.timeout = getattr(a, "timeout", 600)
        self.env = dict(os.environ, LC_ALL="C")
        for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):
            self.env.pop(k, None)
        self.gitenv = dict(
            self.env, HOME=os.path.join(a.assets, "home"), GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null", GIT_AUTHOR_NAME="bench",
            GIT_AUTHOR_EMAIL="bench@example.invalid", GIT_COMMITTER_NAME="bench",
            GIT_COMMITTER_EMAIL="bench@example.invalid",
            GIT_AUTHOR_DATE="2026-01-01T00:00:00+0000",
            GIT_COMMITTER_DATE="2026-01-01T00:00:00+0000")
        os.makedirs(self.gitenv["HOME"], exist_ok=True)
        self.max_fds = 0

    def p(self, *parts):
        return os.path.join(self.mnt, *parts)

    def alive(self):
        """None, or why the mount is no longer usable."""
        if self.pid:
            st = proc_state(self.pid)
            if st is None or st == "Z":
                return "daemon pid %d exited" % self.pid
        if not mounted(self.mnt):
            return "%s is no longer mounted" % self.mnt
        return None

    def sh(self, argv, cwd=None, env=None, what=None):
        """Run argv; return (seconds, stdout). Raise Failed on error or timeout."""
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv, cwd=cwd, env=env or self.env, capture_output=True,
                               timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise Failed("%s did not finish within %d s (hang?)" % (what or argv[0], self.timeout))
        t = time.monotonic() - t0
        if r.returncode != 0:
            err = (r.stderr or r.stdout).decode(errors="replace").strip()
            lines = err.splitlines()
            if len(lines) > 6:
                err = "\n".join(lines[:3] + ["..."] + lines[-3:])
            raise Failed("%s exited with status %d: %s" % (
                what or " ".join(argv[:2]), r.returncode, err))
        return t, r.stdout.decode(errors="replace")

    def wlrun(self, *args):
        """overlay_workload.c: returns the fields of its output line as numbers."""
        _, out = self.sh([self.wl] + [str(x) for x in args], what="overlay_workload " + args[0])
        return [float(x) if "." in x else int(x) for x in out.split()]

    def expect(self, issues, what, got, want):
        if got != want:
            issues.append("%s: got %s, want %s" % (what, got, want))

    def enoent(self, issues, rel):
        try:
            os.lstat(self.p(rel))
            issues.append("%s still resolves (lstat succeeded)" % rel)
        except FileNotFoundError:
            pass
        except OSError as e:
            issues.append("lstat %s: %s (want ENOENT)" % (rel, e.strerror))
        parent, name = os.path.split(rel)
        if name in os.listdir(self.p(parent) if parent else self.mnt):
            issues.append("%s is still listed by readdir of %s" % (name, parent or "/"))

    # -- workloads: each returns (rate, seconds, extra dict); raises Failed --------------------

    def stat_walk(self, cold):
        if cold:
            drop_caches()
        t, entries, dirs, files, links, nbytes = self.wlrun("walk", self.p("tree"))
        want = self.m["tree"]
        issues = []
        for k, v in (("entries", entries), ("dirs", dirs), ("files", files),
                     ("symlinks", links), ("bytes", nbytes)):
            self.expect(issues, k, v, want[k])
        if issues:
            raise Failed("; ".join(issues))
        return entries / t, t, {"entries": entries}

    def w_stat_cold(self):
        return self.stat_walk(True)

    def w_stat_warm(self):
        return self.stat_walk(False)

    def w_read_all(self):
        drop_caches()
        t, entries, dirs, files, links, nbytes, crcsum = self.wlrun("readall", self.p("tree"))
        want = self.m["tree"]
        issues = []
        self.expect(issues, "files", files, want["files"])
        self.expect(issues, "bytes", nbytes, want["bytes"])
        self.expect(issues, "sum of per-file CRC32", crcsum, want["crcsum"])
        if issues:
            raise Failed("; ".join(issues))
        return nbytes / MiB / t, t, {"files": files, "bytes": nbytes}

    def w_seq_read(self):
        big = self.m["big"]
        drop_caches()
        t, nbytes = self.wlrun("seq", self.p(big["path"]))
        issues = []
        self.expect(issues, "bytes read", nbytes, big["mib"] * MiB)
        got = block_crcs(self.p(big["path"]))
        bad = [i for i, (x, y) in enumerate(zip(got, big["crcs"])) if x != y]
        if len(got) != len(big["crcs"]):
            issues.append("second pass read %d blocks, want %d" % (len(got), len(big["crcs"])))
        if bad:
            issues.append("second pass: %d of %d 1 MiB blocks have the wrong CRC (first: %s)" % (
                len(bad), len(got), bad[:5]))
        if issues:
            raise Failed("; ".join(issues))
        return nbytes / MiB / t, t, {"bytes": nbytes}

    def w_rand_read(self):
        big = self.m["big"]
        path = self.p(big["path"])
        nblk = big["rand_blocks"]
        drop_caches()
        extra = {}
        if self.a.fio:
            t, out = self.sh([
                self.a.fio, "--name=rand_read", "--filename=" + path, "--readonly",
                "--rw=randread", "--bs=4k", "--ioengine=psync", "--iodepth=1",
                "--size=%d" % (big["mib"] * MiB), "--io_size=%d" % (nblk * 4096),
                "--randrepeat=0", "--randseed=%d" % (self.m["seed"] + 11), "--runtime=30",
                "--invalidate=1", "--output-format=json"], what="fio")
            j = json.loads(out[out.index("{"):])
            rd = j["jobs"][0]["read"]
            ios = rd["total_ios"]
            secs = rd["runtime"] / 1000.0
            iops = rd["iops"]
            extra = {"tool": "fio", "ios": ios, "clat_mean_us": round(rd["clat_ns"]["mean"] / 1000, 1)}
            if j["jobs"][0].get("error"):
                raise Failed("fio error %s" % j["jobs"][0]["error"])
        else:
            secs, ios = self.wlrun("randread", path, nblk, self.m["seed"] + 11, 30)
            iops = ios / secs
            extra = {"tool": "overlay_workload randread (fio not installed)", "ios": ios}
        # check: 256 random 4 KiB blocks, overlay vs this system's lower copy
        rng = random.Random(self.m["seed"] + 12)
        total = big["mib"] * 256
        bad = []
        with open(path, "rb") as fo, open(os.path.join(self.lower, big["path"]), "rb") as fl:
            for _ in range(RAND_CHECK_BLOCKS):
                b = rng.randrange(total)
                if os.pread(fo.fileno(), 4096, b * 4096) != os.pread(fl.fileno(), 4096, b * 4096):
                    bad.append(b)
        if bad:
            raise Failed("%d of %d random 4 KiB blocks differ from the lower file (first: %s)" % (
                len(bad), RAND_CHECK_BLOCKS, bad[:5]))
        if ios < nblk and secs < 29:
            raise Failed("only %d of %d reads done in %.1f s" % (ios, nblk, secs))
        return iops, secs, extra

    def w_copyup_append(self):
        cu = self.m["cu"]
        lst = os.path.join(self.a.assets, "append.list")
        with open(lst, "w") as f:
            for rel, _, _ in cu:
                f.write(self.p(rel) + "\n")
        drop_caches()
        t, n = self.wlrun("append", lst)
        issues = []
        for i, (rel, size, crc) in enumerate(cu):
            try:
                st = os.lstat(self.p(rel))
            except OSError as e:
                issues.append("lstat %s: %s" % (rel, e.strerror))
                continue
            if st.st_size != size + 1:
                issues.append("%s: size %d, want %d" % (rel, st.st_size, size + 1))
            if i % 50 == 0:
                with open(self.p(rel), "rb") as f:
                    got = f.read()
                with open(os.path.join(self.lower, rel), "rb") as f:
                    want = f.read() + b"Z"
                if got != want:
                    issues.append("%s: content differs from lower content + 'Z'" % rel)
            with open(os.path.join(self.lower, rel), "rb") as f:
                low = f.read()
            if len(low) != size or zlib.crc32(low) != crc:
                issues.append("lower file %s changed (size %d, want %d)" % (rel, len(low), size))
        if issues:
            raise Failed("%d problems: %s" % (len(issues), "; ".join(issues[:5])))
        return n / t, t, {"files": n}

    def w_copyup_256m(self):
        cu = self.m["cu256"]
        path = self.p(cu["path"])
        drop_caches()
        (t,) = self.wlrun("pwrite", path, CU256_OFF, CU256_MARK.decode())
        issues = []
        st = os.stat(path)
        self.expect(issues, "size", st.st_size, CU256_MIB * MiB)
        with open(path, "rb") as f:
            got = os.pread(f.fileno(), 4, CU256_OFF)
            if got != CU256_MARK:
                issues.append("the 4 bytes at 100 MiB read back as %r, want %r" % (got, CU256_MARK))
            for k in range(16):
                b = k * 17  # 0, 17, ..., 255: never block 100
                if zlib.crc32(os.pread(f.fileno(), MiB, b * MiB)) != cu["crcs"][b]:
                    issues.append("block %d has the wrong CRC" % b)
        low = os.path.join(self.lower, cu["path"])
        if os.path.getsize(low) != CU256_MIB * MiB:
            issues.append("lower file size changed")
        with open(low, "rb") as f:
            if zlib.crc32(os.pread(f.fileno(), MiB, CU256_OFF)) != cu["crcs"][100]:
                issues.append("lower file changed at 100 MiB")
        if issues:
            raise Failed("; ".join(issues))
        return CU256_MIB / t, t, {"latency_ms": round(t * 1000, 1)}

    def w_whiteout_rm(self):
        rm = self.m["rmme"]
        drop_caches()
        t, _ = self.sh(["rm", "-rf", self.p("rmme")], what="rm -rf rmme")
        issues = []
        self.enoent(issues, "rmme")
        drop_caches()
        before = len(issues)
        self.enoent(issues, "rmme")
        for k in range(before, len(issues)):
            issues[k] += " (after drop_caches)"
        try:
            os.mkdir(self.p("rmme"))
        except OSError as e:
            issues.append("mkdir rmme after rm -rf: %s" % e.strerror)
        else:
            left = sorted(os.listdir(self.p("rmme")))
            if left:
                issues.append("re-created rmme is not empty: readdir lists %d entries (%s)" % (
                    len(left), ", ".join(left[:5])))
            try:
                os.lstat(self.p("rmme", "a00"))
                issues.append("rmme/a00 resolves in the re-created (opaque) rmme")
            except FileNotFoundError:
                pass
            except OSError as e:
                issues.append("lstat rmme/a00: %s (want ENOENT)" % e.strerror)
            try:
                os.rmdir(self.p("rmme"))
            except OSError as e:
                issues.append("rmdir of the re-created empty rmme: %s" % e.strerror)
        if issues:
            raise Failed("; ".join(issues))
        return rm["entries"] / t, t, {"entries": rm["entries"]}

    def w_md_create(self):
        t, n = self.wlrun("create", self.p("md"), MD_DIRS, MD_PER, MD_SIZE, 0, 0)
        issues = []
        names = sorted(os.listdir(self.p("md")))
        self.expect(issues, "md/ entries", len(names), MD_DIRS)
        g = 0
        for d in range(MD_DIRS):
            dn = "d%03d" % d
            try:
                cnt = len(os.listdir(self.p("md", dn)))
            except OSError as e:
                issues.append("readdir md/%s: %s" % (dn, e.strerror))
                g += MD_PER
                continue
            self.expect(issues, "md/%s entries" % dn, cnt, MD_PER)
            for _ in range(MD_PER):
                if g % 500 == 0:
                    rel = os.path.join("md", dn, "f%05d" % g)
                    with open(self.p(rel), "rb") as f:
                        if f.read() != md_content(g):
                            issues.append("%s: wrong content" % rel)
                g += 1
        if issues:
            raise Failed("; ".join(issues[:6]))
        return n / t, t, {"files": n}

    def w_md_fsync(self):
        base = MD_DIRS * MD_PER
        t, n = self.wlrun("create", self.p("md", "s"), 1, MD_FSYNC_FILES, MD_SIZE, 1, base)
        cnt = len(os.listdir(self.p("md", "s", "d000")))
        if cnt != MD_FSYNC_FILES:
            raise Failed("md/s/d000 lists %d entries, want %d" % (cnt, MD_FSYNC_FILES))
        return n / t, t, {"files": n}

    def w_md_unlink(self):
        t, files, dirs = self.wlrun("unlink", self.p("md", "s"), 1, MD_FSYNC_FILES,
                                    MD_DIRS * MD_PER, self.p("md"), MD_DIRS, MD_PER, 0)
        issues = []
        self.enoent(issues, "md")
        if issues:
            raise Failed("; ".join(issues))
        return files / t, t, {"files": files, "dirs": dirs}

    def w_seq_write(self):
        mib = self.m["big"]["mib"]
        t, nbytes = self.wlrun("seqwrite", self.p("seqw.bin"), mib)
        drop_caches()
        r = subprocess.run([self.wl, "seqcheck", self.p("seqw.bin"), str(mib),
                            str(SEQW_CHECK_BLOCKS)], capture_output=True, timeout=self.timeout)
        if r.returncode != 0:
            raise Failed("after drop_caches: " + (r.stdout + r.stderr).decode().strip())
        return nbytes / MiB / t, t, {"bytes": nbytes}

    def w_untar(self):
        u = self.m["untar"]
        with open(u["tar"], "rb") as f:  # tarball warm
            while f.read(MiB):
                pass
        os.mkdir(self.p("untar"))
        t, _ = self.sh(["tar", "-xf", u["tar"], "-C", self.p("untar")], what="tar -xf")
        self.check_untar()
        return u["files"] / t, t, {"files": u["files"]}

    def check_untar(self):
        u = self.m["untar"]
        _, entries, dirs, files, links, nbytes = self.wlrun("walk", self.p("untar"))
        issues = []
        self.expect(issues, "untarred dirs", dirs, u["dirs"])
        self.expect(issues, "untarred files", files, u["files"])
        self.expect(issues, "untarred bytes", nbytes, u["bytes"])
        if issues:
            raise Failed("; ".join(issues))

    def git(self, *args, what=None):
        return self.sh([self.a.git, "-c", "init.defaultBranch=main", "-c", "gc.auto=0",
                        "-c", "maintenance.auto=false", "-c", "commit.gpgsign=false"] + list(args),
                       cwd=self.p("src"), env=self.gitenv, what=what or "git " + args[0])

    def w_git(self):
        drop_caches()
        t1, _ = self.git("init", "-q")
        t2, _ = self.git("add", "-A")
        t3, _ = self.git("commit", "-q", "-m", "bench")
        t = t1 + t2 + t3
        self.check_git()
        _, head = self.git("rev-parse", "HEAD")
        return GIT_FILES / t, t, {"head": head.strip()}

    def check_git(self, status=True):
        issues = []
        _, ls = self.git("ls-files", "-z")
        n = len([x for x in ls.split("\0") if x])
        self.expect(issues, "git ls-files count", n, GIT_FILES)
        if status:
            _, st = self.git("status", "--porcelain")
            if st.strip():
                lines = st.strip().splitlines()
                issues.append("git status --porcelain not empty (%d lines: %s)" % (
                    len(lines), "; ".join(lines[:3])))
        if issues:
            raise Failed("; ".join(issues))

    def w_compileall(self):
        t, _ = self.sh([self.a.python, "-m", "compileall", "-q", "-j", "1", "src"], cwd=self.mnt,
                       what="python3 -m compileall")
        self.check_pyc()
        return GIT_FILES / t, t, {}

    def check_pyc(self):
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.p("src")):
            if ".git" in dirnames:
                dirnames.remove(".git")
            if os.path.basename(dirpath) == "__pycache__":
                n += sum(1 for f in filenames if f.endswith(".pyc"))
        if n != GIT_FILES:
            raise Failed("%d .pyc files under src/*/__pycache__, want %d" % (n, GIT_FILES))


def cmd_run(a):
    r = Runner(a)
    sel = a.workloads.split(",") if a.workloads else WORKLOADS
    t_all = time.monotonic()
    gone = None
    with open(a.out, "a") as out:
        for w in sel:
            rec = {"system": a.system, "workload": w, "unit": UNITS[w],
                   "loadavg_before": round(os.getloadavg()[0], 2)}
            if gone is None:
                gone = r.alive()
            if gone:
                rec.update(status="FAILED", check="not run: " + gone)
            else:
                try:
                    rate, secs, extra = getattr(r, "w_" + w)()
                    rec.update(status="ok", rate=rate, secs=round(secs, 6), **extra)
                except Failed as e:
                    rec.update(status="FAILED", check=str(e))
                except OSError as e:
                    rec.update(status="FAILED", check="%s: %s" % (type(e).__name__, e))
                except Exception as e:  # a bug in the check itself: still keep going
                    rec.update(status="FAILED", check="check raised %s: %s" % (type(e).__name__, e))
                if rec["status"] != "ok":
                    why = r.alive()
                    if why:
                        rec["check"] += " [%s]" % why
            if r.pid:
                ds = daemon_stats(r.pid)
                r.max_fds = max(r.max_fds, ds.get("fds", 0))
                rec["daemon_fds_after"] = ds.get("fds")
            msg = "%-14s %s" % (w, "%.1f %s (%.3f s)" % (rec["rate"], rec["unit"], rec["secs"])
                                if rec["status"] == "ok" else "FAILED: " + rec["check"])
            print("%s: %s" % (a.system, msg), file=sys.stderr)
            out.write(json.dumps(rec) + "\n")
            out.flush()
        summary = {"system": a.system, "workload": "_summary",
                   "wall_seconds": round(time.monotonic() - t_all, 2)}
        if r.pid:
            summary["daemon"] = daemon_stats(r.pid)
            summary["daemon"]["max_fds_after_a_workload"] = r.max_fds
        out.write(json.dumps(summary) + "\n")


def cmd_persist(a):
    r = Runner(a)
    passed = {}
    with open(a.results) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("status") == "ok":
                passed[rec["workload"]] = rec
    checks = []  # (what, issue or None)

    def check(what, fn):
        if what not in passed:
            return
        try:
            issues = []
            fn(issues)
            checks.append((what, "; ".join(issues) if issues else None))
        except Failed as e:
            checks.append((what, str(e)))
        except OSError as e:
            checks.append((what, "%s: %s" % (type(e).__name__, e)))

    gone = r.alive()
    if not gone:
        drop_caches()

        def wh(issues):
            r.enoent(issues, "rmme")

        def app(issues):
            bad = 0
            for rel, size, _ in r.m["cu"]:
                with open(r.p(rel), "rb") as f:
                    st = os.fstat(f.fileno())
                    if st.st_size != size + 1 or os.pread(f.fileno(), 1, size) != b"Z":
                        bad += 1
                        if bad <= 3:
                            issues.append("%s: size %d (want %d) or last byte not 'Z'" % (
                                rel, st.st_size, size + 1))
            if bad:
                issues.append("%d of %d appended files lost the byte" % (bad, len(r.m["cu"])))

        def c256(issues):
            with open(r.p("cu256.bin"), "rb") as f:
                got = os.pread(f.fileno(), 4, CU256_OFF)
            if got != CU256_MARK:
                issues.append("cu256.bin at 100 MiB reads %r, want %r" % (got, CU256_MARK))

        def sw(issues):
            res = subprocess.run([r.wl, "seqcheck", r.p("seqw.bin"), str(r.m["big"]["mib"]), "8"],
                                 capture_output=True)
            if res.returncode != 0:
                issues.append("seqw.bin: " + (res.stdout + res.stderr).decode().strip())

        def md(issues):
            r.enoent(issues, "md")

        def ut(issues):
            r.check_untar()

        def gt(issues):
            _, head = r.git("rev-parse", "HEAD")
            if head.strip() != passed["git"]["head"]:
                issues.append("git HEAD %s, want %s" % (head.strip(), passed["git"]["head"]))
            r.check_git(status=False)

        def pyc(issues):
            r.check_pyc()

        check("whiteout_rm", wh)
        check("copyup_append", app)
        check("copyup_256m", c256)
        check("seq_write", sw)
        check("md_unlink", md)
        check("untar", ut)
        check("git", gt)
        check("compileall", pyc)
    bad = [(w, i) for w, i in checks if i]
    rec = {"system": a.system, "workload": "persistence",
           "status": "FAILED" if gone or bad else "ok" if checks else "n/a",
           "checked": [w for w, _ in checks]}
    if gone:
        rec["check"] = "not run: " + gone
    elif bad:
        rec["check"] = "; ".join("%s: %s" % (w, i) for w, i in bad)
    print("%s: persistence %s" % (a.system, rec["status"] if not rec.get("check")
                                  else "FAILED: " + rec["check"]), file=sys.stderr)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ---- report ---------------------------------------------------------------------------------

def fmt_rate(x):
    if x >= 1000:
        return "%d" % round(x)
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def merge_rounds(workload, recs):
    """One record for a workload run in several rounds: the first failure if any round failed,
    else the round with the median rate (the lower middle of an even count), with every
    round's rate and their spread (max - min) / median."""
    if workload == "_summary":
        last = dict(recs[-1])
        last["wall_seconds"] = round(sum(r.get("wall_seconds") or 0 for r in recs), 2)
        return last
    bad = [r for r in recs if r.get("status") not in ("ok", "n/a", "SKIPPED")]
    if bad:
        rec = dict(bad[0])
        if len(recs) > 1:
            rec["check"] = "round %d of %d: %s" % (recs.index(bad[0]) + 1, len(recs), rec.get("check"))
        return rec
    rated = sorted((r for r in recs if "rate" in r), key=lambda r: r["rate"])
    if len(rated) < 2:
        return dict(recs[0])
    rec = dict(rated[(len(rated) - 1) // 2])
    rec["rates"] = [float("%.6g" % r["rate"]) for r in recs if "rate" in r]
    rec["spread"] = round((rated[-1]["rate"] - rated[0]["rate"]) / rec["rate"], 3)
    return rec


def cmd_report(a):
    systems = a.systems.split()
    with open(a.meta) as f:
        meta = json.load(f)
    res = {}
    for s in systems:
        rounds = {}  # workload -> its records, one per round
        path = os.path.join(a.results, s + ".jsonl")
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    rec = json.loads(line)
                    rounds.setdefault(rec["workload"], []).append(rec)
        res[s] = {w: merge_rounds(w, rs) for w, rs in rounds.items()}
    base = res.get(BASELINE, {})
    out_sys = {}
    failures = []
    for s in systems:
        recs = res[s]
        wls = {}
        sinfo = meta.get("systems", {}).get(s, {})
        if s in meta.get("skipped", {}):
            missing = {"status": "SKIPPED", "check": meta["skipped"][s]}
        else:
            missing = {"status": "FAILED", "check": "no result: " + sinfo.get(
                "error", "the run was cut short (see stderr)")}
        for w in WORKLOADS:
            rec = dict(recs.get(w) or missing)
            rec.pop("system", None)
            rec.pop("workload", None)
            b = base.get(w)
            if rec.get("status") == "ok" and b and b.get("status") == "ok" and s != BASELINE:
                rec["ratio_to_kovl"] = round(rec["rate"] / b["rate"], 3)
            if rec.get("status") == "ok":
                rec["rate"] = float("%.6g" % rec["rate"])
            elif rec.get("status") == "FAILED":
                failures.append({"system": s, "workload": w, "check": rec.get("check")})
            wls[w] = rec
        pers = dict(recs.get("persistence") or missing)
        pers.pop("system", None)
        pers.pop("workload", None)
        if pers.get("status") == "FAILED":
            failures.append({"system": s, "workload": "persistence", "check": pers.get("check")})
        summ = recs.get("_summary", {})
        out_sys[s] = {"workloads": wls, "persistence": pers,
                      "workloads_wall_seconds": summ.get("wall_seconds"),
                      "daemon": summ.get("daemon"),
                      **sinfo}
    doc = {
        "benchmark": "overlay_vs_peers",
        "spec": "/work/shared/research/overlay-bench.md section 1",
        "machine": meta.get("machine"),
        "params": meta.get("params"),
        "baseline": BASELINE,
        "ratio": "system rate / kovl rate of the same run (>1 = faster than kernel overlayfs); "
                 "for copyup_256m the same as kovl latency / system latency",
        "systems": out_sys,
        "failures": failures,
        "wall_seconds": meta.get("wall_seconds"),
    }
    text = json.dumps(doc, indent=2)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
        print()

    # markdown table
    hdr = ["workload", "unit"] + systems
    rows = []
    for w in WORKLOADS:
        row = [w, UNITS[w] + (", latency" if w == "copyup_256m" else "")]
        for s in systems:
            rec = out_sys[s]["workloads"][w]
            if rec.get("status") == "SKIPPED":
                cell = "skipped"
            elif rec.get("status") != "ok":
                cell = "**FAILED**"
            else:
                cell = fmt_rate(rec["rate"])
                if w == "copyup_256m":
                    cell += ", %d ms" % round(rec["latency_ms"])
                if "ratio_to_kovl" in rec:
                    cell += " (%.2f)" % rec["ratio_to_kovl"]
            row.append(cell)
        rows.append(row)
    rows.append(["remount persistence", ""] + [
        {"ok": "ok", "SKIPPED": "skipped", "n/a": "n/a (no write workload passed)"}.get(out_sys[s]["persistence"].get("status"), "**FAILED**")
        for s in systems])
    rows.append(["workloads wall time", "s"] + [
        "-" if out_sys[s]["workloads_wall_seconds"] is None
        else "%.0f" % out_sys[s]["workloads_wall_seconds"] for s in systems])
    rows.append(["1-min load avg at start", ""] + [
        "%.2f" % out_sys[s]["workloads"]["stat_cold"].get("loadavg_before", float("nan"))
        if "loadavg_before" in out_sys[s]["workloads"]["stat_cold"] else "-" for s in systems])
    rows.append(["daemon peak RSS / fds", "MiB / n"] + [
        "-" if not out_sys[s].get("daemon") or "VmHWM" not in out_sys[s]["daemon"] else
        "%.0f / %d" % (out_sys[s]["daemon"]["VmHWM"] / 1024,
                       out_sys[s]["daemon"].get("max_fds_after_a_workload", 0))
        for s in systems])
    p = meta.get("params", {})
    rounds = p.get("rounds") or 1
    if rounds > 1:
        rows.append(["largest spread over rounds", "%"] + [
            "%.0f (%s)" % max((100 * r["spread"], w) for w, r in out_sys[s]["workloads"].items()
                              if "spread" in r) if any("spread" in r for r in out_sys[s]["workloads"].values())
            else "-" for s in systems])
    print("overlay_vs_peers: %s; cells: %s (system / %s)" % (
        ", ".join("%s = %s" % (s, out_sys[s].get("desc", s)) for s in systems),
        "rate" if rounds == 1 else "median rate of %d rounds" % rounds, BASELINE))
    print()
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    if failures:
        print("Failed checks (verbatim):")
        groups = []  # (system, check) -> workloads, in order
        for f in failures:
            key = (f["system"], f["check"])
            for g in groups:
                if g[0] == key:
                    g[1].append(f["workload"])
                    break
            else:
                groups.append((key, [f["workload"]]))
        for (system, check), ws in groups:
            print("- %s %s: %s" % (system, ", ".join(ws), check))
    else:
        print("Failed checks: none")
    print()
    mach = meta.get("machine", {})
    print("SCALE=%s SEED=%s: tree %s entries (%.0f MiB), big.bin %s MiB, seq_write %s MiB, untar %s "
          "files; %s cores, kernel %s, %s; total wall time %.0f s" % (
              p.get("scale"), p.get("seed"), p.get("tree_entries"), p.get("tree_mib", 0),
              p.get("big_mib"), p.get("big_mib"), p.get("untar_files"), mach.get("nproc"),
              mach.get("kernel"), mach.get("date"), meta.get("wall_seconds") or 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--lower", required=True)
    g.add_argument("--assets", required=True)
    g.add_argument("--scale", type=float, required=True)
    g.add_argument("--seed", type=int, required=True)
    for name in ("run", "persist"):
        r = sub.add_parser(name)
        r.add_argument("--system", required=True)
        r.add_argument("--mnt", required=True)
        r.add_argument("--lower")
        r.add_argument("--assets", required=True)
        r.add_argument("--wl", required=True)
        r.add_argument("--out", required=True)
        r.add_argument("--pid", type=int, default=0)
        r.add_argument("--timeout", type=int, default=600)
        r.add_argument("--fio", default="")
        r.add_argument("--git", default="git")
        r.add_argument("--python", default=sys.executable)
        r.add_argument("--workloads", default="")
        r.add_argument("--results", help="persist: the run's JSON lines")
    rp = sub.add_parser("report")
    rp.add_argument("--results", required=True)
    rp.add_argument("--systems", required=True)
    rp.add_argument("--meta", required=True)
    rp.add_argument("--json-out", default="")
    a = ap.parse_args()
    {"gen": cmd_gen, "run": cmd_run, "persist": cmd_persist, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
