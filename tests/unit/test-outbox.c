/* Unit tests of the webhook outbox: appends become ready once written,
 * restart resumes in order, a torn tail is dropped, a corrupt file is moved
 * aside byte for byte, done records are compacted away, and a small window
 * is refilled from disk in order while memory holds only the window. Each
 * test drives a real libuv loop on files in its own temporary folder and
 * ends with uv_loop_close() == 0. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "outbox.h"
#include "state.h"

/* ---- Helpers ---- */

typedef struct Fixture {
        char *dir;
        char *path; /* <dir>/outbox-t */
        uv_loop_t loop;
        unsigned ready_calls;
        bool closed;
} Fixture;

static int setup(void **state)
{
        Fixture *f = calloc(1, sizeof(*f));
        const char *base = getenv("TMPDIR");

        assert_non_null(f);
        assert_true(asprintf(&f->dir, "%s/test-outbox-XXXXXX", base && *base ? base : "/tmp") > 0);
        assert_non_null(mkdtemp(f->dir));
        assert_true(asprintf(&f->path, "%s/outbox-t", f->dir) > 0);
        assert_int_equal(uv_loop_init(&f->loop), 0);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        Fixture *f = *state;
        DIR *d = opendir(f->dir);
        struct dirent *de;

        assert_int_equal(uv_loop_close(&f->loop), 0);
        while (d && (de = readdir(d))) {
                char *p;
                if (de->d_name[0] == '.')
                        continue;
                assert_true(asprintf(&p, "%s/%s", f->dir, de->d_name) > 0);
                unlink(p);
                free(p);
        }
        if (d)
                closedir(d);
        rmdir(f->dir);
        free(f->dir);
        free(f->path);
        free(f);
        return 0;
}

static void on_ready(void *userdata)
{
        Fixture *f = userdata;
        f->ready_calls++;
}

static void on_closed(void *userdata)
{
        Fixture *f = userdata;
        f->closed = true;
}

static Outbox *open_outbox(Fixture *f, size_t window, OutboxLoadReport *rep)
{
        OutboxOptions o = {
            .folder = f->dir,
            .name = "t",
            .window_entries = window,
            .sync_interval_ms = 1,
            .compact_min_bytes = 1024 * 1024,
        };
        Outbox *ob = NULL;

        assert_int_equal(outbox_open(&f->loop, &o, on_ready, f, &ob, rep), 0);
        return ob;
}

/* Runs the loop until nothing is left to do: every job and the batched
 * fdatasync are done. */
static void settle(Fixture *f)
{
        uv_run(&f->loop, UV_RUN_DEFAULT);
}

static void close_outbox(Fixture *f, Outbox *ob)
{
        f->closed = false;
        outbox_close(ob, on_closed, f);
        settle(f);
        assert_true(f->closed);
}

static void append(Outbox *ob, unsigned n)
{
        char sid[32], eid[64], body[128];

        snprintf(sid, sizeof(sid), "ses%u", n % 3);
        snprintf(eid, sizeof(eid), "evt_%032u", n);
        snprintf(body, sizeof(body), "{\"n\":%u,\"text\":\"x y\"}", n);
        assert_int_equal(outbox_append(ob, sid, eid, 1700000000000000 + n, body, strlen(body)), 0);
}

static unsigned body_n(const OutboxEntry *e)
{
        unsigned n;

        assert_int_equal(sscanf(e->body, "{\"n\":%u,", &n), 1);
        return n;
}

static void write_file(const char *path, const char *data, size_t len)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, len), (ssize_t)len);
        close(fd);
}

static char *read_file(const char *path, size_t *ret_len)
{
        FILE *fp = fopen(path, "rb");
        char *data = malloc(1 << 20);
        size_t n;

        assert_non_null(fp);
        assert_non_null(data);
        n = fread(data, 1, 1 << 20, fp);
        fclose(fp);
        data[n] = '\0';
        *ret_len = n;
        return data;
}

/* One framed line as the module writes it. */
static size_t line(char *buf, const char *payload)
{
        return (size_t)sprintf(buf, "%08x %s\n", state_crc32c(0, payload, strlen(payload)), payload);
}

/* ---- Tests ---- */

static void test_append_ready_after_write_and_resume(void **state)
{
        Fixture *f = *state;
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = open_outbox(f, 0, &rep);
        OutboxEntry *e;

        assert_int_equal(rep.pending, 0);
        for (unsigned n = 0; n < 3; n++)
                append(ob, n);
        /* Queued in memory, not yet written: not to be attempted. */
        e = outbox_first(ob);
        assert_non_null(e);
        assert_false(outbox_entry_ready(ob, e));
        settle(f);
        assert_true(f->ready_calls >= 1);
        for (e = outbox_first(ob); e; e = outbox_next(ob, e))
                assert_true(outbox_entry_ready(ob, e));

        /* Bad input is refused. */
        assert_int_equal(outbox_append(ob, "ses1", "evt_1", 1, "a\nb", 3), -EINVAL);
        assert_int_equal(outbox_append(ob, "ses 1", "evt_1", 1, "{}", 2), -EINVAL);
        assert_int_equal(outbox_append(ob, "ses1", "evt_1", 1, "", 0), -EINVAL);

        outbox_done(ob, outbox_first(ob));
        outbox_stats(ob, &st);
        assert_int_equal(st.pending, 2);
        assert_int_equal(st.oldest_created_us, 1700000000000001);
        close_outbox(f, ob);

        ob = open_outbox(f, 0, &rep);
        assert_int_equal(rep.pending, 2);
        assert_int_equal(rep.done_records, 1);
        assert_true(rep.rewritten);
        e = outbox_first(ob);
        assert_int_equal(body_n(e), 1);
        assert_string_equal(e->session_id, "ses1");
        assert_string_equal(e->event_id, "evt_00000000000000000000000000000001");
        assert_int_equal(e->created_us, 1700000000000001);
        assert_true(outbox_entry_ready(ob, e));
        e = outbox_next(ob, e);
        assert_int_equal(body_n(e), 2);
        assert_null(outbox_next(ob, e));

        /* Sequence numbers go on after the restart. */
        append(ob, 3);
        settle(f);
        assert_true(outbox_next(ob, e)->seq > e->seq);
        close_outbox(f, ob);
}

static void test_torn_tail_is_dropped(void **state)
{
        Fixture *f = *state;
        OutboxLoadReport rep;
        char buf[4096], *data;
        size_t n = 0, len;
        Outbox *ob;

        n += line(buf + n, "sessionwatch-outbox 1");
        n += line(buf + n, "E 1 100 ses1 evt_a {\"n\":1}");
        n += line(buf + n, "E 2 200 ses2 evt_b {\"n\":2}");
        memcpy(buf + n, "1234abcd E 3 300 ses3 ev", 24);
        write_file(f->path, buf, n + 24);

        ob = open_outbox(f, 0, &rep);
        assert_false(rep.corrupt);
        assert_int_equal(rep.torn_bytes, 24);
        assert_int_equal(rep.pending, 2);
        assert_int_equal(body_n(outbox_first(ob)), 1);
        close_outbox(f, ob);

        /* The rewrite took the torn bytes away. */
        data = read_file(f->path, &len);
        assert_int_equal(len, n);
        assert_memory_equal(data, buf, n);
        free(data);

        /* A torn header alone is an empty outbox. */
        write_file(f->path, buf, 12);
        ob = open_outbox(f, 0, &rep);
        assert_false(rep.corrupt);
        assert_int_equal(rep.pending, 0);
        close_outbox(f, ob);
}

static void check_corrupt(Fixture *f, const char *content, size_t len, const char *reason)
{
        OutboxLoadReport rep;
        Outbox *ob;
        char *moved;
        size_t moved_len;

        write_file(f->path, content, len);
        ob = open_outbox(f, 0, &rep);
        assert_true(rep.corrupt);
        assert_non_null(strstr(rep.corrupt_reason, reason));
        assert_non_null(strstr(rep.corrupt_path, "/outbox-t.corrupt-"));
        assert_int_equal(rep.pending, 0);
        assert_null(outbox_first(ob));
        close_outbox(f, ob);

        /* Moved aside untouched, never deleted. */
        moved = read_file(rep.corrupt_path, &moved_len);
        assert_int_equal(moved_len, len);
        assert_memory_equal(moved, content, len);
        free(moved);
        unlink(rep.corrupt_path);
}

static void test_corrupt_file_is_moved_aside(void **state)
{
        Fixture *f = *state;
        char buf[4096];
        size_t n = 0, m;

        /* A bad checksum before the last line. */
        n += line(buf + n, "sessionwatch-outbox 1");
        m = n;
        n += line(buf + n, "E 1 100 ses1 evt_a {\"n\":1}");
        buf[m] = buf[m] == '0' ? '1' : '0';
        n += line(buf + n, "E 2 200 ses2 evt_b {\"n\":2}");
        check_corrupt(f, buf, n, "bad checksum or framing in the record at byte 31");

        /* An unknown version. */
        n = line(buf, "sessionwatch-outbox 9");
        check_corrupt(f, buf, n, "unsupported format version");

        /* Not an outbox at all. */
        check_corrupt(f, "hello world, this is not an outbox file\n", 40, "no header");

        /* A record that does not parse, followed by a good one. */
        n = line(buf, "sessionwatch-outbox 1");
        n += line(buf + n, "X 1");
        n += line(buf + n, "D 1");
        check_corrupt(f, buf, n, "a record that does not parse");

        /* Events out of order, or a sequence number repeated: the loader
         * would otherwise hand them out of order (found by fuzz.outbox). */
        n = line(buf, "sessionwatch-outbox 1");
        n += line(buf + n, "E 3 100 ses1 evt_a {}");
        n += line(buf + n, "E 2 200 ses2 evt_b {}");
        n += line(buf + n, "D 3");
        check_corrupt(f, buf, n, "an event out of sequence order in the record at byte 62");
        n = line(buf, "sessionwatch-outbox 1");
        n += line(buf + n, "E 1 100 ses1 evt_a {}");
        n += line(buf + n, "E 1 200 ses2 evt_b {}");
        n += line(buf + n, "D 1");
        check_corrupt(f, buf, n, "an event out of sequence order");
}

static void test_compaction(void **state)
{
        Fixture *f = *state;
        OutboxOptions o = {
            .folder = f->dir,
            .name = "t",
            .sync_interval_ms = 1,
            .compact_min_bytes = 1,
        };
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = NULL;
        struct stat sb;
        unsigned expect = 40;

        assert_int_equal(outbox_open(&f->loop, &o, on_ready, f, &ob, &rep), 0);
        for (unsigned n = 0; n < 50; n++)
                append(ob, n);
        settle(f);
        for (unsigned n = 0; n < 40; n++)
                outbox_done(ob, outbox_first(ob));
        settle(f);
        outbox_stats(ob, &st);
        assert_true(st.compactions >= 1);
        assert_int_equal(st.pending, 10);
        /* Appends after a rewrite go to the new file. */
        append(ob, 50);
        settle(f);
        close_outbox(f, ob);

        assert_int_equal(stat(f->path, &sb), 0);
        ob = open_outbox(f, 0, &rep);
        assert_int_equal(rep.pending, 11);
        for (OutboxEntry *e = outbox_first(ob); e; e = outbox_next(ob, e))
                assert_int_equal(body_n(e), expect++);
        assert_int_equal(expect, 51);
        close_outbox(f, ob);
        /* No temporary file is left behind. */
        {
                char *tmp;
                assert_true(asprintf(&tmp, "%s.tmp", f->path) > 0);
                assert_int_equal(access(tmp, F_OK), -1);
                free(tmp);
        }
}

/* Takes the oldest entry until the outbox is empty, checking order and that
 * memory never holds more than the window. */
static void drain_in_order(Fixture *f, Outbox *ob, size_t window, unsigned first, unsigned count)
{
        unsigned next = first;
        OutboxStats st;

        for (;;) {
                OutboxEntry *e;

                settle(f);
                outbox_stats(ob, &st);
                assert_true(st.window <= window);
                e = outbox_first(ob);
                if (!e)
                        break;
                assert_true(outbox_entry_ready(ob, e));
                assert_int_equal(body_n(e), next);
                next++;
                outbox_done(ob, e);
        }
        assert_int_equal(next, first + count);
        assert_int_equal(st.pending, 0);
        assert_int_equal(st.disk_only, 0);
}

static void test_window_refill(void **state)
{
        Fixture *f = *state;
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = open_outbox(f, 4, &rep);

        for (unsigned n = 0; n < 30; n++)
                append(ob, n);
        /* Three sessions, each with its share of a window of 4 (one
         * event): the rest waits on disk. */
        outbox_stats(ob, &st);
        assert_int_equal(st.window, 3);
        assert_int_equal(st.disk_only, 27);
        assert_int_equal(st.pending, 30);
        settle(f);
        drain_in_order(f, ob, 4, 0, 30);
        outbox_stats(ob, &st);
        assert_true(st.refills >= 26 / 4);

        /* Back to normal: new events go to memory again. */
        append(ob, 30);
        outbox_stats(ob, &st);
        assert_int_equal(st.window, 1);
        assert_int_equal(st.disk_only, 0);
        drain_in_order(f, ob, 4, 30, 1);
        close_outbox(f, ob);
}

static void test_restart_resumes_with_events_on_disk_only(void **state)
{
        Fixture *f = *state;
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = open_outbox(f, 4, &rep);

        for (unsigned n = 0; n < 10; n++)
                append(ob, n);
        settle(f);
        /* Two delivered, the rest still pending (some only on disk). */
        outbox_done(ob, outbox_first(ob));
        outbox_done(ob, outbox_first(ob));
        close_outbox(f, ob);

        ob = open_outbox(f, 4, &rep);
        assert_int_equal(rep.pending, 8);
        /* Loading applies the same share per session as the read-back. */
        outbox_stats(ob, &st);
        assert_int_equal(st.window, 3);
        assert_int_equal(st.disk_only, 5);
        /* New events queue behind those on disk. */
        append(ob, 10);
        append(ob, 11);
        drain_in_order(f, ob, 4, 2, 10);
        close_outbox(f, ob);

        /* Nothing is left after a full drain. */
        ob = open_outbox(f, 4, &rep);
        assert_int_equal(rep.pending, 0);
        close_outbox(f, ob);
}

/* A write that fails (here: the file size limit, as a full disk would)
 * keeps the records, makes nothing ready, is logged and retried; once
 * writing works the events become ready and no partial record is left. */
static void test_write_failure_is_retried(void **state)
{
        Fixture *f = *state;
        OutboxOptions o = {
            .folder = f->dir,
            .name = "t",
            .sync_interval_ms = 1,
            .retry_min_ms = 5,
            .retry_max_ms = 20,
        };
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = NULL;
        struct rlimit saved, tight;
        struct stat sb;
        unsigned turns = 0;

        assert_int_equal(outbox_open(&f->loop, &o, on_ready, f, &ob, &rep), 0);
        settle(f);
        assert_int_equal(stat(f->path, &sb), 0);
        signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
        tight = saved;
        tight.rlim_cur = (rlim_t)sb.st_size + 10;
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &tight), 0);

        for (unsigned n = 0; n < 3; n++)
                append(ob, n);
        do {
                uv_run(&f->loop, UV_RUN_ONCE);
                outbox_stats(ob, &st);
                assert_true(++turns < 100000);
        } while (st.write_errors < 2);
        assert_true(st.degraded);
        assert_false(outbox_entry_ready(ob, outbox_first(ob)));
        assert_int_equal(st.pending, 3);

        assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
        settle(f);
        outbox_stats(ob, &st);
        assert_false(st.degraded);
        for (OutboxEntry *e = outbox_first(ob); e; e = outbox_next(ob, e))
                assert_true(outbox_entry_ready(ob, e));
        close_outbox(f, ob);

        ob = open_outbox(f, 0, &rep);
        assert_int_equal(rep.torn_bytes, 0);
        assert_false(rep.corrupt);
        assert_int_equal(rep.pending, 3);
        close_outbox(f, ob);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_append_ready_after_write_and_resume, setup, teardown),
            cmocka_unit_test_setup_teardown(test_torn_tail_is_dropped, setup, teardown),
            cmocka_unit_test_setup_teardown(test_corrupt_file_is_moved_aside, setup, teardown),
            cmocka_unit_test_setup_teardown(test_compaction, setup, teardown),
            cmocka_unit_test_setup_teardown(test_window_refill, setup, teardown),
            cmocka_unit_test_setup_teardown(test_restart_resumes_with_events_on_disk_only, setup, teardown),
            cmocka_unit_test_setup_teardown(test_write_failure_is_retried, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
