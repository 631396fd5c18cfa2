#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json_object.h>
#include <uv.h>

#include "discovery.h"

/* A 429 without a usable Retry-After, and the longest hold one may impose:
 * the same bounds as for polls. */
#define RATE_LIMIT_DEFAULT_MS 5000
#define RATE_LIMIT_MAX_MS 3600000
/* The first retry after a failed page; doubled per consecutive failure up
 * to the scope's interval (at least this much). */
#define RETRY_MIN_MS 1000
/* Full pages in ascending order, each with this many distinct instants at
 * least, before keyset paging is trusted: a page of 50 entries that is not
 * in that order by chance sorts itself with odds of about 1 in 8! at the
 * very least. */
#define ASC_VOTES 2
#define ASC_DISTINCT_MIN 8

struct Discovery {
        uv_loop_t *loop;
        Api *api;
        Scheduler *sched;
        DiscoveryScope *scopes;
        size_t n_scopes, cap_scopes;
        uint64_t interval_ms;
        int64_t overlap_us;
        DiscoveryCallbacks cb;
        void *userdata;
        DiscoveryCounters *counters;

        bool started;
        bool closing;
        LogRateLimit errors_rl;
        LogRateLimit decode_rl;
};

/* One list request in flight: its scope, by index (the array may grow). */
typedef struct ListRequest {
        Discovery *disc;
        size_t scope;
} ListRequest;

/* ---- The pure part ---- */

const char *discovery_scope_key(const DiscoveryScope *sc)
{
        return sc->runbook_id ? sc->runbook_id : "*";
}

/* Room for `extra` more windows, so that a split cannot fail half-way. */
static int pager_reserve(DiscoveryPager *p, size_t extra)
{
        size_t n = p->cap ? p->cap : 8;
        DiscoveryWindow *w;

        if (p->n + extra <= p->cap)
                return 0;
        while (n < p->n + extra)
                n *= 2;
        w = realloc(p->w, n * sizeof(*w));
        if (!w)
                return -ENOMEM;
        p->w = w;
        p->cap = n;
        return 0;
}

static void pager_push(DiscoveryPager *p, int64_t lo, int64_t hi, unsigned page)
{
        assert(p->n < p->cap);
        p->w[p->n++] = (DiscoveryWindow){.lo = lo, .hi = hi, .page = page};
}

int discovery_pager_begin(DiscoveryPager *p, int64_t lo, int64_t hi)
{
        int r;

        p->n = 0;
        p->hi = hi;
        p->requests = 0;
        r = pager_reserve(p, 1);
        if (r < 0)
                return r;
        pager_push(p, lo, hi, 0);
        return 0;
}

void discovery_pager_done(DiscoveryPager *p)
{
        free(p->w);
        *p = (DiscoveryPager){};
}

bool discovery_pager_complete(const DiscoveryPager *p)
{
        return p->n == 0;
}

static int append_time(char *buf, size_t n, size_t *len, const char *key, int64_t us)
{
        char when[TIMESTAMP_RFC3339_MAX], esc[3 * TIMESTAMP_RFC3339_MAX];
        int k;

        k = format_timestamp_rfc3339(us, when);
        if (k < 0)
                return k;
        k = api_escape(when, esc, sizeof(esc));
        if (k < 0)
                return k;
        k = snprintf(buf + *len, n - *len, "%s=%s&", key, esc);
        if (k < 0 || (size_t)k >= n - *len)
                return -ENOBUFS;
        *len += (size_t)k;
        return 0;
}

int discovery_pager_query(const DiscoveryPager *p, const char *runbook_id, char *buf, size_t n)
{
        char esc[3 * SESSION_ID_MAX + 1];
        const DiscoveryWindow *w;
        size_t len = 0;
        int k;

        if (n == 0)
                return -ENOBUFS;
        buf[0] = '\0';
        if (p->n == 0)
                return -EINVAL;
        w = &p->w[p->n - 1];
        if (runbook_id) {
                k = api_escape(runbook_id, esc, sizeof(esc));
                if (k < 0)
                        return k;
                k = snprintf(buf, n, "runbookID=%s&", esc);
                if (k < 0 || (size_t)k >= n)
                        return -ENOBUFS;
                len = (size_t)k;
        }
        if (w->lo != DISCOVERY_UNBOUNDED_LO && (k = append_time(buf, n, &len, "updatedAfter", w->lo)) < 0)
                return k;
        if (w->hi != DISCOVERY_UNBOUNDED_HI && (k = append_time(buf, n, &len, "updatedBefore", w->hi)) < 0)
                return k;
        k = snprintf(buf + len, n - len, "limit=%d&page=%u", DISCOVERY_PAGE_LIMIT, w->page);
        if (k < 0 || (size_t)k >= n - len)
                return -ENOBUFS;
        return (int)(len + (size_t)k);
}

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

        return (x > y) - (x < y);
}

/* Looks at a full page for evidence of the order: ascending by updatedAt
 * with enough distinct instants counts for it, anything unsorted against. */
static void learn_order(DiscoveryPager *p, const int64_t *u, size_t n)
{
        size_t distinct = n > 0 ? 1 : 0;

        for (size_t k = 1; k < n; k++) {
                if (u[k] < u[k - 1]) {
                        p->asc_votes = 0;
                        p->ascending = false;
                        return;
                }
                if (u[k] != u[k - 1])
                        distinct++;
        }
        if (distinct >= ASC_DISTINCT_MIN && p->asc_votes < UINT32_MAX)
                p->asc_votes++;
        if (p->asc_votes >= ASC_VOTES)
                p->ascending = true;
}

int discovery_pager_page(DiscoveryPager *p, int64_t *u, size_t n_decoded, size_t n_items, bool *ret_split)
{
        DiscoveryWindow w;
        int64_t t, m;
        int r;

        assert(p->n > 0);
        *ret_split = false;
        p->requests++;
        w = p->w[p->n - 1];

        if (n_items < DISCOVERY_PAGE_LIMIT) {
                /* A short page: the window is read whole. */
                p->n--;
                return DISCOVERY_TAKE;
        }
        learn_order(p, u, n_decoded);

        /* One instant (or nothing readable, or no room for more windows):
         * only the page index can move. */
        if (n_decoded == 0 || (w.lo != DISCOVERY_UNBOUNDED_LO && w.hi - w.lo <= 2) ||
            p->n >= DISCOVERY_WINDOWS_MAX) {
                p->w[p->n - 1].page++;
                return DISCOVERY_TAKE;
        }
        if (w.page > 0) {
                /* Index paging of a window that was too crowded to split
                 * further goes on to its end. */
                p->w[p->n - 1].page++;
                return DISCOVERY_TAKE;
        }

        r = pager_reserve(p, 3);
        if (r < 0)
                return r;
        qsort(u, n_decoded, sizeof(*u), cmp_i64);
        if (p->ascending && u[n_decoded - 1] > INT64_MIN + 1) {
                /* The page holds the window's oldest entries: go on from
                 * just below its newest instant. */
                t = u[n_decoded - 1];
                if (w.lo == DISCOVERY_UNBOUNDED_LO || t - 1 > w.lo) {
                        p->w[p->n - 1].lo = t - 1;
                        return DISCOVERY_TAKE;
                }
                /* A whole page at the window's first instant: page through
                 * that instant, then the rest. */
                p->w[p->n - 1].lo = t;
                pager_push(p, t - 1, t + 1, 1);
                return DISCOVERY_TAKE;
        }

        *ret_split = true;
        if (u[0] == u[n_decoded - 1]) {
                /* Every readable entry at one instant t: (lo, t), then t by
                 * page index, then (t, hi); empty ones left out. */
                t = u[0];
                p->n--;
                if (t + 1 < w.hi)
                        pager_push(p, t, w.hi, 0);
                pager_push(p, t - 1, t + 1, 0);
                if (w.lo == DISCOVERY_UNBOUNDED_LO || t - 1 > w.lo)
                        pager_push(p, w.lo, t, 0);
                return DISCOVERY_SKIP;
        }
        /* Split at the median instant: (lo, m) and [m, hi), older first. The
         * median is above the smallest value, so both halves are smaller
         * than the window. */
        m = u[n_decoded / 2];
        if (m == u[0])
                for (size_t k = n_decoded / 2; k < n_decoded; k++)
                        if (u[k] != u[0]) {
                                m = u[k];
                                break;
                        }
        p->w[p->n - 1].lo = m - 1;
        pager_push(p, w.lo, m, 0);
        return DISCOVERY_SKIP;
}

int64_t discovery_floor(const DiscoveryScope *scopes, size_t n, int64_t overlap_us)
{
        int64_t floor = INT64_MAX;

        for (size_t i = 0; i < n; i++) {
                int64_t f;

                if (!scopes[i].enabled)
                        continue;
                if (!scopes[i].swept)
                        return INT64_MIN;
                /* A scope swept empty lists from the beginning next time. */
                if (scopes[i].newest_us == 0)
                        return INT64_MIN;
                f = scopes[i].newest_us > INT64_MIN + overlap_us ? scopes[i].newest_us - overlap_us
                                                                 : INT64_MIN;
                if (f < floor)
                        floor = f;
        }
        return floor;
}

/* ---- On the loop ---- */

static int64_t realtime_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int add_scope(Discovery *disc, const char *runbook_id, bool coverage)
{
        DiscoveryScope *sc;

        if (disc->n_scopes == disc->cap_scopes) {
                size_t n = disc->cap_scopes ? disc->cap_scopes * 2 : 8;
                DiscoveryScope *v = realloc(disc->scopes, n * sizeof(*v));

                if (!v)
                        return -ENOMEM;
                disc->scopes = v;
                disc->cap_scopes = n;
        }
        sc = &disc->scopes[disc->n_scopes];
        *sc = (DiscoveryScope){
            .coverage = coverage,
            .enabled = !coverage,
            .interval_ms = disc->interval_ms,
            .requests_per_sweep = 1,
        };
        if (runbook_id) {
                sc->runbook_id = strdup(runbook_id);
                if (!sc->runbook_id)
                        return -ENOMEM;
        }
        return (int)disc->n_scopes++;
}

int discovery_new(uv_loop_t *loop, char *const *runbooks, size_t n_runbooks, bool all, uint64_t interval_ms,
                  int64_t overlap_us, const DiscoveryCallbacks *cb, void *userdata,
                  DiscoveryCounters *counters, Discovery **ret)
{
        Discovery *disc;
        int r;

        disc = calloc(1, sizeof(*disc));
        if (!disc)
                return -ENOMEM;
        *disc = (Discovery){
            .loop = loop,
            .interval_ms = interval_ms ? interval_ms : 1,
            .overlap_us = overlap_us,
            .cb = *cb,
            .userdata = userdata,
            .counters = counters,
            .errors_rl = LOG_RATELIMIT_INIT(10000, 5),
            .decode_rl = LOG_RATELIMIT_INIT(10000, 5),
        };
        for (size_t k = 0; k < n_runbooks; k++) {
                if (discovery_find(disc, runbooks[k]) >= 0)
                        continue;
                if ((r = add_scope(disc, runbooks[k], false)) < 0) {
                        discovery_free(disc);
                        return r;
                }
        }
        if (all && (r = add_scope(disc, NULL, false)) < 0) {
                discovery_free(disc);
                return r;
        }
        *ret = disc;
        return 0;
}

size_t discovery_n_scopes(const Discovery *disc)
{
        return disc ? disc->n_scopes : 0;
}

const DiscoveryScope *discovery_scopes(const Discovery *disc)
{
        return disc ? disc->scopes : NULL;
}

int discovery_find(const Discovery *disc, const char *runbook_id)
{
        for (size_t k = 0; k < disc->n_scopes; k++) {
                const char *r = disc->scopes[k].runbook_id;

                if (r ? runbook_id && strcmp(r, runbook_id) == 0 : !runbook_id)
                        return (int)k;
        }
        return -ENOENT;
}

int discovery_add_coverage(Discovery *disc, const char *runbook_id)
{
        int k = add_scope(disc, runbook_id, true);

        if (k < 0)
                return k;
        /* Only changes from now on matter: what its sessions are now was
         * learnt from their own answers. */
        disc->scopes[k].swept = true;
        disc->scopes[k].newest_us = realtime_usec();
        return k;
}

void discovery_enable(Discovery *disc, size_t k, bool enabled)
{
        DiscoveryScope *sc = &disc->scopes[k];

        if (sc->enabled == enabled)
                return;
        sc->enabled = enabled;
        if (enabled) {
                sc->due_ms = uv_now(disc->loop);
                if (sc->coverage && !sc->sweeping) {
                        /* Off for a while: its sessions were polled one by
                         * one meanwhile, so start from now again. */
                        sc->swept = true;
                        sc->newest_us = realtime_usec();
                }
        }
}

void discovery_set_interval(Discovery *disc, size_t k, uint64_t interval_ms)
{
        DiscoveryScope *sc = &disc->scopes[k];

        if (interval_ms == 0)
                interval_ms = 1;
        if (sc->interval_ms == interval_ms)
                return;
        sc->interval_ms = interval_ms;
        /* A shorter interval counts from the end of the last sweep. */
        if (!sc->sweeping && sc->failures == 0 && sc->last_end_ms > 0 &&
            sc->last_end_ms + interval_ms < sc->due_ms)
                sc->due_ms = sc->last_end_ms + interval_ms;
}

void discovery_set_overlap(Discovery *disc, int64_t overlap_us)
{
        disc->overlap_us = overlap_us;
}

int discovery_restore(Discovery *disc, const char *key, size_t len, int64_t newest_us)
{
        for (size_t k = 0; k < disc->n_scopes; k++) {
                const char *sk = discovery_scope_key(&disc->scopes[k]);

                if (strlen(sk) == len && memcmp(sk, key, len) == 0) {
                        disc->scopes[k].swept = true;
                        disc->scopes[k].newest_us = newest_us;
                        return 1;
                }
        }
        return 0;
}

uint64_t discovery_due_ms(const Discovery *disc)
{
        uint64_t due = UINT64_MAX;

        if (!disc || disc->closing || !disc->started)
                return UINT64_MAX;
        for (size_t k = 0; k < disc->n_scopes; k++) {
                const DiscoveryScope *sc = &disc->scopes[k];

                if (sc->enabled && !sc->in_flight && sc->due_ms < due)
                        due = sc->due_ms;
        }
        return due;
}

static uint64_t retry_delay(const DiscoveryScope *sc)
{
        uint64_t d = RETRY_MIN_MS, cap = sc->interval_ms > RETRY_MIN_MS ? sc->interval_ms : RETRY_MIN_MS;

        for (unsigned k = 1; k < sc->failures && d < cap; k++)
                d *= 2;
        return d < cap ? d : cap;
}

static void describe(const DiscoveryScope *sc, char *buf, size_t n)
{
        if (sc->runbook_id)
                snprintf(buf, n, "runbook '%s'", sc->runbook_id);
        else
                snprintf(buf, n, "all runbooks");
}

static int begin_sweep(Discovery *disc, DiscoveryScope *sc)
{
        int64_t lo = DISCOVERY_UNBOUNDED_LO;
        int r;

        /* An empty complete sweep leaves no watermark to start from: the
         * next one lists from the beginning again, which is cheap then. */
        if (sc->swept && sc->newest_us > 0)
                lo = sc->newest_us > INT64_MIN + disc->overlap_us ? sc->newest_us - disc->overlap_us
                                                                  : DISCOVERY_UNBOUNDED_LO;
        r = discovery_pager_begin(&sc->pager, lo, realtime_usec());
        if (r < 0)
                return r;
        sc->sweeping = true;
        sc->initial = !sc->swept;
        return 0;
}

static void on_list_done(void *userdata, const HttpResponse *resp);

int discovery_start_due(Discovery *disc, uint64_t now)
{
        char query[DISCOVERY_QUERY_MAX];
        DiscoveryScope *sc = NULL;
        ListRequest *req;
        size_t pick = 0;
        int r;

        if (disc->closing || !disc->started)
                return -ECANCELED;
        for (size_t k = 0; k < disc->n_scopes; k++) {
                DiscoveryScope *c = &disc->scopes[k];

                if (c->enabled && !c->in_flight && (!sc || c->due_ms < sc->due_ms)) {
                        sc = c;
                        pick = k;
                }
        }
        if (!sc)
                return -EAGAIN;
        r = sc->sweeping ? 0 : begin_sweep(disc, sc);
        if (r >= 0)
                r = discovery_pager_query(&sc->pager, sc->runbook_id, query, sizeof(query));
        req = r >= 0 ? malloc(sizeof(*req)) : NULL;
        if (r >= 0 && !req)
                r = -ENOMEM;
        if (r >= 0) {
                *req = (ListRequest){.disc = disc, .scope = pick};
                r = api_list_sessions(disc->api, query, on_list_done, req);
                if (r < 0)
                        free(req);
        }
        if (r < 0) {
                char what[SESSION_ID_MAX + 32];

                sc->failures++;
                disc->counters->sweep_failures++;
                sc->due_ms = now + retry_delay(sc);
                describe(sc, what, sizeof(what));
                log_ratelimited_errno(&disc->errors_rl, now, LOG_ERR, r,
                                      "Failed to start a sweep of the sessions of %s: %m", what);
                return r;
        }
        sc->in_flight = true;
        return 0;
}

typedef struct Entry {
        SessionSnapshot snap;
} Entry;

static int cmp_entry(const void *a, const void *b)
{
        const Entry *x = a, *y = b;

        return (x->snap.updated_at_us > y->snap.updated_at_us) -
               (x->snap.updated_at_us < y->snap.updated_at_us);
}

/* Takes one 200 page in. Returns 0, -EBADMSG/-EPROTO (body not a list,
 * logged by the caller) or -ENOMEM. */
static int take_page(Discovery *disc, DiscoveryScope *sc, const HttpResponse *resp, const char **ret_reason)
{
        json_object *root = NULL, *array = NULL;
        Entry entries[DISCOVERY_PAGE_LIMIT];
        int64_t updated[DISCOVERY_PAGE_LIMIT];
        size_t n, n_ok = 0;
        bool split = false;
        int r;

        r = decode_session_list(resp->body, resp->body_len, &root, &array, ret_reason);
        if (r < 0)
                return r;
        n = (size_t)r;
        for (size_t k = 0; k < n && n_ok < DISCOVERY_PAGE_LIMIT; k++) {
                const char *reason = NULL;

                entries[n_ok].snap = SESSION_SNAPSHOT_NULL;
                if (decode_session_object(json_object_array_get_idx(array, k), &entries[n_ok].snap,
                                          &reason) < 0) {
                        log_ratelimited(&disc->decode_rl, uv_now(disc->loop), LOG_WARNING,
                                        "Skipping entry %zu of a session list page: %s.", k,
                                        reason ? reason : "not a session");
                        continue;
                }
                updated[n_ok] = entries[n_ok].snap.updated_at_us;
                n_ok++;
        }
        r = discovery_pager_page(&sc->pager, updated, n_ok, n, &split);
        if (r == DISCOVERY_TAKE) {
                /* Oldest first, so that the events of one sweep come in the
                 * order the changes happened. */
                qsort(entries, n_ok, sizeof(*entries), cmp_entry);
                for (size_t k = 0; k < n_ok; k++)
                        disc->cb.session(disc->userdata, sc, &entries[k].snap, sc->initial, resp->done_usec);
        }
        for (size_t k = 0; k < n_ok; k++)
                session_snapshot_done(&entries[k].snap);
        json_object_put(root);
        if (r < 0)
                return r;
        if (split)
                disc->counters->splits++;
        disc->counters->pages++;
        return 0;
}

static void sweep_end(Discovery *disc, DiscoveryScope *sc, uint64_t now, bool *ret_moved)
{
        bool was_swept = sc->swept;

        if (sc->pager.hi != DISCOVERY_UNBOUNDED_HI && sc->pager.hi > sc->newest_us)
                sc->newest_us = sc->pager.hi;
        sc->swept = true;
        sc->sweeping = false;
        sc->initial = false;
        sc->requests_per_sweep = 0.75 * sc->requests_per_sweep + 0.25 * sc->pager.requests;
        sc->last_end_ms = now;
        sc->due_ms = now + sc->interval_ms;
        disc->counters->sweeps++;
        *ret_moved = !was_swept || sc->told_us == 0 || sc->newest_us - sc->told_us >= DISCOVERY_PERSIST_US ||
                     sc->newest_us < sc->told_us;
        if (*ret_moved)
                sc->told_us = sc->newest_us;
}

/* httpmux completion, on the loop thread, once per list request. */
static void on_list_done(void *userdata, const HttpResponse *resp)
{
        ListRequest *req = userdata;
        Discovery *disc = req->disc;
        DiscoveryScope *sc = &disc->scopes[req->scope];
        ApiOutcome o = api_classify(resp);
        uint64_t now = uv_now(disc->loop);
        const char *reason = NULL;
        char what[SESSION_ID_MAX + 32];

        free(req);
        sc->in_flight = false;
        if (disc->closing || o == API_CANCELLED)
                goto done;

        if (o == API_OK && take_page(disc, sc, resp, &reason) < 0)
                o = API_DECODE;

        describe(sc, what, sizeof(what));
        switch (o) {
        case API_OK: {
                bool moved = false, complete = discovery_pager_complete(&sc->pager);

                if (disc->cb.auth)
                        disc->cb.auth(disc->userdata, false, resp->status);
                sc->failures = 0;
                if (complete)
                        sweep_end(disc, sc, now, &moved);
                else
                        sc->due_ms = now;
                disc->cb.page(disc->userdata, sc, complete, moved);
                break;
        }
        case API_RATE_LIMITED: {
                uint64_t wait =
                    resp->retry_after_ms >= 0 ? (uint64_t)resp->retry_after_ms : RATE_LIMIT_DEFAULT_MS;

                if (wait > RATE_LIMIT_MAX_MS)
                        wait = RATE_LIMIT_MAX_MS;
                disc->counters->sweep_failures++;
                if (now + wait > disc->sched->paused_until_ms)
                        disc->counters->rate_limited++;
                /* Every request would get the same answer: the pause holds
                 * polls too. The page is asked again when it ends. */
                scheduler_pause(disc->sched, now + wait);
                sc->due_ms = now + wait;
                log_ratelimited(&disc->errors_rl, now, LOG_WARNING,
                                "The API is rate limiting us (HTTP 429) on the session list of %s; holding "
                                "all requests for %" PRIu64 " ms.",
                                what, wait);
                break;
        }
        case API_AUTH:
                /* Sent with a key a reload has replaced since: ask again at
                 * once with the new one, nothing is held. */
                if (api_answer_stale(disc->api)) {
                        sc->due_ms = now;
                        break;
                }
                /* The key, not this scope, is refused: every request is
                 * held as for a poll's 401, and the page is asked again once
                 * the hold is over. */
                disc->counters->sweep_failures++;
                if (disc->cb.auth)
                        disc->cb.auth(disc->userdata, true, resp->status);
                sc->due_ms = disc->sched->paused_until_ms > now ? disc->sched->paused_until_ms
                                                                : now + retry_delay(sc);
                break;
        default:
                sc->failures++;
                disc->counters->sweep_failures++;
                sc->due_ms = now + retry_delay(sc);
                if (o == API_DECODE)
                        log_ratelimited(&disc->errors_rl, now, LOG_WARNING,
                                        "Undecodable session list of %s: %s; retrying in %" PRIu64 " ms.",
                                        what, reason ? reason : "invalid body", sc->due_ms - now);
                else if (resp->error == HTTP_OK)
                        log_ratelimited(&disc->errors_rl, now, LOG_WARNING,
                                        "Listing the sessions of %s failed: HTTP %ld; retrying in %" PRIu64
                                        " ms.",
                                        what, resp->status, sc->due_ms - now);
                else
                        log_ratelimited(&disc->errors_rl, now, LOG_WARNING,
                                        "Listing the sessions of %s failed: %s (%s); retrying in %" PRIu64
                                        " ms.",
                                        what, api_outcome_to_string(o),
                                        resp->error_text ? resp->error_text : "", sc->due_ms - now);
                break;
        }
done:
        disc->cb.done(disc->userdata);
}

void discovery_start(Discovery *disc, Api *api, Scheduler *sched)
{
        uint64_t now = uv_now(disc->loop);

        disc->api = api;
        disc->sched = sched;
        disc->started = true;
        for (size_t k = 0; k < disc->n_scopes; k++)
                disc->scopes[k].due_ms = now;
}

void discovery_close(Discovery *disc)
{
        if (disc)
                disc->closing = true;
}

void discovery_free(Discovery *disc)
{
        if (!disc)
                return;
        for (size_t k = 0; k < disc->n_scopes; k++) {
                free(disc->scopes[k].runbook_id);
                discovery_pager_done(&disc->scopes[k].pager);
        }
        free(disc->scopes);
        free(disc);
}
