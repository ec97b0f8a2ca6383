/*
 * Timed inner loops for bench/overlay_vs_peers.sh (the orchestration and the correctness
 * checks live in bench/overlay_bench.py). Single-threaded, CLOCK_MONOTONIC; the clock starts
 * after argument parsing and any untimed setup (reading a path list, filling a buffer).
 * The script compiles this with `gcc -O2` into its work dir.
 *
 *   walk     DIR                    readdir + fstatat(AT_SYMLINK_NOFOLLOW) of every entry below
 *                                   DIR (subdirectories are entered after their parent's readdir)
 *   readall  DIR                    the same walk, plus open / read(1 MiB) to EOF / close of every
 *                                   regular file, CRC32 (IEEE) of each file's bytes
 *   seq      FILE                   read(1 MiB) from start to EOF
 *   randread FILE NBLK SEED SECS    pread 4 KiB at NBLK distinct random 4 KiB blocks (a seeded
 *                                   permutation, no block twice), stop early after SECS seconds;
 *                                   posix_fadvise(DONTNEED) first (fio's invalidate). The fallback
 *                                   when fio is not installed.
 *   append   LIST                   for each path in LIST (one per line): open(O_WRONLY|O_APPEND),
 *                                   write the byte 'Z', close
 *   pwrite   FILE OFFSET STRING     open(O_WRONLY), pwrite STRING at OFFSET, close
 *   create   DIR NDIRS PER SIZE FSYNC BASE
 *                                   mkdir DIR (may exist), then NDIRS dirs DIR/dNNN, each with PER
 *                                   new files fNNNNN (global index BASE..): open(O_CREAT|O_EXCL),
 *                                   write SIZE bytes (content_byte below), fsync if FSYNC=1, close
 *   unlink   DIR NDIRS PER BASE [DIR NDIRS PER BASE ...]
 *                                   unlink the files `create DIR NDIRS PER _ _ BASE` made, rmdir
 *                                   each dNNN, rmdir DIR (groups in argument order, one timed run)
 *   seqwrite FILE MIB               create FILE, writev 1 MiB blocks (seqw_block below), fsync,
 *                                   close; the time includes the fsync
 *   seqcheck FILE MIB NCHECK        not timed: FILE is MIB MiB and NCHECK evenly spaced blocks
 *                                   (first and last included) hold exactly seqw_block's bytes
 *
 * Output: one line on stdout, the elapsed seconds first, then counts:
 *   walk     <secs> <entries> <dirs> <files> <symlinks> <bytes = sum of st_size of files>
 *   readall  <secs> <entries> <dirs> <files> <symlinks> <bytes read> <sum of per-file CRC32>
 *   seq      <secs> <bytes>
 *   randread <secs> <ios>
 *   append   <secs> <files>
 *   pwrite   <secs>
 *   create   <secs> <files>
 *   unlink   <secs> <files> <dirs>
 *   seqwrite <secs> <bytes>
 *   seqcheck ok | a description of the first mismatch (exit 1)
 * Any syscall failure prints the operation, the path and the errno text on stderr and exits 3;
 * usage errors exit 2.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define REQ (1u << 20)
#define BLK4K 4096u

static unsigned char *iobuf;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void __attribute__((noreturn)) die(const char *what, const char *path)
{
    fprintf(stderr, "overlay_workload: %s %s: %s\n", what, path, strerror(errno));
    exit(3);
}

static void __attribute__((noreturn)) usage(const char *msg)
{
    fprintf(stderr, "overlay_workload: %s (see the header of bench/overlay_workload.c)\n", msg);
    exit(2);
}

static unsigned long long num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0')
        usage("expected a non-negative integer");
    return v;
}

/* ---- CRC32 (IEEE 802.3, reflected, as zlib.crc32), slice-by-8 ---------------------------- */

static uint32_t crc_tab[8][256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
}

/* Running CRC: start with crc_update(0, ...), feed the previous result back in. */
static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^ crc_tab[5][(lo >> 16) & 0xff] ^
              crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
              crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- walk / readall ----------------------------------------------------------------------- */

static unsigned long long n_entries, n_dirs, n_files, n_links, n_bytes, crc_sum;

static void read_file(int dirfd, const char *name, const char *path)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        die("open", path);
    uint32_t crc = 0;
    for (;;) {
        ssize_t r = read(fd, iobuf, REQ);
        if (r < 0)
            die("read", path);
        if (r == 0)
            break;
        crc = crc_update(crc, iobuf, (size_t)r);
        n_bytes += (unsigned long long)r;
    }
    if (close(fd) < 0)
        die("close", path);
    crc_sum += crc;
}

static void walk(const char *path, int do_read)
{
    DIR *d = opendir(path);
    if (!d)
        die("opendir", path);
    char **subs = NULL;
    size_t nsubs = 0, cap = 0;
    size_t plen = strlen(path);
    char *child = malloc(plen + 258);
    if (!child)
        die("malloc", path);
    memcpy(child, path, plen);
    child[plen] = '/';
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno)
                die("readdir", path);
            break;
        }
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        strcpy(child + plen + 1, e->d_name);
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            die("lstat", child);
        n_entries++;
        if (S_ISDIR(st.st_mode)) {
            n_dirs++;
            if (nsubs == cap) {
                cap = cap ? cap * 2 : 16;
                subs = realloc(subs, cap * sizeof *subs);
                if (!subs)
                    die("realloc", path);
            }
            subs[nsubs++] = strdup(child);
        } else if (S_ISREG(st.st_mode)) {
            n_files++;
            if (do_read)
                read_file(dirfd(d), e->d_name, child);
            else
                n_bytes += (unsigned long long)st.st_size;
        } else if (S_ISLNK(st.st_mode)) {
            n_links++;
        }
    }
    if (closedir(d) < 0)
        die("closedir", path);
    free(child);
    for (size_t i = 0; i < nsubs; i++) {
        walk(subs[i], do_read);
        free(subs[i]);
    }
    free(subs);
}

/* ---- deterministic contents (overlay_bench.py has the same formulas) ---------------------- */

/* Byte j of the file with global index g written by `create`. */
static unsigned char content_byte(unsigned long long g, unsigned long long j)
{
    return (unsigned char)((g * 131u + j * 7u + 13u) & 0xffu);
}

static uint64_t xs_state;
static uint64_t xorshift64(void)
{
    xs_state ^= xs_state << 13;
    xs_state ^= xs_state >> 7;
    xs_state ^= xs_state << 17;
    return xs_state;
}

/* Block i of `seqwrite`: a fixed pseudo-random MiB with i stored (little-endian u64) in its
 * first and last 8 bytes, so every block differs and a misplaced block is caught. */
static void seqw_base(unsigned char *buf)
{
    xs_state = 0x9E3779B97F4A7C15ull;
    for (size_t k = 0; k < REQ; k += 8) {
        uint64_t v = xorshift64();
        memcpy(buf + k, &v, 8);
    }
}
static void seqw_stamp(unsigned char *buf, uint64_t i)
{
    memcpy(buf, &i, 8);
    memcpy(buf + REQ - 8, &i, 8);
}

/* ---- commands ----------------------------------------------------------------------------- */

static int cmd_seq(const char *file)
{
    double t0 = mono();
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", file);
    unsigned long long total = 0;
    for (;;) {
        ssize_t r = read(fd, iobuf, REQ);
        if (r < 0)
            die("read", file);
        if (r == 0)
            break;
        total += (unsigned long long)r;
    }
    if (close(fd) < 0)
        die("close", file);
    printf("%.6f %llu\n", mono() - t0, total);
    return 0;
}

static int cmd_randread(const char *file, unsigned long long want, unsigned long long seed,
                        double secs)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", file);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat", file);
    unsigned long long nblk = (unsigned long long)st.st_size / BLK4K;
    if (want > nblk)
        want = nblk;
    uint32_t *perm = malloc(nblk * sizeof *perm);
    if (!perm)
        die("malloc", file);
    for (unsigned long long i = 0; i < nblk; i++)
        perm[i] = (uint32_t)i;
    xs_state = seed * 0x2545F4914F6CDD1Dull + 1;
    for (unsigned long long i = 0; i < want; i++) { /* partial Fisher-Yates: first `want` */
        unsigned long long j = i + xorshift64() % (nblk - i);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
        fprintf(stderr, "overlay_workload: posix_fadvise(DONTNEED) %s failed (ignored)\n", file);
    double t0 = mono(), now = t0;
    unsigned long long done = 0;
    for (; done < want; done++) {
        ssize_t r = pread(fd, iobuf, BLK4K, (off_t)perm[done] * BLK4K);
        if (r != (ssize_t)BLK4K) {
            if (r >= 0)
                errno = EIO;
            die("pread", file);
        }
        if ((done & 255) == 255) {
            now = mono();
            if (now - t0 >= secs) {
                done++;
                break;
            }
        }
    }
    now = mono();
    close(fd);
    printf("%.6f %llu\n", now - t0, done);
    return 0;
}

static int cmd_append(const char *list)
{
    FILE *f = fopen(list, "r");
    if (!f)
        die("open", list);
    char **paths = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        if (!len)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            paths = realloc(paths, cap * sizeof *paths);
            if (!paths)
                die("realloc", list);
        }
        paths[n++] = strdup(line);
    }
    fclose(f);
    double t0 = mono();
    for (size_t i = 0; i < n; i++) {
        int fd = open(paths[i], O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd < 0)
            die("open(O_WRONLY|O_APPEND)", paths[i]);
        if (write(fd, "Z", 1) != 1)
            die("write", paths[i]);
        if (close(fd) < 0)
            die("close", paths[i]);
    }
    printf("%.6f %zu\n", mono() - t0, n);
    return 0;
}

static int cmd_pwrite(const char *file, unsigned long long off, const char *s)
{
    double t0 = mono();
    int fd = open(file, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        die("open(O_WRONLY)", file);
    size_t n = strlen(s);
    if (pwrite(fd, s, n, (off_t)off) != (ssize_t)n)
        die("pwrite", file);
    if (close(fd) < 0)
        die("close", file);
    printf("%.6f\n", mono() - t0);
    return 0;
}

static int cmd_create(const char *dir, unsigned long long ndirs, unsigned long long per,
                      unsigned long long size, int do_fsync, unsigned long long base)
{
    unsigned char *buf = malloc(size ? size : 1);
    char path[4096];
    if (!buf)
        die("malloc", dir);
    double t0 = mono();
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        die("mkdir", dir);
    unsigned long long g = base;
    for (unsigned long long d = 0; d < ndirs; d++) {
        snprintf(path, sizeof path, "%s/d%03llu", dir, d);
        if (mkdir(path, 0755) < 0)
            die("mkdir", path);
        for (unsigned long long k = 0; k < per; k++, g++) {
            snprintf(path, sizeof path, "%s/d%03llu/f%05llu", dir, d, g);
            for (unsigned long long j = 0; j < size; j++)
                buf[j] = content_byte(g, j);
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (fd < 0)
                die("create", path);
            if (write(fd, buf, size) != (ssize_t)size)
                die("write", path);
            if (do_fsync && fsync(fd) < 0)
                die("fsync", path);
            if (close(fd) < 0)
                die("close", path);
        }
    }
    printf("%.6f %llu\n", mono() - t0, g - base);
    return 0;
}

static int cmd_unlink(int argc, char **argv)
{
    char path[4096];
    unsigned long long files = 0, dirs = 0;
    if (argc < 4 || argc % 4)
        usage("unlink takes DIR NDIRS PER BASE groups");
    double t0 = mono();
    for (int i = 0; i < argc; i += 4) {
        const char *dir = argv[i];
        unsigned long long ndirs = num(argv[i + 1]), per = num(argv[i + 2]), g = num(argv[i + 3]);
        for (unsigned long long d = 0; d < ndirs; d++) {
            for (unsigned long long k = 0; k < per; k++, g++) {
                snprintf(path, sizeof path, "%s/d%03llu/f%05llu", dir, d, g);
                if (unlink(path) < 0)
                    die("unlink", path);
                files++;
            }
            snprintf(path, sizeof path, "%s/d%03llu", dir, d);
            if (rmdir(path) < 0)
                die("rmdir", path);
            dirs++;
        }
        if (rmdir(dir) < 0)
            die("rmdir", dir);
        dirs++;
    }
    printf("%.6f %llu %llu\n", mono() - t0, files, dirs);
    return 0;
}

static int cmd_seqwrite(const char *file, unsigned long long mib)
{
    seqw_base(iobuf);
    double t0 = mono();
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create", file);
    struct iovec iov = {.iov_base = iobuf, .iov_len = REQ};
    for (unsigned long long i = 0; i < mib; i++) {
        seqw_stamp(iobuf, i);
        if (writev(fd, &iov, 1) != (ssize_t)REQ)
            die("writev", file);
    }
    if (fsync(fd) < 0)
        die("fsync", file);
    if (close(fd) < 0)
        die("close", file);
    printf("%.6f %llu\n", mono() - t0, mib * REQ);
    return 0;
}

static int cmd_seqcheck(const char *file, unsigned long long mib, unsigned long long ncheck)
{
    unsigned char *want = malloc(REQ);
    if (!want)
        die("malloc", file);
    seqw_base(want);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", file);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat", file);
    if ((unsigned long long)st.st_size != mib * REQ) {
        printf("size %lld, want %llu\n", (long long)st.st_size, mib * REQ);
        return 1;
    }
    if (ncheck > mib)
        ncheck = mib;
    for (unsigned long long c = 0; c < ncheck; c++) {
        unsigned long long i = ncheck > 1 ? c * (mib - 1) / (ncheck - 1) : 0;
        ssize_t r = pread(fd, iobuf, REQ, (off_t)(i * REQ));
        if (r < 0)
            die("pread", file);
        seqw_stamp(want, i);
        if (r != (ssize_t)REQ || memcmp(iobuf, want, REQ)) {
            size_t k = 0;
            while (k < (size_t)r && iobuf[k] == want[k])
                k++;
            printf("block %llu (of %llu MiB): %zd bytes read, first difference at byte %zu\n", i,
                   mib, r, k);
            return 1;
        }
    }
    close(fd);
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage("usage: overlay_workload CMD ARGS...");
    if (posix_memalign((void **)&iobuf, 4096, REQ))
        die("posix_memalign", "iobuf");
    crc_init();
    const char *cmd = argv[1];
    if (!strcmp(cmd, "walk") || !strcmp(cmd, "readall")) {
        int do_read = cmd[0] == 'r';
        double t0 = mono();
        walk(argv[2], do_read);
        double t = mono() - t0;
        if (do_read)
            printf("%.6f %llu %llu %llu %llu %llu %llu\n", t, n_entries, n_dirs, n_files, n_links,
                   n_bytes, crc_sum);
        else
            printf("%.6f %llu %llu %llu %llu %llu\n", t, n_entries, n_dirs, n_files, n_links,
                   n_bytes);
        return 0;
    }
    if (!strcmp(cmd, "seq"))
        return cmd_seq(argv[2]);
    if (!strcmp(cmd, "randread") && argc == 6)
        return cmd_randread(argv[2], num(argv[3]), num(argv[4]), (double)num(argv[5]));
    if (!strcmp(cmd, "append"))
        return cmd_append(argv[2]);
    if (!strcmp(cmd, "pwrite") && argc == 5)
        return cmd_pwrite(argv[2], num(argv[3]), argv[4]);
    if (!strcmp(cmd, "create") && argc == 8)
        return cmd_create(argv[2], num(argv[3]), num(argv[4]), num(argv[5]), num(argv[6]) != 0,
                          num(argv[7]));
    if (!strcmp(cmd, "unlink"))
        return cmd_unlink(argc - 2, argv + 2);
    if (!strcmp(cmd, "seqwrite") && argc == 4)
        return cmd_seqwrite(argv[2], num(argv[3]));
    if (!strcmp(cmd, "seqcheck") && argc == 5)
        return cmd_seqcheck(argv[2], num(argv[3]), num(argv[4]));
    usage("unknown command or wrong number of arguments");
}
