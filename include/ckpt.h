/*
 * ckpt.h: the C ABI of libckpt, the checkpoint library of ckptfs.
 *
 * Simulation codes checkpoint the arrays that matter into the same store
 * that /ckpt writes into: the checkpoint lands in the node-local cache at
 * local-disk speed, drains (verified, in the background) to the tiers the
 * configuration names, and comes back on restart from whichever tier still
 * has the newest complete copy.
 *
 * Every call returns CKPT_SUCCESS (0) or a negative CKPT_ERR_* code. After a
 * failure, ckpt_last_error() gives a message for the calling thread that
 * names the file, set or id concerned. The library never aborts, never
 * exits and never writes to stdout; NULL pointers and bad arguments are
 * errors like any other.
 *
 * Two kinds of checkpoint, as in SCR and VeloC:
 *   memory-based: ckpt_mem_protect() the regions, then ckpt_checkpoint()
 *                 and, on restart, ckpt_restart_test() + ckpt_restart();
 *   file-based:   ckpt_checkpoint_begin(), ckpt_route_file() for each file,
 *                 write the files with any I/O you like,
 *                 ckpt_checkpoint_end(1); ckpt_restart_begin() /
 *                 ckpt_route_file() / ckpt_restart_end() to read them back.
 *
 * A checkpoint is a set of the store named "<name>.v<version>" (version
 * zero-padded to 10 digits so that names sort like versions) under the job
 * given to ckpt_init(). Multi-rank jobs: every rank calls the same
 * checkpoint calls; the set is complete only once every rank has ended its
 * part successfully. Rank and size come from ckpt_init_rank() or from the
 * launcher's environment (Slurm, Open MPI, PMI/PMIx), else 0 of 1.
 *
 * Thread safety: every call may be made from any thread; calls are
 * serialised inside the library. ckpt_last_error() is per thread.
 */
#ifndef CKPT_H
#define CKPT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version of this header; libckpt.so.0 implements it. */
#define CKPT_VERSION_MAJOR 0
#define CKPT_VERSION_MINOR 1
#define CKPT_VERSION_PATCH 0

/* Status codes. */
#define CKPT_SUCCESS 0
/* A bad argument: NULL pointer, negative count, invalid name or version. */
#define CKPT_ERR_INVALID -1
/* ckpt_init() has not been called (or ckpt_finalize() has). */
#define CKPT_ERR_NOT_INIT -2
/* The call does not fit the state: ckpt_init() twice, a begin without its
 * end, ckpt_route_file() outside a checkpoint or restart. */
#define CKPT_ERR_STATE -3
/* No such protected id, checkpoint name or version. */
#define CKPT_ERR_NOT_FOUND -4
/* A protected region's size differs from the one in the checkpoint. */
#define CKPT_ERR_SIZE -5
/* An I/O error in the cache or a tier. */
#define CKPT_ERR_IO -6
/* The cache is full; earlier complete checkpoints are intact. */
#define CKPT_ERR_NOSPC -7
/* A checkpoint failed verification (crc32c, format); it is not used. */
#define CKPT_ERR_CORRUPT -8
/* The configuration file or the environment is not valid. */
#define CKPT_ERR_CONFIG -9
/* ckpt_checkpoint_wait() or ckpt_finalize() gave up waiting for the drain. */
#define CKPT_ERR_TIMEOUT -10
/* The buffer given to ckpt_route_file() is too short for the path. */
#define CKPT_ERR_TRUNCATED -11
/* Mounted mode: the ckptfs daemon refused the request or went away. */
#define CKPT_ERR_DAEMON -12
/* A bug in libckpt (caught; the process goes on). Please report it. */
#define CKPT_ERR_INTERNAL -13

/* Longest path ckpt_route_file() may produce, including the NUL. */
#define CKPT_MAX_PATH 4096

/* --- life cycle --------------------------------------------------------- */

/*
 * Start the library for JOB (a store job name: letters, digits, '.', '_',
 * '-'). CONFIG is a ckptfs configuration file, or NULL for the usual search
 * ($CKPTFS_CONFIG, then /etc/ckptfs.toml, then built-in defaults).
 *
 * The mode comes from the configuration key api.mode: "mounted" (a ckptfs
 * daemon serves the cache and drains it), "embedded" (no daemon: this
 * library drains the cache from a background thread) or "auto" (the
 * default: mounted when a daemon answers on the cache's control socket,
 * else embedded).
 *
 * Calling it twice without ckpt_finalize() in between is CKPT_ERR_STATE;
 * after ckpt_finalize() it may be called again.
 */
int ckpt_init(const char *config, const char *job);

/*
 * Set this process's rank and the number of ranks, for launchers the
 * library does not recognise. Call it before ckpt_init(). RANK in
 * [0, SIZE), SIZE >= 1.
 */
int ckpt_init_rank(int rank, int size);

/*
 * End the library: unprotects every region and waits (up to
 * api.finalize_timeout) for the checkpoints this rank has a part in to be
 * completed by the other ranks and, in embedded mode, for this job's
 * committed checkpoints to drain; what is left drains on the next start of
 * a daemon or library on this cache. A checkpoint or restart still open is
 * abandoned (never offered for restart).
 */
int ckpt_finalize(void);

/* --- memory-based checkpoints ------------------------------------------- */

/*
 * Protect COUNT elements of ELEM_SIZE bytes at PTR under ID (>= 0). Protecting
 * an id again replaces its region (e.g. after a realloc). The memory must
 * stay valid until ckpt_mem_unprotect(ID) or ckpt_finalize().
 * COUNT may be 0 (PTR may then be NULL).
 */
int ckpt_mem_protect(int id, void *ptr, size_t count, size_t elem_size);

/* Stop protecting ID. CKPT_ERR_NOT_FOUND when it is not protected. */
int ckpt_mem_unprotect(int id);

/*
 * Write every protected region into checkpoint NAME, version VERSION (>= 0),
 * and commit it (for this rank; the set completes with the last rank).
 * Returns once the bytes are in the node-local cache; the drain to the
 * lower tiers goes on in the background (see ckpt_checkpoint_wait()).
 * A version that exists already (left by a killed run, or complete from an
 * earlier one) is replaced. The cache keeps the newest [store] keep complete
 * checkpoints of the job whatever their names: use one name per job, or
 * set keep = 0.
 */
int ckpt_checkpoint(const char *name, int version);

/*
 * The newest complete version of NAME that is <= MAX_VERSION (pass a
 * negative MAX_VERSION for no bound), looked for in the cache and on every
 * configured tier. Returns that version (>= 0), or CKPT_ERR_NOT_FOUND when
 * there is none, or another negative code.
 */
int ckpt_restart_test(const char *name, int max_version);

/*
 * Fill every protected region from checkpoint NAME, version VERSION,
 * staging it in from a lower tier if the cache lacks it, and verifying
 * every byte. Regions are matched by id; a protected region whose size
 * differs from the saved one is CKPT_ERR_SIZE and nothing is copied.
 */
int ckpt_restart(const char *name, int version);

/* --- file-based checkpoints --------------------------------------------- */

/* Start checkpoint NAME, version VERSION; files are then routed into it. */
int ckpt_checkpoint_begin(const char *name, int version);

/*
 * Give the path to use for FILE (a relative path inside the checkpoint, or
 * a path whose last component names the file) into ROUTED (LEN bytes,
 * NUL-terminated). Between ckpt_checkpoint_begin() and ckpt_checkpoint_end()
 * the routed path is where to write; between ckpt_restart_begin() and
 * ckpt_restart_end() it is where to read.
 */
int ckpt_route_file(const char *file, char *routed, size_t len);

/*
 * End the checkpoint begun with ckpt_checkpoint_begin(). SUCCESS non-zero:
 * the routed files are sealed (crc32c) and this rank's part committed.
 * SUCCESS zero: the checkpoint is abandoned and never offered for restart.
 */
int ckpt_checkpoint_end(int success);

/*
 * Open checkpoint NAME, version VERSION for reading, staged in and verified
 * as for ckpt_restart().
 */
int ckpt_restart_begin(const char *name, int version);

/* End the restart begun with ckpt_restart_begin(). */
int ckpt_restart_end(int success);

/* --- drain and scheduling ----------------------------------------------- */

/*
 * Block until the last checkpoint this process committed is safe on every
 * configured tier (immediately when there is none), or until
 * api.wait_timeout passes (CKPT_ERR_TIMEOUT).
 */
int ckpt_checkpoint_wait(void);

/*
 * Set *FLAG to 1 when it is time to checkpoint, else 0, like
 * SCR_Need_checkpoint: after api.interval calls, after api.seconds seconds
 * since the last checkpoint, or when the last checkpoint's cost is at most
 * api.overhead percent of the time since it ended (whichever are
 * configured; by default the overhead rule at 10 %). The first call always
 * says 1.
 */
int ckpt_need_checkpoint(int *flag);

/* --- errors ---------------------------------------------------------------- */

/* A static, constant description of CODE ("unknown error code" for others). */
const char *ckpt_strerror(int code);

/*
 * The message of the calling thread's last failed call (empty when none).
 * Valid until the thread's next libckpt call.
 */
const char *ckpt_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* CKPT_H */
