/* SPDX-License-Identifier: MIT */
/*
 * apisim - a simulator of the Airplane REST API's session endpoints, for
 * tests, the demo and the benchmark of sessionwatchd.
 *
 * USAGE
 *   apisim [--listen ADDR] [--port N] [--port-file FILE] [--prefix /v0]
 *          [--key KEY | --key-file FILE] [--scenario FILE]
 *          [--sessions N] [--seed S] [--step-min SECS] [--step-max SECS]
 *          [--runbooks K] [--stagger SECS] [--threads N] [--list-ids FILE]
 *          [--request-log N] [--list-order ORDER] [--list-lag MS] [--quiet]
 *
 *   --listen ADDR     IPv4 or IPv6 address to bind (default 127.0.0.1).
 *   --port N          TCP port, 0 for any free port (default 0).
 *   --port-file FILE  Write the bound port there (atomically, via rename).
 *   --prefix P        Path prefix of the API (default /v0; "" for none).
 *   --key KEY         The API key every API request must carry in
 *   --key-file FILE   X-Airplane-API-Key (default "test-key").
 *   --scenario FILE   Sessions with explicit timelines (format below).
 *   --sessions N      Also generate N sessions (default 0) ...
 *   --seed S          ... deterministically from seed S (default 1) ...
 *   --step-min SECS   ... whose steps last between step-min and step-max
 *   --step-max SECS   seconds (defaults 2 and 20; fractions allowed) ...
 *   --runbooks K      ... spread over K runbooks (default 3) ...
 *   --stagger SECS    ... starting at instants spread uniformly over the
 *                     SECS seconds before apisim's start (default 0: all
 *                     at the start), drawn from the seed and the index.
 *   --threads N       Server threads (default: number of CPUs, at most 16).
 *   --list-ids FILE   Write every session ID, one per line, at start.
 *   --request-log N   Request times kept per session (default 1000).
 *   --list-order ORDER  Order of /sessions/list (default updated-asc):
 *                     updated-asc   (updatedAt, id) ascending;
 *                     updated-desc  (updatedAt, id) descending;
 *                     id            id ascending, ignoring updatedAt;
 *                     shuffled      a hash of the id seeded by --seed:
 *                                   stable across requests, unrelated to
 *                                   updatedAt and id.
 *   --list-lag MS     /sessions/list shows every session as it was MS
 *                     milliseconds ago (default 0; at most 86400000).
 *   --quiet           No diagnostics on stderr besides errors.
 *
 * On start apisim writes --list-ids, then --port-file, then prints
 * "apisim: listening on http://127.0.0.1:PORT/v0" on stdout; so once the
 * port file exists, the ID list is complete. It runs until SIGTERM or SIGINT
 * and exits 0; bad arguments or a bad scenario exit 2 with a message.
 *
 * API (under the prefix; every request needs the key, else 401)
 *   GET  /sessions/get?id=ID      GetSessionResponse; 404 unknown session,
 *                                 400 missing id.
 *   GET  /sessions/list           {"sessions":[GetSessionResponse...]}
 *        runbookID=ID             only that runbook's sessions
 *        updatedAfter=RFC3339     updatedAt strictly after
 *        updatedBefore=RFC3339    updatedAt strictly before
 *        limit=0..50              page size, default 50
 *        page=N                   page index from 0
 *        Ordered by --list-order, (updatedAt, id) ascending by default;
 *        paging follows that order; a short page is the last. With
 *        --list-lag MS the filters, the order and the entries are those of
 *        every session as it was at now - MS (its status and updatedAt
 *        then; not listed when its first step is later). get is always
 *        current. With runbookID only that runbook's sessions are scanned.
 *        Bad limit/page/time: 400.
 *   POST /runbooks/execute        {"id"|"slug", "paramValues":{...}} ->
 *                                 {"sessionID":"ses..."}; the new session
 *                                 follows a generated lifecycle from now.
 *                                 400 without id and slug, 404 unknown slug.
 *   Errors are JSON: {"error":"..."}. Timestamps look like
 *   "2022-01-11 22:32:45.601486+00"; IDs like "ses20220120za1pskd12".
 *
 * SCENARIO FILE
 *   {"sessions":[{"id":"ses...", "runbookID":"rbk...", "name":"...",
 *     "teamID":"tea...", "createdBy":"usr...", "isPrivate":false,
 *     "paramValues":{"k":"v"},
 *     "timeline":[[0,"Pending"],[1.5,"Active"],[3,"Succeeded"]]}]}
 *   id, runbookID and timeline are required. Times are seconds after start
 *   (fractions and negative times allowed, never decreasing). A session is
 *   visible from its first step; its status is that of the last step not
 *   in the future, updatedAt that step's instant, createdAt the first's.
 *   Any status string is served verbatim.
 *
 * GENERATED LIFECYCLE
 *   Pending -> Active -> (Waiting -> Active, zero to two times) ->
 *   Succeeded (60%) | Failed (25%) | Cancelling -> Cancelled (15%).
 *   Generated sessions start at apisim's start, or with --stagger SECS at
 *   an instant of the SECS seconds before it.
 *
 * ADMIN API (under /_sim/, no key, JSON in and out)
 *   GET    /_sim/health            {"ok":true,"sessions":N}
 *   POST   /_sim/status            {"id":"ses...","status":"Failed"}: the
 *                                  status changes now; the rest of the
 *                                  timeline is dropped. Returns the session.
 *                                  "updatedAt": Unix seconds dates the change
 *                                  then instead (not in the future): the
 *                                  steps after it are dropped, so updatedAt
 *                                  can go backwards.
 *   POST   /_sim/sessions          Scenario format, times relative to now.
 *                                  Returns {"added":N,"ids":[...]}.
 *   GET    /_sim/sessions          {"sessions":[{"id","runbookID","visible",
 *                                  "status","updatedAt","updatedAtUnix"}]}
 *   POST   /_sim/faults            {"kind":K, "count":N | "probability":P,
 *                                  "session":ID, "endpoint":"get|list|execute",
 *                                  "retryAfter":SECS, "delayMs":MS,
 *                                  "status":S} -> {"id":N,"kind":K}
 *   GET    /_sim/faults            The active rules.
 *   DELETE /_sim/faults            Clears every rule.
 *   GET    /_sim/config            {"listOrder":"updated-asc","listLagMs":0}
 *   POST   /_sim/config            {"listOrder":ORDER, "listLagMs":MS,
 *                                  "apiKey":KEY}, all optional: sets them at
 *                                  run time (all or nothing) and returns the
 *                                  configuration (without the key). A new
 *                                  apiKey refuses the old one from then on.
 *                                  Unknown key or bad value: 400 naming it.
 *   GET    /_sim/counters          {"requests":{"get","list","execute",
 *                                  "unauthorized","badRequest","notFound",
 *                                  "other"}, "lists":{RUNBOOK|"*":N},
 *                                  "faults":{KIND:N},
 *                                  "sessions":{ID:{"count":N,"times":[...]}}}
 *                                  ?session=ID for one, ?times=0 for none.
 *   POST   /_sim/counters/reset    Zeroes all counters.
 *   GET    /_sim/history           {ID:[[unixSeconds,"Pending"],...]}: the
 *                                  transitions that happened so far;
 *                                  ?id=ID for one session.
 *
 * FAULTS
 *   Kinds: 500, 502, 503 (Retry-After when retryAfter is set), 429
 *   (Retry-After, default 1), delay (answer after delayMs, default 1000),
 *   reset (close without an answer), truncate (200, half the body, correct
 *   Content-Length), invalid-json (200, not JSON), wrong-type (200,
 *   "status":3 and "updatedAt":true; execute: "sessionID":12345), huge
 *   (200, valid JSON over 2 MiB), unknown-status (200, status "Exploded" or
 *   the rule's "status"), list-miss (below). Without count and probability
 *   a rule fires once. A "session" rule matches only /sessions/get for that
 *   ID. Rules apply to authorized, well-formed API requests; the first
 *   matching rule wins.
 *   list-miss (endpoint list only) is not part of that choice: it takes one
 *   entry out of the page of a list answer as it is rendered (after the
 *   other rules, and not when they replaced the answer), leaving the rest
 *   of the page as it was, so a full page may come short. With "session":ID
 *   it applies to the next list answer that would contain ID and leaves ID
 *   out (count N: the next N such answers; probability: each such answer
 *   with that chance); without it, it leaves out one entry chosen at random
 *   (seeded) of each list answer it applies to. Counted as "list-miss".
 *
 * COUNTERS
 *   Each API request counts once: as unauthorized, as badRequest, as other
 *   (unknown path or method), or under its endpoint (get, list, execute).
 *   notFound counts the get requests for unknown sessions among "get".
 *   Per session: authorized get requests for it, and the Unix times (in
 *   seconds, microsecond precision) of the most recent --request-log ones.
 *   "lists": the list requests by the runbookID they asked for, "*" for
 *   those without one; they add up to "list". Reset empties it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "sim.h"

#define SERVER_API_BODY_MAX (1u << 20)
#define SERVER_ADMIN_BODY_MAX (256u << 20)
#define SERVER_HUGE_PADDING ((size_t)5 << 19) /* 2.5 MiB */
#define SERVER_LIST_LIMIT_MAX 50
#define SERVER_LIST_LAG_MAX_MS 86400000u
#define SERVER_LIST_COUNTS_MAX 100000

struct options {
        const char *listen;
        unsigned port;
        const char *port_file;
        char *prefix;
        char *key;
        const char *scenario;
        size_t sessions;
        uint64_t seed;
        double step_min;
        double step_max;
        unsigned runbooks;
        double stagger;
        unsigned threads;
        const char *list_ids;
        unsigned request_log;
        enum list_order list_order;
        unsigned list_lag_ms;
        bool quiet;
};

/* State of one request that outlives a single call of the access handler. */
struct request {
        struct sbuf body;
        bool too_large;
        bool decided; /* faults were picked and counters updated */
};

enum counter {
        COUNTER_GET,
        COUNTER_LIST,
        COUNTER_EXECUTE,
        COUNTER_UNAUTHORIZED,
        COUNTER_BAD_REQUEST,
        COUNTER_NOT_FOUND,
        COUNTER_OTHER,
        COUNTER_MAX,
};

static const char *const server_counter_names[COUNTER_MAX] = {
    "get", "list", "execute", "unauthorized", "badRequest", "notFound", "other",
};

/* Marks a GET whose first handler call has passed; see server_on_request(). */
static char server_first_call_seen;

static struct {
        const char *prefix;
        size_t prefix_len;
        /* The accepted key; POST /_sim/config {"apiKey"} replaces it while
         * requests are served, so it is read and written under key_lock. */
        pthread_mutex_t key_lock;
        char *key;
        size_t key_len;
        atomic_ullong counters[COUNTER_MAX];
        /* The run-time configuration of /_sim/config. */
        atomic_int list_order;
        atomic_uint list_lag_ms;
} server;

/*
 * List requests per runbookID as the client asked for it ("*": without
 * one), in an open-addressing table. A list scans many sessions, so one
 * mutex per list request costs nothing worth a lock-free design.
 */
struct list_count {
        char *runbook;
        unsigned long long count;
};

static struct {
        pthread_mutex_t lock;
        struct list_count *slots;
        size_t cap;
        size_t n;
} list_counts = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

static void server_count(enum counter c)
{
        atomic_fetch_add_explicit(&server.counters[c], 1, memory_order_relaxed);
}

/* The caller holds the lock; returns the slot of the name, or the empty slot where it belongs. */
static struct list_count *list_counts_slot(struct list_count *slots, size_t cap, const char *runbook)
{
        size_t mask = cap - 1;

        for (size_t i = util_hash_string(runbook) & mask;; i = (i + 1) & mask)
                if (!slots[i].runbook || strcmp(slots[i].runbook, runbook) == 0)
                        return &slots[i];
}

static void list_counts_add(const char *runbook)
{
        struct list_count *c;

        if (!runbook)
                runbook = "*";
        pthread_mutex_lock(&list_counts.lock);
        if ((list_counts.n + 1) * 2 > list_counts.cap) {
                size_t cap = list_counts.cap ? list_counts.cap * 2 : 64;
                struct list_count *slots = xcalloc(cap, sizeof(*slots));

                for (size_t i = 0; i < list_counts.cap; i++)
                        if (list_counts.slots[i].runbook)
                                *list_counts_slot(slots, cap, list_counts.slots[i].runbook) =
                                    list_counts.slots[i];
                free(list_counts.slots);
                list_counts.slots = slots;
                list_counts.cap = cap;
        }
        c = list_counts_slot(list_counts.slots, list_counts.cap, runbook);
        if (!c->runbook && list_counts.n < SERVER_LIST_COUNTS_MAX) {
                c->runbook = xstrdup(runbook);
                list_counts.n++;
        }
        if (c->runbook)
                c->count++;
        pthread_mutex_unlock(&list_counts.lock);
}

static void list_counts_dump(struct sbuf *out)
{
        bool first = true;

        sbuf_putc(out, '{');
        pthread_mutex_lock(&list_counts.lock);
        for (size_t i = 0; i < list_counts.cap; i++) {
                const struct list_count *c = &list_counts.slots[i];

                if (!c->runbook)
                        continue;
                if (!first)
                        sbuf_putc(out, ',');
                first = false;
                sbuf_put_json_string(out, c->runbook);
                sbuf_printf(out, ":%llu", c->count);
        }
        pthread_mutex_unlock(&list_counts.lock);
        sbuf_putc(out, '}');
}

static void list_counts_reset(void)
{
        pthread_mutex_lock(&list_counts.lock);
        for (size_t i = 0; i < list_counts.cap; i++)
                free(list_counts.slots[i].runbook);
        free(list_counts.slots);
        list_counts.slots = NULL;
        list_counts.cap = list_counts.n = 0;
        pthread_mutex_unlock(&list_counts.lock);
}

static enum MHD_Result server_reply_buf(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                                        unsigned retry_after)
{
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer_with_free_callback(len, body, free);
        if (!resp) {
                free(body);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        if (retry_after > 0) {
                char v[16];

                snprintf(v, sizeof(v), "%u", retry_after);
                MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
        }
        ret = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result server_reply(struct MHD_Connection *conn, unsigned status, struct sbuf *b)
{
        size_t len;
        char *body = sbuf_steal(b, &len);

        return server_reply_buf(conn, status, body, len, 0);
}

static enum MHD_Result server_verror(struct MHD_Connection *conn, unsigned status, unsigned retry_after,
                                     const char *fmt, va_list ap)
{
        char msg[512];
        struct sbuf b;
        size_t len;
        char *body;

        vsnprintf(msg, sizeof(msg), fmt, ap);
        sbuf_init(&b, 128);
        sbuf_puts(&b, "{\"error\":");
        sbuf_put_json_string(&b, msg);
        sbuf_puts(&b, "}");
        body = sbuf_steal(&b, &len);
        return server_reply_buf(conn, status, body, len, retry_after);
}

static enum MHD_Result server_error(struct MHD_Connection *conn, unsigned status, unsigned retry_after,
                                    const char *fmt, ...) SIM_ATTR_PRINTF(4, 5);

static enum MHD_Result server_error(struct MHD_Connection *conn, unsigned status, unsigned retry_after,
                                    const char *fmt, ...)
{
        enum MHD_Result ret;
        va_list ap;

        va_start(ap, fmt);
        ret = server_verror(conn, status, retry_after, fmt, ap);
        va_end(ap);
        return ret;
}

static enum MHD_Result server_bad_request(struct MHD_Connection *conn, const char *fmt, ...)
    SIM_ATTR_PRINTF(2, 3);

static enum MHD_Result server_bad_request(struct MHD_Connection *conn, const char *fmt, ...)
{
        enum MHD_Result ret;
        va_list ap;

        server_count(COUNTER_BAD_REQUEST);
        va_start(ap, fmt);
        ret = server_verror(conn, MHD_HTTP_BAD_REQUEST, 0, fmt, ap);
        va_end(ap);
        return ret;
}

static const char *server_arg(struct MHD_Connection *conn, const char *name)
{
        const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);

        /* An empty optional parameter means the same as an absent one. */
        return v && *v ? v : NULL;
}

static bool server_authorized(struct MHD_Connection *conn)
{
        const char *k = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Airplane-API-Key");
        unsigned char diff = 0;
        size_t n;

        bool ok;

        if (!k)
                return false;
        n = strlen(k);
        pthread_mutex_lock(&server.key_lock);
        ok = n == server.key_len;
        for (size_t i = 0; ok && i < n; i++)
                diff |= (unsigned char)(k[i] ^ server.key[i]);
        pthread_mutex_unlock(&server.key_lock);
        return ok && diff == 0;
}

/* Parses a decimal number made of digits only, as the API's integer parameters. */
static int server_parse_uint(const char *s, uint64_t max, uint64_t *ret)
{
        uint64_t v = 0;

        if (!*s)
                return -EINVAL;
        for (; *s; s++) {
                if (*s < '0' || *s > '9')
                        return -EINVAL;
                if (v > (max - (uint64_t)(*s - '0')) / 10)
                        return -ERANGE;
                v = v * 10 + (uint64_t)(*s - '0');
        }
        *ret = v;
        return 0;
}

/*
 * Picks the fault for a request, once: a request resumed after a delay
 * comes through here again and must neither count twice nor be faulted
 * twice. Returns 1 when the connection was suspended for a delay.
 */
static int server_decide(struct MHD_Connection *conn, void **req_cls, enum endpoint ep,
                         const char *session_id, struct fault_action *fa)
{
        struct request *req = *req_cls;

        fa->kind = FAULT_NONE;
        if (req && req->decided)
                return 0;
        if (!faults_pick(ep, session_id, fa))
                fa->kind = FAULT_NONE;
        if (fa->kind != FAULT_DELAY)
                return 0;
        if (!req) {
                req = xcalloc(1, sizeof(*req));
                *req_cls = req;
        }
        req->decided = true;
        fa->kind = FAULT_NONE;
        return delay_suspend(conn, fa->delay_ms) ? 1 : 0;
}

/* Answers with the body as the fault dictates; the body is a complete JSON object. */
static enum MHD_Result server_reply_faulted(struct MHD_Connection *conn, struct sbuf *b,
                                            const struct fault_action *fa)
{
        switch (fa->kind) {
        case FAULT_TRUNCATE:
                /* Half of an object never parses, and Content-Length still matches what is sent. */
                b->len /= 2;
                b->buf[b->len] = '\0';
                break;
        case FAULT_HUGE:
                if (b->len > 0 && b->buf[b->len - 1] == '}') {
                        b->len--;
                        sbuf_puts(b, ",\"padding\":\"");
                        sbuf_reserve(b, SERVER_HUGE_PADDING + 2);
                        memset(b->buf + b->len, 'x', SERVER_HUGE_PADDING);
                        b->len += SERVER_HUGE_PADDING;
                        sbuf_puts(b, "\"}");
                }
                break;
        default:
                break;
        }
        return server_reply(conn, MHD_HTTP_OK, b);
}

/* Faults that replace the answer entirely; returns -1 when the fault leaves the answer to the caller. */
static int server_fault_answer(struct MHD_Connection *conn, const struct fault_action *fa,
                               enum MHD_Result *ret)
{
        static const char garbage[] = "<html><head><title>Service Unavailable</title></head>"
                                      "<body>upstream connect error</body></html>\n";

        switch (fa->kind) {
        case FAULT_RESET:
                /* Returning MHD_NO makes libmicrohttpd close the connection without answering. */
                *ret = MHD_NO;
                return 0;
        case FAULT_500:
                *ret = server_error(conn, 500, 0, "simulated 500 Internal Server Error");
                return 0;
        case FAULT_502:
                *ret = server_error(conn, 502, 0, "simulated 502 Bad Gateway");
                return 0;
        case FAULT_503:
                *ret = server_error(conn, 503, fa->retry_after, "simulated 503 Service Unavailable");
                return 0;
        case FAULT_404:
                /* The same answer as for a session that does not exist, so a
                 * client sees a known session vanish (deleted, or access lost). */
                *ret = server_error(conn, MHD_HTTP_NOT_FOUND, 0, "session not found");
                return 0;
        case FAULT_401:
                /* What a key the API no longer accepts gets (revoked,
                 * rotated): the answer of a wrong key, on a request that
                 * carried the right one. */
                *ret = server_error(conn, MHD_HTTP_UNAUTHORIZED, 0,
                                    "missing or invalid API key (X-Airplane-API-Key)");
                return 0;
        case FAULT_403:
                /* What a private session answers to a key without access. */
                *ret = server_error(conn, MHD_HTTP_FORBIDDEN, 0, "forbidden");
                return 0;
        case FAULT_429:
                *ret = server_error(conn, 429, fa->retry_after ? fa->retry_after : 1,
                                    "simulated 429 Too Many Requests");
                return 0;
        case FAULT_INVALID_JSON: {
                char *body = xstrdup(garbage);

                *ret = server_reply_buf(conn, MHD_HTTP_OK, body, sizeof(garbage) - 1, 0);
                return 0;
        }
        default:
                return -1;
        }
}

static void server_render_for(const struct fault_action *fa, struct store_render *render)
{
        render->wrong_type = fa->kind == FAULT_WRONG_TYPE;
        render->status = fa->kind == FAULT_UNKNOWN_STATUS ? fa->status : NULL;
}

static enum MHD_Result server_handle_get(struct MHD_Connection *conn, void **req_cls)
{
        const char *id = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "id");
        struct request *req = *req_cls;
        bool resumed = req && req->decided;
        struct store_render render;
        struct fault_action fa;
        enum MHD_Result ret;
        struct sbuf b;
        int r;

        if (!id || !*id)
                return server_bad_request(conn, "missing required query parameter 'id'");
        if (!resumed) {
                server_count(COUNTER_GET);
                r = server_decide(conn, req_cls, ENDPOINT_GET, id, &fa);
                if (r > 0) {
                        store_record_request(id, simtime_now_us());
                        return MHD_YES;
                }
                if (*req_cls && ((struct request *)*req_cls)->decided) {
                        /* A delay that could not be served (apisim is stopping): answer now. */
                        store_record_request(id, simtime_now_us());
                        resumed = true;
                }
        } else {
                fa.kind = FAULT_NONE;
        }
        if (fa.kind != FAULT_NONE && fa.kind != FAULT_TRUNCATE && fa.kind != FAULT_HUGE &&
            fa.kind != FAULT_WRONG_TYPE && fa.kind != FAULT_UNKNOWN_STATUS) {
                store_record_request(id, simtime_now_us());
                if (server_fault_answer(conn, &fa, &ret) == 0)
                        return ret;
        }
        server_render_for(&fa, &render);
        sbuf_init(&b, 1024);
        r = store_get(id, simtime_now_us(), !resumed, &render, &b);
        if (r < 0) {
                sbuf_done(&b);
                server_count(COUNTER_NOT_FOUND);
                return server_error(conn, MHD_HTTP_NOT_FOUND, 0, "session not found");
        }
        return server_reply_faulted(conn, &b, &fa);
}

static enum MHD_Result server_handle_list(struct MHD_Connection *conn, void **req_cls)
{
        struct store_list_query q = {.limit = SERVER_LIST_LIMIT_MAX};
        struct request *req = *req_cls;
        const char *v;
        struct store_render render;
        struct fault_action fa;
        enum MHD_Result ret;
        struct sbuf b;
        uint64_t n;

        q.runbook_id = server_arg(conn, "runbookID");
        if ((v = server_arg(conn, "updatedAfter"))) {
                if (simtime_parse_rfc3339(v, &q.after_us) < 0)
                        return server_bad_request(conn, "invalid updatedAfter '%.100s': expected RFC 3339",
                                                  v);
                q.has_after = true;
        }
        if ((v = server_arg(conn, "updatedBefore"))) {
                if (simtime_parse_rfc3339(v, &q.before_us) < 0)
                        return server_bad_request(conn, "invalid updatedBefore '%.100s': expected RFC 3339",
                                                  v);
                q.has_before = true;
        }
        if ((v = server_arg(conn, "limit"))) {
                if (server_parse_uint(v, UINT64_MAX, &n) < 0 || n > SERVER_LIST_LIMIT_MAX)
                        return server_bad_request(conn, "invalid limit '%.100s': accepted values are 0 - 50",
                                                  v);
                q.limit = (unsigned)n;
        }
        if ((v = server_arg(conn, "page"))) {
                if (server_parse_uint(v, UINT32_MAX, &n) < 0)
                        return server_bad_request(conn, "invalid page '%.100s': expected a page index", v);
                q.page = n;
        }
        q.order = (enum list_order)atomic_load(&server.list_order);
        q.lag_us = (int64_t)atomic_load(&server.list_lag_ms) * 1000;
        q.miss = faults_list_miss;
        if (!(req && req->decided)) {
                server_count(COUNTER_LIST);
                list_counts_add(q.runbook_id);
                if (server_decide(conn, req_cls, ENDPOINT_LIST, NULL, &fa) > 0)
                        return MHD_YES;
                if (server_fault_answer(conn, &fa, &ret) == 0)
                        return ret;
        } else {
                fa.kind = FAULT_NONE;
        }
        server_render_for(&fa, &render);
        sbuf_init(&b, 4096);
        store_list(&q, simtime_now_us(), &render, &b);
        return server_reply_faulted(conn, &b, &fa);
}

static json_object *server_parse_body(const struct request *req)
{
        json_tokener *tok;
        json_object *obj;
        size_t end;

        if (!req || req->body.len == 0)
                return NULL;
        tok = json_tokener_new();
        obj = json_tokener_parse_ex(tok, req->body.buf, (int)req->body.len);
        if (json_tokener_get_error(tok) != json_tokener_success) {
                json_object_put(obj);
                json_tokener_free(tok);
                return NULL;
        }
        end = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);
        for (; end < req->body.len; end++) {
                if (!strchr(" \t\r\n", req->body.buf[end])) {
                        json_object_put(obj);
                        return NULL;
                }
        }
        return obj;
}

static enum MHD_Result server_handle_execute(struct MHD_Connection *conn, void **req_cls)
{
        struct request *req = *req_cls;
        json_object *body, *v, *params = NULL;
        const char *id = NULL, *slug = NULL;
        struct fault_action fa;
        enum MHD_Result ret;
        struct sbuf b, sid;
        int r;

        if (req->too_large)
                return server_bad_request(conn, "request body larger than 1 MiB");
        body = server_parse_body(req);
        if (!body || !json_object_is_type(body, json_type_object)) {
                json_object_put(body);
                return server_bad_request(conn, "body must be a JSON object (ExecuteRunbookRequest)");
        }
        if (json_object_object_get_ex(body, "id", &v) && json_object_is_type(v, json_type_string) &&
            json_object_get_string_len(v) > 0)
                id = json_object_get_string(v);
        if (json_object_object_get_ex(body, "slug", &v) && json_object_is_type(v, json_type_string) &&
            json_object_get_string_len(v) > 0)
                slug = json_object_get_string(v);
        if (!id && !slug) {
                json_object_put(body);
                return server_bad_request(conn, "either \"id\" or \"slug\" of the runbook is required");
        }
        if (json_object_object_get_ex(body, "paramValues", &params) &&
            !json_object_is_type(params, json_type_null)) {
                bool ok = json_object_is_type(params, json_type_object);

                if (ok) {
                        json_object_object_foreach(params, key, val)
                        {
                                (void)key;
                                ok = ok && json_object_is_type(val, json_type_string);
                        }
                }
                if (!ok) {
                        json_object_put(body);
                        return server_bad_request(conn, "\"paramValues\" must be an object of strings");
                }
        } else {
                params = NULL;
        }

        if (!req->decided) {
                server_count(COUNTER_EXECUTE);
                if (server_decide(conn, req_cls, ENDPOINT_EXECUTE, NULL, &fa) > 0) {
                        json_object_put(body);
                        return MHD_YES;
                }
                if (server_fault_answer(conn, &fa, &ret) == 0) {
                        json_object_put(body);
                        return ret;
                }
        } else {
                fa.kind = FAULT_NONE;
        }

        sbuf_init(&sid, 64);
        r = store_execute(id, slug, params, simtime_now_us(), &sid);
        json_object_put(body);
        if (r == -ENOENT) {
                sbuf_done(&sid);
                return server_error(conn, MHD_HTTP_NOT_FOUND, 0, "runbook not found");
        }
        if (r < 0) {
                sbuf_done(&sid);
                return server_error(conn, MHD_HTTP_BAD_REQUEST, 0, "cannot execute runbook: %s",
                                    strerror(-r));
        }
        sbuf_init(&b, 128);
        if (fa.kind == FAULT_WRONG_TYPE) {
                sbuf_puts(&b, "{\"sessionID\":12345}");
        } else {
                sbuf_puts(&b, "{\"sessionID\":");
                sbuf_put_json_string(&b, sid.buf);
                sbuf_puts(&b, "}");
        }
        sbuf_done(&sid);
        return server_reply_faulted(conn, &b, &fa);
}

static enum MHD_Result server_method_not_allowed(struct MHD_Connection *conn, const char *allow)
{
        return server_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, 0, "method not allowed (use %s)", allow);
}

static enum MHD_Result server_admin_error(struct MHD_Connection *conn, unsigned status, const char *msg)
{
        return server_error(conn, status, 0, "%s", msg);
}

static void server_dump_config(struct sbuf *out)
{
        sbuf_puts(out, "{\"listOrder\":");
        sbuf_put_json_string(out, list_order_name((enum list_order)atomic_load(&server.list_order)));
        sbuf_printf(out, ",\"listLagMs\":%u}", atomic_load(&server.list_lag_ms));
}

/* Applies a POST /_sim/config body: every key is checked before any is applied. */
static int server_set_config(json_object *body, char *err, size_t errlen)
{
        int order = -1;
        int64_t lag = -1;
        const char *api_key = NULL;

        if (!json_object_is_type(body, json_type_object)) {
                snprintf(err, errlen, "body must be a JSON object");
                return -EINVAL;
        }
        json_object_object_foreach(body, key, val)
        {
                if (strcmp(key, "listOrder") == 0) {
                        if (!json_object_is_type(val, json_type_string) ||
                            (order = list_order_from_name(json_object_get_string(val))) < 0) {
                                snprintf(err, errlen, "\"listOrder\" must be %s",
                                         "\"updated-asc\", \"updated-desc\", \"id\" or \"shuffled\"");
                                return -EINVAL;
                        }
                } else if (strcmp(key, "listLagMs") == 0) {
                        if (!json_object_is_type(val, json_type_int) ||
                            (lag = json_object_get_int64(val)) < 0 || lag > SERVER_LIST_LAG_MAX_MS) {
                                snprintf(err, errlen, "\"listLagMs\" must be an integer from 0 to %u",
                                         SERVER_LIST_LAG_MAX_MS);
                                return -EINVAL;
                        }
                } else if (strcmp(key, "apiKey") == 0) {
                        if (!json_object_is_type(val, json_type_string) ||
                            json_object_get_string_len(val) == 0) {
                                snprintf(err, errlen, "\"apiKey\" must be a non-empty string");
                                return -EINVAL;
                        }
                        api_key = json_object_get_string(val);
                } else {
                        snprintf(err, errlen,
                                 "unknown key \"%.200s\" (expected listOrder, listLagMs or apiKey)", key);
                        return -EINVAL;
                }
        }
        if (api_key) {
                char *k = xstrdup(api_key);

                pthread_mutex_lock(&server.key_lock);
                free(server.key);
                server.key = k;
                server.key_len = strlen(k);
                pthread_mutex_unlock(&server.key_lock);
        }
        if (order >= 0)
                atomic_store(&server.list_order, order);
        if (lag >= 0)
                atomic_store(&server.list_lag_ms, (unsigned)lag);
        return 0;
}

static enum MHD_Result server_handle_admin(struct MHD_Connection *conn, const char *path, const char *method,
                                           struct request *req)
{
        bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        bool post = strcmp(method, "POST") == 0;
        char err[768];
        json_object *body;
        struct sbuf b;
        int r;

        if (req && req->too_large)
                return server_admin_error(conn, 413, "request body too large");
        sbuf_init(&b, 256);
        if (strcmp(path, "health") == 0) {
                if (!get)
                        goto not_allowed_get;
                sbuf_printf(&b, "{\"ok\":true,\"sessions\":%zu}", store_count());
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "status") == 0) {
                json_object *jid, *jst, *jat;
                int64_t now = simtime_now_us(), at = now;

                if (!post)
                        goto not_allowed_post;
                body = server_parse_body(req);
                if (!body || !json_object_object_get_ex(body, "id", &jid) ||
                    !json_object_is_type(jid, json_type_string) ||
                    !json_object_object_get_ex(body, "status", &jst) ||
                    !json_object_is_type(jst, json_type_string) || json_object_get_string_len(jst) == 0) {
                        json_object_put(body);
                        sbuf_done(&b);
                        return server_admin_error(conn, MHD_HTTP_BAD_REQUEST,
                                                  "body must be {\"id\":\"ses...\",\"status\":\"...\"}");
                }
                /* An updatedAt in the past winds the session back: the
                 * change is dated then and what came after it is gone, as
                 * an API whose clock went backwards would answer. */
                if (json_object_object_get_ex(body, "updatedAt", &jat)) {
                        double secs = json_object_get_double(jat);

                        if (!(json_object_is_type(jat, json_type_double) ||
                              json_object_is_type(jat, json_type_int)) ||
                            !(secs > 0) || secs * 1e6 > (double)now) {
                                json_object_put(body);
                                sbuf_done(&b);
                                return server_admin_error(
                                    conn, MHD_HTTP_BAD_REQUEST,
                                    "\"updatedAt\" must be Unix seconds, not in the future");
                        }
                        at = (int64_t)(secs * 1e6);
                }
                r = store_set_status(json_object_get_string(jid), json_object_get_string(jst), at, &b);
                json_object_put(body);
                if (r < 0) {
                        sbuf_done(&b);
                        return server_admin_error(conn,
                                                  r == -ENOENT ? MHD_HTTP_NOT_FOUND : MHD_HTTP_BAD_REQUEST,
                                                  r == -ENOENT ? "session not found" : "too many statuses");
                }
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "sessions") == 0) {
                if (get) {
                        store_dump_sessions(simtime_now_us(), &b);
                        return server_reply(conn, MHD_HTTP_OK, &b);
                }
                if (!post)
                        goto not_allowed_get_post;
                body = server_parse_body(req);
                if (!body) {
                        sbuf_done(&b);
                        return server_admin_error(conn, MHD_HTTP_BAD_REQUEST, "body is not valid JSON");
                }
                sbuf_puts(&b, "{\"ids\":[");
                r = store_load_scenario(body, simtime_now_us(), "request", &b, err, sizeof(err));
                json_object_put(body);
                if (r < 0) {
                        sbuf_done(&b);
                        return server_admin_error(conn, MHD_HTTP_BAD_REQUEST, err);
                }
                sbuf_puts(&b, "]}");
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "faults") == 0) {
                if (get) {
                        faults_dump(&b);
                        return server_reply(conn, MHD_HTTP_OK, &b);
                }
                if (strcmp(method, "DELETE") == 0) {
                        faults_clear();
                        sbuf_puts(&b, "{\"cleared\":true}");
                        return server_reply(conn, MHD_HTTP_OK, &b);
                }
                if (!post) {
                        sbuf_done(&b);
                        return server_method_not_allowed(conn, "GET, POST or DELETE");
                }
                body = server_parse_body(req);
                if (!body) {
                        sbuf_done(&b);
                        return server_admin_error(conn, MHD_HTTP_BAD_REQUEST, "body is not valid JSON");
                }
                r = faults_add(body, &b, err, sizeof(err));
                json_object_put(body);
                if (r < 0) {
                        sbuf_done(&b);
                        return server_admin_error(conn, MHD_HTTP_BAD_REQUEST, err);
                }
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "config") == 0) {
                if (post) {
                        body = server_parse_body(req);
                        if (!body) {
                                sbuf_done(&b);
                                return server_admin_error(conn, MHD_HTTP_BAD_REQUEST,
                                                          "body is not valid JSON");
                        }
                        r = server_set_config(body, err, sizeof(err));
                        json_object_put(body);
                        if (r < 0) {
                                sbuf_done(&b);
                                return server_admin_error(conn, MHD_HTTP_BAD_REQUEST, err);
                        }
                } else if (!get) {
                        goto not_allowed_get_post;
                }
                server_dump_config(&b);
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "counters") == 0) {
                const char *t = server_arg(conn, "times");

                if (!get)
                        goto not_allowed_get;
                sbuf_puts(&b, "{\"requests\":{");
                for (int i = 0; i < COUNTER_MAX; i++)
                        sbuf_printf(&b, "%s\"%s\":%llu", i ? "," : "", server_counter_names[i],
                                    (unsigned long long)atomic_load(&server.counters[i]));
                sbuf_puts(&b, "},\"lists\":");
                list_counts_dump(&b);
                sbuf_puts(&b, ",\"faults\":");
                faults_dump_counters(&b);
                sbuf_puts(&b, ",\"sessions\":");
                store_dump_counters(server_arg(conn, "session"), !(t && strcmp(t, "0") == 0), &b);
                sbuf_puts(&b, "}");
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "counters/reset") == 0) {
                if (!post)
                        goto not_allowed_post;
                for (int i = 0; i < COUNTER_MAX; i++)
                        atomic_store(&server.counters[i], 0);
                faults_reset_counters();
                list_counts_reset();
                store_reset_counters();
                sbuf_puts(&b, "{\"reset\":true}");
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        if (strcmp(path, "history") == 0) {
                if (!get)
                        goto not_allowed_get;
                store_dump_history(server_arg(conn, "id"), simtime_now_us(), &b);
                return server_reply(conn, MHD_HTTP_OK, &b);
        }
        sbuf_done(&b);
        return server_admin_error(conn, MHD_HTTP_NOT_FOUND, "unknown admin endpoint");

not_allowed_get:
        sbuf_done(&b);
        return server_method_not_allowed(conn, "GET");
not_allowed_post:
        sbuf_done(&b);
        return server_method_not_allowed(conn, "POST");
not_allowed_get_post:
        sbuf_done(&b);
        return server_method_not_allowed(conn, "GET or POST");
}

static enum MHD_Result server_route(struct MHD_Connection *conn, const char *url, const char *method,
                                    void **req_cls)
{
        bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        const char *sub;

        if (strncmp(url, "/_sim/", 6) == 0)
                return server_handle_admin(conn, url + 6, method, *req_cls);

        if (strncmp(url, server.prefix, server.prefix_len) != 0 || url[server.prefix_len] != '/') {
                server_count(COUNTER_OTHER);
                return server_error(conn, MHD_HTTP_NOT_FOUND, 0, "not found");
        }
        sub = url + server.prefix_len;
        if (!server_authorized(conn)) {
                server_count(COUNTER_UNAUTHORIZED);
                return server_error(conn, MHD_HTTP_UNAUTHORIZED, 0,
                                    "missing or invalid API key (X-Airplane-API-Key)");
        }
        if (strcmp(sub, "/sessions/get") == 0) {
                if (get)
                        return server_handle_get(conn, req_cls);
                server_count(COUNTER_OTHER);
                return server_method_not_allowed(conn, "GET");
        }
        if (strcmp(sub, "/sessions/list") == 0) {
                if (get)
                        return server_handle_list(conn, req_cls);
                server_count(COUNTER_OTHER);
                return server_method_not_allowed(conn, "GET");
        }
        if (strcmp(sub, "/runbooks/execute") == 0) {
                if (strcmp(method, "POST") == 0)
                        return server_handle_execute(conn, req_cls);
                server_count(COUNTER_OTHER);
                return server_method_not_allowed(conn, "POST");
        }
        server_count(COUNTER_OTHER);
        return server_error(conn, MHD_HTTP_NOT_FOUND, 0, "not found");
}

/*
 * The access handler; runs in a libmicrohttpd server thread. GET requests
 * are answered on the first call, without any per-request allocation
 * besides the response; other methods collect their body first.
 */
static enum MHD_Result server_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                         const char *method, const char *version, const char *upload_data,
                                         size_t *upload_data_size, void **req_cls)
{
        struct request *req = *req_cls;

        /*
         * Never answer on the first call, which comes right after the
         * headers: libmicrohttpd closes a connection whose error answer was
         * queued that early (the body might still be coming), and clients
         * rightly expect keep-alive to survive a 404. A GET marks its first
         * call with a static sentinel instead of allocating state.
         */
        if (!req) {
                if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0) {
                        *req_cls = &server_first_call_seen;
                } else {
                        req = xcalloc(1, sizeof(*req));
                        sbuf_init(&req->body, 256);
                        *req_cls = req;
                }
                return MHD_YES;
        }
        if (*req_cls == &server_first_call_seen) {
                *req_cls = NULL;
                req = NULL;
        }
        if (*upload_data_size > 0) {
                size_t max = strncmp(url, "/_sim/", 6) == 0 ? SERVER_ADMIN_BODY_MAX : SERVER_API_BODY_MAX;

                if (req && !req->too_large) {
                        if (req->body.len + *upload_data_size > max)
                                req->too_large = true;
                        else
                                sbuf_put(&req->body, upload_data, *upload_data_size);
                }
                *upload_data_size = 0;
                return MHD_YES;
        }
        return server_route(conn, url, method, req_cls);
}

/* Runs in a server thread when a request ends, answered or not. */
static void server_on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                                enum MHD_RequestTerminationCode toe)
{
        struct request *req = *req_cls;

        if (!req || *req_cls == &server_first_call_seen)
                return;
        free(req->body.buf);
        free(req);
        *req_cls = NULL;
}

static void usage(FILE *f)
{
        fputs("Usage: apisim [--listen ADDR] [--port N] [--port-file FILE] [--prefix /v0]\n"
              "              [--key KEY | --key-file FILE] [--scenario FILE]\n"
              "              [--sessions N] [--seed S] [--step-min SECS] [--step-max SECS]\n"
              "              [--runbooks K] [--stagger SECS] [--threads N] [--list-ids FILE]\n"
              "              [--request-log N] [--list-order ORDER] [--list-lag MS] [--quiet]\n"
              "Simulates the Airplane API's session endpoints; see tests/apisim/README.md.\n",
              f);
}

static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (!*s || *end || errno || s[0] == '-' || v < min || v > max) {
                fprintf(stderr, "apisim: %s: invalid value '%s' (expected an integer from %llu to %llu)\n",
                        opt, s, (unsigned long long)min, (unsigned long long)max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_secs(const char *opt, const char *s, double *ret)
{
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (!*s || *end || errno || !isfinite(v) || v < 0 || v > 1e7) {
                fprintf(stderr, "apisim: %s: invalid value '%s' (expected seconds, fractions allowed)\n",
                        opt, s);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int read_key_file(const char *path, char **ret)
{
        size_t len;
        char *data;
        int r;

        r = util_read_file(path, 4096, &data, &len);
        if (r < 0) {
                fprintf(stderr, "apisim: --key-file: cannot read '%s': %s\n", path, strerror(-r));
                return r;
        }
        while (len > 0 && strchr(" \t\r\n", data[len - 1]))
                data[--len] = '\0';
        if (len == 0 || strlen(data) != len) {
                fprintf(stderr, "apisim: --key-file: '%s' holds no usable key\n", path);
                free(data);
                return -EINVAL;
        }
        *ret = data;
        return 0;
}

/* Returns 0 to run, 1 when --help was asked for, -EINVAL after an error message. */
static int parse_options(int argc, char **argv, struct options *o)
{
        enum {
                OPT_LISTEN = 256,
                OPT_PORT,
                OPT_PORT_FILE,
                OPT_PREFIX,
                OPT_KEY,
                OPT_KEY_FILE,
                OPT_SCENARIO,
                OPT_SESSIONS,
                OPT_SEED,
                OPT_STEP_MIN,
                OPT_STEP_MAX,
                OPT_RUNBOOKS,
                OPT_STAGGER,
                OPT_THREADS,
                OPT_LIST_IDS,
                OPT_REQUEST_LOG,
                OPT_LIST_ORDER,
                OPT_LIST_LAG,
                OPT_QUIET,
                OPT_HELP,
        };
        static const struct option longopts[] = {
            {"listen", required_argument, NULL, OPT_LISTEN},
            {"port", required_argument, NULL, OPT_PORT},
            {"port-file", required_argument, NULL, OPT_PORT_FILE},
            {"prefix", required_argument, NULL, OPT_PREFIX},
            {"key", required_argument, NULL, OPT_KEY},
            {"key-file", required_argument, NULL, OPT_KEY_FILE},
            {"scenario", required_argument, NULL, OPT_SCENARIO},
            {"sessions", required_argument, NULL, OPT_SESSIONS},
            {"seed", required_argument, NULL, OPT_SEED},
            {"step-min", required_argument, NULL, OPT_STEP_MIN},
            {"step-max", required_argument, NULL, OPT_STEP_MAX},
            {"runbooks", required_argument, NULL, OPT_RUNBOOKS},
            {"stagger", required_argument, NULL, OPT_STAGGER},
            {"threads", required_argument, NULL, OPT_THREADS},
            {"list-ids", required_argument, NULL, OPT_LIST_IDS},
            {"request-log", required_argument, NULL, OPT_REQUEST_LOG},
            {"list-order", required_argument, NULL, OPT_LIST_ORDER},
            {"list-lag", required_argument, NULL, OPT_LIST_LAG},
            {"quiet", no_argument, NULL, OPT_QUIET},
            {"help", no_argument, NULL, OPT_HELP},
            {},
        };
        const char *key = NULL, *key_file = NULL, *prefix = "/v0";
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        uint64_t v;
        int c, order;

        o->listen = "127.0.0.1";
        o->seed = 1;
        o->step_min = 2;
        o->step_max = 20;
        o->runbooks = 3;
        o->threads = ncpu < 1 ? 1 : ncpu > 16 ? 16 : (unsigned)ncpu;
        o->request_log = 1000;

        opterr = 0;
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case OPT_LISTEN:
                        o->listen = optarg;
                        break;
                case OPT_PORT:
                        if (parse_u64("--port", optarg, 0, 65535, &v) < 0)
                                return -EINVAL;
                        o->port = (unsigned)v;
                        break;
                case OPT_PORT_FILE:
                        o->port_file = optarg;
                        break;
                case OPT_PREFIX:
                        prefix = optarg;
                        break;
                case OPT_KEY:
                        key = optarg;
                        break;
                case OPT_KEY_FILE:
                        key_file = optarg;
                        break;
                case OPT_SCENARIO:
                        o->scenario = optarg;
                        break;
                case OPT_SESSIONS:
                        if (parse_u64("--sessions", optarg, 0, 50000000, &v) < 0)
                                return -EINVAL;
                        o->sessions = (size_t)v;
                        break;
                case OPT_SEED:
                        if (parse_u64("--seed", optarg, 0, UINT64_MAX, &v) < 0)
                                return -EINVAL;
                        o->seed = v;
                        break;
                case OPT_STEP_MIN:
                        if (parse_secs("--step-min", optarg, &o->step_min) < 0)
                                return -EINVAL;
                        break;
                case OPT_STEP_MAX:
                        if (parse_secs("--step-max", optarg, &o->step_max) < 0)
                                return -EINVAL;
                        break;
                case OPT_RUNBOOKS:
                        if (parse_u64("--runbooks", optarg, 1, 10000, &v) < 0)
                                return -EINVAL;
                        o->runbooks = (unsigned)v;
                        break;
                case OPT_STAGGER:
                        if (parse_secs("--stagger", optarg, &o->stagger) < 0)
                                return -EINVAL;
                        break;
                case OPT_THREADS:
                        if (parse_u64("--threads", optarg, 1, 256, &v) < 0)
                                return -EINVAL;
                        o->threads = (unsigned)v;
                        break;
                case OPT_LIST_IDS:
                        o->list_ids = optarg;
                        break;
                case OPT_REQUEST_LOG:
                        if (parse_u64("--request-log", optarg, 0, 1000000, &v) < 0)
                                return -EINVAL;
                        o->request_log = (unsigned)v;
                        break;
                case OPT_LIST_ORDER:
                        order = list_order_from_name(optarg);
                        if (order < 0) {
                                fprintf(stderr,
                                        "apisim: --list-order: invalid value '%s' (expected updated-asc, "
                                        "updated-desc, id or shuffled)\n",
                                        optarg);
                                return -EINVAL;
                        }
                        o->list_order = (enum list_order)order;
                        break;
                case OPT_LIST_LAG:
                        if (parse_u64("--list-lag", optarg, 0, SERVER_LIST_LAG_MAX_MS, &v) < 0)
                                return -EINVAL;
                        o->list_lag_ms = (unsigned)v;
                        break;
                case OPT_QUIET:
                        o->quiet = true;
                        break;
                case OPT_HELP:
                        return 1;
                default:
                        if (optopt && optopt >= OPT_LISTEN)
                                fprintf(stderr, "apisim: option '%s' needs a value\n", argv[optind - 1]);
                        else
                                fprintf(stderr, "apisim: unknown option '%s'\n", argv[optind - 1]);
                        usage(stderr);
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "apisim: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (o->step_max < o->step_min) {
                fprintf(stderr, "apisim: --step-max (%g) must not be less than --step-min (%g)\n",
                        o->step_max, o->step_min);
                return -EINVAL;
        }
        if (key && key_file) {
                fprintf(stderr, "apisim: --key and --key-file are mutually exclusive\n");
                return -EINVAL;
        }
        if (key && !*key) {
                fprintf(stderr, "apisim: --key: the key must not be empty\n");
                return -EINVAL;
        }
        if (key_file) {
                if (read_key_file(key_file, &o->key) < 0)
                        return -EINVAL;
        } else {
                o->key = xstrdup(key ? key : "test-key");
        }
        if (*prefix && prefix[0] != '/') {
                fprintf(stderr, "apisim: --prefix: '%s' must start with '/'\n", prefix);
                return -EINVAL;
        }
        o->prefix = xstrdup(prefix);
        for (size_t n = strlen(o->prefix); n > 0 && o->prefix[n - 1] == '/'; n--)
                o->prefix[n - 1] = '\0';
        return 0;
}

static void options_free(struct options *o)
{
        free(o->prefix);
        free(o->key);
        o->prefix = o->key = NULL;
}

static int load_scenario_file(const char *path, bool quiet)
{
        char err[1024];
        json_tokener *tok;
        json_object *root;
        size_t len, end;
        char *data;
        int r;

        r = util_read_file(path, (size_t)1 << 30, &data, &len);
        if (r < 0) {
                fprintf(stderr, "apisim: --scenario: cannot read '%s': %s\n", path, strerror(-r));
                return r;
        }
        tok = json_tokener_new();
        root = json_tokener_parse_ex(tok, data, (int)len);
        if (json_tokener_get_error(tok) != json_tokener_success) {
                fprintf(stderr, "apisim: %s: invalid JSON: %s\n", path,
                        json_tokener_error_desc(json_tokener_get_error(tok)));
                json_object_put(root);
                json_tokener_free(tok);
                free(data);
                return -EINVAL;
        }
        end = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);
        while (end < len && strchr(" \t\r\n", data[end]))
                end++;
        free(data);
        if (end < len) {
                fprintf(stderr, "apisim: %s: invalid JSON: trailing data after the top-level object\n",
                        path);
                json_object_put(root);
                return -EINVAL;
        }
        r = store_load_scenario(root, simtime_start_us(), path, NULL, err, sizeof(err));
        if (r < 0)
                fprintf(stderr, "apisim: %s\n", err);
        else if (!quiet)
                fprintf(stderr, "apisim: loaded %zu sessions from '%s'\n",
                        json_object_array_length(json_object_object_get(root, "sessions")), path);
        json_object_put(root);
        return r;
}

static void raise_fd_limit(void)
{
        struct rlimit rl;

        /* A benchmark opens thousands of connections; the soft limit is often 1024. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
}

int main(int argc, char **argv)
{
        struct options o = {0};
        struct sockaddr_storage ss = {0};
        struct store_config cfg;
        struct MHD_Daemon *d;
        const union MHD_DaemonInfo *info;
        unsigned flags, port;
        char url_host[INET6_ADDRSTRLEN + 2];
        sigset_t mask;
        int sig, r;

        /* Block the stop signals before any thread exists, so that only sigwait() sees them. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);

        r = parse_options(argc, argv, &o);
        if (r != 0) {
                options_free(&o);
                if (r > 0)
                        usage(stdout);
                return r > 0 ? 0 : 2;
        }

        if (strcmp(o.listen, "localhost") == 0)
                o.listen = "127.0.0.1";
        if (inet_pton(AF_INET, o.listen, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
                ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
                ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)o.port);
                snprintf(url_host, sizeof(url_host), "%s", o.listen);
        } else if (inet_pton(AF_INET6, o.listen, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
                ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)o.port);
                snprintf(url_host, sizeof(url_host), "[%s]", o.listen);
        } else {
                fprintf(stderr, "apisim: --listen: '%s' is not an IPv4 or IPv6 address\n", o.listen);
                options_free(&o);
                return 2;
        }

        simtime_init();
        cfg = (struct store_config){
            .seed = o.seed,
            .step_min = o.step_min,
            .step_max = o.step_max,
            .runbooks = o.runbooks,
            .sessions = o.sessions,
            .stagger = o.stagger,
            .request_log = o.request_log,
        };
        store_init(&cfg);
        if (o.scenario && load_scenario_file(o.scenario, o.quiet) < 0) {
                store_free();
                options_free(&o);
                return 2;
        }
        faults_init(o.seed);
        server.prefix = o.prefix;
        server.prefix_len = strlen(o.prefix);
        pthread_mutex_init(&server.key_lock, NULL);
        server.key = xstrdup(o.key);
        server.key_len = strlen(o.key);
        atomic_store(&server.list_order, (int)o.list_order);
        atomic_store(&server.list_lag_ms, o.list_lag_ms);
        raise_fd_limit();

        r = delay_start();
        if (r < 0) {
                fprintf(stderr, "apisim: cannot start the delay thread: %s\n", strerror(-r));
                store_free();
                free(server.key);
                options_free(&o);
                return 1;
        }
        flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO;
        if (ss.ss_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        if (!o.quiet)
                flags |= MHD_USE_ERROR_LOG;
        d = MHD_start_daemon(flags, (uint16_t)o.port, NULL, NULL, server_on_request, NULL,
                             MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
                             o.threads, MHD_OPTION_CONNECTION_LIMIT, 60000, MHD_OPTION_CONNECTION_TIMEOUT,
                             300, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096, MHD_OPTION_NOTIFY_COMPLETED,
                             server_on_completed, NULL, MHD_OPTION_END);
        if (!d) {
                fprintf(stderr, "apisim: cannot listen on %s port %u: %s\n", o.listen, o.port,
                        errno ? strerror(errno) : "libmicrohttpd failed to start");
                delay_stop();
                store_free();
                free(server.key);
                options_free(&o);
                return o.port ? 2 : 1;
        }
        info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        port = info ? info->port : o.port;

        if (o.list_ids && (r = store_write_ids(o.list_ids)) < 0) {
                fprintf(stderr, "apisim: --list-ids: cannot write '%s': %s\n", o.list_ids, strerror(-r));
                goto fail;
        }
        if (o.port_file) {
                char buf[16];
                int n = snprintf(buf, sizeof(buf), "%u\n", port);

                r = util_write_file_atomic(o.port_file, buf, (size_t)n);
                if (r < 0) {
                        fprintf(stderr, "apisim: --port-file: cannot write '%s': %s\n", o.port_file,
                                strerror(-r));
                        goto fail;
                }
        }
        if (!o.quiet)
                fprintf(stderr, "apisim: %zu sessions, %u generated runbooks, %u threads, seed %llu\n",
                        store_count(), o.runbooks, o.threads, (unsigned long long)o.seed);
        printf("apisim: listening on http://%s:%u%s\n", url_host, port, o.prefix);
        fflush(stdout);

        do {
                r = sigwait(&mask, &sig);
        } while (r == EINTR);

        if (!o.quiet)
                fprintf(stderr, "apisim: stopping on %s\n", strsignal(sig));
        /* Every suspended connection must be resumed before libmicrohttpd stops. */
        delay_stop();
        MHD_stop_daemon(d);
        faults_free();
        list_counts_reset();
        store_free();
        free(server.key);
        options_free(&o);
        return 0;

fail:
        delay_stop();
        MHD_stop_daemon(d);
        store_free();
        free(server.key);
        options_free(&o);
        return 2;
}
