/* SPDX-License-Identifier: MIT */
/*
 * Fault injection: an ordered list of rules, each matching some API requests
 * (by endpoint and session) and turning them into a failure of one kind.
 * The first rule that matches a request decides; a rule with a count
 * retires after that many requests, a rule with a probability fires on each
 * matching request with that chance (from a seeded generator, so a run is
 * repeatable) until the rules are cleared.
 *
 * list-miss rules stand apart: they do not decide a request's fault but
 * take entries out of a list answer about to be rendered, so they are
 * consulted by faults_list_miss() with the page's IDs, never by
 * faults_pick().
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

struct fault_rule {
        struct fault_rule *next;
        unsigned id;
        enum fault_kind kind;
        unsigned endpoints;
        char *session;
        long remaining; /* -1: unlimited */
        double probability;
        unsigned retry_after;
        unsigned delay_ms;
        char status[FAULT_STATUS_MAX];
};

static const char *const faults_names[FAULT_KIND_MAX] = {
    [FAULT_NONE] = "none",
    [FAULT_500] = "500",
    [FAULT_502] = "502",
    [FAULT_503] = "503",
    [FAULT_404] = "404",
    [FAULT_403] = "403",
    [FAULT_429] = "429",
    [FAULT_DELAY] = "delay",
    [FAULT_RESET] = "reset",
    [FAULT_TRUNCATE] = "truncate",
    [FAULT_INVALID_JSON] = "invalid-json",
    [FAULT_WRONG_TYPE] = "wrong-type",
    [FAULT_HUGE] = "huge",
    [FAULT_UNKNOWN_STATUS] = "unknown-status",
    [FAULT_LIST_MISS] = "list-miss",
    [FAULT_401] = "401",
};

static struct {
        pthread_mutex_t lock;
        struct fault_rule *rules; /* in insertion order */
        atomic_uint n_rules;      /* read without the lock on the hot path */
        atomic_uint n_miss;       /* list-miss rules among them */
        unsigned next_id;
        uint64_t rng;
        atomic_ullong served[FAULT_KIND_MAX];
} faults = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

void faults_init(uint64_t seed)
{
        faults.rng = rng_mix(seed ^ 0xfa017fa017ULL);
        faults.next_id = 1;
}

const char *faults_kind_name(enum fault_kind kind)
{
        return kind < FAULT_KIND_MAX ? faults_names[kind] : "?";
}

static void faults_rule_free(struct fault_rule *r)
{
        free(r->session);
        free(r);
}

static int faults_get_uint(json_object *obj, const char *key, long max, long *ret, char *err, size_t errlen)
{
        json_object *v;
        int64_t n;

        if (!json_object_object_get_ex(obj, key, &v))
                return 0;
        if (!json_object_is_type(v, json_type_int)) {
                snprintf(err, errlen, "\"%s\" must be an integer", key);
                return -EINVAL;
        }
        n = json_object_get_int64(v);
        if (n < 0 || n > max) {
                snprintf(err, errlen, "\"%s\" must be between 0 and %ld", key, max);
                return -EINVAL;
        }
        *ret = (long)n;
        return 1;
}

int faults_add(json_object *obj, struct sbuf *out, char *err, size_t errlen)
{
        static const char *const known[] = {"kind",     "count",      "probability", "session",
                                            "endpoint", "retryAfter", "delayMs",     "status"};
        struct fault_rule *r, **tail;
        json_object *v;
        const char *kind;
        char kindbuf[32];
        long count = -1, n;
        int k;

        if (!json_object_is_type(obj, json_type_object)) {
                snprintf(err, errlen, "body must be a JSON object");
                return -EINVAL;
        }
        json_object_object_foreach(obj, key, val)
        {
                size_t i;

                (void)val;
                for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
                        if (strcmp(key, known[i]) == 0)
                                break;
                if (i == sizeof(known) / sizeof(known[0])) {
                        snprintf(err, errlen, "unknown key \"%s\"", key);
                        return -EINVAL;
                }
        }
        if (!json_object_object_get_ex(obj, "kind", &v)) {
                snprintf(err, errlen, "missing \"kind\"");
                return -EINVAL;
        }
        /* "kind": 503 is as natural to write as "kind": "503". */
        if (json_object_is_type(v, json_type_int)) {
                snprintf(kindbuf, sizeof(kindbuf), "%d", json_object_get_int(v));
                kind = kindbuf;
        } else if (json_object_is_type(v, json_type_string)) {
                kind = json_object_get_string(v);
        } else {
                snprintf(err, errlen, "\"kind\" must be a string");
                return -EINVAL;
        }
        for (k = FAULT_NONE + 1; k < FAULT_KIND_MAX; k++)
                if (strcmp(kind, faults_names[k]) == 0)
                        break;
        if (k == FAULT_KIND_MAX) {
                snprintf(
                    err, errlen,
                    "unknown fault kind '%.64s' (expected 500, 502, 503, 404, 403, 401, 429, delay, reset, "
                    "truncate, invalid-json, wrong-type, huge, unknown-status or list-miss)",
                    kind);
                return -EINVAL;
        }

        r = xcalloc(1, sizeof(*r));
        r->kind = (enum fault_kind)k;
        r->endpoints = r->kind == FAULT_LIST_MISS ? ENDPOINT_LIST : ENDPOINT_ALL;
        r->retry_after = r->kind == FAULT_429 ? 1 : 0;
        r->delay_ms = 1000;
        snprintf(r->status, sizeof(r->status), "Exploded");

        if (faults_get_uint(obj, "count", 1000000000L, &count, err, errlen) < 0)
                goto fail;
        if (json_object_object_get_ex(obj, "count", &v) && count == 0) {
                snprintf(err, errlen, "\"count\" must be at least 1");
                goto fail;
        }
        r->probability = 1.0;
        if (json_object_object_get_ex(obj, "probability", &v)) {
                if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)) {
                        snprintf(err, errlen, "\"probability\" must be a number");
                        goto fail;
                }
                r->probability = json_object_get_double(v);
                if (!(r->probability >= 0.0 && r->probability <= 1.0)) {
                        snprintf(err, errlen, "\"probability\" must be between 0 and 1");
                        goto fail;
                }
        } else if (count < 0) {
                count = 1;
        }
        r->remaining = count;
        if (json_object_object_get_ex(obj, "session", &v)) {
                if (!json_object_is_type(v, json_type_string)) {
                        snprintf(err, errlen, "\"session\" must be a string");
                        goto fail;
                }
                r->session = xstrdup(json_object_get_string(v));
        }
        if (json_object_object_get_ex(obj, "endpoint", &v)) {
                const char *e = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";

                if (strcmp(e, "get") == 0)
                        r->endpoints = ENDPOINT_GET;
                else if (strcmp(e, "list") == 0)
                        r->endpoints = ENDPOINT_LIST;
                else if (strcmp(e, "execute") == 0)
                        r->endpoints = ENDPOINT_EXECUTE;
                else if (strcmp(e, "any") == 0)
                        r->endpoints = ENDPOINT_ALL;
                else {
                        snprintf(err, errlen,
                                 "\"endpoint\" must be \"get\", \"list\", \"execute\" or \"any\"");
                        goto fail;
                }
        }
        if (r->kind == FAULT_LIST_MISS && r->endpoints != ENDPOINT_LIST) {
                snprintf(err, errlen, "\"endpoint\" of a list-miss rule must be \"list\"");
                goto fail;
        }
        if (faults_get_uint(obj, "retryAfter", 86400, &n, err, errlen) < 0)
                goto fail;
        if (json_object_object_get_ex(obj, "retryAfter", &v))
                r->retry_after = (unsigned)n;
        if (faults_get_uint(obj, "delayMs", 3600000, &n, err, errlen) < 0)
                goto fail;
        if (json_object_object_get_ex(obj, "delayMs", &v))
                r->delay_ms = (unsigned)n;
        if (json_object_object_get_ex(obj, "status", &v)) {
                if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0 ||
                    json_object_get_string_len(v) >= FAULT_STATUS_MAX) {
                        snprintf(err, errlen, "\"status\" must be a non-empty string shorter than %d bytes",
                                 FAULT_STATUS_MAX);
                        goto fail;
                }
                snprintf(r->status, sizeof(r->status), "%s", json_object_get_string(v));
        }

        pthread_mutex_lock(&faults.lock);
        r->id = faults.next_id++;
        for (tail = &faults.rules; *tail; tail = &(*tail)->next)
                ;
        *tail = r;
        atomic_fetch_add(&faults.n_rules, 1);
        if (r->kind == FAULT_LIST_MISS)
                atomic_fetch_add(&faults.n_miss, 1);
        pthread_mutex_unlock(&faults.lock);
        sbuf_printf(out, "{\"id\":%u,\"kind\":", r->id);
        sbuf_put_json_string(out, faults_names[r->kind]);
        sbuf_putc(out, '}');
        return 0;
fail:
        faults_rule_free(r);
        return -EINVAL;
}

void faults_clear(void)
{
        struct fault_rule *r;

        pthread_mutex_lock(&faults.lock);
        r = faults.rules;
        faults.rules = NULL;
        atomic_store(&faults.n_rules, 0);
        atomic_store(&faults.n_miss, 0);
        pthread_mutex_unlock(&faults.lock);
        while (r) {
                struct fault_rule *next = r->next;

                faults_rule_free(r);
                r = next;
        }
}

void faults_free(void)
{
        faults_clear();
}

static const char *faults_endpoint_name(unsigned mask)
{
        switch (mask) {
        case ENDPOINT_GET:
                return "get";
        case ENDPOINT_LIST:
                return "list";
        case ENDPOINT_EXECUTE:
                return "execute";
        default:
                return "any";
        }
}

void faults_dump(struct sbuf *out)
{
        pthread_mutex_lock(&faults.lock);
        sbuf_puts(out, "{\"faults\":[");
        for (struct fault_rule *r = faults.rules; r; r = r->next) {
                if (r != faults.rules)
                        sbuf_putc(out, ',');
                sbuf_printf(out, "{\"id\":%u,\"kind\":", r->id);
                sbuf_put_json_string(out, faults_names[r->kind]);
                sbuf_printf(out, ",\"endpoint\":\"%s\",\"session\":", faults_endpoint_name(r->endpoints));
                if (r->session)
                        sbuf_put_json_string(out, r->session);
                else
                        sbuf_puts(out, "null");
                if (r->remaining >= 0)
                        sbuf_printf(out, ",\"count\":%ld", r->remaining);
                else
                        sbuf_puts(out, ",\"count\":null");
                sbuf_printf(out, ",\"probability\":%g,\"retryAfter\":%u,\"delayMs\":%u,\"status\":",
                            r->probability, r->retry_after, r->delay_ms);
                sbuf_put_json_string(out, r->status);
                sbuf_putc(out, '}');
        }
        sbuf_puts(out, "]}");
        pthread_mutex_unlock(&faults.lock);
}

bool faults_pick(enum endpoint ep, const char *session_id, struct fault_action *ret)
{
        struct fault_rule **pp, *r;
        bool hit = false;

        /* Nearly every request of a benchmark passes here with no rules at all. */
        if (atomic_load_explicit(&faults.n_rules, memory_order_relaxed) == 0)
                return false;

        pthread_mutex_lock(&faults.lock);
        for (pp = &faults.rules; (r = *pp); pp = &r->next) {
                if (!(r->endpoints & (unsigned)ep) || r->kind == FAULT_LIST_MISS)
                        continue;
                if (r->session && (!session_id || strcmp(r->session, session_id) != 0))
                        continue;
                if (r->probability < 1.0 && rng_unit(&faults.rng) >= r->probability)
                        continue;
                hit = true;
                ret->kind = r->kind;
                ret->retry_after = r->retry_after;
                ret->delay_ms = r->delay_ms;
                memcpy(ret->status, r->status, sizeof(ret->status));
                if (r->remaining > 0 && --r->remaining == 0) {
                        *pp = r->next;
                        atomic_fetch_sub(&faults.n_rules, 1);
                        faults_rule_free(r);
                }
                break;
        }
        pthread_mutex_unlock(&faults.lock);
        if (hit)
                atomic_fetch_add(&faults.served[ret->kind], 1);
        return hit;
}

/* Picks the entry a list-miss rule takes out of a page, or returns n when it takes none. */
static size_t faults_miss_victim(const struct fault_rule *r, const char *const *ids, size_t n,
                                 const bool *omit)
{
        size_t left = 0, k;

        if (r->session) {
                for (size_t i = 0; i < n; i++)
                        if (!omit[i] && strcmp(ids[i], r->session) == 0)
                                return i;
                return n;
        }
        for (size_t i = 0; i < n; i++)
                left += !omit[i];
        if (left == 0)
                return n;
        k = (size_t)(rng_next(&faults.rng) % left);
        for (size_t i = 0; i < n; i++)
                if (!omit[i] && k-- == 0)
                        return i;
        return n;
}

/*
 * Applies the list-miss rules to a page of a list answer: a rule naming a
 * session fires on an answer holding that session and leaves it out; a rule
 * without a session fires on any answer with an entry left and leaves out
 * one chosen at random. Every rule that fires counts one answer against its
 * count (or rolls its probability first).
 */
void faults_list_miss(const char *const *ids, size_t n, bool *omit)
{
        struct fault_rule **pp, *r;

        if (n == 0 || atomic_load_explicit(&faults.n_miss, memory_order_relaxed) == 0)
                return;

        pthread_mutex_lock(&faults.lock);
        for (pp = &faults.rules; (r = *pp);) {
                size_t victim;

                if (r->kind != FAULT_LIST_MISS) {
                        pp = &r->next;
                        continue;
                }
                /* The chance is rolled only for an answer the rule could change. */
                victim = faults_miss_victim(r, ids, n, omit);
                if (victim == n || (r->probability < 1.0 && rng_unit(&faults.rng) >= r->probability)) {
                        pp = &r->next;
                        continue;
                }
                omit[victim] = true;
                atomic_fetch_add(&faults.served[FAULT_LIST_MISS], 1);
                if (r->remaining > 0 && --r->remaining == 0) {
                        *pp = r->next;
                        atomic_fetch_sub(&faults.n_rules, 1);
                        atomic_fetch_sub(&faults.n_miss, 1);
                        faults_rule_free(r);
                        continue;
                }
                pp = &r->next;
        }
        pthread_mutex_unlock(&faults.lock);
}

void faults_dump_counters(struct sbuf *out)
{
        sbuf_putc(out, '{');
        for (int k = FAULT_NONE + 1; k < FAULT_KIND_MAX; k++) {
                if (k > FAULT_NONE + 1)
                        sbuf_putc(out, ',');
                sbuf_printf(out, "\"%s\":%llu", faults_names[k],
                            (unsigned long long)atomic_load(&faults.served[k]));
        }
        sbuf_putc(out, '}');
}

void faults_reset_counters(void)
{
        for (int k = 0; k < FAULT_KIND_MAX; k++)
                atomic_store(&faults.served[k], 0);
}
