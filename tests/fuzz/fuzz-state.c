/* Fuzz target: the state file. Each line goes through the record parser,
 * and every record it accepts must format back into a line that parses to
 * the same record; then the whole input is loaded as a state file by
 * state_open(), whose records must all be valid. Neither may crash or leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "fuzz-util.h"
#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool id_ok(const char *id, size_t len)
{
        if (len == 0 || len > STATE_ID_MAX || strlen(id) != len)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') ||
                      (id[i] >= '0' && id[i] <= '9') || id[i] == '_' || id[i] == '-'))
                        return false;
        return true;
}

static bool same_session(const StateSession *a, const StateSession *b)
{
        if (a->id_len != b->id_len || memcmp(a->id, b->id, a->id_len) != 0 || a->flags != b->flags ||
            a->updated_at_us != b->updated_at_us || !a->status != !b->status)
                return false;
        return !a->status ||
               (a->status_len == b->status_len && memcmp(a->status, b->status, a->status_len) == 0);
}

/* A session record formats back into a line that parses to the same. */
static void check_round_trip(const StateSession *s)
{
        static char line[STATE_LINE_MAX];
        static StateRecord back;
        ssize_t n;

        if (!id_ok(s->id, s->id_len) || (s->status && s->status_len > STATE_STATUS_MAX))
                abort();
        n = state_format_session(line, sizeof(line), s);
        if (n <= 0 || line[n - 1] != '\n')
                abort();
        if (state_parse_line(line, (size_t)n - 1, &back) < 0 || back.type != STATE_RECORD_SESSION ||
            !same_session(s, &back.session))
                abort();
}

static int on_session(void *userdata, const StateSession *s)
{
        (*(uint64_t *)userdata)++;
        check_round_trip(s);
        return 0;
}

static int on_removed(void *userdata, const char *id, size_t len)
{
        (*(uint64_t *)userdata)++;
        if (!id_ok(id, len))
                abort();
        return 0;
}

static int on_watermark(void *userdata, const char *key, size_t len, int64_t newest_us)
{
        (void)newest_us;
        (*(uint64_t *)userdata)++;
        if (!(len == 1 && key[0] == '*') && !id_ok(key, len))
                abort();
        return 1;
}

static int on_next(void *userdata, size_t *cursor, StateSession *ret)
{
        (void)userdata;
        (void)cursor;
        (void)ret;
        return 0;
}

static void on_closed(void *userdata)
{
        *(bool *)userdata = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const StateCallbacks cb = {
            .session = on_session,
            .removed = on_removed,
            .next = on_next,
            .watermark = on_watermark,
        };
        static StateRecord rec;
        const char *p = (const char *)data, *end = p + size;
        StateOptions o = {};
        StateLoadReport rep;
        uv_loop_t loop;
        State *s = NULL;
        uint64_t records = 0;
        bool closed = false;

        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);

                if (state_parse_line(p, len, &rec) == 0 && rec.type == STATE_RECORD_SESSION)
                        check_round_trip(&rec.session);
                p += len + 1;
        }

        fuzz_dir_clear();
        fuzz_write_file("state", data, size);
        o.path = fuzz_dir();
        if (uv_loop_init(&loop) < 0)
                abort();
        if (state_open(&loop, &o, &cb, &records, &s, &rep) < 0)
                abort();
        if (rep.records != records || (rep.corrupt && !rep.corrupt_reason))
                abort();
        state_close(s, on_closed, &closed);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (!closed || uv_loop_close(&loop) < 0)
                abort();
        return 0;
}
