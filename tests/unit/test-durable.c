/* Unit tests of the durable-file layer: the folder is created, an atomic
 * replace leaves the old or the new content and never a mix (whichever step
 * fails), with no temporary copy left behind, failures come back as the
 * failed step's -errno, an unreadable file is moved aside without replacing
 * anything, the queue runs its jobs one at a time in order off the loop
 * thread, and the teardown closes everything before the user hears of it.
 * Each test works in its own temporary folder. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "durable.h"

/* ---- Helpers ---- */

typedef struct Fixture {
        char *dir;
        int dir_fd;
} Fixture;

static void remove_tree(const char *path)
{
        DIR *d = opendir(path);
        struct dirent *de;

        if (!d) {
                (void)unlink(path);
                return;
        }
        while ((de = readdir(d))) {
                char *p;

                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                assert_true(asprintf(&p, "%s/%s", path, de->d_name) > 0);
                remove_tree(p);
                free(p);
        }
        closedir(d);
        (void)rmdir(path);
}

static int setup(void **state)
{
        Fixture *f = calloc(1, sizeof(*f));
        const char *base = getenv("TMPDIR");

        assert_non_null(f);
        assert_true(asprintf(&f->dir, "%s/test-durable-XXXXXX", base && *base ? base : "/tmp") > 0);
        assert_non_null(mkdtemp(f->dir));
        f->dir_fd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(f->dir_fd >= 0);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        Fixture *f = *state;

        close(f->dir_fd);
        remove_tree(f->dir);
        free(f->dir);
        free(f);
        return 0;
}

static void put_file(Fixture *f, const char *name, const char *content)
{
        int fd = openat(f->dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
        close(fd);
}

/* The file's content, NUL-terminated (NULL when it does not exist). */
static char *get_file(Fixture *f, const char *name)
{
        static char buf[4096];
        int fd = openat(f->dir_fd, name, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        if (fd < 0)
                return NULL;
        n = read(fd, buf, sizeof(buf) - 1);
        assert_true(n >= 0);
        buf[n] = '\0';
        close(fd);
        return buf;
}

static bool exists(Fixture *f, const char *name)
{
        return faccessat(f->dir_fd, name, F_OK, 0) == 0;
}

static unsigned count_entries(Fixture *f)
{
        DIR *d = opendir(f->dir);
        struct dirent *de;
        unsigned n = 0;

        assert_non_null(d);
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        n++;
        closedir(d);
        return n;
}

/* The fault hook: fails the n-th call of operation `fail_op` (1-based) with
 * `fail_error`, and records the operations it saw. */
static const char *fail_op;
static unsigned fail_nth, seen_nth;
static int fail_error;
static char ops[512];

static int fault_hook(const char *op)
{
        if (strlen(ops) + strlen(op) + 2 < sizeof(ops)) {
                strcat(ops, op);
                strcat(ops, " ");
        }
        if (fail_op && strcmp(op, fail_op) == 0 && ++seen_nth == fail_nth)
                return fail_error;
        return 0;
}

static void fault_reset(const char *op, unsigned nth, int error)
{
        fail_op = op;
        fail_nth = nth;
        seen_nth = 0;
        fail_error = error;
        ops[0] = '\0';
}

static int fill_text(void *userdata, int fd)
{
        const char *text = userdata;

        return durable_write(fd, text, strlen(text), NULL, NULL);
}

static int fill_half_then_fail(void *userdata, int fd)
{
        const char *text = userdata;

        assert_int_equal(durable_write(fd, text, strlen(text) / 2, NULL, NULL), 0);
        return -ENOSPC;
}

/* ---- The folder ---- */

static void test_open_folder(void **state)
{
        Fixture *f = *state;
        struct stat st;
        char *path;
        int fd = -1;

        /* Missing parents are created, mode 0700. */
        assert_true(asprintf(&path, "%s/a/b/c", f->dir) > 0);
        assert_int_equal(durable_open_folder(path, NULL, &fd), 0);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0700);
        close(fd);

        /* An existing one is just opened. */
        fd = -1;
        assert_int_equal(durable_open_folder(path, NULL, &fd), 0);
        assert_true(fd >= 0);
        close(fd);
        free(path);

        /* A path through a regular file. */
        put_file(f, "file", "x");
        assert_true(asprintf(&path, "%s/file/sub", f->dir) > 0);
        fd = -1;
        assert_int_equal(durable_open_folder(path, NULL, &fd), -ENOTDIR);
        assert_int_equal(fd, -1);
        free(path);

        /* Each mkdir (one per component) goes through the hook: fail the
         * last one. */
        assert_true(asprintf(&path, "%s/x/y", f->dir) > 0);
        {
                unsigned n = 0;

                for (const char *p = path; *p; p++)
                        n += *p == '/';
                fault_reset("mkdir", n, -EROFS);
                assert_int_equal(durable_open_folder(path, fault_hook, &fd), -EROFS);
                assert_int_equal(seen_nth, n);
        }
        assert_true(exists(f, "x"));
        assert_false(exists(f, "x/y"));
        free(path);
}

/* ---- Writes ---- */

static void test_write(void **state)
{
        Fixture *f = *state;
        size_t written = 99;
        int fd = durable_openat(f->dir_fd, "log", O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600, NULL);

        assert_true(fd >= 0);
        assert_int_equal(durable_write(fd, "one\n", 4, &written, NULL), 0);
        assert_int_equal(written, 4);
        assert_int_equal(durable_sync(fd, true, NULL), 0);
        assert_int_equal(durable_write(fd, "two\n", 4, NULL, NULL), 0);
        assert_int_equal(durable_truncate(fd, 4, NULL), 0);
        assert_string_equal(get_file(f, "log"), "one\n");

        /* The hook fails the operation before it is made. */
        fault_reset("write", 1, -ENOSPC);
        written = 99;
        assert_int_equal(durable_write(fd, "three\n", 6, &written, fault_hook), -ENOSPC);
        assert_int_equal(written, 0);
        fault_reset("fdatasync", 1, -EIO);
        assert_int_equal(durable_sync(fd, true, fault_hook), -EIO);
        fault_reset("fsync", 1, -EIO);
        assert_int_equal(durable_sync(fd, false, fault_hook), -EIO);
        assert_string_equal(get_file(f, "log"), "one\n");
        durable_close_fd(&fd);
        assert_int_equal(fd, -1);
        durable_close_fd(&fd); /* harmless when closed */

        /* A real failure is the errno. */
        fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
                assert_int_equal(durable_write(fd, "x", 1, &written, NULL), -ENOSPC);
                assert_int_equal(written, 0);
                close(fd);
        }
        assert_int_equal(durable_openat(f->dir_fd, "missing", O_RDONLY, 0, NULL), -ENOENT);
        fault_reset("open", 1, -EACCES);
        assert_int_equal(durable_openat(f->dir_fd, "log", O_RDONLY, 0, fault_hook), -EACCES);
}

/* ---- Atomic replace ---- */

static void test_replace(void **state)
{
        Fixture *f = *state;
        int fd = -1;

        put_file(f, "data", "old content\n");
        assert_int_equal(
            durable_replace(f->dir_fd, "data", "data.tmp", fill_text, "new content\n", NULL, &fd), 0);
        assert_true(fd >= 0);
        assert_string_equal(get_file(f, "data"), "new content\n");
        assert_false(exists(f, "data.tmp"));
        assert_int_equal(count_entries(f), 1);

        /* The descriptor is the new file, open for appending and reading. */
        assert_int_equal(durable_write(fd, "more\n", 5, NULL, NULL), 0);
        assert_string_equal(get_file(f, "data"), "new content\nmore\n");
        {
                char buf[8] = {};
                assert_int_equal(pread(fd, buf, 3, 0), 3);
                assert_string_equal(buf, "new");
        }
        close(fd);

        /* A file that did not exist yet. */
        fd = -1;
        assert_int_equal(durable_replace(f->dir_fd, "fresh", "fresh.tmp", fill_text, "first\n", NULL, &fd),
                         0);
        assert_string_equal(get_file(f, "fresh"), "first\n");
        close(fd);
}

static void test_replace_fill_fails(void **state)
{
        Fixture *f = *state;
        int fd = -1;

        /* A stale temporary copy from a crash is no obstacle. */
        put_file(f, "data", "old content\n");
        put_file(f, "data.tmp", "garbage from a crash");
        assert_int_equal(
            durable_replace(f->dir_fd, "data", "data.tmp", fill_half_then_fail, "new content\n", NULL, &fd),
            -ENOSPC);
        assert_int_equal(fd, -1);
        assert_string_equal(get_file(f, "data"), "old content\n");
        assert_false(exists(f, "data.tmp"));
        assert_int_equal(count_entries(f), 1);
}

/* The folder sync after the rename fails: the rename stands, so the caller
 * gets the new file with the error (and appends to what the name reaches);
 * a failure before the rename leaves it nothing. */
static void test_replace_folder_sync_fails(void **state)
{
        Fixture *f = *state;
        int fd = -1;

        put_file(f, "data", "old content\n");
        fault_reset("fsync", 2, -EIO);
        assert_int_equal(
            durable_replace(f->dir_fd, "data", "data.tmp", fill_text, "new content\n", fault_hook, &fd),
            -EIO);
        assert_true(fd >= 0);
        assert_string_equal(get_file(f, "data"), "new content\n");
        assert_false(exists(f, "data.tmp"));
        assert_int_equal(durable_write(fd, "more\n", 5, NULL, NULL), 0);
        assert_string_equal(get_file(f, "data"), "new content\nmore\n");
        close(fd);

        fd = -1;
        fault_reset("fsync", 1, -EIO);
        assert_int_equal(
            durable_replace(f->dir_fd, "data", "data.tmp", fill_text, "newer\n", fault_hook, &fd), -EIO);
        assert_int_equal(fd, -1);
        assert_string_equal(get_file(f, "data"), "new content\nmore\n");
        assert_false(exists(f, "data.tmp"));
}

/* Fails each step of a replace in turn: until the rename the file is the
 * old one, byte for byte, and the copy is gone; after it, the new one. */
static void test_replace_steps_fail(void **state)
{
        static const struct {
                const char *op;
                unsigned nth;
                DurableStep step;
                bool renamed;
        } cases[] = {
            {"fsync", 1, DURABLE_STEP_SYNC, false},
            {"rename", 1, DURABLE_STEP_RENAME, false},
            {"fsync", 2, DURABLE_STEP_SYNC_FOLDER, true},
        };
        Fixture *f = *state;

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                DurableStep step = DURABLE_STEP_NONE;
                int fd;

                put_file(f, "data", "old content\n");
                fault_reset(NULL, 0, 0);
                fd = durable_replace_begin(f->dir_fd, "data.tmp", fault_hook);
                assert_true(fd >= 0);
                assert_int_equal(durable_write(fd, "new ", 4, NULL, fault_hook), 0);
                /* Half written: the file is still all old. */
                assert_string_equal(get_file(f, "data"), "old content\n");
                assert_int_equal(durable_write(fd, "content\n", 8, NULL, fault_hook), 0);

                fault_reset(cases[i].op, cases[i].nth, -EIO);
                assert_int_equal(
                    durable_replace_commit(f->dir_fd, fd, "data.tmp", "data", fault_hook, NULL, NULL, &step),
                    -EIO);
                assert_int_equal(step, cases[i].step);
                assert_false(exists(f, "data.tmp"));
                assert_int_equal(count_entries(f), 1);
                if (cases[i].renamed) {
                        /* The rename is done; the descriptor is the file. */
                        assert_string_equal(get_file(f, "data"), "new content\n");
                        assert_int_equal(fcntl(fd, F_GETFD), FD_CLOEXEC);
                        close(fd);
                } else {
                        assert_string_equal(get_file(f, "data"), "old content\n");
                        assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed */
                }
        }

        /* The order of the steps, as the hook sees them. */
        {
                DurableStep step = DURABLE_STEP_SYNC;
                int fd;

                fault_reset(NULL, 0, 0);
                fd = durable_replace_begin(f->dir_fd, "data.tmp", fault_hook);
                assert_true(fd >= 0);
                assert_int_equal(
                    durable_replace_commit(f->dir_fd, fd, "data.tmp", "data", fault_hook, NULL, NULL, &step),
                    0);
                assert_int_equal(step, DURABLE_STEP_NONE);
                assert_string_equal(ops, "open fsync rename fsync ");
                assert_string_equal(get_file(f, "data"), "");
                close(fd);
        }
}

typedef struct Prepare {
        Fixture *f;
        int result;
        bool called;
        bool saw_old; /* the file still had its old content when called */
} Prepare;

static int before_rename(void *userdata, int dir_fd)
{
        Prepare *p = userdata;
        char *content;

        assert_int_equal(dir_fd, p->f->dir_fd);
        p->called = true;
        content = get_file(p->f, "data");
        p->saw_old = content && strcmp(content, "old content\n") == 0;
        return p->result;
}

static void test_replace_before_rename(void **state)
{
        Fixture *f = *state;
        Prepare p = {.f = f, .result = -EPERM};
        DurableStep step;
        int fd;

        put_file(f, "data", "old content\n");
        fd = durable_replace_begin(f->dir_fd, "data.tmp", NULL);
        assert_true(fd >= 0);
        assert_int_equal(durable_write(fd, "new\n", 4, NULL, NULL), 0);
        assert_int_equal(
            durable_replace_commit(f->dir_fd, fd, "data.tmp", "data", NULL, before_rename, &p, &step),
            -EPERM);
        assert_true(p.called && p.saw_old);
        assert_int_equal(step, DURABLE_STEP_PREPARE);
        assert_string_equal(get_file(f, "data"), "old content\n");
        assert_false(exists(f, "data.tmp"));

        p = (Prepare){.f = f, .result = 0};
        fd = durable_replace_begin(f->dir_fd, "data.tmp", NULL);
        assert_int_equal(durable_write(fd, "new\n", 4, NULL, NULL), 0);
        assert_int_equal(
            durable_replace_commit(f->dir_fd, fd, "data.tmp", "data", NULL, before_rename, &p, &step), 0);
        assert_true(p.called && p.saw_old);
        assert_string_equal(get_file(f, "data"), "new\n");
        close(fd);

        /* An abandoned copy goes. */
        fd = durable_replace_begin(f->dir_fd, "data.tmp", NULL);
        assert_true(fd >= 0 && exists(f, "data.tmp"));
        durable_replace_abort(f->dir_fd, &fd, "data.tmp");
        assert_int_equal(fd, -1);
        assert_false(exists(f, "data.tmp"));
        durable_replace_abort(f->dir_fd, &fd, "data.tmp");
}

/* ---- Moving aside ---- */

static void test_move_aside(void **state)
{
        Fixture *f = *state;
        char first[128], second[128];

        put_file(f, "data", "bad one");
        assert_int_equal(durable_move_aside(f->dir_fd, "data", NULL, first, sizeof(first)), 0);
        assert_true(strncmp(first, "data.corrupt-", 13) == 0);
        assert_int_equal(strlen(first), strlen("data.corrupt-20260101T000000Z"));
        assert_false(exists(f, "data"));
        assert_string_equal(get_file(f, first), "bad one");

        /* A second one within the same second gets its own name. */
        put_file(f, "data", "bad two");
        assert_int_equal(durable_move_aside(f->dir_fd, "data", NULL, second, sizeof(second)), 0);
        assert_string_not_equal(first, second);
        assert_string_equal(get_file(f, first), "bad one");
        assert_string_equal(get_file(f, second), "bad two");
        assert_false(exists(f, "data"));

        assert_int_equal(durable_move_aside(f->dir_fd, "data", NULL, first, sizeof(first)), -ENOENT);
        put_file(f, "data", "x");
        fault_reset("rename", 1, -EROFS);
        assert_int_equal(durable_move_aside(f->dir_fd, "data", fault_hook, first, sizeof(first)), -EROFS);
        assert_true(exists(f, "data"));
}

/* ---- The queue ---- */

typedef struct QueueTest {
        uv_loop_t loop;
        DurableQueue q;
        pthread_t loop_thread;
        unsigned submitted, ran, done;
        unsigned order[16];
        bool off_loop; /* every run was on another thread */
        bool busy_in_run;
        bool free_in_done;
        unsigned sleep_ms;
        volatile bool run_finished;
} QueueTest;

static void queue_run(DurableQueue *q)
{
        QueueTest *t = q->userdata;

        if (pthread_equal(pthread_self(), t->loop_thread))
                t->off_loop = false;
        if (t->sleep_ms)
                usleep(t->sleep_ms * 1000);
        t->order[t->ran % 16] = t->ran;
        t->ran++;
        t->run_finished = true;
}

static void queue_done(DurableQueue *q)
{
        QueueTest *t = q->userdata;

        assert_true(pthread_equal(pthread_self(), t->loop_thread));
        if (q->in_flight)
                t->free_in_done = false;
        /* Each job is done before the next one runs. */
        assert_int_equal(t->done + 1, t->ran);
        t->done++;
        if (t->submitted < 10) {
                t->submitted++;
                durable_queue_submit(q);
                if (!q->in_flight)
                        t->busy_in_run = false;
        }
}

static void test_queue_order(void **unused)
{
        QueueTest t = {.off_loop = true, .busy_in_run = true, .free_in_done = true};

        (void)unused;
        assert_int_equal(uv_loop_init(&t.loop), 0);
        t.loop_thread = pthread_self();
        assert_int_equal(durable_queue_init(&t.q, &t.loop, queue_run, queue_done, &t), 0);
        assert_false(t.q.in_flight);
        t.submitted = 1;
        durable_queue_submit(&t.q);
        assert_true(t.q.in_flight);
        assert_int_equal(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(t.ran, 10);
        assert_int_equal(t.done, 10);
        for (unsigned i = 0; i < 10; i++)
                assert_int_equal(t.order[i], i);
        assert_true(t.off_loop);
        assert_true(t.busy_in_run);
        assert_true(t.free_in_done);
        assert_false(t.q.in_flight);
        durable_queue_destroy(&t.q);
        assert_int_equal(uv_loop_close(&t.loop), 0);
}

/* A clean stop waits for the job in flight; its `done` still comes from
 * the loop. */
static void test_queue_wait(void **unused)
{
        QueueTest t = {.submitted = 10, .sleep_ms = 50};

        (void)unused;
        assert_int_equal(uv_loop_init(&t.loop), 0);
        t.loop_thread = pthread_self();
        assert_int_equal(durable_queue_init(&t.q, &t.loop, queue_run, queue_done, &t), 0);
        durable_queue_wait(&t.q); /* nothing in flight: returns */
        durable_queue_submit(&t.q);
        durable_queue_wait(&t.q);
        assert_true(t.run_finished);
        assert_int_equal(t.ran, 1);
        assert_true(t.q.run_us >= 40000);
        assert_int_equal(t.done, 0);
        assert_true(t.q.in_flight);
        assert_int_equal(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(t.done, 1);
        assert_false(t.q.in_flight);
        durable_queue_destroy(&t.q);
        assert_int_equal(uv_loop_close(&t.loop), 0);
}

/* ---- Teardown ---- */

typedef struct Owner {
        DurableTeardown teardown;
        uv_timer_t a, b;
        int fd, dir_fd;
        unsigned *log; /* 1: released, 2: closed */
        size_t *n_log;
} Owner;

static void owner_release(void *userdata)
{
        Owner *o = userdata;

        assert_int_equal(o->fd, -1);
        assert_int_equal(o->dir_fd, -1);
        o->log[(*o->n_log)++] = 1;
        free(o);
}

static unsigned closed_calls;
static unsigned *closed_log;
static size_t *closed_n_log;

static void user_closed(void *userdata)
{
        (void)userdata;
        closed_calls++;
        closed_log[(*closed_n_log)++] = 2;
}

static void test_teardown(void **state)
{
        Fixture *f = *state;
        uv_loop_t loop;
        unsigned log[4] = {};
        size_t n_log = 0;
        Owner *o = calloc(1, sizeof(*o));
        int fd, dir_fd;

        assert_non_null(o);
        assert_int_equal(uv_loop_init(&loop), 0);
        uv_timer_init(&loop, &o->a);
        uv_timer_init(&loop, &o->b);
        o->fd = fd = durable_openat(f->dir_fd, "file", O_RDWR | O_CREAT | O_CLOEXEC, 0600, NULL);
        o->dir_fd = dir_fd = dup(f->dir_fd);
        assert_true(fd >= 0 && dir_fd >= 0);
        o->log = log;
        o->n_log = &n_log;
        closed_log = log;
        closed_n_log = &n_log;
        closed_calls = 0;

        durable_teardown_begin(&o->teardown, user_closed, NULL);
        assert_true(o->teardown.closing);
        durable_teardown_finish(&o->teardown, &o->fd, &o->dir_fd, owner_release, o,
                                (uv_handle_t *[]){(uv_handle_t *)&o->a, (uv_handle_t *)&o->b}, 2);
        /* The descriptors go at once, the handles with the loop. */
        assert_int_equal(fcntl(fd, F_GETFD), -1);
        assert_int_equal(fcntl(dir_fd, F_GETFD), -1);
        assert_int_equal(n_log, 0);
        assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(closed_calls, 1);
        assert_int_equal(n_log, 2);
        assert_int_equal(log[0], 1); /* released, */
        assert_int_equal(log[1], 2); /* then the user is told */
        assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_open_folder, setup, teardown),
            cmocka_unit_test_setup_teardown(test_write, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replace, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replace_fill_fails, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replace_folder_sync_fails, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replace_steps_fail, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replace_before_rename, setup, teardown),
            cmocka_unit_test_setup_teardown(test_move_aside, setup, teardown),
            cmocka_unit_test(test_queue_order),
            cmocka_unit_test(test_queue_wait),
            cmocka_unit_test_setup_teardown(test_teardown, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
