/* Unit tests of the webhook outbox: appends become ready once written,
 * restart resumes in order, a torn tail is dropped, a corrupt file is moved
 * aside byte for byte, done records are compacted away, and a small window
 * is refilled from disk in order while memory holds only the window, shared
 * across sessions so that one failing session cannot hold the others on disk
 * (their order, a rewrite and a reload after a crash included). Each
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

/* ---- The window shared across sessions ---- */

/* Events of a few sessions; the body's n is the index in `all`. */
typedef struct Fair {
        const char *sid[4];
        unsigned n_sessions;
        unsigned session_of[2048]; /* by n */
        unsigned count;
        bool delivered[2048];
        unsigned next_of[4]; /* the next n each session must deliver */
} Fair;

static void fair_append(Fair *fr, Outbox *ob, unsigned session)
{
        char eid[64], body[128];
        unsigned n = fr->count++;

        assert_true(n < 2048);
        fr->session_of[n] = session;
        snprintf(eid, sizeof(eid), "evt_%032u", n);
        snprintf(body, sizeof(body), "{\"n\":%u,\"text\":\"x y\"}", n);
        assert_int_equal(outbox_append(ob, fr->sid[session], eid, 1700000000000000 + n, body, strlen(body)),
                         0);
}

static unsigned fair_session(const Fair *fr, const char *sid)
{
        for (unsigned s = 0; s < fr->n_sessions; s++)
                if (strcmp(fr->sid[s], sid) == 0)
                        return s;
        fail();
        return 0;
}

/* The first undelivered n of a session at or after `from`. */
static unsigned fair_next(const Fair *fr, unsigned session, unsigned from)
{
        for (unsigned n = from; n < fr->count; n++)
                if (fr->session_of[n] == session && !fr->delivered[n])
                        return n;
        return UINT32_MAX;
}

/* Checks the window: in seq order, never over `window` events, and for
 * each session exactly its oldest pending events, in order. Returns how
 * many events of `session` it holds. */
static unsigned fair_check(const Fair *fr, Outbox *ob, size_t window, unsigned session)
{
        unsigned expect[4], held = 0;
        uint64_t last_seq = 0;
        size_t k = 0;
        OutboxStats st;

        for (unsigned s = 0; s < fr->n_sessions; s++)
                expect[s] = fair_next(fr, s, 0);
        for (OutboxEntry *e = outbox_first(ob); e; e = outbox_next(ob, e), k++) {
                unsigned s = fair_session(fr, e->session_id), n = body_n(e);

                assert_true(e->seq > last_seq);
                last_seq = e->seq;
                assert_int_equal(n, expect[s]);
                expect[s] = fair_next(fr, s, n + 1);
                if (s == session)
                        held++;
        }
        outbox_stats(ob, &st);
        assert_int_equal(st.window, k);
        assert_true(k <= window);
        return held;
}

/* Delivers the oldest event of `session` in the window; false when it has
 * none there. */
static bool fair_deliver(Fair *fr, Outbox *ob, unsigned session)
{
        for (OutboxEntry *e = outbox_first(ob); e; e = outbox_next(ob, e)) {
                unsigned n = body_n(e);

                if (fair_session(fr, e->session_id) != session)
                        continue;
                /* Not written yet: the session waits, as in the sink. */
                if (!outbox_entry_ready(ob, e))
                        return false;
                assert_int_equal(n, fr->next_of[session]);
                assert_false(fr->delivered[n]);
                fr->delivered[n] = true;
                fr->next_of[session] = fair_next(fr, session, n + 1);
                outbox_done(ob, e);
                return true;
        }
        return false;
}

static void fair_init(Fair *fr)
{
        *fr = (Fair){.sid = {"sesA", "sesB", "sesC"}, .n_sessions = 3};
}

static void fair_start(Fair *fr)
{
        for (unsigned s = 0; s < fr->n_sessions; s++)
                fr->next_of[s] = fair_next(fr, s, 0);
}

/* Delivers every event of the sessions in `mask`, one at a time, checking
 * the window after each; returns how many. */
static unsigned fair_drain(Fixture *f, Fair *fr, Outbox *ob, size_t window, unsigned mask, unsigned failing)
{
        unsigned delivered = 0;
        bool any;

        do {
                any = false;
                settle(f);
                /* The failing session never holds more than its share. */
                assert_true(fair_check(fr, ob, window, failing) <= (window / 16 > 0 ? window / 16 : 1));
                for (unsigned s = 0; s < fr->n_sessions; s++)
                        if ((mask & (1u << s)) && fair_deliver(fr, ob, s)) {
                                any = true;
                                delivered++;
                        }
        } while (any);
        return delivered;
}

/* One session whose events keep failing (never done) holds only its share
 * of the window: the others' events, appended after all of its, are read
 * back and delivered, in order; its own follow in order once they go. */
static void test_fair_one_session_failing(void **state)
{
        Fixture *f = *state;
        OutboxLoadReport rep;
        OutboxStats st;
        Fair fr;
        Outbox *ob = open_outbox(f, 32, &rep);

        fair_init(&fr);
        for (unsigned n = 0; n < 80; n++)
                fair_append(&fr, ob, 0);
        for (unsigned n = 0; n < 20; n++) {
                fair_append(&fr, ob, 1);
                fair_append(&fr, ob, 2);
        }
        fair_start(&fr);
        outbox_stats(ob, &st);
        assert_int_equal(st.window, 2);
        assert_int_equal(st.disk_only, 118);

        /* B and C get through while A keeps failing. */
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 1 | 1u << 2, 0), 40);
        outbox_stats(ob, &st);
        assert_int_equal(st.pending, 80);
        assert_true(st.refills >= 2);

        /* New events of B still pass A's while A waits. */
        fair_append(&fr, ob, 1);
        fr.next_of[1] = fair_next(&fr, 1, 0);
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 1, 0), 1);

        /* A's events, in order, once its receiver takes them. */
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 0, 0), 80);
        outbox_stats(ob, &st);
        assert_int_equal(st.pending, 0);
        assert_int_equal(st.disk_only, 0);
        for (unsigned n = 0; n < fr.count; n++)
                assert_true(fr.delivered[n]);

        /* With nothing on disk, new events go to memory again. */
        fair_append(&fr, ob, 0);
        outbox_stats(ob, &st);
        assert_int_equal(st.window, 1);
        assert_int_equal(st.disk_only, 0);
        close_outbox(f, ob);
}

/* Reads the n of every E record of the file, in file order, and checks the
 * seqs increase. Returns how many. */
static unsigned file_events(const char *path, unsigned *ret_n, unsigned max)
{
        size_t len;
        char *data = read_file(path, &len), *p = data;
        unsigned count = 0;
        uint64_t last = 0;

        while (p < data + len) {
                char *nl = strchr(p, '\n');
                uint64_t seq;
                unsigned n;

                assert_non_null(nl);
                if (sscanf(p + 9, "E %" SCNu64, &seq) == 1) {
                        char *b = strstr(p, "{\"n\":");

                        assert_non_null(b);
                        assert_true(b < nl);
                        assert_int_equal(sscanf(b, "{\"n\":%u,", &n), 1);
                        assert_true(seq > last);
                        last = seq;
                        assert_true(count < max);
                        ret_n[count++] = n;
                }
                p = nl + 1;
        }
        free(data);
        return count;
}

/* A rewrite while one session waits keeps every pending event (in the
 * window or only on disk) in seq order, and none that was delivered, even
 * those delivered past the read position. */
static void test_fair_rewrite_keeps_pending_in_order(void **state)
{
        Fixture *f = *state;
        OutboxOptions o = {
            .folder = f->dir,
            .name = "t",
            .window_entries = 32,
            .sync_interval_ms = 1,
            .compact_min_bytes = 1,
        };
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = NULL;
        unsigned ns[256], k, a = 0;
        Fair fr;

        assert_int_equal(outbox_open(&f->loop, &o, on_ready, f, &ob, &rep), 0);
        fair_init(&fr);
        for (unsigned n = 0; n < 20; n++)
                fair_append(&fr, ob, 0);
        for (unsigned n = 0; n < 30; n++) {
                fair_append(&fr, ob, 1);
                fair_append(&fr, ob, 2);
        }
        for (unsigned n = 0; n < 10; n++)
                fair_append(&fr, ob, 0);
        fair_start(&fr);
        /* One of A's is delivered, the rest waits behind its share. */
        settle(f);
        assert_true(fair_deliver(&fr, ob, 0));
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 1 | 1u << 2, 0), 60);
        outbox_stats(ob, &st);
        assert_true(st.compactions >= 1);
        assert_int_equal(st.pending, 29);

        /* The file holds exactly A's pending events, in order (D records
         * made after the last rewrite aside, there are none here). */
        k = file_events(f->path, ns, 256);
        for (unsigned i = 0; i < k; i++) {
                if (fr.delivered[ns[i]])
                        continue;
                assert_int_equal(fr.session_of[ns[i]], 0);
                assert_int_equal(ns[i], fair_next(&fr, 0, a));
                a = ns[i] + 1;
        }
        assert_int_equal(fair_next(&fr, 0, a), UINT32_MAX);
        close_outbox(f, ob);

        ob = open_outbox(f, 32, &rep);
        assert_int_equal(rep.pending, 29);
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 0, 0), 29);
        close_outbox(f, ob);
        for (unsigned n = 0; n < fr.count; n++)
                assert_true(fr.delivered[n]);
}

/* The file as a crash leaves it, taken while one session waits and the
 * others' events were delivered past the read position, loads with nothing
 * lost: every event without a D record is pending, the load applies the
 * same share, and the rest drains in order per session. */
static void test_fair_reload_after_crash(void **state)
{
        Fixture *f = *state;
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = open_outbox(f, 32, &rep);
        char *snap;
        size_t len;
        unsigned delivered;
        bool at_crash[2048];
        Fair fr;

        fair_init(&fr);
        for (unsigned n = 0; n < 40; n++)
                fair_append(&fr, ob, 0);
        for (unsigned n = 0; n < 15; n++) {
                fair_append(&fr, ob, 1);
                fair_append(&fr, ob, 2);
        }
        fair_start(&fr);
        settle(f);
        /* Some of B's and C's delivered, none of A's. */
        for (unsigned n = 0; n < 5; n++) {
                assert_true(fair_deliver(&fr, ob, 1));
                assert_true(fair_deliver(&fr, ob, 2));
                settle(f);
        }
        fair_check(&fr, ob, 32, 0);
        /* Everything is written and synced: this is what a SIGKILL leaves. */
        snap = read_file(f->path, &len);
        memcpy(at_crash, fr.delivered, sizeof(at_crash));
        outbox_stats(ob, &st);
        assert_int_equal(st.pending, 60);
        /* The daemon goes on for a while, then is killed. */
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 1, 0), 10);
        close_outbox(f, ob);
        write_file(f->path, snap, len);
        free(snap);
        /* What was delivered after the copy is not in it: sent again. */
        memcpy(fr.delivered, at_crash, sizeof(at_crash));
        delivered = 0;
        for (unsigned n = 0; n < fr.count; n++)
                delivered += fr.delivered[n];
        assert_int_equal(delivered, 10);
        fair_start(&fr);

        ob = open_outbox(f, 32, &rep);
        assert_int_equal(rep.pending, 60);
        outbox_stats(ob, &st);
        assert_int_equal(st.window + st.disk_only, 60);
        fair_check(&fr, ob, 32, 0);
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 1 | 1u << 2, 0), 20);
        assert_int_equal(fair_drain(f, &fr, ob, 32, 1u << 0, 0), 40);
        close_outbox(f, ob);
        for (unsigned n = 0; n < fr.count; n++)
                assert_true(fr.delivered[n]);
}

/* Random appends across sessions, deliveries (rarely of the first
 * session's), restarts and rewrites: every session keeps within its share
 * and its order, and every event is delivered exactly once. */
static void test_fair_random(void **state)
{
        Fixture *f = *state;
        OutboxOptions o = {
            .folder = f->dir,
            .name = "t",
            .window_entries = 32,
            .sync_interval_ms = 1,
            .compact_min_bytes = 1,
        };
        OutboxLoadReport rep;
        OutboxStats st;
        Outbox *ob = NULL;
        uint32_t rnd = 12345;
        uint64_t compactions = 0;
        unsigned restarts = 0;
        Fair fr;

        fair_init(&fr);
        fr.sid[3] = "sesD";
        fr.n_sessions = 4;
        assert_int_equal(outbox_open(&f->loop, &o, on_ready, f, &ob, &rep), 0);
        for (unsigned step = 0; step < 4000; step++) {
                unsigned r, s;

                rnd = rnd * 1103515245 + 12345;
                r = (rnd >> 8) % 100;
                s = (rnd >> 20) % 4;
                if (r < 45 && fr.count < 2000) {
                        bool none = fair_next(&fr, s, 0) == UINT32_MAX;

                        fair_append(&fr, ob, s);
                        if (none)
                                fr.next_of[s] = fair_next(&fr, s, 0);
                } else if (r < 90) {
                        if (s != 0 || r < 50)
                                (void)fair_deliver(&fr, ob, s);
                } else if (r < 98) {
                        settle(f);
                        for (unsigned k = 0; k < 4; k++)
                                assert_true(fair_check(&fr, ob, 32, k) <= 2);
                } else {
                        outbox_stats(ob, &st);
                        compactions += st.compactions;
                        restarts++;
                        close_outbox(f, ob);
                        assert_int_equal(outbox_open(&f->loop, &o, on_ready, f, &ob, &rep), 0);
                        for (unsigned k = 0; k < 4; k++)
                                assert_true(fair_check(&fr, ob, 32, k) <= 2);
                }
        }
        (void)fair_drain(f, &fr, ob, 32, 0xf, 0);
        outbox_stats(ob, &st);
        compactions += st.compactions;
        assert_true(compactions >= 1);
        assert_true(restarts >= 1);
        assert_int_equal(st.pending, 0);
        for (unsigned n = 0; n < fr.count; n++)
                assert_true(fr.delivered[n]);
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
            cmocka_unit_test_setup_teardown(test_fair_one_session_failing, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fair_rewrite_keeps_pending_in_order, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fair_reload_after_crash, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fair_random, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
