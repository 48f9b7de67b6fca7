/*
 * The test program of ckptfs/tests/criu.rs and `bench criu`: counts in
 * memory and appends each count to a log, forever.
 *
 *   counter LOG [--tcp] [--mem MIB] [--interval-ms N] [--stamp]
 *
 * --tcp      also holds an established TCP connection to itself over
 *            loopback (CRIU refuses to dump that without --tcp-established)
 * --mem MIB  fills MIB of memory with distinct pages; on SIGUSR1 it
 *            rewrites every tenth page (10% of it) and appends "touched N"
 * --stamp    appends CLOCK_MONOTONIC in ns to each count ("N NS"): the
 *            largest gap between two lines is how long a dump froze it
 *
 * It detaches from the caller's session and terminal (setsid, stdio on
 * /dev/null) so CRIU can dump it without --shell-job. It prints nothing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t touch_requested;
static void on_usr1(int sig) { (void)sig; touch_requested = 1; }

static void fill(unsigned char *mem, size_t pages, size_t step, uint64_t gen)
{
    for (size_t p = 0; p < pages; p += step) {
        uint64_t *w = (uint64_t *)(mem + p * 4096);
        uint64_t x = (p + 1) * 0x9E3779B97F4A7C15ull ^ gen;
        for (size_t i = 0; i < 4096 / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            w[i] = x;
        }
    }
}

static int tcp_pair(int fds[3])
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (fds[0] < 0 || bind(fds[0], (struct sockaddr *)&a, sizeof a) ||
        listen(fds[0], 1) || getsockname(fds[0], (struct sockaddr *)&a, &len))
        return -1;
    fds[1] = socket(AF_INET, SOCK_STREAM, 0);
    if (fds[1] < 0 || connect(fds[1], (struct sockaddr *)&a, sizeof a))
        return -1;
    fds[2] = accept(fds[0], NULL, NULL);
    return fds[2] < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: counter LOG [--tcp] [--mem MIB] [--interval-ms N] [--stamp]\n");
        return 2;
    }
    int tcp = 0, stamp = 0;
    size_t mib = 0;
    long interval_ms = 20;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--tcp"))
            tcp = 1;
        else if (!strcmp(argv[i], "--stamp"))
            stamp = 1;
        else if (!strcmp(argv[i], "--mem") && i + 1 < argc)
            mib = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc)
            interval_ms = strtol(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "counter: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    int log = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log < 0) {
        perror(argv[1]);
        return 1;
    }
    int fds[3];
    if (tcp && tcp_pair(fds)) {
        perror("tcp");
        return 1;
    }
    unsigned char *mem = NULL;
    size_t pages = mib * 256;
    if (pages) {
        mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        fill(mem, pages, 1, 0);
    }
    signal(SIGUSR1, on_usr1);
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2)
            close(null);
    }
    char line[64];
    uint64_t gen = 0;
    for (unsigned long count = 1;; count++) {
        int n;
        if (stamp) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            n = snprintf(line, sizeof line, "%lu %lld\n", count,
                         (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
        } else {
            n = snprintf(line, sizeof line, "%lu\n", count);
        }
        if (write(log, line, (size_t)n) != n)
            return 1;
        if (touch_requested && mem) {
            touch_requested = 0;
            fill(mem, pages, 10, ++gen);
            n = snprintf(line, sizeof line, "touched %lu\n", (unsigned long)gen);
            if (write(log, line, (size_t)n) != n)
                return 1;
        }
        struct timespec ts = { interval_ms / 1000, (interval_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
}
