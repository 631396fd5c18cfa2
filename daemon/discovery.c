#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json_object.h>

#include "discovery.h"

/* A 429 without a usable Retry-After, and the longest hold one may impose:
 * the same bounds as for polls. */
#define RATE_LIMIT_DEFAULT_MS 5000
#define RATE_LIMIT_MAX_MS 3600000
/* The first retry after a failed page; doubled per consecutive failure up
 * to the discover interval (at least this much). */
#define RETRY_MIN_MS 1000

struct Discovery {
        uv_loop_t *loop;
        Api *api;
        Scheduler *sched;
        DiscoveryScope *scopes;
        size_t n_scopes;
        uint64_t interval_ms;
        DiscoveryCallbacks cb;
        void *userdata;
        DiscoveryCounters *counters;

        uv_timer_t timer;
        bool timer_ready;
        bool started;
        bool closing;
        bool in_flight;
        size_t current; /* the scope of the request in flight */
        LogRateLimit errors_rl;
        LogRateLimit decode_rl;
};

/* ---- The pure part ---- */

const char *discovery_scope_key(const DiscoveryScope *sc)
{
        return sc->runbook_id ? sc->runbook_id : "*";
}

void discovery_sweep_begin(DiscoveryScope *sc, int64_t overlap_us)
{
        sc->sweeping = true;
        sc->initial = !sc->swept;
        sc->sweep_newest_us = 0;
        sc->cursor = (DiscoveryCursor){};
        /* An empty complete sweep leaves no watermark to start from: the
         * next one lists from the beginning again, which is cheap then. */
        if (sc->swept && sc->newest_us > 0) {
                sc->cursor.has_after = true;
                sc->cursor.after_us =
                    sc->newest_us > INT64_MIN + overlap_us ? sc->newest_us - overlap_us : INT64_MIN;
        }
}

int discovery_format_query(const DiscoveryScope *sc, char *buf, size_t n)
{
        char esc[3 * SESSION_ID_MAX + 1], when[TIMESTAMP_RFC3339_MAX], when_esc[3 * TIMESTAMP_RFC3339_MAX];
        size_t len = 0;
        int k;

        if (n == 0)
                return -ENOBUFS;
        buf[0] = '\0';
        if (sc->runbook_id) {
                k = api_escape(sc->runbook_id, esc, sizeof(esc));
                if (k < 0)
                        return k;
                k = snprintf(buf, n, "runbookID=%s&", esc);
                if (k < 0 || (size_t)k >= n)
                        return -ENOBUFS;
                len = (size_t)k;
        }
        if (sc->cursor.has_after) {
                k = format_timestamp_rfc3339(sc->cursor.after_us, when);
                if (k < 0)
                        return k;
                k = api_escape(when, when_esc, sizeof(when_esc));
                if (k < 0)
                        return k;
                k = snprintf(buf + len, n - len, "updatedAfter=%s&", when_esc);
                if (k < 0 || (size_t)k >= n - len)
                        return -ENOBUFS;
                len += (size_t)k;
        }
        k = snprintf(buf + len, n - len, "limit=%d&page=%u", DISCOVERY_PAGE_LIMIT, sc->cursor.page);
        if (k < 0 || (size_t)k >= n - len)
                return -ENOBUFS;
        return (int)(len + (size_t)k);
}

bool discovery_page_done(DiscoveryScope *sc, size_t n_items, bool have_last, int64_t last_us)
{
        if (have_last && last_us > sc->sweep_newest_us)
                sc->sweep_newest_us = last_us;
        if (n_items < DISCOVERY_PAGE_LIMIT)
                return false;
        /* Restart from just below the page's last instant when that moves
         * the lower bound forward; otherwise a whole page shares one instant
         * (or none of it was readable) and only the index can move. */
        if (have_last && last_us > INT64_MIN + 1 &&
            (!sc->cursor.has_after || last_us - 1 > sc->cursor.after_us)) {
                sc->cursor.has_after = true;
                sc->cursor.after_us = last_us - 1;
                sc->cursor.page = 0;
        } else
                sc->cursor.page++;
        return true;
}

void discovery_sweep_end(DiscoveryScope *sc)
{
        if (sc->sweep_newest_us > sc->newest_us)
                sc->newest_us = sc->sweep_newest_us;
        sc->swept = true;
        sc->sweeping = false;
        sc->initial = false;
        sc->cursor = (DiscoveryCursor){};
}

int64_t discovery_floor(const DiscoveryScope *scopes, size_t n, int64_t overlap_us)
{
        int64_t floor = INT64_MAX;

        for (size_t i = 0; i < n; i++) {
                int64_t f;

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

int discovery_new(uv_loop_t *loop, char *const *runbooks, size_t n_runbooks, bool all, uint64_t interval_ms,
                  const DiscoveryCallbacks *cb, void *userdata, DiscoveryCounters *counters, Discovery **ret)
{
        Discovery *disc;

        disc = calloc(1, sizeof(*disc));
        if (!disc)
                return -ENOMEM;
        *disc = (Discovery){
            .loop = loop,
            .interval_ms = interval_ms ? interval_ms : 1,
            .cb = *cb,
            .userdata = userdata,
            .counters = counters,
            .errors_rl = LOG_RATELIMIT_INIT(10000, 5),
            .decode_rl = LOG_RATELIMIT_INIT(10000, 5),
        };
        disc->scopes = calloc(n_runbooks + (all ? 1 : 0), sizeof(DiscoveryScope));
        if (!disc->scopes && n_runbooks + all > 0) {
                free(disc);
                return -ENOMEM;
        }
        for (size_t k = 0; k < n_runbooks; k++) {
                bool dup = false;

                for (size_t j = 0; j < disc->n_scopes && !dup; j++)
                        dup = strcmp(disc->scopes[j].runbook_id, runbooks[k]) == 0;
                if (dup)
                        continue;
                disc->scopes[disc->n_scopes].runbook_id = strdup(runbooks[k]);
                if (!disc->scopes[disc->n_scopes].runbook_id) {
                        discovery_free(disc);
                        return -ENOMEM;
                }
                disc->n_scopes++;
        }
        if (all)
                disc->scopes[disc->n_scopes++] = (DiscoveryScope){};
        uv_timer_init(loop, &disc->timer);
        disc->timer.data = disc;
        disc->timer_ready = true;
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

static void run(Discovery *disc);

/* The timer fired, on the loop thread: a scope may be due. */
static void on_discovery_timer(uv_timer_t *t)
{
        run(t->data);
}

static void arm(Discovery *disc, uint64_t wake_ms)
{
        uint64_t now = uv_now(disc->loop);

        (void)uv_timer_start(&disc->timer, on_discovery_timer, wake_ms > now ? wake_ms - now : 0, 0);
}

static uint64_t retry_delay(const Discovery *disc, unsigned failures)
{
        uint64_t d = RETRY_MIN_MS, cap = disc->interval_ms > RETRY_MIN_MS ? disc->interval_ms : RETRY_MIN_MS;

        for (unsigned k = 1; k < failures && d < cap; k++)
                d *= 2;
        return d < cap ? d : cap;
}

static void on_list_done(void *userdata, const HttpResponse *resp);

/* Starts the next due page, or arms the timer for when one is. */
static void run(Discovery *disc)
{
        uint64_t now = uv_now(disc->loop);
        char query[DISCOVERY_QUERY_MAX];
        DiscoveryScope *sc = NULL;
        size_t pick = 0;
        int r;

        if (disc->closing || !disc->started || disc->in_flight || disc->n_scopes == 0)
                return;
        for (size_t k = 0; k < disc->n_scopes; k++)
                if (!sc || disc->scopes[k].due_ms < sc->due_ms) {
                        sc = &disc->scopes[k];
                        pick = k;
                }
        if (sc->due_ms > now) {
                arm(disc, sc->due_ms);
                return;
        }
        if (!scheduler_take_token(disc->sched, now)) {
                /* Held by a 429 pause, or out of the rate budget that polls
                 * and sweeps share: look again when the pause ends, or
                 * shortly (a token refills continuously). */
                uint64_t wake = disc->sched->paused_until_ms > now ? disc->sched->paused_until_ms : now + 20;
                arm(disc, wake);
                return;
        }
        if (!sc->sweeping)
                discovery_sweep_begin(sc, DISCOVERY_OVERLAP_US);
        r = discovery_format_query(sc, query, sizeof(query));
        if (r >= 0)
                r = api_list_sessions(disc->api, query, on_list_done, disc);
        if (r < 0) {
                unsigned suppressed;

                sc->failures++;
                disc->counters->sweep_failures++;
                sc->due_ms = now + retry_delay(disc, sc->failures);
                if (log_ratelimit_ok(&disc->errors_rl, now, &suppressed))
                        log_error_errno(r, "Failed to start a sweep of the sessions of %s%s%s: %m",
                                        sc->runbook_id ? "runbook '" : "all runbooks",
                                        sc->runbook_id ? sc->runbook_id : "", sc->runbook_id ? "'" : "");
                arm(disc, sc->due_ms);
                return;
        }
        disc->in_flight = true;
        disc->current = pick;
}

/* Takes one 200 page in. Returns 0, or -EBADMSG/-EPROTO (body not a list,
 * logged by the caller). */
static int take_page(Discovery *disc, DiscoveryScope *sc, const HttpResponse *resp, const char **ret_reason,
                     bool *ret_complete)
{
        json_object *root = NULL, *array = NULL;
        int64_t last = 0;
        bool have_last = false;
        size_t n, bad = 0;
        int r;

        r = decode_session_list(resp->body, resp->body_len, &root, &array, ret_reason);
        if (r < 0)
                return r;
        n = (size_t)r;
        for (size_t k = 0; k < n; k++) {
                SessionSnapshot snap = SESSION_SNAPSHOT_NULL;
                const char *reason = NULL;

                if (decode_session_object(json_object_array_get_idx(array, k), &snap, &reason) < 0) {
                        unsigned suppressed;

                        bad++;
                        if (log_ratelimit_ok(&disc->decode_rl, uv_now(disc->loop), &suppressed))
                                log_warning(
                                    "Skipping entry %zu of a session list page: %s (%u more suppressed).", k,
                                    reason ? reason : "not a session", suppressed);
                        continue;
                }
                if (!have_last || snap.updated_at_us > last)
                        last = snap.updated_at_us;
                have_last = true;
                disc->cb.session(disc->userdata, &snap, sc->initial, resp->done_usec);
                session_snapshot_done(&snap);
        }
        json_object_put(root);
        disc->counters->pages++;
        *ret_complete = !discovery_page_done(sc, n, have_last, last);
        return 0;
}

/* httpmux completion, on the loop thread, once per list request. */
static void on_list_done(void *userdata, const HttpResponse *resp)
{
        Discovery *disc = userdata;
        DiscoveryScope *sc = &disc->scopes[disc->current];
        ApiOutcome o = api_classify(resp);
        uint64_t now = uv_now(disc->loop);
        const char *reason = NULL;
        unsigned suppressed;
        bool complete = false;

        disc->in_flight = false;
        if (disc->closing || o == API_CANCELLED)
                return;

        if (o == API_OK && take_page(disc, sc, resp, &reason, &complete) < 0)
                o = API_DECODE;

        switch (o) {
        case API_OK: {
                bool moved = false;

                sc->failures = 0;
                if (complete) {
                        bool was_swept = sc->swept;
                        int64_t was_newest = sc->newest_us;

                        discovery_sweep_end(sc);
                        moved = !was_swept || sc->newest_us != was_newest;
                        disc->counters->sweeps++;
                        sc->due_ms = now + disc->interval_ms;
                } else
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
                if (log_ratelimit_ok(&disc->errors_rl, now, &suppressed))
                        log_warning("The API is rate limiting us (HTTP 429) on a session list; holding all "
                                    "requests for %" PRIu64 " ms (%u similar messages suppressed).",
                                    wait, suppressed);
                break;
        }
        default:
                sc->failures++;
                disc->counters->sweep_failures++;
                sc->due_ms = now + retry_delay(disc, sc->failures);
                if (log_ratelimit_ok(&disc->errors_rl, now, &suppressed)) {
                        char what[SESSION_ID_MAX + 32];

                        if (sc->runbook_id)
                                snprintf(what, sizeof(what), "runbook '%s'", sc->runbook_id);
                        else
                                snprintf(what, sizeof(what), "all runbooks");
                        if (o == API_DECODE)
                                log_warning("Undecodable session list of %s: %s; retrying in %" PRIu64
                                            " ms (%u similar messages suppressed).",
                                            what, reason ? reason : "invalid body", sc->due_ms - now,
                                            suppressed);
                        else if (resp->error == HTTP_OK)
                                log_warning(
                                    "Listing the sessions of %s failed: HTTP %ld; retrying in %" PRIu64
                                    " ms (%u similar messages suppressed).",
                                    what, resp->status, sc->due_ms - now, suppressed);
                        else
                                log_warning(
                                    "Listing the sessions of %s failed: %s (%s); retrying in %" PRIu64
                                    " ms (%u similar messages suppressed).",
                                    what, api_outcome_to_string(o), resp->error_text ? resp->error_text : "",
                                    sc->due_ms - now, suppressed);
                }
                break;
        }
        run(disc);
}

void discovery_start(Discovery *disc, Api *api, Scheduler *sched)
{
        uint64_t now = uv_now(disc->loop);

        disc->api = api;
        disc->sched = sched;
        disc->started = true;
        for (size_t k = 0; k < disc->n_scopes; k++)
                disc->scopes[k].due_ms = now;
        run(disc);
}

void discovery_close(Discovery *disc)
{
        if (!disc || disc->closing)
                return;
        disc->closing = true;
        if (disc->timer_ready)
                uv_close((uv_handle_t *)&disc->timer, NULL);
}

void discovery_free(Discovery *disc)
{
        if (!disc)
                return;
        for (size_t k = 0; k < disc->n_scopes; k++)
                free(disc->scopes[k].runbook_id);
        free(disc->scopes);
        free(disc);
}
