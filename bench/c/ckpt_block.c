/*
 * ckpt_block: how long an application is blocked writing SIZE bytes of
 * its memory, through libckpt or raw, for `ckpt-bench capi`.
 *
 *   ckpt_block ckpt CONFIG JOB SIZE       ckpt_mem_protect + ckpt_checkpoint
 *   ckpt_block raw PATH SIZE [fsync] [direct]
 *                                         write(2) loop (+ fsync) + close,
 *                                         O_DIRECT with "direct"
 *
 * The buffer is allocated and filled (every page touched, with bytes that
 * do not compress) before the clock starts, the same way for both. Prints
 * one line to stdout: "blocked SECONDS". Exit 2 on a libckpt error, 3 on
 * an I/O error (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ckpt.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char *filled(size_t size)
{
    unsigned char *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, size) != 0) {
        fprintf(stderr, "ckpt_block: cannot allocate %zu bytes\n", size);
        exit(3);
    }
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i + 8 <= size; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    return buf;
}

static size_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0) {
        fprintf(stderr, "ckpt_block: bad size '%s' (bytes)\n", s);
        exit(1);
    }
    return (size_t)v;
}

static int ckpt_mode(const char *config, const char *job, size_t size)
{
    unsigned char *buf = filled(size);
    int rc = ckpt_init(config, job);
    if (rc == CKPT_SUCCESS)
        rc = ckpt_mem_protect(0, buf, size, 1);
    if (rc != CKPT_SUCCESS) {
        fprintf(stderr, "ckpt_block: %s: %s\n", ckpt_strerror(rc), ckpt_last_error());
        return 2;
    }
    double t0 = now();
    rc = ckpt_checkpoint("block", 1);
    double t = now() - t0;
    if (rc != CKPT_SUCCESS) {
        fprintf(stderr, "ckpt_block: ckpt_checkpoint: %s: %s\n", ckpt_strerror(rc), ckpt_last_error());
        return 2;
    }
    printf("blocked %.6f\n", t);
    fflush(stdout);
    /* Not timed: the drain (none is configured here) and the teardown. */
    rc = ckpt_finalize();
    if (rc != CKPT_SUCCESS) {
        fprintf(stderr, "ckpt_block: ckpt_finalize: %s: %s\n", ckpt_strerror(rc), ckpt_last_error());
        return 2;
    }
    free(buf);
    return 0;
}

static int raw_mode(const char *path, size_t size, int do_fsync, int direct)
{
    unsigned char *buf = filled(size);
    double t0 = now();
    /* The buffer is page-aligned and SIZE a whole number of pages (the
     * harness sees to it), as O_DIRECT wants. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0), 0600);
    if (fd < 0) {
        fprintf(stderr, "ckpt_block: %s: %s\n", path, strerror(errno));
        return 3;
    }
    /* As an application would: big writes, 64 MiB at a time. */
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < (64u << 20) ? size - off : (64u << 20);
        ssize_t w = write(fd, buf + off, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ckpt_block: writing %s: %s\n", path, strerror(errno));
            return 3;
        }
        off += (size_t)w;
    }
    if (do_fsync && fsync(fd) != 0) {
        fprintf(stderr, "ckpt_block: fsync %s: %s\n", path, strerror(errno));
        return 3;
    }
    if (close(fd) != 0) {
        fprintf(stderr, "ckpt_block: close %s: %s\n", path, strerror(errno));
        return 3;
    }
    double t = now() - t0;
    printf("blocked %.6f\n", t);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "ckpt") == 0)
        return ckpt_mode(argv[2], argv[3], parse_size(argv[4]));
    if (argc >= 4 && argc <= 6 && strcmp(argv[1], "raw") == 0) {
        int do_fsync = 0, direct = 0;
        for (int i = 4; i < argc; i++) {
            if (strcmp(argv[i], "fsync") == 0)
                do_fsync = 1;
            else if (strcmp(argv[i], "direct") == 0)
                direct = 1;
            else
                goto usage;
        }
        return raw_mode(argv[2], parse_size(argv[3]), do_fsync, direct);
    }
usage:
    fprintf(stderr,
            "usage: ckpt_block ckpt CONFIG JOB SIZE\n"
            "       ckpt_block raw PATH SIZE [fsync] [direct]\n");
    return 1;
}
