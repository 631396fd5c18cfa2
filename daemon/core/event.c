#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json_object.h>
#include <openssl/evp.h>

#include "event.h"
#include "textsafe.h"

#define ARROW "\xe2\x86\x92" /* U+2192 RIGHTWARDS ARROW */

static const char *const status_event_types[_SESSION_STATUS_MAX] = {
    [SESSION_STATUS_PENDING] = "sessionwatch.session.pending",
    [SESSION_STATUS_ACTIVE] = "sessionwatch.session.active",
    [SESSION_STATUS_WAITING] = "sessionwatch.session.waiting",
    [SESSION_STATUS_SUCCEEDED] = "sessionwatch.session.succeeded",
    [SESSION_STATUS_FAILED] = "sessionwatch.session.failed",
    [SESSION_STATUS_CANCELLING] = "sessionwatch.session.cancelling",
    [SESSION_STATUS_CANCELLED] = "sessionwatch.session.cancelled",
    [SESSION_STATUS_UNKNOWN] = "sessionwatch.session.unknown",
};

/* Fixed forever: the journal catalog in systemd/ is keyed on them. */
static const char *const status_message_ids[_SESSION_STATUS_MAX] = {
    [SESSION_STATUS_PENDING] = "8534bbf283814c69a2c48fa4a012073f",
    [SESSION_STATUS_ACTIVE] = "d71fbb2ee25746318d837ff155d94411",
    [SESSION_STATUS_WAITING] = "23108cf0a7044d57b2eb818549d09ca9",
    [SESSION_STATUS_SUCCEEDED] = "6170eb8b4c78491f829a05b770a78d5b",
    [SESSION_STATUS_FAILED] = "c6535f30cb814da8b4e707838829121c",
    [SESSION_STATUS_CANCELLING] = "96e4ccb1c8d44c33bea1f765a5173c1c",
    [SESSION_STATUS_CANCELLED] = "851d377030f1454b86cc8f443528ff4a",
    [SESSION_STATUS_UNKNOWN] = "d8d14eecabed4ff4bdc7a95570514e95",
};

#define MESSAGE_ID_GONE "6f198cb3aa0b499eabdebc30fcefb0ed"
#define MESSAGE_ID_STALLED "ffcaa2342a0f4de08ac8182ca18516d0"

static const unsigned status_priorities[_SESSION_STATUS_MAX] = {
    [SESSION_STATUS_PENDING] = 6,   [SESSION_STATUS_ACTIVE] = 6,  [SESSION_STATUS_WAITING] = 4,
    [SESSION_STATUS_SUCCEEDED] = 6, [SESSION_STATUS_FAILED] = 3,  [SESSION_STATUS_CANCELLING] = 5,
    [SESSION_STATUS_CANCELLED] = 4, [SESSION_STATUS_UNKNOWN] = 5,
};

static SessionStatus status_clamp(SessionStatus s)
{
        return (unsigned)s < _SESSION_STATUS_MAX ? s : SESSION_STATUS_UNKNOWN;
}

/* ------------------------------------------------------------------------
 * Identity
 * ------------------------------------------------------------------------ */

static void put_be64(uint8_t b[static 8], uint64_t v)
{
        for (unsigned i = 0; i < 8; i++)
                b[i] = (uint8_t)(v >> (56 - 8 * i));
}

int event_make_id(char ret[static EVENT_ID_SIZE], const char *session_id, const char *what,
                  int64_t updated_at_us)
{
        /* A domain tag, then each string with its length in front and the
         * time as fixed-width big-endian: no two different triples can
         * produce the same byte string, whatever the strings contain. The
         * tag carries a version so that a future change of the encoding
         * cannot collide with ids already handed out. */
        static const char tag[] = "sessionwatch-event-id-v1";
        static const char hex[] = "0123456789abcdef";
        uint8_t len_id[8], len_what[8], when[8], md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        size_t n_id, n_what;
        EVP_MD_CTX *ctx;
        int ok;

        assert(ret);
        assert(session_id);
        assert(what);

        n_id = strlen(session_id);
        n_what = strlen(what);
        put_be64(len_id, n_id);
        put_be64(len_what, n_what);
        put_be64(when, (uint64_t)updated_at_us);

        ctx = EVP_MD_CTX_new();
        if (!ctx)
                return -ENOMEM;
        ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, tag, sizeof(tag)) &&
             EVP_DigestUpdate(ctx, len_id, sizeof(len_id)) && EVP_DigestUpdate(ctx, session_id, n_id) &&
             EVP_DigestUpdate(ctx, len_what, sizeof(len_what)) && EVP_DigestUpdate(ctx, what, n_what) &&
             EVP_DigestUpdate(ctx, when, sizeof(when)) && EVP_DigestFinal_ex(ctx, md, &md_len);
        EVP_MD_CTX_free(ctx);
        if (!ok || md_len < 16)
                return -EIO;

        memcpy(ret, "evt_", 4);
        for (unsigned i = 0; i < 16; i++) {
                ret[4 + 2 * i] = hex[md[i] >> 4];
                ret[4 + 2 * i + 1] = hex[md[i] & 0xf];
        }
        ret[EVENT_ID_SIZE - 1] = 0;
        return 0;
}

static int64_t now_realtime_us(void)
{
        struct timespec ts;

        if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
                return 0;
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void event_from_snapshot(Event *e, EventKind kind, const SessionSnapshot *s,
                                const char *previous_status_raw, const char *source)
{
        *e = (Event){
            .kind = kind,
            .session_id = s->id,
            .status_raw = s->status_raw,
            .status = s->status,
            .previous_status_raw = previous_status_raw,
            .updated_at_us = s->updated_at_us,
            .updated_at_raw = s->updated_at_raw,
            .time_us = now_realtime_us(),
            .session = s->root,
            .name = s->name,
            .runbook_id = s->runbook_id,
            .team_id = s->team_id,
            .source = source,
        };
}

int event_init_transition(Event *e, const SessionSnapshot *s, const char *previous_status_raw,
                          const char *source)
{
        assert(e);
        assert(s && s->id && s->status_raw);

        event_from_snapshot(e, EVENT_TRANSITION, s, previous_status_raw, source);
        return event_make_id(e->id, s->id, s->status_raw, s->updated_at_us);
}

int event_init_snapshot(Event *e, const SessionSnapshot *s, const char *previous_status_raw,
                        const char *source)
{
        assert(e);
        assert(s && s->id && s->status_raw);

        /* A snapshot restates the transition that led to the current state,
         * so it carries that transition's id: a client that already saw the
         * live event can recognise the snapshot as nothing new. */
        event_from_snapshot(e, EVENT_SNAPSHOT, s, previous_status_raw, source);
        return event_make_id(e->id, s->id, s->status_raw, s->updated_at_us);
}

/* The events that know only the session's id and last status. */
static int event_from_id(Event *e, EventKind kind, const char *session_id, const char *status_raw,
                         int64_t updated_at_us, const char *what, const char *source)
{
        assert(e);
        assert(session_id);

        *e = (Event){
            .kind = kind,
            .session_id = session_id,
            .status_raw = status_raw,
            .status = status_raw ? session_status_from_string(status_raw, strlen(status_raw))
                                 : SESSION_STATUS_UNKNOWN,
            .updated_at_us = updated_at_us,
            .time_us = now_realtime_us(),
            .source = source,
        };
        return event_make_id(e->id, session_id, what, updated_at_us);
}

int event_init_gone(Event *e, const char *session_id, const char *last_status_raw, int64_t updated_at_us,
                    const char *source)
{
        return event_from_id(e, EVENT_GONE, session_id, last_status_raw, updated_at_us, EVENT_WHAT_GONE,
                             source);
}

int event_init_stalled(Event *e, const char *session_id, const char *status_raw, int64_t updated_at_us,
                       int64_t stalled_for_us, const char *source)
{
        int r = event_from_id(e, EVENT_STALLED, session_id, status_raw, updated_at_us, EVENT_WHAT_STALLED,
                              source);

        e->stalled_for_us = stalled_for_us;
        return r;
}

/* ------------------------------------------------------------------------
 * Classification
 * ------------------------------------------------------------------------ */

const char *event_type(const Event *e)
{
        assert(e);

        switch (e->kind) {
        case EVENT_GONE:
                return "sessionwatch.session.gone";
        case EVENT_STALLED:
                return "sessionwatch.session.stalled";
        case EVENT_SNAPSHOT:
                return "sessionwatch.session.snapshot";
        default:
                return status_event_types[status_clamp(e->status)];
        }
}

unsigned event_priority(const Event *e)
{
        assert(e);

        switch (e->kind) {
        case EVENT_GONE:
        case EVENT_STALLED:
                return 4;
        default:
                return status_priorities[status_clamp(e->status)];
        }
}

const char *event_message_id(const Event *e)
{
        assert(e);

        switch (e->kind) {
        case EVENT_GONE:
                return MESSAGE_ID_GONE;
        case EVENT_STALLED:
                return MESSAGE_ID_STALLED;
        default:
                return status_message_ids[status_clamp(e->status)];
        }
}

/* ------------------------------------------------------------------------
 * Buffers
 * ------------------------------------------------------------------------ */

void event_buffer_done(EventBuffer *b)
{
        if (!b)
                return;
        free(b->data);
        *b = EVENT_BUFFER_NULL;
}

/* Makes room for `extra` more bytes plus the terminating NUL. */
static int buffer_reserve(EventBuffer *b, size_t extra)
{
        size_t need, size;
        char *p;

        if (extra > SIZE_MAX / 2 - b->len)
                return -ENOMEM;
        need = b->len + extra + 1;
        if (need <= b->allocated)
                return 0;

        size = b->allocated < 256 ? 256 : b->allocated;
        while (size < need)
                size *= 2;
        p = realloc(b->data, size);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->allocated = size;
        return 0;
}

static int buffer_append(EventBuffer *b, const char *s, size_t n)
{
        int r;

        r = buffer_reserve(b, n);
        if (r < 0)
                return r;
        if (n > 0)
                memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
}

static int buffer_puts(EventBuffer *b, const char *s)
{
        return buffer_append(b, s, strlen(s));
}

int event_buffer_append_json_string(EventBuffer *b, const char *s, size_t n)
{
        static const char hex[] = "0123456789abcdef";
        /* The two-character escapes JSON has; other control characters
         * become \u00XX. */
        static const char short_escape[] = {
            ['"'] = '"', ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
        };
        int r;

        assert(b);
        assert(s || n == 0);

        /* The worst case is six bytes per input byte (\u00XX) plus quotes. */
        if (n > (SIZE_MAX - 2) / 6)
                return -ENOMEM;
        r = buffer_reserve(b, n * 6 + 2);
        if (r < 0)
                return r;

        b->data[b->len++] = '"';
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                char *o = b->data + b->len;

                if (c < sizeof(short_escape) && short_escape[c]) {
                        o[0] = '\\';
                        o[1] = short_escape[c];
                        b->len += 2;
                } else if (c < 0x20) {
                        memcpy(o, "\\u00", 4);
                        o[4] = hex[c >> 4];
                        o[5] = hex[c & 0xf];
                        b->len += 6;
                } else {
                        o[0] = (char)c;
                        b->len++;
                }
        }
        b->data[b->len++] = '"';
        b->data[b->len] = 0;
        return 0;
}

static int buffer_put_json_string_or_null(EventBuffer *b, const char *s)
{
        return s ? event_buffer_append_json_string(b, s, strlen(s)) : buffer_puts(b, "null");
}

/* ------------------------------------------------------------------------
 * CloudEvents JSON
 * ------------------------------------------------------------------------ */

static int append_json_body(const Event *e, long sequence, EventBuffer *b)
{
        char time_buf[TIMESTAMP_RFC3339_MAX], num[64];
        const char *source = e->source ?: "sessionwatchd://localhost";
        int r;

        r = format_timestamp_rfc3339(e->time_us, time_buf);
        if (r < 0)
                return r;

        if ((r = buffer_puts(b, "{\"specversion\":\"1.0\",\"id\":\"")) < 0 ||
            (r = buffer_puts(b, e->id)) < 0 || (r = buffer_puts(b, "\",\"source\":")) < 0 ||
            (r = event_buffer_append_json_string(b, source, strlen(source))) < 0 ||
            (r = buffer_puts(b, ",\"type\":\"")) < 0 || (r = buffer_puts(b, event_type(e))) < 0 ||
            (r = buffer_puts(b, "\",\"subject\":")) < 0 ||
            (r = event_buffer_append_json_string(b, e->session_id, strlen(e->session_id))) < 0 ||
            (r = buffer_puts(b, ",\"time\":\"")) < 0 || (r = buffer_puts(b, time_buf)) < 0 ||
            (r = buffer_puts(
                 b, "\",\"datacontenttype\":\"application/json\",\"data\":{\"previousStatus\":")) < 0)
                return r;

        switch (e->kind) {
        case EVENT_GONE:
                if ((r = buffer_put_json_string_or_null(b, e->status_raw)) < 0 ||
                    (r = buffer_puts(b, ",\"status\":null")) < 0)
                        return r;
                break;
        case EVENT_STALLED:
                if ((r = buffer_put_json_string_or_null(b, e->status_raw)) < 0 ||
                    (r = buffer_puts(b, ",\"status\":")) < 0 ||
                    (r = buffer_put_json_string_or_null(b, e->status_raw)) < 0)
                        return r;
                if (e->stalled_for_us > 0) {
                        snprintf(num, sizeof(num), ",\"stalledForSeconds\":%" PRIi64,
                                 e->stalled_for_us / 1000000);
                        if ((r = buffer_puts(b, num)) < 0)
                                return r;
                }
                break;
        default:
                if ((r = buffer_put_json_string_or_null(b, e->previous_status_raw)) < 0 ||
                    (r = buffer_puts(b, ",\"status\":")) < 0 ||
                    (r = buffer_put_json_string_or_null(b, e->status_raw)) < 0)
                        return r;
        }

        if (e->replayed && (r = buffer_puts(b, ",\"replayed\":true")) < 0)
                return r;
        if (e->skipped && (r = buffer_puts(b, ",\"skipped\":true")) < 0)
                return r;

        if ((r = buffer_puts(b, ",\"session\":")) < 0)
                return r;
        if (e->session) {
                const char *s;
                size_t n = 0;

                /* json-c keeps the text in the object's own print buffer, so
                 * a session fanned out to several sinks is printed once per
                 * encoding and nothing is allocated after the first time. */
                s = json_object_to_json_string_length(
                    e->session, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
                if (!s)
                        return -ENOMEM;
                if ((r = buffer_append(b, s, n)) < 0)
                        return r;
        } else if ((r = buffer_puts(b, "{\"id\":")) < 0 ||
                   (r = event_buffer_append_json_string(b, e->session_id, strlen(e->session_id))) < 0 ||
                   (r = buffer_puts(b, "}")) < 0)
                return r;

        if ((r = buffer_puts(b, "}")) < 0)
                return r;

        if (sequence >= 0) {
                snprintf(num, sizeof(num), ",\"sequence\":%ld", sequence);
                if ((r = buffer_puts(b, num)) < 0)
                        return r;
        }

        return buffer_puts(b, "}");
}

int event_append_json(const Event *e, long sequence, EventBuffer *b)
{
        size_t start;
        int r;

        assert(e);
        assert(e->session_id);
        assert(b);

        start = b->len;
        r = append_json_body(e, sequence, b);
        if (r < 0) {
                /* Leave the buffer as it was: a half-written event must never
                 * reach a sink. */
                b->len = start;
                if (b->data)
                        b->data[start] = 0;
        }
        return r;
}

int event_to_json_string(const Event *e, long sequence, char **ret, size_t *ret_len)
{
        EventBuffer b = EVENT_BUFFER_NULL;
        int r;

        assert(ret);

        r = event_append_json(e, sequence, &b);
        if (r < 0) {
                event_buffer_done(&b);
                return r;
        }
        *ret = b.data;
        if (ret_len)
                *ret_len = b.len;
        return 0;
}

/* ------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------ */

/* "2h 5min", "45min", "30s", "3d 4h": the two largest units are enough for
 * a person reading about a session that has been quiet. */
static void format_duration(char buf[static 32], int64_t usec)
{
        int64_t s = usec / 1000000;

        if (s < 0)
                s = 0;
        if (s >= 86400)
                snprintf(buf, 32, "%" PRIi64 "d %" PRIi64 "h", s / 86400, s % 86400 / 3600);
        else if (s >= 3600)
                snprintf(buf, 32, "%" PRIi64 "h %" PRIi64 "min", s / 3600, s % 3600 / 60);
        else if (s >= 60)
                snprintf(buf, 32, "%" PRIi64 "min", s / 60);
        else
                snprintf(buf, 32, "%" PRIi64 "s", s);
}

static int append_subject(const Event *e, EventBuffer *b)
{
        int r;

        if (e->name && e->name[0]) {
                if ((r = buffer_puts(b, "Session '")) < 0 || (r = buffer_puts(b, e->name)) < 0 ||
                    (r = buffer_puts(b, "' (")) < 0 || (r = buffer_puts(b, e->session_id)) < 0 ||
                    (r = buffer_puts(b, ")")) < 0)
                        return r;
                return 0;
        }
        if ((r = buffer_puts(b, "Session ")) < 0 || (r = buffer_puts(b, e->session_id)) < 0)
                return r;
        return 0;
}

static int append_message(const Event *e, EventBuffer *b)
{
        const char *status = e->status_raw ?: "unknown";
        char dur[32];
        int r;

        r = append_subject(e, b);
        if (r < 0)
                return r;

        switch (e->kind) {
        case EVENT_GONE:
                if ((r = buffer_puts(b, " is gone")) < 0)
                        return r;
                if (e->status_raw &&
                    ((r = buffer_puts(b, " (last status ")) < 0 || (r = buffer_puts(b, e->status_raw)) < 0 ||
                     (r = buffer_puts(b, ")")) < 0))
                        return r;
                return 0;
        case EVENT_STALLED:
                if (e->stalled_for_us > 0) {
                        format_duration(dur, e->stalled_for_us);
                        if ((r = buffer_puts(b, " has been ")) < 0 || (r = buffer_puts(b, status)) < 0 ||
                            (r = buffer_puts(b, " for ")) < 0 || (r = buffer_puts(b, dur)) < 0 ||
                            (r = buffer_puts(b, " without a change")) < 0)
                                return r;
                } else if ((r = buffer_puts(b, " has been ")) < 0 || (r = buffer_puts(b, status)) < 0 ||
                           (r = buffer_puts(b, " past the stall deadline")) < 0)
                        return r;
                return 0;
        case EVENT_SNAPSHOT:
                if ((r = buffer_puts(b, " is ")) < 0 || (r = buffer_puts(b, status)) < 0)
                        return r;
                return 0;
        default:
                if (!e->previous_status_raw) {
                        if ((r = buffer_puts(b, " is ")) < 0 || (r = buffer_puts(b, status)) < 0)
                                return r;
                } else if ((r = buffer_puts(b, " ")) < 0 ||
                           (r = buffer_puts(b, e->previous_status_raw)) < 0 ||
                           (r = buffer_puts(b, " " ARROW " ")) < 0 || (r = buffer_puts(b, status)) < 0)
                        return r;
                return 0;
        }
}

int event_append_message(const Event *e, EventBuffer *b)
{
        size_t start;
        int r;

        assert(e);
        assert(e->session_id);
        assert(b);

        start = b->len;
        r = append_message(e, b);
        if (r < 0) {
                b->len = start;
                if (b->data)
                        b->data[start] = 0;
        }
        return r;
}

/* ------------------------------------------------------------------------
 * Journal fields
 * ------------------------------------------------------------------------ */

typedef struct FieldRef {
        size_t offset;
        size_t len;
} FieldRef;

static int journal_field(EventBuffer *b, FieldRef *f, const char *key, const char *value)
{
        int r;

        f->offset = b->len;
        if ((r = buffer_puts(b, key)) < 0 || (r = buffer_puts(b, "=")) < 0 ||
            (r = buffer_puts(b, value)) < 0)
                return r;
        f->len = b->len - f->offset;
        return 0;
}

int event_journal_fields(const Event *e, struct iovec iov[static EVENT_JOURNAL_FIELDS_MAX],
                         EventBuffer *storage)
{
        FieldRef f[EVENT_JOURNAL_FIELDS_MAX];
        char num[16], updated[TIMESTAMP_RFC3339_MAX];
        const char *updated_text;
        unsigned n = 0;
        int r;

        assert(e);
        assert(e->session_id);
        assert(iov);
        assert(storage);

        storage->len = 0;

        /* A time outside what RFC 3339 can spell (a far-off zone offset on
         * year 0000) must not cost the journal entry: the raw string stands
         * in, or the field is left out. */
        if (format_timestamp_rfc3339(e->updated_at_us, updated) >= 0)
                updated_text = updated;
        else
                updated_text = e->updated_at_raw;

        /* MESSAGE first: it is built in place, so its offset is known before
         * the text is. */
        f[n].offset = storage->len;
        if ((r = buffer_puts(storage, "MESSAGE=")) < 0 || (r = append_message(e, storage)) < 0)
                return r;
        f[n].len = storage->len - f[n].offset;
        n++;

        snprintf(num, sizeof(num), "%u", event_priority(e));
        if ((r = journal_field(storage, &f[n++], "PRIORITY", num)) < 0 ||
            (r = journal_field(storage, &f[n++], "MESSAGE_ID", event_message_id(e))) < 0 ||
            (r = journal_field(storage, &f[n++], "SESSION_ID", e->session_id)) < 0)
                return r;
        if (e->name && (r = journal_field(storage, &f[n++], "SESSION_NAME", e->name)) < 0)
                return r;

        /* For gone the session has no status any more: its last one is the
         * previous status. For stalled it still has the one it sits in. */
        if (e->kind == EVENT_GONE) {
                if (e->status_raw &&
                    (r = journal_field(storage, &f[n++], "SESSION_PREVIOUS_STATUS", e->status_raw)) < 0)
                        return r;
        } else {
                if (e->status_raw &&
                    (r = journal_field(storage, &f[n++], "SESSION_STATUS", e->status_raw)) < 0)
                        return r;
                if (e->kind != EVENT_STALLED && e->previous_status_raw &&
                    (r = journal_field(storage, &f[n++], "SESSION_PREVIOUS_STATUS",
                                       e->previous_status_raw)) < 0)
                        return r;
        }

        if (e->runbook_id && (r = journal_field(storage, &f[n++], "RUNBOOK_ID", e->runbook_id)) < 0)
                return r;
        if (e->team_id && (r = journal_field(storage, &f[n++], "TEAM_ID", e->team_id)) < 0)
                return r;
        if (updated_text && (r = journal_field(storage, &f[n++], "SESSION_UPDATED_AT", updated_text)) < 0)
                return r;
        if ((r = journal_field(storage, &f[n++], "EVENT_ID", e->id)) < 0 ||
            (r = journal_field(storage, &f[n++], "SYSLOG_IDENTIFIER", "sessionwatchd")) < 0)
                return r;

        assert(n <= EVENT_JOURNAL_FIELDS_MAX);

        /* Only now is the storage final: earlier pointers could have moved
         * with a realloc. */
        for (unsigned i = 0; i < n; i++)
                iov[i] = (struct iovec){.iov_base = storage->data + f[i].offset, .iov_len = f[i].len};
        return (int)n;
}

/* ------------------------------------------------------------------------
 * Text line
 * ------------------------------------------------------------------------ */

typedef struct TextOut {
        char *buf;
        size_t size;
        size_t len; /* what the full line needs, even past size */
} TextOut;

static void text_put(TextOut *t, const char *s, size_t n, bool sanitize)
{
        for (size_t i = 0; i < n; t->len++) {
                /* API-provided strings may hold newlines or escape sequences;
                 * on a terminal line they would forge lines or colours. */
                size_t unsafe = sanitize ? text_unsafe_len(s + i, n - i) : 0;
                char c = unsafe > 0 ? '?' : s[i];

                i += unsafe > 0 ? unsafe : 1;
                if (t->len + 1 < t->size)
                        t->buf[t->len] = c;
        }
}

static void text_puts(TextOut *t, const char *s)
{
        text_put(t, s, strlen(s), false);
}

static void text_puts_untrusted(TextOut *t, const char *s)
{
        text_put(t, s, strlen(s), true);
}

int event_format_text(const Event *e, char *buf, size_t n)
{
        TextOut t = {.buf = buf, .size = n};
        const char *status = e->status_raw ?: "unknown";
        char clock[16], dur[32];
        struct tm tm;
        time_t sec;

        assert(e);
        assert(e->session_id);
        assert(buf || n == 0);

        /* Floor to whole seconds, also for times before the epoch. */
        sec = (time_t)(e->time_us / 1000000 - (e->time_us % 1000000 < 0));
        if (localtime_r(&sec, &tm))
                snprintf(clock, sizeof(clock), "%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
        else
                strcpy(clock, "??:??:??");

        text_puts(&t, clock);
        text_puts(&t, " ");
        text_puts_untrusted(&t, e->session_id);
        if (e->name && e->name[0]) {
                text_puts(&t, " '");
                text_puts_untrusted(&t, e->name);
                text_puts(&t, "'");
        }
        text_puts(&t, " ");

        switch (e->kind) {
        case EVENT_GONE:
                if (e->status_raw) {
                        text_puts_untrusted(&t, e->status_raw);
                        text_puts(&t, " ");
                }
                text_puts(&t, ARROW " gone");
                break;
        case EVENT_STALLED:
                text_puts_untrusted(&t, status);
                if (e->stalled_for_us > 0) {
                        format_duration(dur, e->stalled_for_us);
                        text_puts(&t, " (stalled ");
                        text_puts(&t, dur);
                        text_puts(&t, ")");
                } else
                        text_puts(&t, " (stalled)");
                break;
        case EVENT_SNAPSHOT:
                text_puts_untrusted(&t, status);
                text_puts(&t, " (snapshot)");
                break;
        default:
                if (e->previous_status_raw) {
                        text_puts_untrusted(&t, e->previous_status_raw);
                        text_puts(&t, " " ARROW " ");
                        text_puts_untrusted(&t, status);
                } else {
                        text_puts(&t, ARROW " ");
                        text_puts_untrusted(&t, status);
                        text_puts(&t, " (new)");
                }
        }
        if (e->replayed)
                text_puts(&t, " (replayed)");
        if (e->skipped)
                text_puts(&t, " (a step in between was missed)");

        if (n > 0)
                buf[t.len < n ? t.len : n - 1] = 0;
        if (t.len >= n)
                return -ENOBUFS;
        return (int)t.len;
}
