/* http-sessions: GET /api/v1/sessions (filtered, searched, keyset-paged:
 * failures first, then waiting sessions, then by last change) and
 * /api/v1/sessions/ID (one session and its events still in the ring).
 *
 * What the table does not keep for the API (a session's name, its previous
 * status, when its status last changed) sits in a side array, `views`, kept
 * only while the listener is configured. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon-http.h"
#include "decode.h"

/* ---- Session views ---- */

SessionView *web_view_of(DaemonWeb *w, SessionIndex i, bool create)
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
        v = web_view_of(d->web, i, true);
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

        if (!d->web || !(v = web_view_of(d->web, i, false)))
                return;
        free(v->name);
        *v = (SessionView){};
}

void web_views_free(DaemonWeb *w)
{
        for (size_t i = 0; i < w->n_views; i++)
                free(w->views[i].name);
        free(w->views);
        w->views = NULL;
        w->n_views = 0;
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

void web_reply_json(HttpRequest *rq, unsigned status, json_object *o)
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
                        (void)http_reply(rq, status, "application/json", copy, len + 1, HTTP_BODY_TAKE,
                                         NULL);
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
            .changed_us =
                v && v->changed_us ? v->changed_us : ((rec->flags & SESSION_SEEN) ? rec->updated_at_us : 0),
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
        json_object_object_add(
            o, "status",
            string_or_null((rec->flags & SESSION_SEEN) ? sessions_status_raw(d->table, i) : NULL));
        json_object_object_add(
            o, "previousStatus",
            string_or_null(v && v->previous ? session_status_to_string(v->previous - 1) : NULL));
        json_object_object_add(o, "updatedAt",
                               (rec->flags & SESSION_SEEN) ? time_or_null(rec->updated_at_us) : NULL);
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
                        snprintf(
                            lq->error, sizeof(lq->error),
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

                if (!strcasestr(sessions_id(d->table, i), lq->q) &&
                    !(v && v->name && strcasestr(v->name, lq->q)) && !(rb && strcasestr(rb, lq->q)))
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

void web_serve_sessions(DaemonWeb *w, HttpRequest *rq)
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
                        (void)http_reply_error(rq, 400, "bad-request", "'q' is longer than %d bytes.",
                                               SEARCH_MAX);
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

                if (asprintf(&next, "%u.%" PRId64 ".%s", heap[n - 1].rank, heap[n - 1].changed_us,
                             heap[n - 1].id) >= 0) {
                        json_object_object_add(o, "next", json_object_new_string(next));
                        free(next);
                }
        } else
                json_object_object_add(o, "next", NULL);
        json_object_object_add(o, "matched", json_object_new_int64((int64_t)matched));
        free(heap);
        web_reply_json(rq, 200, o);
}

/* ---- /api/v1/sessions/ID ---- */

void web_serve_session(DaemonWeb *w, HttpRequest *rq, const char *id)
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
        web_reply_json(rq, 200, o);
}
