/*
 * Workloads for bench/stratad_vs_erofs.sh. Single-threaded, timed with CLOCK_MONOTONIC.
 * The script compiles this with `gcc -O2` into its work dir.
 *
 *   workload stat    DIR         walk DIR: readdir + lstat of every entry below it
 *   workload readall DIR         the same walk, plus open / read (1 MiB requests) to EOF / close
 *                                of every regular file
 *   workload seq     FILE        read FILE from start to EOF in 1 MiB requests
 *   workload digest  DIR         correctness check (not a benchmark): an order-independent
 *                                64-bit digest of every entry's relative path and mode, plus
 *                                size and content of regular files and symlink targets below DIR
 *   workload gen     FILE MIB SEED   write MIB MiB of seeded pseudo-random bytes to FILE
 *
 * stat/readall/seq/digest print one line on stdout:
 *   <seconds> <entries> <files> <bytes> <digest-hex>
 * where entries = lstat'ed entries (not counting DIR itself), files = regular files read,
 * bytes = bytes returned by read(); digest is 0 except for `digest`.
 * Any syscall failure prints the path and errno text on stderr and exits 3.
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
#include <time.h>
#include <unistd.h>

#define REQ (1u << 20)

enum mode { M_STAT, M_READALL, M_DIGEST };

static unsigned char *iobuf;
static unsigned long long n_entries, n_files, n_bytes;
static uint64_t digest_sum;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void __attribute__((noreturn)) die(const char *what, const char *path)
{
    fprintf(stderr, "workload: %s %s: %s\n", what, path, strerror(errno));
    exit(3);
}

/* splitmix64 finaliser: spreads one word over all 64 bits. */
static uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z;
}

/* Streaming hash over a byte sequence, 8 bytes per step; state carried in *h. */
static void hash_bytes(uint64_t *h, const unsigned char *p, size_t n)
{
    uint64_t s = *h;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        s = (s ^ w) * 0x100000001b3ULL;
        s ^= s >> 29;
    }
    for (; i < n; i++)
        s = (s ^ p[i]) * 0x100000001b3ULL;
    *h = s;
}

/* Read an open fd to EOF in REQ-sized requests; returns bytes read, hashes if h != NULL. */
static unsigned long long drain(int fd, const char *path, uint64_t *h)
{
    unsigned long long total = 0;
    for (;;) {
        ssize_t r = read(fd, iobuf, REQ);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("read", path);
        }
        if (r == 0)
            break;
        if (h)
            hash_bytes(h, iobuf, (size_t)r);
        total += (unsigned long long)r;
    }
    return total;
}

/* path: full path; rel: offset of the part relative to the walk root inside path. */
static void walk(char *path, size_t len, size_t rel, enum mode m)
{
    DIR *d = opendir(path);
    if (!d)
        die("opendir", path);
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno)
                die("readdir", path);
            break;
        }
        const char *nm = e->d_name;
        if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0)))
            continue;
        size_t nl = strlen(nm);
        if (len + 1 + nl + 1 > 4096) {
            errno = ENAMETOOLONG;
            die("path", path);
        }
        path[len] = '/';
        memcpy(path + len + 1, nm, nl + 1);
        size_t clen = len + 1 + nl;

        struct stat st;
        if (lstat(path, &st) != 0)
            die("lstat", path);
        n_entries++;

        uint64_t h = 0;
        if (m == M_DIGEST) {
            h = 0xcbf29ce484222325ULL;
            hash_bytes(&h, (const unsigned char *)path + rel, clen - rel + 1);
            /* Directory sizes are filesystem-specific (ext4 4096, erofs the dirent bytes). */
            uint64_t meta[2] = { (uint64_t)st.st_mode,
                                 S_ISDIR(st.st_mode) ? 0 : (uint64_t)st.st_size };
            hash_bytes(&h, (const unsigned char *)meta, sizeof meta);
        }

        if (S_ISDIR(st.st_mode)) {
            walk(path, clen, rel, m);
        } else if (S_ISREG(st.st_mode) && m != M_STAT) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                die("open", path);
            unsigned long long got = drain(fd, path, m == M_DIGEST ? &h : NULL);
            if (close(fd) != 0)
                die("close", path);
            n_files++;
            n_bytes += got;
        } else if (S_ISLNK(st.st_mode) && m == M_DIGEST) {
            char tgt[4096];
            ssize_t tl = readlink(path, tgt, sizeof tgt);
            if (tl < 0)
                die("readlink", path);
            hash_bytes(&h, (const unsigned char *)tgt, (size_t)tl);
        }
        if (m == M_DIGEST)
            digest_sum += mix64(h);   /* a sum: independent of readdir order */
        path[len] = 0;
    }
    if (closedir(d) != 0)
        die("closedir", path);
}

static int gen(const char *file, unsigned long mib, uint64_t seed)
{
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create", file);
    uint64_t x = mix64(seed) | 1;
    for (unsigned long i = 0; i < mib; i++) {
        uint64_t *w = (uint64_t *)iobuf;
        for (size_t k = 0; k < REQ / 8; k++) {
            /* xorshift64* */
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w[k] = x * 0x2545f4914f6cdd1dULL;
        }
        size_t off = 0;
        while (off < REQ) {
            ssize_t r = write(fd, iobuf + off, REQ - off);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                die("write", file);
            }
            off += (size_t)r;
        }
    }
    if (close(fd) != 0)
        die("close", file);
    return 0;
}

static void __attribute__((noreturn)) usage(void)
{
    fprintf(stderr, "usage: workload stat|readall|digest DIR | seq FILE | gen FILE MIB SEED\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    iobuf = aligned_alloc(4096, REQ);
    if (!iobuf) {
        perror("aligned_alloc");
        return 3;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "gen")) {
        if (argc != 5)
            usage();
        return gen(argv[2], strtoul(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    }
    if (argc != 3)
        usage();

    double t0, t1;
    if (!strcmp(cmd, "seq")) {
        t0 = mono();
        int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open", argv[2]);
        n_bytes = drain(fd, argv[2], NULL);
        if (close(fd) != 0)
            die("close", argv[2]);
        t1 = mono();
        n_files = 1;
    } else {
        enum mode m;
        if (!strcmp(cmd, "stat"))
            m = M_STAT;
        else if (!strcmp(cmd, "readall"))
            m = M_READALL;
        else if (!strcmp(cmd, "digest"))
            m = M_DIGEST;
        else
            usage();
        static char path[4096];
        size_t len = strlen(argv[2]);
        while (len > 1 && argv[2][len - 1] == '/')
            len--;
        if (len >= sizeof path - 2) {
            errno = ENAMETOOLONG;
            die("path", argv[2]);
        }
        memcpy(path, argv[2], len);
        path[len] = 0;
        t0 = mono();
        walk(path, len, len, m);
        t1 = mono();
    }
    printf("%.6f %llu %llu %llu %016llx\n", t1 - t0, n_entries, n_files, n_bytes,
           (unsigned long long)digest_sum);
    return 0;
}
