/*
 * Every documented error path of the C API, from C: the right code, a
 * non-empty ckpt_last_error() (naming the thing concerned where the header
 * says it does), the process going on, and nothing on stdout (the test
 * harness checks stdout stays empty; this program reports to stderr).
 * Also init/finalize twice, and checkpoints surviving a re-init.
 *
 * usage: errors CONFIG BAD_CONFIG   (CONFIG: a valid configuration whose
 * cache is empty; BAD_CONFIG: a file that is not a valid configuration).
 * Exit 0 when every check passed, 1 otherwise (each failure on stderr).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ckpt.h>

static int failures, checks;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        checks++;                                                         \
        if (!(cond)) {                                                    \
            failures++;                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
        }                                                                 \
    } while (0)

/* CALL must return WANT, and a failure must leave a message that contains
 * MENTION (when not NULL). */
#define EXPECT(call, want, mention) expect_rc((call), (want), (mention), #call, __LINE__)

static void expect_rc(int rc, int want, const char *mention, const char *text, int line)
{
    const char *msg = ckpt_last_error();
    checks++;
    if (rc != want) {
        failures++;
        fprintf(stderr, "FAIL line %d: %s returned %d (%s), expected %d (%s); last error: %s\n",
                line, text, rc, ckpt_strerror(rc), want, ckpt_strerror(want), msg ? msg : "(NULL)");
        return;
    }
    fprintf(stderr, "ok   line %d: %s -> %d%s%s\n", line, text, rc, want < 0 ? ": " : "",
            want < 0 && msg ? msg : "");
    if (want >= 0)
        return;
    checks++;
    if (msg == NULL || msg[0] == '\0') {
        failures++;
        fprintf(stderr, "FAIL line %d: %s failed (%d) with an empty ckpt_last_error()\n", line,
                text, rc);
        return;
    }
    if (mention && !strstr(msg, mention)) {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: message \"%s\" does not name \"%s\"\n", line, text,
                msg, mention);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: errors CONFIG BAD_CONFIG\n");
        return 2;
    }
    const char *config = argv[1], *bad_config = argv[2];
    char buf[CKPT_MAX_PATH];
    double a[16], b[8];
    int step = 7;
    int flag = -1;

    /* Messages and codes. */
    const int codes[] = {CKPT_SUCCESS, CKPT_ERR_INVALID, CKPT_ERR_NOT_INIT, CKPT_ERR_STATE,
                         CKPT_ERR_NOT_FOUND, CKPT_ERR_SIZE, CKPT_ERR_IO, CKPT_ERR_NOSPC,
                         CKPT_ERR_CORRUPT, CKPT_ERR_CONFIG, CKPT_ERR_TIMEOUT,
                         CKPT_ERR_TRUNCATED, CKPT_ERR_DAEMON, CKPT_ERR_INTERNAL};
    const size_t ncodes = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < ncodes; i++) {
        const char *s = ckpt_strerror(codes[i]);
        CHECK(s && s[0], "ckpt_strerror(%d) is empty", codes[i]);
        for (size_t j = 0; j < i; j++)
            CHECK(s && strcmp(s, ckpt_strerror(codes[j])) != 0,
                  "ckpt_strerror(%d) == ckpt_strerror(%d)", codes[i], codes[j]);
    }
    CHECK(strcmp(ckpt_strerror(12345), "unknown error code") == 0,
          "ckpt_strerror(12345) is \"%s\"", ckpt_strerror(12345));
    CHECK(strcmp(ckpt_strerror(-14), "unknown error code") == 0,
          "ckpt_strerror(-14) is \"%s\"", ckpt_strerror(-14));
    CHECK(ckpt_last_error() && ckpt_last_error()[0] == '\0',
          "ckpt_last_error() before any failure: \"%s\"", ckpt_last_error());

    /* Not initialised. */
    EXPECT(ckpt_mem_protect(0, a, 16, sizeof a[0]), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_mem_unprotect(0), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_checkpoint("heat", 1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_restart_test("heat", -1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_restart("heat", 1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_checkpoint_begin("heat", 1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_route_file("x", buf, sizeof buf), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_checkpoint_end(1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_restart_begin("heat", 1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_restart_end(1), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_checkpoint_wait(), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_need_checkpoint(&flag), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_finalize(), CKPT_ERR_NOT_INIT, NULL);

    /* Bad arguments to init and init_rank. */
    EXPECT(ckpt_init(config, NULL), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_init(config, ""), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_init(config, "bad/job"), CKPT_ERR_INVALID, "bad/job");
    EXPECT(ckpt_init(config, ".."), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_init("/nonexistent/ckpt-capi.toml", "job"), CKPT_ERR_CONFIG,
           "/nonexistent/ckpt-capi.toml");
    EXPECT(ckpt_init(bad_config, "job"), CKPT_ERR_CONFIG, bad_config);
    EXPECT(ckpt_init_rank(-1, 4), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_init_rank(4, 4), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_init_rank(0, 0), CKPT_ERR_INVALID, NULL);
    /* A failed init leaves the library uninitialised. */
    EXPECT(ckpt_checkpoint("heat", 1), CKPT_ERR_NOT_INIT, NULL);

    /* Initialised; a second init is a state error. */
    EXPECT(ckpt_init_rank(0, 1), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_init(config, "errors"), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_init(config, "errors"), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_init_rank(0, 1), CKPT_ERR_STATE, NULL);

    /* Memory-based: bad arguments. */
    EXPECT(ckpt_mem_protect(-1, a, 16, sizeof a[0]), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_mem_protect(0, NULL, 16, sizeof a[0]), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_mem_protect(0, a, (size_t)-1, 16), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_mem_protect(5, NULL, 0, 8), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_mem_unprotect(5), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_mem_unprotect(99), CKPT_ERR_NOT_FOUND, "99");
    {
        int rc = ckpt_mem_unprotect(-1);
        CHECK(rc == CKPT_ERR_INVALID || rc == CKPT_ERR_NOT_FOUND,
              "ckpt_mem_unprotect(-1) returned %d", rc);
        CHECK(ckpt_last_error()[0] != '\0', "ckpt_mem_unprotect(-1): empty message");
    }
    EXPECT(ckpt_checkpoint(NULL, 1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_checkpoint("", 1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_checkpoint("bad/name", 1), CKPT_ERR_INVALID, "bad/name");
    EXPECT(ckpt_checkpoint("..", 1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_checkpoint("heat", -1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_restart_test(NULL, -1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_restart_test("bad/name", -1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_restart_test("heat", -1), CKPT_ERR_NOT_FOUND, "heat");
    EXPECT(ckpt_restart(NULL, 1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_restart("heat", -1), CKPT_ERR_INVALID, NULL);

    /* A real checkpoint, then restarts that cannot be. */
    for (int i = 0; i < 16; i++)
        a[i] = i * 1.5;
    for (int i = 0; i < 8; i++)
        b[i] = -i;
    EXPECT(ckpt_mem_protect(0, a, 16, sizeof a[0]), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_mem_protect(1, b, 8, sizeof b[0]), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_mem_protect(2, &step, 1, sizeof step), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_checkpoint("heat", 3), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_restart_test("heat", -1), 3, NULL);
    EXPECT(ckpt_restart_test("heat", 3), 3, NULL);
    EXPECT(ckpt_restart_test("heat", 2), CKPT_ERR_NOT_FOUND, "heat");
    EXPECT(ckpt_restart("heat", 4), CKPT_ERR_NOT_FOUND, "heat");
    EXPECT(ckpt_restart("other", 3), CKPT_ERR_NOT_FOUND, "other");
    /* A region whose size changed: CKPT_ERR_SIZE, and nothing copied. */
    a[0] = 111.0;
    b[0] = 222.0;
    step = 99;
    EXPECT(ckpt_mem_protect(1, b, 4, sizeof b[0]), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_restart("heat", 3), CKPT_ERR_SIZE, NULL);
    CHECK(a[0] == 111.0 && b[0] == 222.0 && step == 99,
          "a failed restart copied something: a[0]=%g b[0]=%g step=%d", a[0], b[0], step);
    /* The right sizes again: it all comes back. */
    EXPECT(ckpt_mem_protect(1, b, 8, sizeof b[0]), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_restart("heat", 3), CKPT_SUCCESS, NULL);
    CHECK(a[0] == 0.0 && a[15] == 22.5 && b[0] == 0.0 && b[7] == -7.0 && step == 7,
          "restart did not restore: a[0]=%g a[15]=%g b[7]=%g step=%d", a[0], a[15], b[7], step);

    /* File-based: route outside begin/end, ends without begins. */
    EXPECT(ckpt_route_file("x.dat", buf, sizeof buf), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_checkpoint_end(1), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_restart_end(1), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_checkpoint_begin(NULL, 1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_checkpoint_begin("bad/name", 1), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_checkpoint_begin("files", -2), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_checkpoint_begin("files", 1), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_checkpoint_begin("files", 2), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_restart_begin("heat", 3), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_route_file(NULL, buf, sizeof buf), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_route_file("x.dat", NULL, sizeof buf), CKPT_ERR_INVALID, NULL);
    memset(buf, 'Z', sizeof buf);
    EXPECT(ckpt_route_file("x.dat", buf, 4), CKPT_ERR_TRUNCATED, "x.dat");
    CHECK(buf[4] == 'Z', "a truncated route wrote past its buffer");
    EXPECT(ckpt_route_file("x.dat", buf, sizeof buf), CKPT_SUCCESS, NULL);
    CHECK(strlen(buf) > 0 && strlen(buf) < sizeof buf && strstr(buf, "x.dat"),
          "routed path \"%s\" does not name x.dat", buf);
    {
        FILE *f = fopen(buf, "w");
        CHECK(f != NULL, "cannot create the routed file %s", buf);
        if (f) {
            fputs("payload\n", f);
            fclose(f);
        }
    }
    EXPECT(ckpt_checkpoint_end(1), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_checkpoint_end(1), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_restart_test("files", -1), 1, NULL);
    EXPECT(ckpt_restart_begin("files", 9), CKPT_ERR_NOT_FOUND, "files");
    EXPECT(ckpt_route_file("x.dat", buf, sizeof buf), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_restart_begin("files", 1), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_checkpoint_begin("files", 2), CKPT_ERR_STATE, NULL);
    EXPECT(ckpt_route_file("x.dat", buf, sizeof buf), CKPT_SUCCESS, NULL);
    {
        char line[64] = "";
        FILE *f = fopen(buf, "r");
        CHECK(f != NULL, "cannot open the routed file %s for reading", buf);
        if (f) {
            CHECK(fgets(line, sizeof line, f) && strcmp(line, "payload\n") == 0,
                  "routed file for restart holds \"%s\"", line);
            fclose(f);
        }
    }
    EXPECT(ckpt_restart_end(1), CKPT_SUCCESS, NULL);
    /* An abandoned checkpoint is never offered. */
    EXPECT(ckpt_checkpoint_begin("files", 2), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_checkpoint_end(0), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_restart_test("files", -1), 1, NULL);

    /* Scheduling and waiting. */
    EXPECT(ckpt_need_checkpoint(NULL), CKPT_ERR_INVALID, NULL);
    EXPECT(ckpt_need_checkpoint(&flag), CKPT_SUCCESS, NULL);
    CHECK(flag == 1, "the first ckpt_need_checkpoint said %d", flag);
    EXPECT(ckpt_need_checkpoint(&flag), CKPT_SUCCESS, NULL);
    CHECK(flag == 0 || flag == 1, "ckpt_need_checkpoint set %d", flag);
    EXPECT(ckpt_checkpoint_wait(), CKPT_SUCCESS, NULL);

    /* Finalize, twice; init again: the checkpoints are still there. */
    EXPECT(ckpt_finalize(), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_finalize(), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_checkpoint("heat", 4), CKPT_ERR_NOT_INIT, NULL);
    EXPECT(ckpt_init(config, "errors"), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_restart_test("heat", -1), 3, NULL);
    /* Finalize unprotected everything. */
    EXPECT(ckpt_mem_unprotect(0), CKPT_ERR_NOT_FOUND, NULL);
    /* A checkpoint or restart left open is abandoned by finalize. */
    EXPECT(ckpt_checkpoint_begin("files", 5), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_finalize(), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_init(config, "errors"), CKPT_SUCCESS, NULL);
    EXPECT(ckpt_restart_test("files", -1), 1, NULL);
    EXPECT(ckpt_finalize(), CKPT_SUCCESS, NULL);

    fprintf(stderr, "%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
