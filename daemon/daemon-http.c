/* daemon-http: what the daemon serves on [http] listen.
 *
 *   /metrics                 the Prometheus text (daemon-metrics.c)
 *   /, /app.js, /app.css     the status page (web/, compiled in)
 *   /favicon.ico             204: no icon (browsers ask for one by themselves)
 *   /api/v1/status           what `sessionwatchctl status --json` says
 *   /api/v1/sessions         the sessions, filtered, keyset-paged
 *   /api/v1/sessions/ID      one session and its events still in the ring
 *   /api/v1/events           server-sent events, resumable by Last-Event-ID
 *
 * The event stream has a ring of its own (the SSE blocks, already framed),
 * so that a client is nothing but a position in it: an event is framed once
 * whatever the number of clients, and a client that does not read holds no
 * memory beyond its lag, counted against [http] client-buffer.
 *
 * What the table does not keep for the API (a session's name, its previous
 * status, when its status last changed) sits in a side array, `views`, kept
 * only while the listener is configured. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon-private.h"
#include "event.h"
#include "http-server.h"
#include "stream-ring.h"

extern const unsigned char web_index_html[], web_app_js[], web_app_css[];
extern const size_t web_index_html_len, web_app_js_len, web_app_css_len;

#define SESSIONS_DEFAULT_LIMIT 100
#define SESSIONS_MAX_LIMIT 1000
#define SEARCH_MAX 200
#define SESSION_EVENTS_MAX 50
#define RING_EVENTS 4096
#define RING_BYTES (4u << 20)

typedef struct SessionView {
        char *name;          /* malloc'd, or NULL when not known */
        int64_t changed_us;  /* updatedAt of the answer that brought the current status; 0: unknown */
        uint8_t previous;    /* SessionStatus + 1; 0: none known */
} SessionView;

typedef struct WebStream WebStream;

struct DaemonWeb {
        Daemon *d;
        HttpServer *server; /* NULL while not listening */
        char *listen;       /* what it listens on, as written */
        StreamRing ring;
        EventBuffer buf;
        WebStream *streams;
        unsigned n_streams;
        uv_timer_t heartbeat;
        bool heartbeat_open;
        uint64_t streams_total, overflows, refused, scrapes, scrape_errors;
        SessionView *views;
        size_t n_views;
        HttpServerStats closed_stats; /* of servers closed by reloads */
};

struct WebStream {
        DaemonWeb *web;
        HttpStream *st;
        WebStream *prev, *next;
        long next_seq;  /* the next event to send */
        size_t off;     /* bytes of it already sent */
        size_t lag;     /* bytes of events pushed and not yet sent */
        char hello[128];
        size_t hello_len, hello_off;
        bool heartbeat; /* a heartbeat is owed */
        bool cut;
};

/* ---- Session views ---- */

static SessionView *view_of(DaemonWeb *w, SessionIndex i, bool create)
{
        if (i >= w->n_views) {
                size_t n = w->n_views ? w->n_views : 1024;
                SessionView *v;

                if (!create)
                        return NULL;
                while (n <= i)
                        n *= 2;
                v = realloc(w->views, n * sizeof(*v));
                if (!v)
                        return NULL;
                memset(v + w->n_views, 0, (n - w->n_views) * sizeof(*v));
                w->views = v;
                w->n_views = n;
        }
        return &w->views[i];
}

void daemon_web_learn_name(Daemon *d, SessionIndex i, const char *name)
{
        SessionView *v;
        char *copy;

        if (!d->web || !name)
                return;
        v = view_of(d->web, i, true);
        if (!v || (v->name && strcmp(v->name, name) == 0))
                return;
        copy = strdup(name);
        if (!copy)
                return;
        free(v->name);
        v->name = copy;
}

void daemon_web_forget(Daemon *d, SessionIndex i)
{
        SessionView *v;

        if (!d->web || !(v = view_of(d->web, i, false)))
                return;
        free(v->name);
        *v = (SessionView){};
}

static void views_free(DaemonWeb *w)
{
        for (size_t i = 0; i < w->n_views; i++)
                free(w->views[i].name);
        free(w->views);
        w->views = NULL;
        w->n_views = 0;
}

/* ---- The event stream ---- */

static void stream_cut(WebStream *ws)
{
        if (ws->cut)
                return;
        ws->cut = true;
        ws->web->overflows++;
        log_info("Cut off an HTTP event stream client that fell %zu bytes behind ([http] client-buffer).",
                 ws->lag);
        http_stream_cut(ws->st);
}

/* Takes one event into the ring and wakes the clients. */
void daemon_web_emit(Daemon *d, const Event *e)
{
        DaemonWeb *w = d->web;
        long seq;
        StreamChunk *chunk;
        char head[160];
        int n, r;

        if (!w || e->kind == EVENT_SNAPSHOT)
                return;
        if (e->kind == EVENT_TRANSITION) {
                SessionIndex i = sessions_find(d->table, e->session_id, strlen(e->session_id));
                SessionView *v = i == SESSION_INDEX_NONE ? NULL : view_of(w, i, true);

                if (v) {
                        v->changed_us = e->updated_at_us;
                        v->previous = e->previous_status_raw
                                          ? (uint8_t)(session_status_from_string(e->previous_status_raw,
                                                                                 strlen(e->previous_status_raw)) +
                                                      1)
                                          : 0;
                }
                if (i != SESSION_INDEX_NONE)
                        daemon_web_learn_name(d, i, e->name);
        }

        seq = w->ring.last + 1;
        n = snprintf(head, sizeof(head), "id: %ld\nevent: %s\ndata: ", seq, event_type(e));
        w->buf.len = 0;
        r = event_append_json(e, seq, &w->buf);
        if (r < 0) {
                log_error_errno(r, "Failed to encode event '%s' for the HTTP event stream: %m", e->id);
                return;
        }
        /* One SSE block: the id and type lines, the JSON on one data line,
         * and the blank line that ends it. */
        chunk = stream_chunk_alloc((size_t)n + w->buf.len + 2, seq);
        if (!chunk) {
                log_error("Out of memory queueing event '%s' for the HTTP event stream.", e->id);
                return;
        }
        memcpy(chunk->data, head, (size_t)n);
        memcpy(chunk->data + n, w->buf.data, w->buf.len);
        memcpy(chunk->data + n + w->buf.len, "\n\n", 2);
        (void)stream_ring_push(&w->ring, chunk);
        for (WebStream *ws = w->streams, *next; ws; ws = next) {
                next = ws->next;
                if (ws->cut)
                        continue;
                ws->lag += chunk->len;
                if (ws->lag > w->d->config->http.client_buffer)
                        stream_cut(ws);
                else
                        http_stream_wake(ws->st);
        }
        stream_chunk_unref(chunk);
}

static ssize_t stream_fill(void *userdata, char *buf, size_t max)
{
        WebStream *ws = userdata;
        DaemonWeb *w = ws->web;
        size_t n = 0;

        if (ws->cut)
                return -1;
        if (ws->hello_off < ws->hello_len) {
                size_t k = ws->hello_len - ws->hello_off;

                if (k > max)
                        k = max;
                memcpy(buf, ws->hello + ws->hello_off, k);
                ws->hello_off += k;
                return (ssize_t)k;
        }
        while (n < max && ws->next_seq <= w->ring.last) {
                StreamChunk *c = stream_ring_get(&w->ring, ws->next_seq);
                size_t k;

                if (!c) {
                        /* Fell out of the ring: what it missed is gone. */
                        stream_cut(ws);
                        return n > 0 ? (ssize_t)n : -1;
                }
                k = c->len - ws->off;
                if (k > max - n)
                        k = max - n;
                memcpy(buf + n, c->data + ws->off, k);
                n += k;
                ws->off += k;
                ws->lag = ws->lag > k ? ws->lag - k : 0;
                if (ws->off == c->len) {
                        ws->off = 0;
                        ws->next_seq++;
                }
        }
        if (n == 0 && ws->heartbeat) {
                static const char beat[] = ": heartbeat\n\n";

                if (max < sizeof(beat) - 1)
                        return 0;
                ws->heartbeat = false;
                memcpy(buf, beat, sizeof(beat) - 1);
                return (ssize_t)(sizeof(beat) - 1);
        }
        return (ssize_t)n;
}

static void stream_closed(void *userdata, bool timed_out)
{
        WebStream *ws = userdata;
        DaemonWeb *w = ws->web;

        if (timed_out && !ws->cut)
                w->overflows++; /* it stopped reading before its lag showed */
        if (ws->prev)
                ws->prev->next = ws->next;
        else
                w->streams = ws->next;
        if (ws->next)
                ws->next->prev = ws->prev;
        w->n_streams--;
        free(ws);
}

static const HttpStreamOps stream_ops = {
    .fill = stream_fill,
    .closed = stream_closed,
};

static void on_heartbeat(uv_timer_t *t)
{
        DaemonWeb *w = t->data;

        for (WebStream *ws = w->streams; ws; ws = ws->next)
                if (!ws->cut) {
                        ws->heartbeat = true;
                        http_stream_wake(ws->st);
                }
}

/* A decimal sequence, or -1 when `s` is not one. */
static long parse_sequence(const char *s)
{
        char *end;
        long v;

        if (!s || *s < '0' || *s > '9')
                return -1;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || *end)
                return -1;
        return v;
}

static void serve_events(DaemonWeb *w, HttpRequest *rq)
{
        const char *last_id = http_request_header(rq, "Last-Event-ID");
        const char *since_arg = http_request_arg(rq, "since");
        long since = -1;
        bool resumed;
        WebStream *ws;
        HttpStream *st;
        int r;

        if (since_arg) {
                since = parse_sequence(since_arg);
                if (since < 0) {
                        (void)http_reply_error(rq, 400, "bad-request",
                                               "'since' must be the sequence (id) of an event.");
                        return;
                }
        } else if (last_id && *last_id) {
                /* A stale or foreign id is no error: the client starts over. */
                since = parse_sequence(last_id);
        }
        if (w->n_streams >= w->d->config->http.max_event_streams) {
                w->refused++;
                (void)http_reply_error(rq, 503, "busy", "Already serving %u event streams ([http] max-event-streams).",
                                       w->n_streams);
                return;
        }
        ws = calloc(1, sizeof(*ws));
        if (!ws) {
                (void)http_reply_error(rq, 503, "busy", "Out of memory.");
                return;
        }
        ws->web = w;
        resumed = since >= 0 && stream_ring_covers(&w->ring, since);
        ws->next_seq = resumed ? since + 1 : w->ring.last + 1;
        for (long s = ws->next_seq; s <= w->ring.last; s++) {
                StreamChunk *c = stream_ring_get(&w->ring, s);

                ws->lag += c ? c->len : 0;
        }
        ws->hello_len = (size_t)snprintf(ws->hello, sizeof(ws->hello),
                                         "retry: 1000\nevent: sessionwatch.stream.live\n"
                                         "data: {\"sequence\":%ld,\"resumed\":%s}\n\n",
                                         ws->next_seq - 1, resumed ? "true" : "false");
        r = http_reply_stream(rq, "text/event-stream; charset=utf-8", &stream_ops, ws, &st);
        if (r == -ENOMEM) {
                free(ws);
                return;
        }
        ws->st = st;
        ws->next = w->streams;
        if (w->streams)
                w->streams->prev = ws;
        w->streams = ws;
        w->n_streams++;
        w->streams_total++;
        /* On -EIO the connection is already going: its closed() comes. */
        (void)r;
}

/* ---- JSON helpers ---- */

static json_object *string_or_null(const char *s)
{
        return s ? json_object_new_string(s) : NULL;
}

static json_object *time_or_null(int64_t us)
{
        char buf[TIMESTAMP_RFC3339_MAX];

        if (us <= 0 || format_timestamp_rfc3339(us, buf) < 0)
                return NULL;
        return json_object_new_string(buf);
}

static void reply_json(HttpRequest *rq, unsigned status, json_object *o)
{
        const char *text;
        size_t len;

        if (!o) {
                (void)http_reply_error(rq, 500, "internal", "Out of memory.");
                return;
        }
        text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                 &len);
        if (text) {
                char *copy = malloc(len + 1);

                if (copy) {
                        memcpy(copy, text, len);
                        copy[len] = '\n';
                        (void)http_reply(rq, status, "application/json", copy, len + 1, HTTP_BODY_TAKE, NULL);
                }
        }
        json_object_put(o);
}

/* The sort key of a session in the list: failures first, then waiting
 * sessions, then the others; the latest change first; then by id. */
typedef struct ListKey {
        unsigned rank;
        int64_t changed_us;
        const char *id;
        SessionIndex index;
} ListKey;

static int key_cmp(const ListKey *a, const ListKey *b)
{
        if (a->rank != b->rank)
                return a->rank < b->rank ? -1 : 1;
        if (a->changed_us != b->changed_us)
                return a->changed_us > b->changed_us ? -1 : 1;
        return strcmp(a->id, b->id);
}

static unsigned rank_of(const Session *rec)
{
        if (!(rec->flags & SESSION_SEEN) || (rec->flags & SESSION_GONE))
                return 2;
        if (rec->status == SESSION_STATUS_FAILED)
                return 0;
        if (rec->status == SESSION_STATUS_WAITING)
                return 1;
        return 2;
}

static ListKey key_of(DaemonWeb *w, SessionIndex i)
{
        Daemon *d = w->d;
        const Session *rec = sessions_get(d->table, i);
        const SessionView *v = i < w->n_views ? &w->views[i] : NULL;

        return (ListKey){
            .rank = rank_of(rec),
            .changed_us = v && v->changed_us ? v->changed_us : ((rec->flags & SESSION_SEEN) ? rec->updated_at_us : 0),
            .id = sessions_id(d->table, i),
            .index = i,
        };
}

static json_object *session_json(DaemonWeb *w, SessionIndex i)
{
        Daemon *d = w->d;
        const Session *rec = sessions_get(d->table, i);
        const SessionView *v = i < w->n_views ? &w->views[i] : NULL;
        const char *id = sessions_id(d->table, i);
        json_object *o = json_object_new_object();
        char *url = NULL;

        if (!o)
                return NULL;
        json_object_object_add(o, "id", json_object_new_string(id));
        json_object_object_add(o, "name", string_or_null(v ? v->name : NULL));
        json_object_object_add(o, "runbook", string_or_null(runbooks_name(&d->runbooks, i)));
        json_object_object_add(o, "status",
                               string_or_null((rec->flags & SESSION_SEEN) ? sessions_status_raw(d->table, i) : NULL));
        json_object_object_add(o, "previousStatus",
                               string_or_null(v && v->previous ? session_status_to_string(v->previous - 1) : NULL));
        json_object_object_add(o, "updatedAt", (rec->flags & SESSION_SEEN) ? time_or_null(rec->updated_at_us) : NULL);
        json_object_object_add(o, "changedAt", time_or_null(v ? v->changed_us : 0));
        json_object_object_add(o, "stalled", json_object_new_boolean(rec->flags & SESSION_STALLED));
        json_object_object_add(o, "gone", json_object_new_boolean(rec->flags & SESSION_GONE));
        if (asprintf(&url, "%s/sessions/%s", d->config->api.app_url, id) >= 0) {
                json_object_object_add(o, "url", json_object_new_string(url));
                free(url);
        }
        return o;
}

/* ---- /api/v1/sessions ---- */

#define FILTER_GONE (1u << _SESSION_STATUS_MAX)
#define FILTER_STALLED (1u << (_SESSION_STATUS_MAX + 1))

typedef struct ListQuery {
        unsigned status_mask; /* 0: any */
        uint32_t runbook;     /* 0: any; UINT32_MAX - 1: one never seen (nothing matches) */
        const char *q;
        size_t limit;
        bool has_after;
        ListKey after;
        char after_id[SESSION_ID_MAX + 1];
        char error[256];
} ListQuery;

static int parse_statuses(ListQuery *lq, const char *v)
{
        const char *p = v;

        while (*p) {
                size_t n = strcspn(p, ",");
                SessionStatus s;

                if (n == 4 && memcmp(p, "gone", 4) == 0)
                        lq->status_mask |= FILTER_GONE;
                else if (n == 7 && memcmp(p, "stalled", 7) == 0)
                        lq->status_mask |= FILTER_STALLED;
                else if (n == 7 && memcmp(p, "unknown", 7) == 0)
                        lq->status_mask |= 1u << SESSION_STATUS_UNKNOWN;
                else if ((s = session_status_from_string(p, n)) != SESSION_STATUS_UNKNOWN)
                        lq->status_mask |= 1u << s;
                else {
                        snprintf(lq->error, sizeof(lq->error),
                                 "'status' takes status names separated by commas (Pending, Active, Waiting, "
                                 "Succeeded, Failed, Cancelling, Cancelled, unknown, gone, stalled).");
                        return -EINVAL;
                }
                p += n;
                if (*p == ',' && *++p == '\0') {
                        snprintf(lq->error, sizeof(lq->error), "'status' ends with a comma.");
                        return -EINVAL;
                }
        }
        if (lq->status_mask == 0) {
                snprintf(lq->error, sizeof(lq->error), "'status' is empty.");
                return -EINVAL;
        }
        return 0;
}

/* `after` is "RANK.CHANGED_US.ID", as the previous page's "next" said. */
static int parse_after(ListQuery *lq, const char *v)
{
        const char *dot1 = strchr(v, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
        char *end;
        long long us;

        if (!dot1 || !dot2 || dot1 - v != 1 || v[0] < '0' || v[0] > '2' || dot2 - dot1 < 2 ||
            (size_t)strlen(dot2 + 1) > SESSION_ID_MAX || !config_session_id_valid(dot2 + 1))
                goto bad;
        if (dot1[1] == '-' || dot1[1] == '+')
                goto bad;
        errno = 0;
        us = strtoll(dot1 + 1, &end, 10);
        if (errno || end != dot2 || us < 0)
                goto bad;
        strcpy(lq->after_id, dot2 + 1);
        lq->after = (ListKey){.rank = (unsigned)(v[0] - '0'), .changed_us = us, .id = lq->after_id};
        lq->has_after = true;
        return 0;
bad:
        snprintf(lq->error, sizeof(lq->error), "'after' must be the 'next' value of an earlier page.");
        return -EINVAL;
}

static int on_list_arg(void *ud, const char *key, const char *value)
{
        ListQuery *lq = ud;

        if (!value)
                value = "";
        if (strcmp(key, "status") == 0)
                return parse_statuses(lq, value);
        if (strcmp(key, "runbook") == 0 || strcmp(key, "q") == 0)
                return 0; /* taken below */
        if (strcmp(key, "limit") == 0) {
                char *end;
                long v;

                errno = 0;
                v = strtol(value, &end, 10);
                if (errno || end == value || *end || v < 1 || v > SESSIONS_MAX_LIMIT) {
                        snprintf(lq->error, sizeof(lq->error), "'limit' must be a number from 1 to %d.",
                                 SESSIONS_MAX_LIMIT);
                        return -EINVAL;
                }
                lq->limit = (size_t)v;
                return 0;
        }
        if (strcmp(key, "after") == 0)
                return parse_after(lq, value);
        snprintf(lq->error, sizeof(lq->error),
                 "Unknown parameter '%.40s': this takes status, runbook, q, limit and after.", key);
        return -EINVAL;
}

static bool matches(DaemonWeb *w, const ListQuery *lq, SessionIndex i, const Session *rec)
{
        Daemon *d = w->d;

        if (lq->status_mask) {
                bool ok = false;

                if ((lq->status_mask & FILTER_GONE) && (rec->flags & SESSION_GONE))
                        ok = true;
                if ((lq->status_mask & FILTER_STALLED) && (rec->flags & SESSION_STALLED))
                        ok = true;
                if ((rec->flags & SESSION_SEEN) && !(rec->flags & SESSION_GONE) &&
                    (lq->status_mask & (1u << rec->status)))
                        ok = true;
                if (!ok)
                        return false;
        }
        if (lq->runbook && runbooks_of(&d->runbooks, i) != lq->runbook)
                return false;
        if (lq->q) {
                const SessionView *v = i < w->n_views ? &w->views[i] : NULL;
                const char *rb = runbooks_name(&d->runbooks, i);

                if (!strcasestr(sessions_id(d->table, i), lq->q) && !(v && v->name && strcasestr(v->name, lq->q)) &&
                    !(rb && strcasestr(rb, lq->q)))
                        return false;
        }
        return true;
}

/* The page: a max-heap of the `limit` smallest keys after the cursor. */
static void heap_sift_down(ListKey *h, size_t n, size_t k)
{
        for (;;) {
                size_t l = 2 * k + 1, r = l + 1, m = k;
                ListKey t;

                if (l < n && key_cmp(&h[l], &h[m]) > 0)
                        m = l;
                if (r < n && key_cmp(&h[r], &h[m]) > 0)
                        m = r;
                if (m == k)
                        return;
                t = h[k], h[k] = h[m], h[m] = t;
                k = m;
        }
}

static void heap_sift_up(ListKey *h, size_t k)
{
        while (k > 0) {
                size_t p = (k - 1) / 2;
                ListKey t;

                if (key_cmp(&h[p], &h[k]) >= 0)
                        return;
                t = h[k], h[k] = h[p], h[p] = t;
                k = p;
        }
}

static int key_qsort_cmp(const void *a, const void *b)
{
        return key_cmp(a, b);
}

static void serve_sessions(DaemonWeb *w, HttpRequest *rq)
{
        Daemon *d = w->d;
        ListQuery lq = {.limit = SESSIONS_DEFAULT_LIMIT};
        const char *runbook = http_request_arg(rq, "runbook"), *q = http_request_arg(rq, "q");
        size_t cap = sessions_capacity(d->table), n = 0, matched = 0, after_cursor = 0;
        ListKey *heap;
        json_object *o, *list;

        if (http_request_each_arg(rq, on_list_arg, &lq) != 0) {
                (void)http_reply_error(rq, 400, "bad-request", "%s", lq.error);
                return;
        }
        if (q && *q) {
                if (strlen(q) > SEARCH_MAX) {
                        (void)http_reply_error(rq, 400, "bad-request", "'q' is longer than %d bytes.", SEARCH_MAX);
                        return;
                }
                lq.q = q;
        }
        if (runbook && *runbook) {
                lq.runbook = runbooks_find(&d->runbooks, runbook, strlen(runbook));
                if (lq.runbook == 0)
                        cap = 0; /* never seen: nothing matches */
        }
        heap = malloc(lq.limit * sizeof(*heap));
        if (!heap) {
                (void)http_reply_error(rq, 503, "busy", "Out of memory.");
                return;
        }
        for (size_t k = 0; k < cap; k++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)k);
                ListKey key;

                if ((rec->flags & SESSION_REMOVED) || !matches(w, &lq, (SessionIndex)k, rec))
                        continue;
                matched++;
                key = key_of(w, (SessionIndex)k);
                if (lq.has_after && key_cmp(&key, &lq.after) <= 0)
                        continue;
                after_cursor++;
                if (n < lq.limit) {
                        heap[n] = key;
                        heap_sift_up(heap, n++);
                } else if (key_cmp(&key, &heap[0]) < 0) {
                        heap[0] = key;
                        heap_sift_down(heap, n, 0);
                }
        }
        qsort(heap, n, sizeof(*heap), key_qsort_cmp);

        o = json_object_new_object();
        list = json_object_new_array();
        if (!o || !list) {
                json_object_put(o);
                json_object_put(list);
                free(heap);
                (void)http_reply_error(rq, 503, "busy", "Out of memory.");
                return;
        }
        for (size_t k = 0; k < n; k++)
                json_object_array_add(list, session_json(w, heap[k].index));
        json_object_object_add(o, "sessions", list);
        if (after_cursor > n && n > 0) {
                char *next = NULL;

                if (asprintf(&next, "%u.%" PRId64 ".%s", heap[n - 1].rank, heap[n - 1].changed_us, heap[n - 1].id) >=
                    0) {
                        json_object_object_add(o, "next", json_object_new_string(next));
                        free(next);
                }
        } else
                json_object_object_add(o, "next", NULL);
        json_object_object_add(o, "matched", json_object_new_int64((int64_t)matched));
        free(heap);
        reply_json(rq, 200, o);
}

/* ---- /api/v1/sessions/ID ---- */

static void serve_session(DaemonWeb *w, HttpRequest *rq, const char *id)
{
        Daemon *d = w->d;
        SessionIndex i;
        json_object *o, *events;
        char needle[SESSION_ID_MAX + 16];
        long first = stream_ring_first(&w->ring), found = 0;
        long picked[SESSION_EVENTS_MAX];
        size_t nl;

        if (strlen(id) > SESSION_ID_MAX || !config_session_id_valid(id)) {
                (void)http_reply_error(rq, 400, "bad-request", "Not a session id.");
                return;
        }
        i = sessions_find(d->table, id, strlen(id));
        if (i == SESSION_INDEX_NONE) {
                (void)http_reply_error(rq, 404, "not-found", "No session '%s' is watched.", id);
                return;
        }
        o = json_object_new_object();
        events = json_object_new_array();
        if (!o || !events) {
                json_object_put(o);
                json_object_put(events);
                (void)http_reply_error(rq, 503, "busy", "Out of memory.");
                return;
        }
        json_object_object_add(o, "session", session_json(w, i));
        /* The newest first, then shown oldest first. Ids hold no character
         * that JSON escapes, so the subject is found as written. */
        nl = (size_t)snprintf(needle, sizeof(needle), "\"subject\":\"%s\"", id);
        for (long s = w->ring.last; s >= first && found < SESSION_EVENTS_MAX; s--) {
                StreamChunk *c = stream_ring_get(&w->ring, s);

                if (c && memmem(c->data, c->len, needle, nl))
                        picked[found++] = s;
        }
        for (long k = found - 1; k >= 0; k--) {
                StreamChunk *c = stream_ring_get(&w->ring, picked[k]);
                const char *data = memmem(c->data, c->len, "\ndata: ", 7);
                json_tokener *tok;
                json_object *e;

                if (!data)
                        continue;
                data += 7;
                /* The chunk is not NUL-terminated: parse exactly its JSON line. */
                tok = json_tokener_new();
                e = tok ? json_tokener_parse_ex(tok, data, (int)(c->data + c->len - data)) : NULL;
                json_tokener_free(tok);
                if (e)
                        json_object_array_add(events, e);
        }
        json_object_object_add(o, "events", events);
        reply_json(rq, 200, o);
}

/* ---- Routing ---- */

static void serve_status(DaemonWeb *w, HttpRequest *rq)
{
        json_object *o = daemon_status_json(w->d);

        if (o) {
                json_object_object_del(o, "ok");
                json_object_object_add(o, "appUrl", json_object_new_string(w->d->config->api.app_url));
        }
        reply_json(rq, 200, o);
}

static void serve_metrics(DaemonWeb *w, HttpRequest *rq)
{
        MetricsText m = METRICS_TEXT_NULL;

        daemon_metrics(w->d, &m);
        if (m.error < 0) {
                log_error_errno(m.error, "Failed to render the metrics: %m");
                metrics_text_done(&m);
                w->scrape_errors++;
                (void)http_reply_error(rq, 500, "internal", "Failed to render the metrics.");
                return;
        }
        w->scrapes++;
        (void)http_reply(rq, 200, "text/plain; version=0.0.4; charset=utf-8", m.data, m.len, HTTP_BODY_TAKE, NULL);
}

static void on_http_request(void *userdata, HttpRequest *rq)
{
        DaemonWeb *w = userdata;
        const char *path = http_request_path(rq);

        if (strcmp(path, "/metrics") == 0)
                serve_metrics(w, rq);
        else if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0)
                (void)http_reply(rq, 200, "text/html; charset=utf-8", web_index_html, web_index_html_len,
                                 HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/app.js") == 0)
                (void)http_reply(rq, 200, "text/javascript; charset=utf-8", web_app_js, web_app_js_len,
                                 HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/app.css") == 0)
                (void)http_reply(rq, 200, "text/css; charset=utf-8", web_app_css, web_app_css_len, HTTP_BODY_STATIC,
                                 NULL);
        else if (strcmp(path, "/favicon.ico") == 0)
                /* Browsers ask for it on their own; no icon, and no 404 in their console. */
                (void)http_reply(rq, 204, NULL, "", 0, HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/api/v1/status") == 0)
                serve_status(w, rq);
        else if (strcmp(path, "/api/v1/sessions") == 0)
                serve_sessions(w, rq);
        else if (strncmp(path, "/api/v1/sessions/", 17) == 0)
                serve_session(w, rq, path + 17);
        else if (strcmp(path, "/api/v1/events") == 0)
                serve_events(w, rq);
        else
                (void)http_reply_error(rq, 404, "not-found",
                                       "Nothing here: see /, /metrics and /api/v1/ (status, sessions, events).");
}

static const char *const public_paths[] = {"/", "/index.html", "/app.js", "/app.css", "/favicon.ico", NULL};

/* ---- Set-up, reload, close ---- */

static int server_start(DaemonWeb *w, const ConfigHttp *c, HttpServer **ret)
{
        HttpServerOptions o = {
            .host = c->listen.host,
            .port = c->listen.port,
            .token = c->token,
            .public_paths = public_paths,
            .max_connections = c->max_connections,
            .handler = on_http_request,
            .userdata = w,
        };

        return http_server_new(&w->d->loop, &o, ret);
}

static void log_serving(const ConfigHttp *c, HttpServer *s)
{
        log_info("Serving HTTP on %s (port %u): the status page at /, the API at /api/v1/, metrics at "
                 "/metrics%s.",
                 c->listen.listen, (unsigned)http_server_port(s), c->token ? "; a bearer token is required" : "");
}

static void add_stats(HttpServerStats *into, const HttpServer *s)
{
        HttpServerStats st;

        http_server_stats(s, &st);
        for (size_t k = 0; k < 6; k++)
                into->by_class[k] += st.by_class[k];
        into->unauthorized += st.unauthorized;
        into->timeouts += st.timeouts;
}

int daemon_setup_http(Daemon *d)
{
        const ConfigHttp *c = &d->config->http;
        DaemonWeb *w;
        struct timespec ts;
        int r;

        if (!c->listen.listen)
                return 0;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->d = d;
        /* Sequences start at the start time in µs, as the socket's do, so an
         * id from an earlier run is never taken for one of this run. */
        clock_gettime(CLOCK_REALTIME, &ts);
        r = stream_ring_init(&w->ring, RING_EVENTS, RING_BYTES, (long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
        if (r < 0) {
                free(w);
                return r;
        }
        r = server_start(w, c, &w->server);
        if (r < 0) {
                log_error_errno(r, "Failed to listen for HTTP on %s ([http] listen): %m", c->listen.listen);
                stream_ring_done(&w->ring);
                free(w);
                return r;
        }
        w->listen = strdup(c->listen.listen);
        uv_timer_init(&d->loop, &w->heartbeat);
        w->heartbeat.data = w;
        w->heartbeat_open = true;
        uv_timer_start(&w->heartbeat, on_heartbeat, c->heartbeat_ms, c->heartbeat_ms);
        d->web = w;
        log_serving(c, w->server);
        return 0;
}

static void on_heartbeat_closed(uv_handle_t *h)
{
        DaemonWeb *w = h->data;

        w->heartbeat_open = false;
}

void daemon_close_http(Daemon *d)
{
        DaemonWeb *w = d->web;

        if (!w)
                return;
        if (w->server) {
                add_stats(&w->closed_stats, w->server);
                http_server_close(w->server, NULL, NULL);
                w->server = NULL;
        }
        if (w->heartbeat_open && !uv_is_closing((uv_handle_t *)&w->heartbeat))
                uv_close((uv_handle_t *)&w->heartbeat, on_heartbeat_closed);
}

void daemon_free_http(Daemon *d)
{
        DaemonWeb *w = d->web;

        if (!w)
                return;
        /* The server's close callbacks ran: every stream is gone. */
        stream_ring_done(&w->ring);
        event_buffer_done(&w->buf);
        views_free(w);
        free(w->listen);
        free(w);
        d->web = NULL;
}

static bool str_equal(const char *a, const char *b)
{
        return a == b || (a && b && strcmp(a, b) == 0);
}

void daemon_reload_http(Daemon *d, Config *c)
{
        DaemonWeb *w = d->web;
        ConfigHttp *old = &d->config->http, t;
        HttpServer *s = NULL;
        int r;

        if (!w) {
                if (!c->http.listen.listen)
                        return;
                /* Turned on by this reload. */
                t = *old, *old = c->http, c->http = t;
                if (daemon_setup_http(d) < 0) {
                        t = *old, *old = c->http, c->http = t;
                        log_error("Not serving HTTP: [http] listen %s in '%s' cannot be bound.", c->http.listen.listen,
                                  c->path);
                }
                return;
        }
        if (!str_equal(w->listen, c->http.listen.listen)) {
                if (c->http.listen.listen) {
                        r = server_start(w, &c->http, &s);
                        if (r < 0) {
                                log_error_errno(r,
                                                "Failed to listen for HTTP on %s ([http] listen in '%s'): %m; "
                                                "still serving on %s.",
                                                c->http.listen.listen, c->path, w->listen ? w->listen : "nothing");
                                /* Keep the running address and token alike. */
                                return;
                        }
                }
                if (w->server) {
                        add_stats(&w->closed_stats, w->server);
                        http_server_close(w->server, NULL, NULL);
                }
                w->server = s;
                free(w->listen);
                w->listen = c->http.listen.listen ? strdup(c->http.listen.listen) : NULL;
                if (s)
                        log_serving(&c->http, s);
                else
                        log_info("No longer serving HTTP (on %s).", old->listen.listen);
        } else if (w->server && !str_equal(old->token, c->http.token)) {
                if (http_server_set_token(w->server, c->http.token) >= 0)
                        log_info("HTTP token replaced (%s).", c->http.token_file ? c->http.token_file : "none");
        }
        if (old->heartbeat_ms != c->http.heartbeat_ms && w->heartbeat_open)
                uv_timer_start(&w->heartbeat, on_heartbeat, c->http.heartbeat_ms, c->http.heartbeat_ms);
        /* The old values go with `c`. */
        t = *old;
        *old = c->http;
        c->http = t;
}

void daemon_http_metrics(Daemon *d, MetricsText *m)
{
        DaemonWeb *w = d->web;
        HttpServerStats st = {};
        static const char *const classes[] = {NULL, NULL, "2xx", "3xx", "4xx", "5xx"};

        if (!w)
                return;
        st = w->closed_stats;
        if (w->server)
                add_stats(&st, w->server);
        metrics_text_family(m, "sessionwatch_http_requests_total", "counter",
                            "HTTP answers by status class.");
        for (size_t k = 2; k < 6; k++)
                metrics_text_labelled(m, "sessionwatch_http_requests_total", "code", classes[k],
                                      (double)st.by_class[k]);
        metrics_text_single(m, "sessionwatch_http_unauthorized_total", "counter",
                            "HTTP requests refused for a missing or wrong bearer token.", (double)st.unauthorized);
        metrics_text_single(m, "sessionwatch_http_event_streams", "gauge", "HTTP event stream clients connected.",
                            (double)w->n_streams);
        metrics_text_single(m, "sessionwatch_http_event_streams_total", "counter",
                            "HTTP event stream clients accepted.", (double)w->streams_total);
        metrics_text_single(m, "sessionwatch_http_event_stream_overflows_total", "counter",
                            "HTTP event stream clients cut off for not reading.", (double)w->overflows);
        metrics_text_single(m, "sessionwatch_http_event_streams_refused_total", "counter",
                            "HTTP event stream clients refused past [http] max-event-streams.",
                            (double)w->refused);
        metrics_text_family(m, "sessionwatch_metrics_scrapes_total", "counter",
                            "Answers of GET /metrics by result.");
        metrics_text_labelled(m, "sessionwatch_metrics_scrapes_total", "result", "ok", (double)w->scrapes);
        metrics_text_labelled(m, "sessionwatch_metrics_scrapes_total", "result", "error", (double)w->scrape_errors);
}
