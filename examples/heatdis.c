/*
 * heatdis: 2-D heat distribution with checkpoint/restart through libckpt.
 *
 * Each rank solves its own N x N plate (Jacobi iterations; the top edge is
 * held hot, the other edges cold) with no communication, so the program
 * needs no MPI: under mpirun or srun every rank gets its rank from the
 * launcher's environment, through libckpt for the checkpoint sets and
 * through the same variables here for its initial condition and output
 * name.
 *
 * Every --every steps the grid and the step counter are checkpointed as
 * version <step> of checkpoint "heatdis" (memory-based: ckpt_mem_protect +
 * ckpt_checkpoint; with --file, file-based: ckpt_checkpoint_begin +
 * ckpt_route_file + write(2) + ckpt_checkpoint_end). On start, the newest
 * complete version is restored (ckpt_restart_test + ckpt_restart, or
 * ckpt_restart_begin + read(2)) and the run goes on from there, so a run
 * killed at any instant and started again ends with exactly the grid of a
 * run that was never interrupted. --out writes that grid, raw, to
 * PREFIX.<rank>; stdout gets one line per rank with an FNV-1a checksum of it.
 *
 * Run `heatdis --help` for the options.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ckpt.h>

#define NAME "heatdis"
#define ID_GRID 0
#define ID_STEP 1

struct opts {
    long n;            /* interior points per side */
    long steps;        /* total steps */
    long every;        /* checkpoint every this many steps (0: never) */
    const char *config;
    const char *job;
    int file_mode;
    const char *out;
    long die_at;       /* version whose checkpoint kills this rank (-1: none) */
    long die_rank;     /* rank that dies (-1: every rank) */
    long kill_at_step; /* SIGKILL self after this step (-1: never) */
    long delay_us;     /* sleep per step, to give a killer time */
    long rank, size;   /* from --rank/--size (ckpt_init_rank), else -1 */
    int stats;
    int verbose;
};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: heatdis [options]\n"
        "  --n=N             grid points per side, per rank (default 256)\n"
        "  --steps=S         steps to run in all (default 1000)\n"
        "  --every=K         checkpoint every K steps, 0 for never (default 100)\n"
        "  --config=FILE     ckptfs configuration (default: the usual search)\n"
        "  --job=JOB         store job name (default heatdis)\n"
        "  --file            file-based checkpoints (begin/route_file/end)\n"
        "                    instead of memory-based ones\n"
        "  --out=PREFIX      write the final grid, raw doubles, to PREFIX.<rank>\n"
        "  --die-at=V        SIGKILL this process while writing checkpoint\n"
        "                    version V: half-way through its routed file with\n"
        "                    --file, else just before ckpt_checkpoint()\n"
        "  --die-rank=R      only rank R dies at --die-at (default: every rank)\n"
        "  --kill-at-step=S  SIGKILL this process right after step S\n"
        "  --delay-us=U      sleep U microseconds per step\n"
        "  --rank=R --size=P rank and size for ckpt_init_rank() (default: the\n"
        "                    launcher's environment)\n"
        "  --stats           timings to stderr at the end\n"
        "  --verbose         say on stderr which process is which rank\n");
}

static long parse_long(const char *opt, const char *s, long min)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min) {
        fprintf(stderr, "heatdis: --%s: bad value '%s' (an integer >= %ld)\n", opt, s, min);
        exit(1);
    }
    return v;
}

static void parse(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"n", required_argument, 0, 'n'},
        {"steps", required_argument, 0, 's'},
        {"every", required_argument, 0, 'k'},
        {"config", required_argument, 0, 'c'},
        {"job", required_argument, 0, 'j'},
        {"file", no_argument, 0, 'f'},
        {"out", required_argument, 0, 'o'},
        {"die-at", required_argument, 0, 'D'},
        {"die-rank", required_argument, 0, 'R'},
        {"kill-at-step", required_argument, 0, 'K'},
        {"delay-us", required_argument, 0, 'u'},
        {"rank", required_argument, 0, 'r'},
        {"size", required_argument, 0, 'p'},
        {"stats", no_argument, 0, 'S'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *o = (struct opts){
        .n = 256, .steps = 1000, .every = 100, .job = "heatdis",
        .die_at = -1, .die_rank = -1, .kill_at_step = -1,
        .rank = -1, .size = -1,
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': o->n = parse_long("n", optarg, 1); break;
        case 's': o->steps = parse_long("steps", optarg, 0); break;
        case 'k': o->every = parse_long("every", optarg, 0); break;
        case 'c': o->config = optarg; break;
        case 'j': o->job = optarg; break;
        case 'f': o->file_mode = 1; break;
        case 'o': o->out = optarg; break;
        case 'D': o->die_at = parse_long("die-at", optarg, 0); break;
        case 'R': o->die_rank = parse_long("die-rank", optarg, 0); break;
        case 'K': o->kill_at_step = parse_long("kill-at-step", optarg, 0); break;
        case 'u': o->delay_us = parse_long("delay-us", optarg, 0); break;
        case 'r': o->rank = parse_long("rank", optarg, 0); break;
        case 'p': o->size = parse_long("size", optarg, 1); break;
        case 'S': o->stats = 1; break;
        case 'v': o->verbose = 1; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(1);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "heatdis: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        exit(1);
    }
    if ((o->rank < 0) != (o->size < 0)) {
        fprintf(stderr, "heatdis: --rank and --size go together\n");
        exit(1);
    }
    if (o->steps > 2000000000L) {
        fprintf(stderr, "heatdis: --steps: at most 2000000000 (versions are ints)\n");
        exit(1);
    }
}

/* This process's rank as the launcher gives it: the variables libckpt
 * reads, in its order (an MPI launcher's own before Slurm's, which under
 * mpirun in an allocation is the step's, not the rank); 0 without one. */
static long env_rank(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return strtol(v, NULL, 10);
    }
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A failed libckpt call: say which and why, and stop (exit 2). */
static void die_ckpt(const char *call, int rc)
{
    fprintf(stderr, "heatdis: %s: %s (%d): %s\n", call, ckpt_strerror(rc), rc, ckpt_last_error());
    ckpt_finalize();
    exit(2);
}

static void die_errno(const char *what, const char *path)
{
    fprintf(stderr, "heatdis: %s %s: %s\n", what, path, strerror(errno));
    ckpt_finalize();
    exit(3);
}

/* The plate: (n+2)^2 points, the outer ring being the fixed edges. The
 * hot edge's temperature depends on the rank, so ranks differ. */
static void init_grid(double *h, long n, long rank)
{
    long w = n + 2;
    memset(h, 0, sizeof(double) * (size_t)(w * w));
    for (long j = 0; j < w; j++)
        h[j] = 100.0 + (double)rank;
}

/* One Jacobi step from h into g; edges copied. */
static void step_grid(const double *restrict h, double *restrict g, long n)
{
    long w = n + 2;
    memcpy(g, h, sizeof(double) * (size_t)w);
    memcpy(g + (w - 1) * w, h + (w - 1) * w, sizeof(double) * (size_t)w);
    for (long i = 1; i <= n; i++) {
        const double *up = h + (i - 1) * w, *row = h + i * w, *down = h + (i + 1) * w;
        double *out = g + i * w;
        out[0] = row[0];
        out[w - 1] = row[w - 1];
        for (long j = 1; j <= n; j++)
            out[j] = 0.25 * (up[j] + down[j] + row[j - 1] + row[j + 1]);
    }
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO; /* short file */
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The file-based checkpoint's file: a header then the grid. */
struct file_header {
    char magic[8]; /* "HEATDIS1" */
    int64_t step;
    int64_t n;
};

static void file_name(char *buf, size_t len, long rank)
{
    snprintf(buf, len, "heat-%ld.dat", rank);
}

static void checkpoint_file(const struct opts *o, long rank, long step, const double *h, size_t bytes)
{
    int rc = ckpt_checkpoint_begin(NAME, (int)step);
    if (rc != CKPT_SUCCESS)
        die_ckpt("ckpt_checkpoint_begin", rc);
    char name[64], path[CKPT_MAX_PATH];
    file_name(name, sizeof name, rank);
    rc = ckpt_route_file(name, path, sizeof path);
    if (rc != CKPT_SUCCESS)
        die_ckpt("ckpt_route_file", rc);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die_errno("creating", path);
    struct file_header hd = {.step = step, .n = o->n};
    memcpy(hd.magic, "HEATDIS1", 8);
    if (write_all(fd, &hd, sizeof hd) != 0)
        die_errno("writing", path);
    if (o->die_at == step && (o->die_rank < 0 || o->die_rank == rank)) {
        /* Half the grid on disk, the rest never: the rank dies inside its
         * checkpoint, as when a node goes down. */
        if (write_all(fd, h, bytes / 2) != 0)
            die_errno("writing", path);
        fprintf(stderr, "heatdis: rank %ld: dying half-way through version %ld\n", rank, step);
        raise(SIGKILL);
    }
    if (write_all(fd, h, bytes) != 0)
        die_errno("writing", path);
    if (close(fd) != 0)
        die_errno("closing", path);
    rc = ckpt_checkpoint_end(1);
    if (rc != CKPT_SUCCESS)
        die_ckpt("ckpt_checkpoint_end", rc);
}

static void restart_file(const struct opts *o, long rank, int version, long *step, double *h, size_t bytes)
{
    int rc = ckpt_restart_begin(NAME, version);
    if (rc != CKPT_SUCCESS)
        die_ckpt("ckpt_restart_begin", rc);
    char name[64], path[CKPT_MAX_PATH];
    file_name(name, sizeof name, rank);
    rc = ckpt_route_file(name, path, sizeof path);
    if (rc != CKPT_SUCCESS)
        die_ckpt("ckpt_route_file", rc);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die_errno("opening", path);
    struct file_header hd;
    if (read_all(fd, &hd, sizeof hd) != 0)
        die_errno("reading", path);
    if (memcmp(hd.magic, "HEATDIS1", 8) != 0 || hd.n != o->n) {
        fprintf(stderr, "heatdis: %s: not a heatdis checkpoint of a %ld grid\n", path, o->n);
        ckpt_restart_end(0);
        ckpt_finalize();
        exit(3);
    }
    if (read_all(fd, h, bytes) != 0)
        die_errno("reading", path);
    close(fd);
    rc = ckpt_restart_end(1);
    if (rc != CKPT_SUCCESS)
        die_ckpt("ckpt_restart_end", rc);
    *step = (long)hd.step;
}

static uint64_t fnv1a(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t x = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        x ^= b[i];
        x *= 0x100000001b3ULL;
    }
    return x;
}

int main(int argc, char **argv)
{
    struct opts o;
    parse(argc, argv, &o);
    long rank = o.rank >= 0 ? o.rank : env_rank();
    int rc;
    if (o.rank >= 0 && (rc = ckpt_init_rank((int)o.rank, (int)o.size)) != CKPT_SUCCESS)
        die_ckpt("ckpt_init_rank", rc);
    if ((rc = ckpt_init(o.config, o.job)) != CKPT_SUCCESS)
        die_ckpt("ckpt_init", rc);
    if (o.verbose)
        fprintf(stderr, "heatdis: rank %ld: pid %ld\n", rank, (long)getpid());

    long w = o.n + 2;
    size_t cells = (size_t)(w * w), bytes = cells * sizeof(double);
    double *h = malloc(bytes), *g = malloc(bytes);
    if (!h || !g) {
        fprintf(stderr, "heatdis: out of memory for a %ld grid\n", o.n);
        ckpt_finalize();
        return 3;
    }
    init_grid(h, o.n, rank);
    init_grid(g, o.n, rank);

    /* The step counter travels with the grid (memory-based) or in the
     * file's header (file-based). */
    long step = 0;
    int saved_step = 0;
    if (!o.file_mode) {
        if ((rc = ckpt_mem_protect(ID_GRID, h, cells, sizeof(double))) != CKPT_SUCCESS)
            die_ckpt("ckpt_mem_protect", rc);
        if ((rc = ckpt_mem_protect(ID_STEP, &saved_step, 1, sizeof saved_step)) != CKPT_SUCCESS)
            die_ckpt("ckpt_mem_protect", rc);
    }
    int v = ckpt_restart_test(NAME, -1);
    if (v >= 0) {
        if (o.file_mode) {
            restart_file(&o, rank, v, &step, h, bytes);
        } else {
            if ((rc = ckpt_restart(NAME, v)) != CKPT_SUCCESS)
                die_ckpt("ckpt_restart", rc);
            step = saved_step;
        }
        if (step != v) {
            fprintf(stderr, "heatdis: version %d holds step %ld\n", v, step);
            ckpt_finalize();
            return 3;
        }
        fprintf(stderr, "heatdis: rank %ld: restarted from version %d\n", rank, v);
    } else if (v != CKPT_ERR_NOT_FOUND) {
        die_ckpt("ckpt_restart_test", v);
    }

    double t0 = now(), t_ckpt = 0.0;
    long steps_done = 0, ckpts = 0;
    while (step < o.steps) {
        step_grid(h, g, o.n);
        double *t = h;
        h = g;
        g = t;
        step++;
        steps_done++;
        if (o.every > 0 && step % o.every == 0 && step < o.steps) {
            double c0 = now();
            if (o.file_mode) {
                checkpoint_file(&o, rank, step, h, bytes);
            } else {
                if (o.die_at == step && (o.die_rank < 0 || o.die_rank == rank)) {
                    fprintf(stderr, "heatdis: rank %ld: dying before version %ld\n", rank, step);
                    raise(SIGKILL);
                }
                /* The grids swap every step: point id 0 at the current one. */
                saved_step = (int)step;
                if ((rc = ckpt_mem_protect(ID_GRID, h, cells, sizeof(double))) != CKPT_SUCCESS)
                    die_ckpt("ckpt_mem_protect", rc);
                if ((rc = ckpt_checkpoint(NAME, (int)step)) != CKPT_SUCCESS)
                    die_ckpt("ckpt_checkpoint", rc);
            }
            t_ckpt += now() - c0;
            ckpts++;
        }
        if (o.kill_at_step == step) {
            fprintf(stderr, "heatdis: rank %ld: killing myself after step %ld\n", rank, step);
            raise(SIGKILL);
        }
        if (o.delay_us > 0)
            usleep((useconds_t)o.delay_us);
    }
    double elapsed = now() - t0;

    if (o.out) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%ld", o.out, rank);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            die_errno("creating", path);
        if (write_all(fd, h, bytes) != 0 || close(fd) != 0)
            die_errno("writing", path);
    }
    double sum = 0.0;
    for (size_t i = 0; i < cells; i++)
        sum += h[i];
    printf("rank %ld step %ld checksum %016llx sum %.17g\n", rank, step,
           (unsigned long long)fnv1a(h, bytes), sum);
    fflush(stdout);
    if (o.stats)
        fprintf(stderr,
                "heatdis: rank %ld: %ld steps in %.6f s (%.3f steps/s), %ld checkpoints %.6f s\n",
                rank, steps_done, elapsed, elapsed > 0 ? (double)steps_done / elapsed : 0.0,
                ckpts, t_ckpt);
    if (!o.file_mode) {
        ckpt_mem_unprotect(ID_GRID);
        ckpt_mem_unprotect(ID_STEP);
    }
    if ((rc = ckpt_finalize()) != CKPT_SUCCESS)
        die_ckpt("ckpt_finalize", rc);
    free(h);
    free(g);
    return 0;
}
