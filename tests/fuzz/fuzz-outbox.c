/* Fuzz target: a webhook's outbox file, loaded by outbox_open(). It must
 * never crash or leak; every pending event it finds has valid ids, a body
 * without a newline and a sequence number above the one before; those not in
 * the window are counted on disk; the file it leaves behind (rewritten or
 * not) loads again to the same events. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "fuzz-util.h"
#include "outbox.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Seen {
        uint64_t n;
        uint64_t hash; /* of every (seq, created, ids, body) in order */
} Seen;

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
        const uint8_t *b = p;

        for (size_t i = 0; i < n; i++)
                h = (h ^ b[i]) * 0x100000001b3ULL;
        return h;
}

static bool id_ok(const char *id)
{
        size_t len = strlen(id);

        if (len == 0 || len > OUTBOX_ID_MAX)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') ||
                      (id[i] >= '0' && id[i] <= '9') || id[i] == '_' || id[i] == '-'))
                        return false;
        return true;
}

static void on_closed(void *userdata)
{
        *(bool *)userdata = true;
}

static void load(Seen *ret)
{
        OutboxOptions o = {.folder = fuzz_dir(), .name = "fuzz"};
        OutboxLoadReport rep;
        OutboxStats st;
        uv_loop_t loop;
        Outbox *ob = NULL;
        uint64_t last = 0;
        bool closed = false;

        memset(ret, 0, sizeof(*ret));
        ret->hash = 0xcbf29ce484222325ULL;
        if (uv_loop_init(&loop) < 0)
                abort();
        if (outbox_open(&loop, &o, NULL, NULL, &ob, &rep) < 0)
                abort();
        if (rep.corrupt && !rep.corrupt_reason[0])
                abort();
        for (OutboxEntry *e = outbox_first(ob); e; e = outbox_next(ob, e)) {
                if (e->seq <= last || !id_ok(e->session_id) || !id_ok(e->event_id) || e->body_len == 0 ||
                    strlen(e->body) != e->body_len || memchr(e->body, '\n', e->body_len))
                        abort();
                last = e->seq;
                ret->n++;
                ret->hash = mix(ret->hash, &e->seq, sizeof(e->seq));
                ret->hash = mix(ret->hash, &e->created_us, sizeof(e->created_us));
                ret->hash = mix(ret->hash, e->session_id, strlen(e->session_id) + 1);
                ret->hash = mix(ret->hash, e->event_id, strlen(e->event_id) + 1);
                ret->hash = mix(ret->hash, e->body, e->body_len);
        }
        /* The window may hold only part of them (a session's share of it):
         * the rest is on disk. */
        outbox_stats(ob, &st);
        if (ret->n != st.window || st.window + st.disk_only != rep.pending)
                abort();
        outbox_close(ob, on_closed, &closed);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (!closed || uv_loop_close(&loop) < 0)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        Seen first, second;

        fuzz_dir_clear();
        fuzz_write_file("outbox-fuzz", data, size);
        load(&first);
        load(&second);
        if (first.n != second.n || first.hash != second.hash)
                abort();
        return 0;
}
