/*
 * libckpt from several threads at once (pthreads): racing ckpt_init()s of
 * which exactly one wins, checkpoints, restart tests and failing calls
 * interleaved, each thread's ckpt_last_error() its own, racing
 * ckpt_finalize()s of which exactly one wins; then every thread's newest
 * checkpoint restores its region.
 *
 * usage: threads CONFIG. Exit 0 when every check passed; reports on stderr,
 * nothing on stdout.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ckpt.h>

#define THREADS 8
#define ROUNDS 20
#define WORDS 4096

static const char *config;
static atomic_int failures;
static atomic_int init_ok, init_state, fin_ok, fin_not_init;
static pthread_barrier_t barrier;
static int regions[THREADS][WORDS];

#define FAIL(...)                                                \
    do {                                                         \
        atomic_fetch_add(&failures, 1);                          \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);     \
        fprintf(stderr, __VA_ARGS__);                            \
        fputc('\n', stderr);                                     \
    } while (0)

static void *worker(void *arg)
{
    int t = (int)(long)arg;
    char name[32], own[32];
    snprintf(name, sizeof name, "t%d", t);

    /* Everyone races to init. */
    pthread_barrier_wait(&barrier);
    int rc = ckpt_init(config, "threads");
    if (rc == CKPT_SUCCESS)
        atomic_fetch_add(&init_ok, 1);
    else if (rc == CKPT_ERR_STATE)
        atomic_fetch_add(&init_state, 1);
    else
        FAIL("thread %d: ckpt_init: %d: %s", t, rc, ckpt_last_error());
    pthread_barrier_wait(&barrier);

    for (int i = 0; i < WORDS; i++)
        regions[t][i] = t * 1000003 + i;
    if ((rc = ckpt_mem_protect(100 + t, regions[t], WORDS, sizeof(int))) != CKPT_SUCCESS)
        FAIL("thread %d: ckpt_mem_protect: %d: %s", t, rc, ckpt_last_error());

    for (int v = 0; v < ROUNDS; v++) {
        /* A failure of this thread's own, whose message names its id. */
        int missing = 1000 + t;
        snprintf(own, sizeof own, "%d", missing);
        rc = ckpt_mem_unprotect(missing);
        if (rc != CKPT_ERR_NOT_FOUND)
            FAIL("thread %d: ckpt_mem_unprotect(%d) = %d", t, missing, rc);
        int flag = -1;
        if ((rc = ckpt_need_checkpoint(&flag)) != CKPT_SUCCESS || (flag != 0 && flag != 1))
            FAIL("thread %d: ckpt_need_checkpoint = %d, flag %d", t, rc, flag);
        if ((rc = ckpt_checkpoint(name, v)) != CKPT_SUCCESS)
            FAIL("thread %d: ckpt_checkpoint(%s, %d): %d: %s", t, name, v, rc, ckpt_last_error());
        if ((rc = ckpt_restart_test(name, -1)) != v)
            FAIL("thread %d: ckpt_restart_test(%s) = %d, expected %d: %s", t, name, rc, v,
                 ckpt_last_error());
        /* Other threads failed meanwhile with their own ids: this thread's
         * message is still about its own failure (successes since do not
         * matter for a "last failed call" message; a success that clears it
         * is allowed). */
        const char *msg = ckpt_last_error();
        if (msg == NULL || (msg[0] != '\0' && !strstr(msg, own)))
            FAIL("thread %d: ckpt_last_error() is \"%s\", not about id %s", t, msg ? msg : "(NULL)",
                 own);
        rc = ckpt_mem_unprotect(missing);
        msg = ckpt_last_error();
        if (rc != CKPT_ERR_NOT_FOUND || msg == NULL || !strstr(msg, own))
            FAIL("thread %d: right after its own failure, ckpt_last_error() is \"%s\"", t,
                 msg ? msg : "(NULL)");
        sched_yield();
    }
    if ((rc = ckpt_mem_unprotect(100 + t)) != CKPT_SUCCESS)
        FAIL("thread %d: ckpt_mem_unprotect(%d): %d: %s", t, 100 + t, rc, ckpt_last_error());
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier); /* main restores here */

    /* Everyone races to finalize. */
    rc = ckpt_finalize();
    if (rc == CKPT_SUCCESS)
        atomic_fetch_add(&fin_ok, 1);
    else if (rc == CKPT_ERR_NOT_INIT)
        atomic_fetch_add(&fin_not_init, 1);
    else
        FAIL("thread %d: ckpt_finalize: %d: %s", t, rc, ckpt_last_error());
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: threads CONFIG\n");
        return 2;
    }
    config = argv[1];
    pthread_t th[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS + 1);
    for (long t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    pthread_barrier_wait(&barrier); /* init race */
    pthread_barrier_wait(&barrier); /* inits done */
    pthread_barrier_wait(&barrier); /* rounds done */

    /* Thread t's checkpoints hold its region (id 100 + t) and whichever
     * other threads' were protected at the time: restore id 100 + t alone. */
    static int back[WORDS];
    for (int t = 0; t < THREADS; t++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", t);
        memset(back, 0, sizeof back);
        int rc = ckpt_mem_protect(100 + t, back, WORDS, sizeof(int));
        if (rc != CKPT_SUCCESS)
            FAIL("main: ckpt_mem_protect(%d): %d", 100 + t, rc);
        if ((rc = ckpt_restart(name, ROUNDS - 1)) != CKPT_SUCCESS)
            FAIL("main: ckpt_restart(%s, %d): %d: %s", name, ROUNDS - 1, rc, ckpt_last_error());
        for (int i = 0; i < WORDS; i++)
            if (back[i] != t * 1000003 + i) {
                FAIL("main: %s word %d is %d", name, i, back[i]);
                break;
            }
        ckpt_mem_unprotect(100 + t);
    }
    pthread_barrier_wait(&barrier); /* finalize race */
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);

    if (init_ok != 1 || init_state != THREADS - 1)
        FAIL("racing inits: %d succeeded, %d got CKPT_ERR_STATE", init_ok, init_state);
    if (fin_ok != 1 || fin_not_init != THREADS - 1)
        FAIL("racing finalizes: %d succeeded, %d got CKPT_ERR_NOT_INIT", fin_ok, fin_not_init);
    fprintf(stderr, "threads: %d failures\n", (int)failures);
    return failures ? 1 : 0;
}
