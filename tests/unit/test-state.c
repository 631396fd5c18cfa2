/* Unit tests for durable state: the record format, loading (fresh, torn,
 * corrupt), appending, compaction with concurrent changes, flush at stop,
 * and write failures injected through the module's fault hook. Each test
 * drives a real libuv loop on files in its own temporary folder and ends
 * with uv_loop_close() == 0.
 *
 * With SW_STATE_BENCH=1 in the environment, test_bench prints the timings
 * quoted in the module's documentation (it asserts nothing about them). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "log.h"
#include "state.h"

/* ---- Helpers ---- */

static bool under_valgrind(void)
{
        const char *p = getenv("LD_PRELOAD");

        return p && strstr(p, "valgrind");
}

/* Fewer records under valgrind, where everything is ~50 times slower. */
static size_t scaled(size_t n)
{
        return under_valgrind() ? (n / 20 > 50 ? n / 20 : 50) : n;
}

static char *make_tmpdir(void)
{
        const char *base = getenv("TMPDIR");
        char *p;

        assert_true(asprintf(&p, "%s/test-state-XXXXXX", base && *base ? base : "/tmp") > 0);
        assert_non_null(mkdtemp(p));
        return p;
}

static void rm_rf(const char *path)
{
        DIR *d = opendir(path);
        struct dirent *de;

        if (!d) {
                (void)unlink(path);
                return;
        }
        while ((de = readdir(d))) {
                char *sub;

                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                assert_true(asprintf(&sub, "%s/%s", path, de->d_name) > 0);
                rm_rf(sub);
                free(sub);
        }
        closedir(d);
        (void)rmdir(path);
}

static char *path_join(const char *a, const char *b)
{
        char *p;

        assert_true(asprintf(&p, "%s/%s", a, b) > 0);
        return p;
}

static void write_file(const char *dir, const char *name, const void *data, size_t n)
{
        char *p = path_join(dir, name);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, n), (ssize_t)n);
        close(fd);
        free(p);
}

/* Returns the file's contents (NUL-terminated) and its size, or NULL. */
static char *read_file(const char *dir, const char *name, size_t *ret_size)
{
        char *p = path_join(dir, name);
        struct stat st;
        char *data;
        int fd = open(p, O_RDONLY | O_CLOEXEC);

        free(p);
        if (fd < 0)
                return NULL;
        assert_int_equal(fstat(fd, &st), 0);
        data = malloc((size_t)st.st_size + 1);
        assert_non_null(data);
        assert_int_equal(read(fd, data, (size_t)st.st_size), st.st_size);
        data[st.st_size] = '\0';
        close(fd);
        *ret_size = (size_t)st.st_size;
        return data;
}

static off_t file_size(const char *dir, const char *name)
{
        char *p = path_join(dir, name);
        struct stat st;
        int r = stat(p, &st);

        free(p);
        return r < 0 ? -1 : st.st_size;
}

/* Finds `state.corrupt-YYYYmmddTHHMMSSZ[-N]` files; returns how many and
 * the first name. */
static unsigned find_corrupt(const char *dir, char *ret_name, size_t size)
{
        static const char prefix[] = "state.corrupt-";
        DIR *d = opendir(dir);
        struct dirent *de;
        unsigned n = 0;

        assert_non_null(d);
        while ((de = readdir(d))) {
                const char *t = de->d_name + sizeof(prefix) - 1;

                if (strncmp(de->d_name, prefix, sizeof(prefix) - 1) != 0)
                        continue;
                /* The time stamp: 8 digits, T, 6 digits, Z. */
                for (int i = 0; i < 16; i++) {
                        if (i == 8)
                                assert_int_equal(t[i], 'T');
                        else if (i == 15)
                                assert_int_equal(t[i], 'Z');
                        else
                                assert_true(t[i] >= '0' && t[i] <= '9');
                }
                assert_true(t[16] == '\0' || t[16] == '-');
                if (n++ == 0 && ret_name)
                        snprintf(ret_name, size, "%s", de->d_name);
        }
        closedir(d);
        return n;
}

/* A line with a correct checksum around any payload. */
static size_t seal(char *buf, const char *payload)
{
        size_t n = strlen(payload);

        snprintf(buf, 10, "%08x ", state_crc32c(0, payload, n));
        memcpy(buf + 9, payload, n);
        buf[9 + n] = '\n';
        buf[10 + n] = '\0';
        return 10 + n;
}

/* ---- A model of the daemon's table: id → fields, fixed capacity so that
 * a cursor stays valid while it changes. ---- */

typedef struct Entry {
        char id[STATE_ID_MAX + 1];
        size_t id_len;
        bool used; /* the slot holds this id (live or not) */
        bool live;
        char *status; /* NULL: never observed */
        size_t status_len;
        int64_t updated_at_us;
        unsigned flags;
} Entry;

typedef struct Model {
        Entry *e;
        size_t cap; /* power of two */
        size_t n_live;
        unsigned n_session_calls, n_removed_calls;
} Model;

static void model_init(Model *m, size_t max)
{
        size_t cap = 16;

        while (cap < 2 * max)
                cap *= 2;
        *m = (Model){.e = calloc(cap, sizeof(Entry)), .cap = cap};
        assert_non_null(m->e);
}

static void model_done(Model *m)
{
        for (size_t i = 0; i < m->cap; i++)
                free(m->e[i].status);
        free(m->e);
        *m = (Model){};
}

static Entry *model_slot(Model *m, const char *id, size_t len)
{
        uint64_t h = 1469598103934665603ull;

        for (size_t i = 0; i < len; i++)
                h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
        for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
                Entry *e = &m->e[i];

                if (!e->used || (e->id_len == len && memcmp(e->id, id, len) == 0))
                        return e;
        }
}

static void model_set(Model *m, const StateSession *s)
{
        Entry *e = model_slot(m, s->id, s->id_len);

        if (!e->used) {
                memcpy(e->id, s->id, s->id_len);
                e->id[s->id_len] = '\0';
                e->id_len = s->id_len;
                e->used = true;
        }
        if (!e->live)
                m->n_live++;
        assert_true(m->n_live * 2 <= m->cap);
        e->live = true;
        free(e->status);
        e->status = NULL;
        if (s->status) {
                e->status = malloc(s->status_len + 1);
                assert_non_null(e->status);
                memcpy(e->status, s->status, s->status_len);
                e->status[s->status_len] = '\0';
        }
        e->status_len = s->status_len;
        e->updated_at_us = s->updated_at_us;
        e->flags = s->flags;
}

static void model_remove(Model *m, const char *id, size_t len)
{
        Entry *e = model_slot(m, id, len);

        if (e->used && e->live) {
                e->live = false;
                m->n_live--;
        }
}

static StateSession entry_session(const Entry *e)
{
        return (StateSession){.id = e->id,
                              .id_len = e->id_len,
                              .status = e->status,
                              .status_len = e->status_len,
                              .updated_at_us = e->updated_at_us,
                              .flags = e->flags};
}

static int on_load_session(void *userdata, const StateSession *s)
{
        Model *m = userdata;

        /* The loader hands out NUL-terminated strings. */
        assert_int_equal(s->id[s->id_len], '\0');
        if (s->status)
                assert_int_equal(s->status[s->status_len], '\0');
        m->n_session_calls++;
        model_set(m, s);
        return 0;
}

static int on_load_removed(void *userdata, const char *id, size_t len)
{
        Model *m = userdata;

        m->n_removed_calls++;
        model_remove(m, id, len);
        return 0;
}

static int on_next(void *userdata, size_t *cursor, StateSession *ret)
{
        Model *m = userdata;

        for (size_t i = *cursor; i < m->cap; i++)
                if (m->e[i].live) {
                        *ret = entry_session(&m->e[i]);
                        *cursor = i + 1;
                        return 1;
                }
        *cursor = m->cap;
        return 0;
}

static const StateCallbacks model_callbacks = {
    .session = on_load_session,
    .removed = on_load_removed,
    .next = on_next,
};

static void assert_model_equal(const Model *a, const Model *b)
{
        assert_int_equal(a->n_live, b->n_live);
        for (size_t i = 0; i < a->cap; i++) {
                const Entry *x = &a->e[i], *y;

                if (!x->live)
                        continue;
                y = model_slot((Model *)b, x->id, x->id_len);
                assert_true(y->live);
                assert_int_equal(x->updated_at_us, y->updated_at_us);
                assert_int_equal(x->flags, y->flags);
                assert_int_equal(!x->status, !y->status);
                if (x->status) {
                        assert_int_equal(x->status_len, y->status_len);
                        assert_memory_equal(x->status, y->status, x->status_len);
                }
        }
}

/* Updates the model and tells the module, as the daemon would. */
static void change(State *st, Model *m, const char *id, const char *status, int64_t updated, unsigned flags)
{
        StateSession s = {.id = id,
                          .id_len = strlen(id),
                          .status = status,
                          .status_len = status ? strlen(status) : 0,
                          .updated_at_us = updated,
                          .flags = flags};

        model_set(m, &s);
        assert_int_equal(state_put_session(st, &s), 0);
}

static void drop(State *st, Model *m, const char *id)
{
        model_remove(m, id, strlen(id));
        assert_int_equal(state_remove_session(st, id, strlen(id)), 0);
}

static const char *const statuses[] = {"Pending", "Active",     "Waiting",   "Succeeded",
                                       "Failed",  "Cancelling", "Cancelled", "Paused for review"};

static void fill(State *st, Model *m, size_t n, unsigned round)
{
        char id[32];

        for (size_t k = 0; k < n; k++) {
                snprintf(id, sizeof(id), "ses%08zu", k);
                change(st, m, id, statuses[(k + round) % 8], 1642377165601486 + (int64_t)(k + round),
                       (k % 3 == 0) ? STATE_SESSION_DYNAMIC : 0);
        }
}

/* ---- Loop fixture ---- */

typedef struct Fixture {
        uv_loop_t loop;
        char *dir;
        State *st;
        StateLoadReport rep;
        Model model;
        bool closed;
} Fixture;

static StateOptions test_options(const char *dir)
{
        return (StateOptions){
            .path = dir,
            .sync_interval_ms = 1,
            .compact_min_bytes = 1u << 30, /* only when a test asks */
            .compact_chunk_records = 1000,
            .retry_min_ms = 5,
            .retry_max_ms = 20,
        };
}

static void on_state_closed(void *userdata)
{
        Fixture *f = userdata;

        f->closed = true;
}

static void fixture_open(Fixture *f, const StateOptions *o, size_t model_max)
{
        model_init(&f->model, model_max);
        f->st = NULL;
        f->rep = (StateLoadReport){};
        assert_int_equal(state_open(&f->loop, o, &model_callbacks, &f->model, &f->st, &f->rep), 0);
        assert_non_null(f->st);
}

static void fixture_setup(Fixture *f)
{
        *f = (Fixture){};
        assert_int_equal(uv_loop_init(&f->loop), 0);
        f->dir = make_tmpdir();
}

static void fixture_close_state(Fixture *f)
{
        f->closed = false;
        state_close(f->st, on_state_closed, f);
        assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
        assert_true(f->closed);
        f->st = NULL;
        model_done(&f->model);
}

static void fixture_teardown(Fixture *f)
{
        if (f->st)
                fixture_close_state(f);
        assert_int_equal(uv_loop_close(&f->loop), 0);
        rm_rf(f->dir);
        free(f->dir);
}

/* Reopens the folder into a fresh model and checks it equals `expect`. */
static void assert_reload_equals(const char *dir, const Model *expect)
{
        uv_loop_t loop;
        Model m;
        State *st = NULL;
        StateLoadReport rep;
        StateOptions o = test_options(dir);

        assert_int_equal(uv_loop_init(&loop), 0);
        model_init(&m, expect->cap / 2);
        assert_int_equal(state_open(&loop, &o, &model_callbacks, &m, &st, &rep), 0);
        assert_false(rep.corrupt);
        assert_int_equal(rep.torn_bytes, 0);
        assert_model_equal(expect, &m);
        state_close(st, NULL, NULL);
        assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(uv_loop_close(&loop), 0);
        model_done(&m);
}

/* Runs the loop until nothing of the module is active (no job, no timer):
 * with a 1 ms sync interval that is soon after the last change. */
static void drain(Fixture *f)
{
        assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
}

static void on_tick(uv_timer_t *t)
{
        (void)t;
}

/* Runs the loop until `done(f)` holds, with a ticking timer so the loop
 * wakes up to check. Fails after `timeout_ms`. */
static void run_until(Fixture *f, bool (*done)(Fixture *), uint64_t timeout_ms)
{
        uv_timer_t tick;
        uint64_t deadline;

        assert_int_equal(uv_timer_init(&f->loop, &tick), 0);
        assert_int_equal(uv_timer_start(&tick, on_tick, 1, 1), 0);
        uv_update_time(&f->loop);
        deadline = uv_now(&f->loop) + timeout_ms;
        while (!done(f)) {
                assert_true(uv_now(&f->loop) < deadline);
                uv_run(&f->loop, UV_RUN_ONCE);
        }
        uv_close((uv_handle_t *)&tick, NULL);
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Runs the loop for `ms` milliseconds of loop time. */
static void run_for(Fixture *f, uint64_t ms)
{
        uv_timer_t wait;

        assert_int_equal(uv_timer_init(&f->loop, &wait), 0);
        assert_int_equal(uv_timer_start(&wait, on_tick, ms, 0), 0);
        while (uv_is_active((uv_handle_t *)&wait))
                uv_run(&f->loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *)&wait, NULL);
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* ---- CRC ---- */

static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
        uint32_t c = 0xffffffffu;

        while (n--) {
                c ^= *p++;
                for (int k = 0; k < 8; k++)
                        c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
        }
        return ~c;
}

static void test_crc32c(void **unused)
{
        unsigned char buf[1000];

        assert_int_equal(state_crc32c(0, "123456789", 9), 0xe3069283u);
        assert_int_equal(state_crc32c(0, "", 0), 0);
        for (size_t i = 0; i < sizeof(buf); i++)
                buf[i] = (unsigned char)(i * 131 + 7);
        /* Every length and alignment against a bit-at-a-time reference, and
         * incremental use equals one call. */
        for (size_t off = 0; off < 8; off++)
                for (size_t n = 0; n < 100; n++)
                        assert_int_equal(state_crc32c(0, buf + off, n), crc_bitwise(buf + off, n));
        for (size_t cut = 0; cut <= sizeof(buf); cut += 37)
                assert_int_equal(state_crc32c(state_crc32c(0, buf, cut), buf + cut, sizeof(buf) - cut),
                                 crc_bitwise(buf, sizeof(buf)));
}

/* ---- Record format ---- */

static void test_record_round_trip(void **unused)
{
        static char all_bytes[256], longest[STATE_STATUS_MAX], long_id[STATE_ID_MAX + 1];
        const struct {
                const char *status;
                size_t len; /* 0: strlen */
                int64_t updated;
                unsigned flags;
        } cases[] = {
            {"Active", 0, 1642377165601486, 0},
            {NULL, 0, 0, STATE_SESSION_DYNAMIC},
            {"", 0, 5, 0},
            {"Waiting on a human", 0, 1, STATE_SESSION_GONE},
            {"line\nbreak\r\n", 0, 2, STATE_SESSION_DYNAMIC | STATE_SESSION_GONE},
            {"100% done %41", 0, -1, 0},
            {"\xc3\x9cnic\xc3\xb6"
             "d\xc3\xa9 \xe2\x9c\x93",
             0, INT64_MAX, 0},
            {"-", 0, INT64_MIN + 1, 0},
            {"=", 0, 0, 0},
            {"a b\tc", 0, 3, 0},
            {all_bytes, 256, 4, 0},
            {longest, STATE_STATUS_MAX, 42, STATE_SESSION_GONE},
        };
        char line[STATE_LINE_MAX];
        StateRecord rec;

        for (int i = 0; i < 256; i++)
                all_bytes[i] = (char)i;
        memset(longest, '%', sizeof(longest));
        memset(long_id, 'z', STATE_ID_MAX);

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const char *ids[] = {"ses20220120za1pskd", long_id, "a", "A_b-9"};

                for (size_t k = 0; k < 4; k++) {
                        size_t len = cases[i].len      ? cases[i].len
                                     : cases[i].status ? strlen(cases[i].status)
                                                       : 0;
                        StateSession s = {.id = ids[k],
                                          .id_len = strlen(ids[k]),
                                          .status = cases[i].status,
                                          .status_len = len,
                                          .updated_at_us = cases[i].updated,
                                          .flags = cases[i].flags};
                        ssize_t n = state_format_session(line, sizeof(line), &s);

                        assert_true(n > 10);
                        assert_true((size_t)n <= STATE_LINE_MAX);
                        /* One line of printable ASCII, whatever the status holds. */
                        assert_int_equal(line[n - 1], '\n');
                        for (ssize_t b = 0; b < n - 1; b++)
                                assert_true(line[b] >= 0x20 && line[b] < 0x7f);

                        memset(&rec, 0x5a, sizeof(rec));
                        assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
                        assert_int_equal(rec.type, STATE_RECORD_SESSION);
                        assert_int_equal(rec.session.id_len, s.id_len);
                        assert_memory_equal(rec.session.id, s.id, s.id_len);
                        assert_int_equal(!rec.session.status, !s.status);
                        if (s.status) {
                                assert_int_equal(rec.session.status_len, len);
                                assert_memory_equal(rec.session.status, s.status, len);
                        }
                        assert_int_equal(rec.session.updated_at_us, s.updated_at_us);
                        assert_int_equal(rec.session.flags, s.flags);
                }
        }

        {
                ssize_t n = state_format_removed(line, sizeof(line), "ses1", 4);

                assert_int_equal(n, 16);
                assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
                assert_int_equal(rec.type, STATE_RECORD_REMOVED);
                assert_string_equal(rec.id, "ses1");

                n = state_format_header(line, sizeof(line));
                assert_int_equal(n, 30);
                assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
        }
        assert_int_equal(rec.type, STATE_RECORD_HEADER);
        assert_int_equal(rec.version, STATE_FORMAT_VERSION);
}

static void test_record_format_rejects(void **unused)
{
        char long_id[STATE_ID_MAX + 2], long_status[STATE_STATUS_MAX + 1], line[STATE_LINE_MAX];
        const struct {
                const char *id;
                const char *status;
                size_t status_len;
                unsigned flags;
                size_t size;
                int error;
        } cases[] = {
            {"", "Active", 6, 0, sizeof(line), -EINVAL},
            {"ses 1", "Active", 6, 0, sizeof(line), -EINVAL},
            {"ses/1", "Active", 6, 0, sizeof(line), -EINVAL},
            {"ses\n1", "Active", 6, 0, sizeof(line), -EINVAL},
            {"s\xc3\xa9s", "Active", 6, 0, sizeof(line), -EINVAL},
            {long_id, "Active", 6, 0, sizeof(line), -EINVAL},
            {"ses1", long_status, sizeof(long_status), 0, sizeof(line), -EINVAL},
            {"ses1", "Active", 6, 1u << 5, sizeof(line), -EINVAL},
            {"ses1", "Active", 6, 0, 20, -ENOBUFS},
        };
        char id_copy[STATE_ID_MAX + 2];

        memset(long_id, 'a', STATE_ID_MAX + 1);
        long_id[STATE_ID_MAX + 1] = '\0';
        memset(long_status, 'A', sizeof(long_status));
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                StateSession s = {.id = cases[i].id,
                                  .id_len = strlen(cases[i].id),
                                  .status = cases[i].status,
                                  .status_len = cases[i].status_len,
                                  .flags = cases[i].flags};

                assert_int_equal(state_format_session(line, cases[i].size, &s), cases[i].error);
        }
        snprintf(id_copy, sizeof(id_copy), "%s", "bad id");
        assert_int_equal(state_format_removed(line, sizeof(line), id_copy, strlen(id_copy)), -EINVAL);
        assert_int_equal(state_format_removed(line, 12, "ses1", 4), -ENOBUFS);
}

static void test_record_parse_rejects(void **unused)
{
        const struct {
                const char *payload; /* sealed with a correct checksum */
                int error;
        } sealed[] = {
            {"X ses1", -EINVAL},
            {"S ses1 Active 1", -EINVAL},
            {"S ses1 Active 1 - extra", -EINVAL},
            {"S ses1  Active 1 -", -EINVAL},
            {"S ses1 Active 1 x", -EINVAL},
            {"S ses1 Active 1 dd", -EINVAL},
            {"S ses1 Active 1 -d", -EINVAL},
            {"S ses1 Active 1 ", -EINVAL},
            {"S ses1 Act.ve 1 -", -EINVAL},
            {"S ses1 %G1 1 -", -EINVAL},
            {"S ses1 ab%4 1 -", -EINVAL},
            {"S ses1 ab% 1 -", -EINVAL},
            {"S ses1 Active 99999999999999999999 -", -EINVAL},
            {"S ses1 Active 9223372036854775808 -", -EINVAL},
            {"S ses1 Active 1x -", -EINVAL},
            {"S ses/1 Active 1 -", -EINVAL},
            {"U ses1 more", -EINVAL},
            {"U", -EINVAL},
            {"SS ses1 Active 1 -", -EINVAL},
            {"", -EBADMSG},
            {"sessionwatch-state 3", -EPROTONOSUPPORT},
            {"sessionwatch-state 99", -EPROTONOSUPPORT},
            {"sessionwatch-state x", -EINVAL},
            {"sessionwatch-state ", -EINVAL},
        };
        char line[STATE_LINE_MAX];
        StateRecord rec;
        size_t n;

        for (size_t i = 0; i < sizeof(sealed) / sizeof(sealed[0]); i++) {
                n = seal(line, sealed[i].payload);
                assert_int_equal(state_parse_line(line, n - 1, &rec), sealed[i].error);
        }

        /* A checksum mismatch anywhere: every single-byte change of a good
         * line is detected. */
        n = seal(line, "S ses20220120za1pskd Active 1642377165601486 d");
        for (size_t i = 0; i < n - 1; i++) {
                char orig = line[i];

                for (int delta = 1; delta < 256; delta += 37) {
                        line[i] = (char)(orig + delta);
                        assert_true(state_parse_line(line, n - 1, &rec) < 0);
                }
                line[i] = orig;
        }
        assert_int_equal(state_parse_line(line, n - 1, &rec), 0);
        /* Framing: upper-case hex, missing separator, too short. */
        assert_int_equal(state_parse_line("0000000", 7, &rec), -EBADMSG);
        assert_int_equal(state_parse_line("00000000xS ses1", 15, &rec), -EBADMSG);
        n = seal(line, "U ses1");
        for (size_t i = 0; i < 8; i++)
                if (line[i] >= 'a' && line[i] <= 'f') {
                        line[i] = (char)(line[i] - 'a' + 'A');
                        assert_int_equal(state_parse_line(line, n - 1, &rec), -EBADMSG);
                        break;
                }
}

/* ---- Loading ---- */

static void test_load_missing_and_empty(void **unused)
{
        const char *header_line;
        char header[64] = {};
        size_t size;
        char *data;
        Fixture f;

        assert_true(state_format_header(header, sizeof(header) - 1) > 0);
        header_line = header;

        /* Missing file. */
        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 16);
        }
        assert_true(f.rep.fresh);
        assert_false(f.rep.corrupt);
        assert_false(f.rep.degraded);
        assert_int_equal(f.rep.records, 0);
        data = read_file(f.dir, "state", &size);
        assert_non_null(data);
        assert_string_equal(data, header_line);
        free(data);
        fixture_close_state(&f);

        /* Empty file. */
        write_file(f.dir, "state", "", 0);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 16);
        }
        assert_true(f.rep.fresh);
        assert_false(f.rep.corrupt);
        data = read_file(f.dir, "state", &size);
        assert_string_equal(data, header_line);
        free(data);
        fixture_close_state(&f);

        /* Header only: not fresh, nothing loaded. */
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 16);
        }
        assert_false(f.rep.fresh);
        assert_int_equal(f.rep.records, 0);
        assert_int_equal(f.model.n_session_calls, 0);
        fixture_teardown(&f);
}

static void test_load_missing_folder(void **unused)
{
        struct stat st;
        char *sub;
        Fixture f;

        fixture_setup(&f);
        sub = path_join(f.dir, "a/b/c");
        {
                StateOptions o = test_options(sub);

                fixture_open(&f, &o, 16);
        }
        assert_true(f.rep.fresh);
        assert_false(f.rep.degraded);
        assert_int_equal(stat(sub, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0700);
        assert_true(file_size(sub, "state") > 0);
        free(sub);
        fixture_teardown(&f);
}

static void test_load_records_last_wins(void **unused)
{
        char buf[4096], *p = buf;
        Fixture f;

        p += state_format_header(p, 64);
        p += seal(p, "S ses1 Pending 10 -");
        p += seal(p, "S ses2 Active 20 d");
        p += seal(p, "S ses1 Active 11 -");
        p += seal(p, "U ses2");
        p += seal(p, "S ses3 - 0 d");
        p += seal(p, "S ses4 Waiting%20for%0Ahuman 40 g");
        p += seal(p, "U ses5");
        p += seal(p, "S ses6 Failed 60 dg");
        p += seal(p, "U ses6");
        p += seal(p, "S ses6 Succeeded 61 -");
        p += seal(p, "S ses7 = 70 -");

        fixture_setup(&f);
        write_file(f.dir, "state", buf, (size_t)(p - buf));
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 16);
        }
        assert_false(f.rep.fresh);
        assert_false(f.rep.corrupt);
        assert_int_equal(f.rep.records, 11);
        assert_int_equal(f.rep.file_bytes, (uint64_t)(p - buf));
        assert_int_equal(f.model.n_session_calls, 8);
        assert_int_equal(f.model.n_removed_calls, 3);
        assert_int_equal(f.model.n_live, 5);
        {
                Entry *e = model_slot(&f.model, "ses1", 4);

                assert_true(e->live);
                assert_string_equal(e->status, "Active");
                assert_int_equal(e->updated_at_us, 11);
                assert_false(model_slot(&f.model, "ses2", 4)->live);
                e = model_slot(&f.model, "ses3", 4);
                assert_true(e->live);
                assert_null(e->status);
                assert_int_equal(e->flags, STATE_SESSION_DYNAMIC);
                e = model_slot(&f.model, "ses4", 4);
                assert_string_equal(e->status, "Waiting for\nhuman");
                assert_int_equal(e->flags, STATE_SESSION_GONE);
                e = model_slot(&f.model, "ses6", 4);
                assert_string_equal(e->status, "Succeeded");
                assert_int_equal(e->flags, 0);
                e = model_slot(&f.model, "ses7", 4);
                assert_non_null(e->status);
                assert_int_equal(e->status_len, 0);
        }
        /* Nothing was rewritten: the file is as it was. */
        assert_int_equal(file_size(f.dir, "state"), p - buf);
        fixture_teardown(&f);
}

/* A crash while appending leaves any prefix of the last record: cut the
 * file at every byte of its last line, and also damage that line in place.
 * Each time: the prefix loads, the rest is reported as torn and cut off,
 * and appending afterwards gives a clean file. */
static void test_load_torn_tail(void **unused)
{
        char buf[4096], *p = buf, *last;
        size_t good, total;
        Fixture f;

        p += state_format_header(p, 64);
        p += seal(p, "S ses1 Pending 10 -");
        p += seal(p, "S ses2 Active 20 d");
        good = (size_t)(p - buf);
        last = p;
        p += seal(p, "S ses1 Failed%20hard 12 g");
        total = (size_t)(p - buf);

        fixture_setup(&f);
        for (size_t cut = good; cut <= total; cut++) {
                for (int damage = 0; damage < 2; damage++) {
                        StateOptions o = test_options(f.dir);
                        char saved = 0;
                        size_t at = 0;

                        if (damage && cut < total)
                                continue;
                        if (damage) {
                                /* A complete last line whose bytes did not all reach the disk. */
                                at = (size_t)(last - buf) + 15;
                                saved = buf[at];
                                buf[at] = '\0';
                        }
                        write_file(f.dir, "state", buf, cut);
                        fixture_open(&f, &o, 16);
                        assert_false(f.rep.corrupt);
                        assert_null(f.rep.corrupt_path);
                        assert_int_equal(find_corrupt(f.dir, NULL, 0), 0);
                        if (cut == total && !damage) {
                                assert_int_equal(f.rep.records, 3);
                                assert_int_equal(f.rep.torn_bytes, 0);
                                assert_string_equal(model_slot(&f.model, "ses1", 4)->status, "Failed hard");
                        } else {
                                assert_int_equal(f.rep.records, 2);
                                assert_int_equal(f.rep.torn_bytes, cut - good);
                                assert_string_equal(model_slot(&f.model, "ses1", 4)->status, "Pending");
                                assert_int_equal(file_size(f.dir, "state"), (off_t)good);
                        }
                        /* Appending after the cut keeps the file loadable. */
                        change(f.st, &f.model, "ses9", "Active", 90, 0);
                        drain(&f);
                        fixture_close_state(&f);
                        {
                                Model expect;

                                /* The expectation: the bytes we wrote plus the append. */
                                model_init(&expect, 16);
                                {
                                        StateSession s1 = {
                                            .id = "ses1",
                                            .id_len = 4,
                                            .status = (cut == total && !damage) ? "Failed hard" : "Pending",
                                            .status_len = (cut == total && !damage) ? 11 : 7,
                                            .updated_at_us = (cut == total && !damage) ? 12 : 10,
                                            .flags = (cut == total && !damage) ? STATE_SESSION_GONE : 0};
                                        StateSession s2 = {.id = "ses2",
                                                           .id_len = 4,
                                                           .status = "Active",
                                                           .status_len = 6,
                                                           .updated_at_us = 20,
                                                           .flags = STATE_SESSION_DYNAMIC};
                                        StateSession s9 = {.id = "ses9",
                                                           .id_len = 4,
                                                           .status = "Active",
                                                           .status_len = 6,
                                                           .updated_at_us = 90};

                                        model_set(&expect, &s1);
                                        model_set(&expect, &s2);
                                        model_set(&expect, &s9);
                                }
                                assert_reload_equals(f.dir, &expect);
                                model_done(&expect);
                        }
                        if (damage)
                                buf[at] = saved;
                }
        }
        fixture_teardown(&f);
}

/* A crash while the header of a new file was written: any prefix of it is
 * an empty state, not a corrupt file. */
static void test_load_torn_header(void **unused)
{
        char header[64];
        size_t n = (size_t)state_format_header(header, sizeof(header));
        Fixture f;

        fixture_setup(&f);
        for (size_t cut = 1; cut < n; cut++) {
                StateOptions o = test_options(f.dir);
                size_t size;
                char *data;

                write_file(f.dir, "state", header, cut);
                fixture_open(&f, &o, 16);
                assert_false(f.rep.corrupt);
                assert_true(f.rep.fresh);
                assert_int_equal(f.rep.torn_bytes, cut);
                data = read_file(f.dir, "state", &size);
                assert_int_equal(size, n);
                assert_memory_equal(data, header, n);
                free(data);
                fixture_close_state(&f);
        }
        fixture_teardown(&f);
}

typedef struct CorruptCase {
        const char *name;
        char data[1024];
        size_t len;
} CorruptCase;

static void corrupt_case_add(CorruptCase *c, const char *payload)
{
        c->len += seal(c->data + c->len, payload);
}

static void test_load_corrupt(void **unused)
{
        CorruptCase cases[8] = {};
        size_t n = 0;

        /* A bad checksum in the middle. */
        cases[n].name = "bad crc in the middle";
        cases[n].len = (size_t)state_format_header(cases[n].data, 64);
        corrupt_case_add(&cases[n], "S ses1 Active 1 -");
        corrupt_case_add(&cases[n], "S ses2 Active 2 -");
        corrupt_case_add(&cases[n], "S ses3 Active 3 -");
        cases[n].data[cases[n].len - 30] ^= 1;
        n++;
        /* A newer format. */
        cases[n].name = "unknown version";
        corrupt_case_add(&cases[n], "sessionwatch-state 3");
        corrupt_case_add(&cases[n], "S ses1 Active 1 -");
        n++;
        /* The version line alone, no newline missing: still not ours. */
        cases[n].name = "unknown version alone";
        corrupt_case_add(&cases[n], "sessionwatch-state 7");
        n++;
        /* Records without a header. */
        cases[n].name = "missing header";
        corrupt_case_add(&cases[n], "S ses1 Active 1 -");
        n++;
        /* Text that is not a state file at all. */
        cases[n].name = "garbage text";
        cases[n].len = (size_t)snprintf(cases[n].data, sizeof(cases[n].data), "{\"sessions\": []}\nhello\n");
        n++;
        /* Binary without a newline: not a prefix of the header either. */
        cases[n].name = "garbage binary";
        for (size_t i = 0; i < 200; i++)
                cases[n].data[i] = (char)(i * 7 + 1);
        cases[n].len = 200;
        n++;
        /* A record type this version does not know, even with a good checksum. */
        cases[n].name = "unknown record type";
        cases[n].len = (size_t)state_format_header(cases[n].data, 64);
        corrupt_case_add(&cases[n], "S ses1 Active 1 -");
        corrupt_case_add(&cases[n], "W hook1 abc");
        corrupt_case_add(&cases[n], "S ses2 Active 2 -");
        n++;
        /* The same as the last line: its checksum is good, so it is not torn. */
        cases[n].name = "unknown record type last";
        cases[n].len = (size_t)state_format_header(cases[n].data, 64);
        corrupt_case_add(&cases[n], "S ses1 Active 1 -");
        corrupt_case_add(&cases[n], "W hook1 abc");
        n++;

        for (size_t i = 0; i < n; i++) {
                char name[256], header[64];
                size_t size, hn = (size_t)state_format_header(header, sizeof(header));
                char *data;
                Fixture f;

                print_message("case: %s\n", cases[i].name);
                fixture_setup(&f);
                write_file(f.dir, "state", cases[i].data, cases[i].len);
                {
                        StateOptions o = test_options(f.dir);

                        fixture_open(&f, &o, 16);
                }
                assert_true(f.rep.corrupt);
                assert_true(f.rep.fresh);
                assert_false(f.rep.degraded);
                assert_non_null(f.rep.corrupt_reason);
                assert_non_null(f.rep.corrupt_path);
                /* Callbacks never saw a record of the corrupt file. */
                assert_int_equal(f.model.n_session_calls + f.model.n_removed_calls, 0);
                assert_int_equal(find_corrupt(f.dir, name, sizeof(name)), 1);
                assert_non_null(strstr(f.rep.corrupt_path, name));
                data = read_file(f.dir, name, &size);
                assert_int_equal(size, cases[i].len);
                assert_memory_equal(data, cases[i].data, size);
                free(data);
                data = read_file(f.dir, "state", &size);
                assert_int_equal(size, hn);
                assert_memory_equal(data, header, hn);
                free(data);
                fixture_close_state(&f);

                /* A second corrupt file in the same second keeps both. */
                write_file(f.dir, "state", cases[i].data, cases[i].len);
                {
                        StateOptions o = test_options(f.dir);

                        fixture_open(&f, &o, 16);
                }
                assert_true(f.rep.corrupt);
                assert_int_equal(find_corrupt(f.dir, NULL, 0), 2);
                fixture_teardown(&f);
        }
}

/* ---- Appending ---- */

static void test_append_reopen(void **unused)
{
        StateHealth h;
        Fixture f;
        size_t n = scaled(2000);

        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, n + 16);
        }
        fill(f.st, &f.model, n, 0);
        /* Changes over several loop turns, so several writes. */
        for (unsigned round = 1; round < 4; round++) {
                uv_run(&f.loop, UV_RUN_NOWAIT);
                fill(f.st, &f.model, n / 2, round);
        }
        drop(f.st, &f.model, "ses00000001");
        drop(f.st, &f.model, "ses00000002");
        change(f.st, &f.model, "ses00000002", "Failed", 5, STATE_SESSION_DYNAMIC | STATE_SESSION_GONE);
        change(f.st, &f.model, "ses-odd_1", "we\xe2\x80\x99re % stuck\n", 7, 0);
        change(f.st, &f.model, "ses-odd_2", NULL, 0, STATE_SESSION_DYNAMIC);
        assert_int_equal(state_put_session(f.st, &(StateSession){.id = "bad id", .id_len = 6}), -EINVAL);
        drain(&f);

        state_health(f.st, &h);
        assert_false(h.degraded);
        assert_int_equal(h.pending_bytes, 0);
        assert_int_equal(h.records_appended, n + 3 * (n / 2) + 5);
        assert_int_equal(h.write_errors, 0);
        assert_int_equal(h.file_bytes, (uint64_t)file_size(f.dir, "state"));
        assert_true(h.last_write_realtime_us > 0);
        /* Reopen without a flush: everything was written by the loop. */
        assert_reload_equals(f.dir, &f.model);
        fixture_teardown(&f);
}

/* ---- Compaction ---- */

typedef struct Churn {
        Fixture *f;
        unsigned turns;
        unsigned seq;
        size_t n;
} Churn;

/* Runs on the loop thread after each poll: while a rewrite is running,
 * changes, removes and adds sessions, as the daemon would. */
static void on_churn_check(uv_check_t *h)
{
        Churn *c = h->data;
        StateHealth hl;
        char id[32];

        state_health(c->f->st, &hl);
        if (!hl.compacting)
                return;
        c->turns++;
        for (int k = 0; k < 20; k++) {
                size_t i = (c->seq * 7919u) % c->n;

                c->seq++;
                snprintf(id, sizeof(id), "ses%08zu", i);
                if (k % 5 == 0)
                        drop(c->f->st, &c->f->model, id);
                else
                        change(c->f->st, &c->f->model, id, statuses[c->seq % 8], 2000000000000000 + c->seq,
                               STATE_SESSION_GONE);
                snprintf(id, sizeof(id), "new%08u", c->seq);
                change(c->f->st, &c->f->model, id, "Pending", c->seq, STATE_SESSION_DYNAMIC);
        }
}

static bool compaction_done(Fixture *f)
{
        StateHealth h;

        state_health(f->st, &h);
        return h.compactions > 0 && !h.compacting && h.pending_bytes == 0;
}

static void test_compaction(void **unused)
{
        size_t n = scaled(20000);
        off_t before, after;
        uv_check_t check;
        StateHealth h;
        Churn churn;
        Fixture f;

        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 2 * n + 20000);
        }
        for (unsigned round = 0; round < 4; round++) {
                fill(f.st, &f.model, n, round);
                drain(&f);
        }
        before = file_size(f.dir, "state");

        churn = (Churn){.f = &f, .n = n};
        assert_int_equal(uv_check_init(&f.loop, &check), 0);
        check.data = &churn;
        assert_int_equal(uv_check_start(&check, on_churn_check), 0);
        assert_int_equal(state_compact(f.st), 0);
        assert_int_equal(state_compact(f.st), -EALREADY);
        run_until(&f, compaction_done, 60000);
        uv_close((uv_handle_t *)&check, NULL);
        drain(&f);

        /* The rewrite took several loop turns, with changes in between. */
        assert_true(churn.turns > 2);
        state_health(f.st, &h);
        assert_false(h.degraded);
        assert_int_equal(h.compactions, 1);
        assert_true(h.last_compaction_records >= n);
        assert_true(h.longest_chunk_us > 0);
        after = file_size(f.dir, "state");
        assert_true(after < before / 2);
        assert_int_equal(h.file_bytes, (uint64_t)after);
        assert_int_equal(file_size(f.dir, "state.tmp"), -1);
        assert_reload_equals(f.dir, &f.model);

        /* More changes append to the new file. */
        fill(f.st, &f.model, 10, 9);
        drain(&f);
        assert_reload_equals(f.dir, &f.model);
        fixture_teardown(&f);
}

/* The log compacts itself once it passes twice its last snapshot. */
static void test_compaction_automatic(void **unused)
{
        StateOptions o;
        StateHealth h;
        Fixture f;

        fixture_setup(&f);
        o = test_options(f.dir);
        o.compact_min_bytes = 16 * 1024;
        fixture_open(&f, &o, 256);
        for (unsigned round = 0; round < 200; round++) {
                fill(f.st, &f.model, 100, round);
                drain(&f);
                assert_true(file_size(f.dir, "state") < 64 * 1024);
        }
        state_health(f.st, &h);
        assert_true(h.compactions >= 10);
        assert_reload_equals(f.dir, &f.model);
        fixture_teardown(&f);
}

/* ---- Flush at stop ---- */

static void test_flush_sync(void **unused)
{
        StateHealth h;
        Fixture f;

        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                o.sync_interval_ms = 60000;
                fixture_open(&f, &o, 4096);
        }
        /* Never handed to the loop: the flush writes it. */
        fill(f.st, &f.model, 500, 0);
        assert_int_equal(state_flush_sync(f.st), 0);
        assert_reload_equals(f.dir, &f.model);

        /* With a write in flight: the flush waits for it, then writes the rest. */
        fill(f.st, &f.model, 500, 1);
        uv_run(&f.loop, UV_RUN_NOWAIT);
        fill(f.st, &f.model, 300, 2);
        assert_int_equal(state_flush_sync(f.st), 0);
        state_health(f.st, &h);
        assert_int_equal(h.pending_bytes, 0);
        assert_reload_equals(f.dir, &f.model);

        /* In the middle of a rewrite: it is abandoned, nothing is lost. */
        assert_int_equal(state_compact(f.st), 0);
        uv_run(&f.loop, UV_RUN_NOWAIT);
        fill(f.st, &f.model, 200, 3);
        drop(f.st, &f.model, "ses00000007");
        uv_run(&f.loop, UV_RUN_NOWAIT);
        assert_int_equal(state_flush_sync(f.st), 0);
        assert_reload_equals(f.dir, &f.model);
        assert_int_equal(file_size(f.dir, "state.tmp"), -1);

        /* Closing right after (with the after-work callback still owed). */
        fixture_teardown(&f);
}

/* Closing while a job runs waits for it; then the loop closes cleanly. */
static void test_close_in_flight(void **unused)
{
        Fixture f;

        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 4096);
        }
        fill(f.st, &f.model, 2000, 0);
        uv_run(&f.loop, UV_RUN_NOWAIT);
        assert_int_equal(state_compact(f.st), 0);
        uv_run(&f.loop, UV_RUN_NOWAIT);
        fixture_teardown(&f);
}

/* ---- Write failures ---- */

static int fault_errno;
static const char *fault_op; /* operations that fail, separated by spaces; NULL: all */
static unsigned fault_hits;

static int fault_hook(const char *op)
{
        int e = __atomic_load_n(&fault_errno, __ATOMIC_SEQ_CST);
        const char *only = __atomic_load_n(&fault_op, __ATOMIC_SEQ_CST);

        if (e == 0 || (only && !strstr(only, op)))
                return 0;
        __atomic_add_fetch(&fault_hits, 1, __ATOMIC_SEQ_CST);
        return -e;
}

static void fault_set(int e, const char *op)
{
        __atomic_store_n(&fault_op, op, __ATOMIC_SEQ_CST);
        __atomic_store_n(&fault_errno, e, __ATOMIC_SEQ_CST);
        __atomic_store_n(&fault_hits, 0, __ATOMIC_SEQ_CST);
        state_set_fault_hook(e ? fault_hook : NULL);
}

static bool degraded(Fixture *f)
{
        StateHealth h;

        state_health(f->st, &h);
        return h.degraded;
}

static bool recovered(Fixture *f)
{
        StateHealth h;

        state_health(f->st, &h);
        return !h.degraded && !h.compacting && h.pending_bytes == 0;
}

static void test_write_failures(void **unused)
{
        static const struct {
                int error;
                const char *op;
        } cases[] = {
            {ENOSPC, "write"},
            {EDQUOT, "write"},
            {EIO, "fdatasync fsync"},
            {EROFS, NULL},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                StateHealth h;
                Fixture f;

                print_message("case: %s on %s\n", strerror(cases[i].error),
                              cases[i].op ? cases[i].op : "all");
                fixture_setup(&f);
                {
                        StateOptions o = test_options(f.dir);

                        fixture_open(&f, &o, 4096);
                }
                fill(f.st, &f.model, 300, 0);
                drain(&f);

                fault_set(cases[i].error, cases[i].op);
                fill(f.st, &f.model, 300, 1);
                run_until(&f, degraded, 10000);
                /* The daemon goes on: changes are taken, memory stays bounded. */
                for (unsigned round = 2; round < 6; round++) {
                        fill(f.st, &f.model, 300, round);
                        uv_run(&f.loop, UV_RUN_NOWAIT);
                }
                drop(f.st, &f.model, "ses00000003");
                /* Retries keep failing while the fault lasts. */
                run_for(&f, 60);
                state_health(f.st, &h);
                assert_true(h.degraded);
                assert_true(h.write_errors >= 2);
                assert_int_equal(h.last_error, -cases[i].error);
                assert_non_null(h.last_error_what);
                assert_true(h.records_dropped > 0);
                assert_true(h.pending_bytes < 4096);

                fault_set(0, NULL);
                run_until(&f, recovered, 10000);
                state_health(f.st, &h);
                assert_true(h.compactions >= 1);
                drain(&f);
                assert_reload_equals(f.dir, &f.model);
                fixture_teardown(&f);
        }
}

/* A read-only folder at start: what is there loads, the module reports
 * degraded, and the file is rewritten once the folder is writable. */
static void test_read_only_at_start(void **unused)
{
        Model saved;
        StateHealth h;
        Fixture f;

        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 1024);
        }
        fill(f.st, &f.model, 100, 0);
        drain(&f);
        /* Keep a copy of what was written. */
        model_init(&saved, 1024);
        for (size_t i = 0; i < f.model.cap; i++)
                if (f.model.e[i].live) {
                        StateSession s = entry_session(&f.model.e[i]);

                        model_set(&saved, &s);
                }
        fixture_close_state(&f);

        fault_set(EROFS, NULL);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 1024);
        }
        assert_true(f.rep.degraded);
        assert_false(f.rep.corrupt);
        assert_int_equal(f.rep.records, 100);
        assert_model_equal(&saved, &f.model);
        change(f.st, &f.model, "ses00000001", "Failed", 99, 0);
        uv_run(&f.loop, UV_RUN_NOWAIT);
        state_health(f.st, &h);
        assert_true(h.degraded);

        fault_set(0, NULL);
        run_until(&f, recovered, 10000);
        drain(&f);
        assert_reload_equals(f.dir, &f.model);
        model_done(&saved);
        fixture_teardown(&f);
}

/* A corrupt file in a read-only folder is never replaced: it stays where it
 * is until it can be moved aside, and only then is a new file written. */
static void test_read_only_corrupt(void **unused)
{
        static const char garbage[] = "not a state file\n";
        char name[256];
        size_t size;
        char *data;
        Fixture f;

        fixture_setup(&f);
        write_file(f.dir, "state", garbage, sizeof(garbage) - 1);
        fault_set(EROFS, NULL);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 64);
        }
        assert_true(f.rep.corrupt);
        assert_true(f.rep.degraded);
        assert_null(f.rep.corrupt_path);
        change(f.st, &f.model, "ses1", "Active", 1, 0);
        run_for(&f, 50);
        data = read_file(f.dir, "state", &size);
        assert_int_equal(size, sizeof(garbage) - 1);
        assert_memory_equal(data, garbage, size);
        free(data);

        fault_set(0, NULL);
        run_until(&f, recovered, 10000);
        drain(&f);
        assert_int_equal(find_corrupt(f.dir, name, sizeof(name)), 1);
        data = read_file(f.dir, name, &size);
        assert_int_equal(size, sizeof(garbage) - 1);
        assert_memory_equal(data, garbage, size);
        free(data);
        assert_reload_equals(f.dir, &f.model);
        fixture_teardown(&f);
}

/* A folder that cannot be created: nothing is written, nothing breaks. */
static void test_folder_uncreatable(void **unused)
{
        StateHealth h;
        char *bad;
        Fixture f;

        fixture_setup(&f);
        write_file(f.dir, "file", "x", 1);
        bad = path_join(f.dir, "file/sub");
        {
                StateOptions o = test_options(bad);

                fixture_open(&f, &o, 64);
        }
        assert_true(f.rep.degraded);
        assert_true(f.rep.fresh);
        change(f.st, &f.model, "ses1", "Active", 1, 0);
        uv_run(&f.loop, UV_RUN_NOWAIT);
        state_health(f.st, &h);
        assert_true(h.degraded);
        assert_int_equal(h.last_error, -ENOTDIR);
        assert_int_equal(state_flush_sync(f.st), -ENOTDIR);
        free(bad);
        fixture_teardown(&f);
}

/* ---- Measurements (SW_STATE_BENCH=1) ---- */

static double ms_since(uint64_t t0)
{
        return (double)(uv_hrtime() - t0) / 1e6;
}

static void bench_compaction(size_t n)
{
        StateHealth h;
        uint64_t t0;
        Fixture f;

        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                o.compact_chunk_records = 20000;
                o.sync_interval_ms = 1000;
                fixture_open(&f, &o, n + 16);
        }
        t0 = uv_hrtime();
        fill(f.st, &f.model, n, 0);
        print_message("bench: put of %zu sessions: %.1f ms (%.0f ns per record, incl. test model)\n", n,
                      ms_since(t0), (double)(uv_hrtime() - t0) / (double)n);
        drain(&f);
        t0 = uv_hrtime();
        assert_int_equal(state_compact(f.st), 0);
        run_until(&f, compaction_done, 600000);
        state_health(f.st, &h);
        print_message(
            "bench: compaction of %zu sessions: %.1f ms total (module: %.1f ms), longest loop chunk "
            "%.2f ms, file %" PRIu64 " bytes = %.1f bytes per record\n",
            n, ms_since(t0), (double)h.last_compaction_us / 1000, (double)h.longest_chunk_us / 1000,
            h.file_bytes, (double)h.file_bytes / (double)n);
        drain(&f);
        fixture_close_state(&f);

        /* Loading. */
        {
                Model m;
                State *st;
                StateLoadReport rep;
                StateOptions o = test_options(f.dir);

                model_init(&m, n + 16);
                t0 = uv_hrtime();
                assert_int_equal(state_open(&f.loop, &o, &model_callbacks, &m, &st, &rep), 0);
                print_message("bench: load of %" PRIu64
                              " records: %.1f ms (module report %.1f ms, incl. test "
                              "model)\n",
                              rep.records, ms_since(t0), (double)rep.duration_us / 1000);
                state_close(st, NULL, NULL);
                uv_run(&f.loop, UV_RUN_DEFAULT);
                model_done(&m);
        }
        fixture_teardown(&f);
}

static int count_session(void *userdata, const StateSession *s)
{
        (*(size_t *)userdata)++;
        return 0;
}

/* ---- Watermarks (format version 2) ---- */

static void test_record_watermark(void **unused)
{
        char line[STATE_LINE_MAX];
        StateRecord rec;
        ssize_t n;

        (void)unused;
        /* A runbook key and the `*` of [watch] all round-trip. */
        n = state_format_watermark(line, sizeof(line), "rbk20220120z15kl79", 18, 1642377165601486);
        assert_true(n > 0);
        assert_int_equal(line[n - 1], '\n');
        assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
        assert_int_equal(rec.type, STATE_RECORD_WATERMARK);
        assert_string_equal(rec.id, "rbk20220120z15kl79");
        assert_int_equal(rec.session.id_len, 18);
        assert_int_equal(rec.watermark_us, 1642377165601486);
        n = state_format_watermark(line, sizeof(line), "*", 1, 0);
        assert_true(n > 0);
        assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
        assert_int_equal(rec.type, STATE_RECORD_WATERMARK);
        assert_string_equal(rec.id, "*");
        assert_int_equal(rec.watermark_us, 0);

        /* Bad keys are refused when formatting and when parsing. */
        assert_int_equal(state_format_watermark(line, sizeof(line), "**", 2, 1), -EINVAL);
        assert_int_equal(state_format_watermark(line, sizeof(line), "rbk 1", 5, 1), -EINVAL);
        assert_int_equal(state_format_watermark(line, sizeof(line), "", 0, 1), -EINVAL);
        assert_int_equal(state_format_watermark(line, 10, "rbk1", 4, 1), -ENOBUFS);
        {
                const char *bad[] = {"W rbk1", "W rbk1 1 2", "W ** 1", "W rbk/1 1", "W rbk1 x", "W * 1.5"};

                for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                        size_t len = seal(line, bad[k]);

                        assert_int_equal(state_parse_line(line, len - 1, &rec), -EINVAL);
                }
        }

        /* The `s` flag (a stalled event went out) round-trips, alone and
         * with the others. */
        for (unsigned flags = 0; flags < 8; flags++) {
                StateSession ss = {.id = "ses1",
                                   .id_len = 4,
                                   .status = "Waiting",
                                   .status_len = 7,
                                   .updated_at_us = 9,
                                   .flags = flags};

                n = state_format_session(line, sizeof(line), &ss);
                assert_true(n > 0);
                assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
                assert_int_equal(rec.session.flags, flags);
        }
        n = seal(line, "S ses1 Waiting 9 ss");
        assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), -EINVAL);

        /* Both versions are read; version 1 files predate W and `s`. */
        n = seal(line, "sessionwatch-state 1");
        assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
        assert_int_equal(rec.version, 1);
        n = seal(line, "sessionwatch-state 2");
        assert_int_equal(state_parse_line(line, (size_t)n - 1, &rec), 0);
        assert_int_equal(rec.version, 2);
}

/* What a load delivered: the last watermark per key. */
typedef struct Marks {
        Model *model;
        char keys[8][STATE_ID_MAX + 1];
        int64_t values[8];
        size_t n;
        unsigned calls;
} Marks;

static int marks_on_session(void *userdata, const StateSession *s)
{
        return on_load_session(((Marks *)userdata)->model, s);
}

static int marks_on_removed(void *userdata, const char *id, size_t len)
{
        return on_load_removed(((Marks *)userdata)->model, id, len);
}

static int marks_on_next(void *userdata, size_t *cursor, StateSession *ret)
{
        return on_next(((Marks *)userdata)->model, cursor, ret);
}

/* Keeps every key but those starting with "old". */
static int marks_on_watermark(void *userdata, const char *key, size_t len, int64_t newest_us)
{
        Marks *m = userdata;
        size_t k;

        assert_int_equal(key[len], '\0');
        m->calls++;
        for (k = 0; k < m->n; k++)
                if (strcmp(m->keys[k], key) == 0)
                        break;
        if (k == m->n) {
                assert_true(m->n < 8);
                snprintf(m->keys[m->n++], sizeof(m->keys[0]), "%s", key);
        }
        m->values[k] = newest_us;
        return strncmp(key, "old", 3) == 0 ? 0 : 1;
}

static const StateCallbacks marks_callbacks = {
    .session = marks_on_session,
    .removed = marks_on_removed,
    .next = marks_on_next,
    .watermark = marks_on_watermark,
};

static int64_t mark_of(const Marks *m, const char *key)
{
        for (size_t k = 0; k < m->n; k++)
                if (strcmp(m->keys[k], key) == 0)
                        return m->values[k];
        return -1;
}

/* Opens dir with marks_callbacks into *m (and its model), runs the loop
 * until the module is idle, and closes it again. */
static void reload_marks(const char *dir, Marks *m, Model *model, StateLoadReport *rep)
{
        uv_loop_t loop;
        State *st = NULL;
        StateOptions o = test_options(dir);

        *m = (Marks){.model = model};
        assert_int_equal(uv_loop_init(&loop), 0);
        assert_int_equal(state_open(&loop, &o, &marks_callbacks, m, &st, rep), 0);
        assert_false(rep->corrupt);
        /* Lets an upgrade rewrite (version 1 files) finish. */
        for (int k = 0; k < 2000; k++) {
                StateHealth h;

                state_health(st, &h);
                if (!h.compacting && h.pending_bytes == 0)
                        break;
                uv_run(&loop, UV_RUN_ONCE);
        }
        assert_int_equal(state_flush_sync(st), 0);
        state_close(st, NULL, NULL);
        assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_watermark_durable(void **unused)
{
        Fixture f;
        Marks m;
        Model model;
        StateLoadReport rep;
        char *data;
        size_t size;

        (void)unused;
        fixture_setup(&f);
        {
                StateOptions o = test_options(f.dir);

                fixture_open(&f, &o, 64);
        }
        change(f.st, &f.model, "ses1", "Waiting", 10, STATE_SESSION_DYNAMIC | STATE_SESSION_STALLED);
        assert_int_equal(state_put_watermark(f.st, "rbk1", 4, 100), 0);
        assert_int_equal(state_put_watermark(f.st, "*", 1, 7), 0);
        assert_int_equal(state_put_watermark(f.st, "rbk1", 4, 250), 0);
        assert_int_equal(state_put_watermark(f.st, "oldrbk", 6, 5), 0);
        assert_int_equal(state_put_watermark(f.st, "bad key", 7, 5), -EINVAL);
        assert_int_equal(state_flush_sync(f.st), 0);

        /* The last record per key wins, sessions load beside them. */
        model_init(&model, 64);
        reload_marks(f.dir, &m, &model, &rep);
        assert_int_equal(m.calls, 4);
        assert_int_equal(mark_of(&m, "rbk1"), 250);
        assert_int_equal(mark_of(&m, "*"), 7);
        assert_int_equal(mark_of(&m, "oldrbk"), 5);
        assert_model_equal(&f.model, &model);
        model_done(&model);

        /* A rewrite keeps the watermarks it was given (here: from this
         * State's own puts, all four). */
        assert_int_equal(state_compact(f.st), 0);
        run_until(&f, compaction_done, 60000);
        model_init(&model, 64);
        reload_marks(f.dir, &m, &model, &rep);
        assert_int_equal(m.n, 3);
        assert_int_equal(mark_of(&m, "rbk1"), 250);
        assert_int_equal(mark_of(&m, "*"), 7);
        assert_int_equal(mark_of(&m, "oldrbk"), 5);
        assert_model_equal(&f.model, &model);
        model_done(&model);
        fixture_teardown(&f);

        /* A State that loaded the file keeps only what the daemon wanted:
         * after its rewrite "oldrbk" is gone, the others stay. */
        fixture_setup(&f);
        {
                uv_loop_t loop;
                State *st = NULL;
                StateOptions o = test_options(f.dir);
                char line[128];
                size_t n = seal(line, "sessionwatch-state 2");

                data = malloc(4096);
                assert_non_null(data);
                memcpy(data, line, n);
                size = n;
                n = seal(line, "W rbk1 250");
                memcpy(data + size, line, n);
                size += n;
                n = seal(line, "W oldrbk 5");
                memcpy(data + size, line, n);
                size += n;
                n = seal(line, "S ses1 Active 3 d");
                memcpy(data + size, line, n);
                size += n;
                write_file(f.dir, "state", data, size);
                free(data);

                model_init(&model, 64);
                m = (Marks){.model = &model};
                assert_int_equal(uv_loop_init(&loop), 0);
                assert_int_equal(state_open(&loop, &o, &marks_callbacks, &m, &st, &rep), 0);
                assert_int_equal(state_compact(st), 0);
                for (int k = 0; k < 2000; k++) {
                        StateHealth h;

                        state_health(st, &h);
                        if (h.compactions > 0 && !h.compacting)
                                break;
                        uv_run(&loop, UV_RUN_ONCE);
                }
                assert_int_equal(state_flush_sync(st), 0);
                state_close(st, NULL, NULL);
                assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
                assert_int_equal(uv_loop_close(&loop), 0);
                model_done(&model);
        }
        model_init(&model, 64);
        reload_marks(f.dir, &m, &model, &rep);
        assert_int_equal(mark_of(&m, "rbk1"), 250);
        assert_int_equal(mark_of(&m, "oldrbk"), -1);
        assert_int_equal(model.n_live, 1);
        model_done(&model);
        fixture_teardown(&f);
}

/* A version 1 file loads as it is and is rewritten with the current header. */
static void test_load_version_1(void **unused)
{
        char line[128], data[512];
        size_t size = 0, n;
        Fixture f;
        Marks m;
        Model model;
        StateLoadReport rep;
        char *text;

        (void)unused;
        fixture_setup(&f);
        n = seal(line, "sessionwatch-state 1");
        memcpy(data + size, line, n);
        size += n;
        n = seal(line, "S ses1 Active 3 d");
        memcpy(data + size, line, n);
        size += n;
        n = seal(line, "S ses2 Failed 4 g");
        memcpy(data + size, line, n);
        size += n;
        write_file(f.dir, "state", data, size);

        model_init(&model, 64);
        reload_marks(f.dir, &m, &model, &rep);
        assert_false(rep.fresh);
        assert_int_equal(model.n_live, 2);
        model_done(&model);

        text = read_file(f.dir, "state", &n);
        assert_true(n > 30);
        assert_memory_equal(text + 9, "sessionwatch-state 2\n", 21);
        free(text);
        model_init(&model, 64);
        reload_marks(f.dir, &m, &model, &rep);
        assert_int_equal(model.n_live, 2);
        model_done(&model);
        fixture_teardown(&f);
}

static void test_bench(void **unused)
{
        const char *e = getenv("SW_STATE_BENCH");

        if (!e || strcmp(e, "1") != 0) {
                skip();
                return;
        }
        /* Append cost alone: formatting into the pending buffer. */
        {
                size_t n = 1000000, counted = 0;
                StateCallbacks cb = {.session = count_session};
                StateSession s = {.status = "Active", .status_len = 6, .updated_at_us = 1642377165601486};
                char id[32];
                uint64_t t0;
                Fixture f;
                State *st;
                StateLoadReport rep;
                StateOptions o;

                fixture_setup(&f);
                o = test_options(f.dir);
                o.sync_interval_ms = 1000;
                assert_int_equal(state_open(&f.loop, &o, &cb, &counted, &st, &rep), 0);
                t0 = uv_hrtime();
                for (size_t k = 0; k < n; k++) {
                        s.id = id;
                        s.id_len = (size_t)snprintf(id, sizeof(id), "ses2022%011zu", k);
                        assert_int_equal(state_put_session(st, &s), 0);
                }
                print_message("bench: state_put_session: %.0f ns per record (incl. snprintf of the id)\n",
                              (double)(uv_hrtime() - t0) / (double)n);
                assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
                state_close(st, NULL, NULL);
                uv_run(&f.loop, UV_RUN_DEFAULT);

                /* Loading alone, with a callback that only counts. */
                t0 = uv_hrtime();
                assert_int_equal(state_open(&f.loop, &o, &cb, &counted, &st, &rep), 0);
                print_message("bench: load of %" PRIu64 " records (%" PRIu64 " bytes), counting callback: "
                              "%.1f ms\n",
                              rep.records, rep.file_bytes, ms_since(t0));
                state_close(st, NULL, NULL);
                uv_run(&f.loop, UV_RUN_DEFAULT);
                fixture_teardown(&f);
        }
        bench_compaction(100000);
        bench_compaction(1000000);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_crc32c),
            cmocka_unit_test(test_record_round_trip),
            cmocka_unit_test(test_record_format_rejects),
            cmocka_unit_test(test_record_parse_rejects),
            cmocka_unit_test(test_load_missing_and_empty),
            cmocka_unit_test(test_load_missing_folder),
            cmocka_unit_test(test_load_records_last_wins),
            cmocka_unit_test(test_load_torn_tail),
            cmocka_unit_test(test_load_torn_header),
            cmocka_unit_test(test_load_corrupt),
            cmocka_unit_test(test_append_reopen),
            cmocka_unit_test(test_compaction),
            cmocka_unit_test(test_compaction_automatic),
            cmocka_unit_test(test_flush_sync),
            cmocka_unit_test(test_close_in_flight),
            cmocka_unit_test(test_write_failures),
            cmocka_unit_test(test_read_only_at_start),
            cmocka_unit_test(test_read_only_corrupt),
            cmocka_unit_test(test_folder_uncreatable),
            cmocka_unit_test(test_record_watermark),
            cmocka_unit_test(test_watermark_durable),
            cmocka_unit_test(test_load_version_1),
            cmocka_unit_test(test_bench),
        };

        /* The module's diagnostics are expected here; keep the output short. */
        log_set_max_level(getenv("SW_STATE_VERBOSE") ? LOG_DEBUG : LOG_CRIT);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
