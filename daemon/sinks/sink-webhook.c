#include <assert.h>
/* The webhook sink: the outbox (durability, bounded memory), delivery
 * (per-session order, in-flight bound, retries, drops, 410) and signing.
 *
 * Delivery is driven by one function, dispatch(), which walks the outbox
 * window oldest first and starts what may start: an event whose record is
 * written, that no earlier pending event of the same session precedes, whose
 * retry time has come, while fewer than max-in-flight attempts run. It runs
 * when events become ready, when an attempt completes and when the retry
 * timer fires; the window is bounded (1024 events), so a walk is cheap. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "httpmux.h"
#include "log.h"
#include "outbox.h"
#include "sink-webhook.h"
#include "webhook.h"

/* Pending events held in memory per webhook; the rest wait on disk. */
#define WINDOW_ENTRIES 1024
#define WINDOW_BYTES ((size_t)4 * 1024 * 1024)
/* Slots of the per-walk set of sessions already met: a power of two, at
 * least twice the window, so probing stays short. */
#define SEEN_SLOTS 4096
/* Responses are not used beyond their status; a larger body is cut short. */
#define RESPONSE_MAX ((size_t)64 * 1024)

typedef struct WebhookSink WebhookSink;

typedef struct Attempt {
        WebhookSink *w;
        OutboxEntry *e;
        HttpHeaders *headers;
} Attempt;

struct WebhookSink {
        Sink sink;
        uv_loop_t *loop;
        char *name, *url, *app_url;
        ConfigWebhookFormat format;
        WebhookKey *keys;
        size_t n_keys;
        uint64_t timeout_ms, retry_min_ms, retry_max_ms, max_age_ms;
        unsigned max_in_flight;

        HttpMux *mux;
        Outbox *outbox;
        uv_timer_t timer;
        EventBuffer body;
        unsigned in_flight;
        bool disabled;
        bool closing;
        uint64_t paused_until_ms; /* uv_now() before which nothing is attempted (Retry-After) */
        unsigned closing_parts;
        uint64_t rng;

        /* The sessions met during one walk: slot i is in the set when
         * seen_gen[i] == gen. */
        uint64_t seen[SEEN_SLOTS]; /* 64-bit hashes of session ids: an entry may be freed during a walk */
        uint32_t seen_gen[SEEN_SLOTS];
        uint32_t gen;
        size_t n_seen;

        WebhookStats stats;
        LogRateLimit fail_rl, drop_rl;

        void (*written_cb)(void *userdata);
        void *written_userdata;

        /* An orphaned queue: the webhook left the config. Nothing new comes
         * in and nothing is attempted; events leave by max-age, and once
         * none is left the file is removed and `emptied` is called. */
        bool orphan;
        char *outbox_path;
        void (*emptied)(void *userdata, Sink *s);
        void *emptied_userdata;
};

static const char *const failure_names[_WEBHOOK_FAILURE_MAX] = {
    [WEBHOOK_FAILURE_HTTP_4XX] = "http_4xx",
    [WEBHOOK_FAILURE_HTTP_5XX] = "http_5xx",
    [WEBHOOK_FAILURE_RATE_LIMITED] = "rate_limited",
    [WEBHOOK_FAILURE_TIMEOUT] = "timeout",
    [WEBHOOK_FAILURE_NETWORK] = "network",
    [WEBHOOK_FAILURE_REDIRECT] = "redirect",
    [WEBHOOK_FAILURE_GONE] = "gone",
    [WEBHOOK_FAILURE_EXPIRED] = "expired",
    [WEBHOOK_FAILURE_TLS] = "tls",
};

const char *webhook_failure_to_string(WebhookFailure f)
{
        return f < _WEBHOOK_FAILURE_MAX ? failure_names[f] : "invalid";
}

static int64_t realtime_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t next_random(WebhookSink *w)
{
        /* xorshift64*: jitter needs spread, not secrecy. */
        w->rng ^= w->rng >> 12;
        w->rng ^= w->rng << 25;
        w->rng ^= w->rng >> 27;
        return w->rng * 0x2545F4914F6CDD1DULL;
}

/* Adds the session to this walk's set; false when it was there already
 * (an earlier event of it is pending) or the set is full (be safe: wait). */
static bool seen_add(WebhookSink *w, const char *id)
{
        uint64_t h = 14695981039346656037ull;

        /* FNV-1a, 64 bits: two sessions of one walk colliding would only
         * make one wait for the other, and that is vanishingly rare. */
        for (const char *p = id; *p; p++)
                h = (h ^ (uint8_t)*p) * 1099511628211ull;
        if (w->n_seen >= SEEN_SLOTS / 2)
                return false;
        for (uint32_t i = (uint32_t)h & (SEEN_SLOTS - 1);; i = (i + 1) & (SEEN_SLOTS - 1)) {
                if (w->seen_gen[i] != w->gen) {
                        w->seen_gen[i] = w->gen;
                        w->seen[i] = h;
                        w->n_seen++;
                        return true;
                }
                if (w->seen[i] == h)
                        return false;
        }
}

static void seen_reset(WebhookSink *w)
{
        w->n_seen = 0;
        if (++w->gen == 0) {
                /* Wrapped: stale stamps could match again. */
                memset(w->seen_gen, 0, sizeof(w->seen_gen));
                w->gen = 1;
        }
}

static void dispatch(WebhookSink *w);
static int webhook_new(uv_loop_t *loop, const SinkWebhookOptions *o, bool orphan, Sink **ret);
static bool orphan_finish(WebhookSink *w);

static void on_retry_timer(uv_timer_t *t)
{
        dispatch(t->data);
}

static void drop(WebhookSink *w, OutboxEntry *e, const char *why)
{
        w->stats.drops++;
        log_ratelimited(&w->drop_rl, uv_now(w->loop), LOG_ERR,
                        "Webhook '%s' dropped event '%s' of session '%s': %s.", w->name, e->event_id,
                        e->session_id, why);
        outbox_done(w->outbox, e);
}

static void on_attempt_done(void *userdata, const HttpResponse *resp);

static void start_attempt(WebhookSink *w, OutboxEntry *e)
{
        const char *content_type =
            w->format == CONFIG_WEBHOOK_FORMAT_SLACK ? "application/json" : "application/cloudevents+json";
        Attempt *a = calloc(1, sizeof(*a));
        int r = -ENOMEM;

        if (a) {
                a->w = w;
                a->e = e;
                r = webhook_headers_new(w->keys, w->n_keys, content_type, e->event_id, (int64_t)time(NULL),
                                        e->body, e->body_len, &a->headers);
                if (r >= 0)
                        r = httpmux_post(w->mux, w->url, a->headers, e->body, e->body_len,
                                         (long)w->timeout_ms, on_attempt_done, a);
        }
        if (r < 0) {
                if (a)
                        webhook_headers_free(a->headers);
                free(a);
                if (e->failures < UINT16_MAX)
                        e->failures++;
                e->not_before_ms = uv_now(w->loop) + webhook_retry_delay(w->retry_min_ms, w->retry_max_ms,
                                                                         e->failures, next_random(w));
                log_ratelimited_errno(&w->fail_rl, uv_now(w->loop), LOG_ERR, r,
                                      "Failed to start delivering event '%s' to webhook '%s': %m",
                                      e->event_id, w->name);
                return;
        }
        e->in_flight = true;
        w->in_flight++;
        w->stats.attempts++;
}

static void dispatch(WebhookSink *w)
{
        uint64_t now = uv_now(w->loop), wake = UINT64_MAX;
        int64_t now_us = realtime_us();
        OutboxEntry *e, *next;

        if (w->closing)
                return;
        if (now < w->paused_until_ms && !w->disabled && !w->orphan) {
                /* The receiver asked for a pause (429 or 503 with
                 * Retry-After): nothing goes before it ends. */
                uv_timer_start(&w->timer, on_retry_timer, w->paused_until_ms - now, 0);
                return;
        }
        seen_reset(w);
        for (e = outbox_first(w->outbox); e; e = next) {
                int64_t age_us = now_us - e->created_us;
                uint64_t expires;

                next = outbox_next(w->outbox, e);
                /* Per-session order: only the oldest pending event of a
                 * session may be under way. */
                if (!seen_add(w, e->session_id))
                        continue;
                if (e->in_flight || !outbox_entry_ready(w->outbox, e))
                        continue;
                if (age_us > 0 && (uint64_t)age_us / 1000 >= w->max_age_ms) {
                        w->stats.failures[WEBHOOK_FAILURE_EXPIRED]++;
                        drop(w, e, "older than max-age, never delivered");
                        /* The session's next event may go now. */
                        wake = now;
                        continue;
                }
                expires = now + (w->max_age_ms - (age_us > 0 ? (uint64_t)age_us / 1000 : 0));
                if (w->disabled || w->orphan) {
                        /* Kept for a restart or reload, but not past
                         * max-age: the outbox of a disabled webhook does
                         * not grow without bound, and that of a removed
                         * one goes away. */
                        if (expires < wake)
                                wake = expires;
                        continue;
                }
                if (e->not_before_ms > now) {
                        uint64_t at = e->not_before_ms < expires ? e->not_before_ms : expires;
                        if (at < wake)
                                wake = at;
                        continue;
                }
                if (w->in_flight >= w->max_in_flight)
                        /* A completion walks again. */
                        break;
                start_attempt(w, e);
                if (!e->in_flight && e->not_before_ms < wake)
                        wake = e->not_before_ms;
        }
        if (w->orphan && orphan_finish(w))
                return;
        if (wake == UINT64_MAX)
                uv_timer_stop(&w->timer);
        else
                uv_timer_start(&w->timer, on_retry_timer, wake > now ? wake - now : 0, 0);
}

/* The last event of an orphaned queue is gone: removes the file, once no
 * outbox job is under way (a rewrite could put it back), and tells the
 * owner, which closes the sink. Runs from dispatch(). */
static bool orphan_finish(WebhookSink *w)
{
        OutboxStats os;
        int r;

        outbox_stats(w->outbox, &os);
        if (os.pending > 0 || w->in_flight > 0)
                return false;
        if (outbox_busy(w->outbox)) {
                /* Its done records are being written: look again soon. */
                uv_timer_start(&w->timer, on_retry_timer, 10, 0);
                return true;
        }
        r = outbox_unlink(w->outbox);
        if (r < 0)
                log_error_errno(r, "Failed to remove the empty orphaned webhook outbox '%s': %m",
                                w->outbox_path);
        else
                log_info("Removed the orphaned webhook outbox '%s': every event in it expired.",
                         w->outbox_path);
        w->orphan = false;
        uv_timer_stop(&w->timer);
        if (w->emptied)
                w->emptied(w->emptied_userdata, &w->sink);
        return true;
}

static void disable(WebhookSink *w)
{
        OutboxStats os;

        if (w->disabled)
                return;
        w->disabled = true;
        uv_timer_stop(&w->timer);
        outbox_stats(w->outbox, &os);
        log_error("Webhook '%s' answered 410 Gone: it is disabled until the daemon restarts or reloads; its "
                  "%" PRIu64 " undelivered event(s) stay in the outbox.",
                  w->name, os.pending);
}

WebhookVerdict sink_webhook_classify(const HttpResponse *resp, WebhookFailure *ret_kind, bool *ret_honour)
{
        *ret_honour = false;
        *ret_kind = _WEBHOOK_FAILURE_MAX;
        if (resp->error == HTTP_ERR_CANCELLED)
                /* Closing: the event stays in the outbox for the next run. */
                return WEBHOOK_VERDICT_KEEP;
        /* The answer's body is not needed: a 2xx whose body was too big to
         * keep is a delivery all the same. */
        if ((resp->error == HTTP_OK || resp->error == HTTP_ERR_TOO_LARGE) && resp->status >= 200 &&
            resp->status < 300)
                return WEBHOOK_VERDICT_DELIVERED;
        if (resp->error == HTTP_OK && resp->status == 410) {
                *ret_kind = WEBHOOK_FAILURE_GONE;
                return WEBHOOK_VERDICT_DISABLE;
        }
        if (resp->error == HTTP_OK && resp->status == 429)
                *ret_kind = WEBHOOK_FAILURE_RATE_LIMITED;
        else if (resp->error == HTTP_OK && resp->status >= 300 && resp->status < 400)
                *ret_kind = WEBHOOK_FAILURE_REDIRECT;
        else if (resp->error == HTTP_OK && resp->status >= 400 && resp->status < 500) {
                *ret_kind = WEBHOOK_FAILURE_HTTP_4XX;
                return WEBHOOK_VERDICT_DROP;
        } else if (resp->error == HTTP_OK)
                *ret_kind = WEBHOOK_FAILURE_HTTP_5XX;
        else if (resp->error == HTTP_ERR_TIMEOUT)
                *ret_kind = WEBHOOK_FAILURE_TIMEOUT;
        else if (resp->error == HTTP_ERR_TLS)
                *ret_kind = WEBHOOK_FAILURE_TLS;
        else
                *ret_kind = WEBHOOK_FAILURE_NETWORK;
        *ret_honour =
            (*ret_kind == WEBHOOK_FAILURE_RATE_LIMITED || (resp->error == HTTP_OK && resp->status == 503)) &&
            resp->retry_after_ms >= 0;
        return WEBHOOK_VERDICT_RETRY;
}

static void retry_later(WebhookSink *w, OutboxEntry *e, WebhookFailure kind, bool honour,
                        const HttpResponse *resp)
{
        uint64_t delay;

        w->stats.failures[kind]++;
        if (e->failures < UINT16_MAX)
                e->failures++;
        delay = webhook_attempt_delay(honour, resp->retry_after_ms, w->retry_min_ms, w->retry_max_ms,
                                      w->max_age_ms, e->failures, next_random(w));
        /* The receiver asked for a pause, not only for this event. */
        if (honour && uv_now(w->loop) + delay > w->paused_until_ms)
                w->paused_until_ms = uv_now(w->loop) + delay;
        e->not_before_ms = uv_now(w->loop) + delay;
        if (resp->error == HTTP_OK)
                log_ratelimited(
                    &w->fail_rl, uv_now(w->loop), LOG_WARNING,
                    "Delivering event '%s' to webhook '%s' failed: HTTP %ld; retrying in %" PRIu64 " ms.",
                    e->event_id, w->name, resp->status, delay);
        else
                log_ratelimited(&w->fail_rl, uv_now(w->loop), LOG_WARNING,
                                "Delivering event '%s' to webhook '%s' failed: %s (%s); retrying in %" PRIu64
                                " ms.",
                                e->event_id, w->name, http_error_to_string(resp->error),
                                resp->error_text ? resp->error_text : "", delay);
}

/* httpmux completion, on the loop thread, once per attempt. */
static void on_attempt_done(void *userdata, const HttpResponse *resp)
{
        Attempt *a = userdata;
        WebhookSink *w = a->w;
        OutboxEntry *e = a->e;
        WebhookFailure kind;
        bool honour;
        char why[64];

        webhook_headers_free(a->headers);
        free(a);
        e->in_flight = false;
        w->in_flight--;

        switch (sink_webhook_classify(resp, &kind, &honour)) {
        case WEBHOOK_VERDICT_KEEP:
                return;
        case WEBHOOK_VERDICT_DELIVERED:
                w->stats.successes++;
                outbox_done(w->outbox, e);
                break;
        case WEBHOOK_VERDICT_DISABLE:
                w->stats.failures[kind]++;
                disable(w);
                break;
        case WEBHOOK_VERDICT_DROP:
                w->stats.failures[kind]++;
                snprintf(why, sizeof(why), "the receiver refused it with HTTP %ld", resp->status);
                drop(w, e, why);
                break;
        case WEBHOOK_VERDICT_RETRY:
                retry_later(w, e, kind, honour, resp);
                break;
        }

        if (!w->closing)
                dispatch(w);
}

/* The outbox wrote or read back events: they may go now. */
static void on_outbox_ready(void *userdata)
{
        WebhookSink *w = userdata;

        dispatch(w);
        if (w->written_cb)
                w->written_cb(w->written_userdata);
}

int sink_webhook_reconfigure(Sink *s, const SinkWebhookOptions *o)
{
        WebhookSink *w = (WebhookSink *)s;
        const ConfigWebhook *c = o->config;
        WebhookKey *keys = NULL;
        char *url, *app_url = NULL;
        int r;

        assert(strcmp(c->name, w->name) == 0);
        /* Everything that can fail comes first: a failure changes nothing. */
        if (c->n_secret_files > 0) {
                keys = calloc(c->n_secret_files, sizeof(WebhookKey));
                if (!keys)
                        return -ENOMEM;
                for (size_t k = 0; k < c->n_secret_files; k++) {
                        r = webhook_key_from_secret(c->secrets[k], &keys[k]);
                        if (r < 0) {
                                log_error(
                                    "Webhook '%s': the secret in '%s' is not a Standard Webhooks secret "
                                    "(whsec_ + base64).",
                                    w->name, c->secret_files[k]);
                                explicit_bzero(keys, c->n_secret_files * sizeof(WebhookKey));
                                free(keys);
                                return r;
                        }
                }
        }
        url = strdup(c->url);
        if (o->app_url)
                app_url = strdup(o->app_url);
        if (!url || (o->app_url && !app_url)) {
                free(url);
                free(app_url);
                if (keys)
                        explicit_bzero(keys, c->n_secret_files * sizeof(WebhookKey));
                free(keys);
                return -ENOMEM;
        }

        /* Attempts in flight keep what they were started with (libcurl
         * copied the URL, the headers are their own). */
        if (w->keys)
                explicit_bzero(w->keys, w->n_keys * sizeof(WebhookKey));
        free(w->keys);
        w->keys = keys;
        w->n_keys = c->n_secret_files;
        free(w->url);
        w->url = url;
        free(w->app_url);
        w->app_url = app_url;
        w->sink.status_mask = c->statuses;
        if (w->format != c->format)
                log_notice("Webhook '%s': events queued before the reload keep the %s format.", w->name,
                           config_webhook_format_to_string(w->format));
        w->format = c->format;
        w->timeout_ms = c->timeout_ms;
        w->retry_min_ms = c->retry_min_ms;
        w->retry_max_ms = c->retry_max_ms;
        w->max_age_ms = c->max_age_ms;
        w->max_in_flight = c->max_in_flight ? c->max_in_flight : 1;
        if (w->disabled) {
                log_notice("Webhook '%s' is enabled again by the reload.", w->name);
                w->disabled = false;
        }
        w->paused_until_ms = 0;
        if (!w->closing)
                dispatch(w);
        return 0;
}

int sink_webhook_new_orphan(uv_loop_t *loop, const char *state_folder, const char *name, uint64_t max_age_ms,
                            Sink **ret)
{
        /* Only what the outbox and expiry use matters: nothing is sent. */
        ConfigWebhook c = {
            .name = (char *)name,
            .url = (char *)"",
            .timeout_ms = 1000,
            .retry_min_ms = 1000,
            .retry_max_ms = 1000,
            .max_age_ms = max_age_ms,
            .max_in_flight = 1,
        };
        SinkWebhookOptions o = {.config = &c, .state_folder = state_folder};

        return webhook_new(loop, &o, true, ret);
}

void sink_webhook_orphan(Sink *s, void (*emptied)(void *userdata, Sink *s), void *userdata)
{
        WebhookSink *w = (WebhookSink *)s;

        w->orphan = true;
        w->emptied = emptied;
        w->emptied_userdata = userdata;
        if (!w->closing)
                dispatch(w);
}

int sink_webhook_adopt(Sink *s, const SinkWebhookOptions *o)
{
        WebhookSink *w = (WebhookSink *)s;
        int r;

        assert(w->orphan);
        w->orphan = false;
        r = sink_webhook_reconfigure(s, o);
        if (r < 0) {
                w->orphan = true;
                return r;
        }
        w->emptied = NULL;
        w->emptied_userdata = NULL;
        return 0;
}

bool sink_webhook_is_orphan(const Sink *s)
{
        return ((const WebhookSink *)s)->orphan;
}

const char *sink_webhook_outbox_path(const Sink *s)
{
        return ((const WebhookSink *)s)->outbox_path;
}

static const SinkOps webhook_ops;

bool sink_is_webhook(const Sink *s)
{
        return s && s->ops == &webhook_ops;
}

uint64_t sink_webhook_mark(const Sink *s)
{
        const WebhookSink *w = (const WebhookSink *)s;

        return w->closing ? 0 : outbox_last_appended(w->outbox);
}

bool sink_webhook_written_through(const Sink *s, uint64_t mark)
{
        const WebhookSink *w = (const WebhookSink *)s;
        OutboxStats st;

        if (w->closing)
                return true;
        outbox_stats(w->outbox, &st);
        return st.degraded || outbox_last_written(w->outbox) >= mark;
}

void sink_webhook_on_written(Sink *s, void (*cb)(void *userdata), void *userdata)
{
        WebhookSink *w = (WebhookSink *)s;

        w->written_cb = cb;
        w->written_userdata = userdata;
}

static void webhook_emit(Sink *s, const Event *e)
{
        WebhookSink *w = (WebhookSink *)s;
        int r;

        if (w->closing)
                return;
        w->body.len = 0;
        if (w->format == CONFIG_WEBHOOK_FORMAT_SLACK)
                r = webhook_append_slack(e, w->app_url, &w->body);
        else
                r = event_append_json(e, -1, &w->body);
        if (r >= 0)
                r = outbox_append(w->outbox, e->session_id, e->id, realtime_us(), w->body.data, w->body.len);
        if (r < 0) {
                w->stats.drops++;
                log_ratelimited_errno(
                    &w->drop_rl, uv_now(w->loop), LOG_ERR, r,
                    "Webhook '%s' dropped event '%s' of session '%s': cannot queue it: %m.", w->name, e->id,
                    e->session_id);
        }
}

static void webhook_free_now(WebhookSink *w)
{
        if (w->keys)
                explicit_bzero(w->keys, w->n_keys * sizeof(WebhookKey));
        free(w->keys);
        free(w->name);
        free(w->url);
        free(w->app_url);
        free(w->outbox_path);
        event_buffer_done(&w->body);
        free(w);
}

static void close_part_done(WebhookSink *w)
{
        if (--w->closing_parts == 0)
                webhook_free_now(w);
}

static void on_timer_closed(uv_handle_t *h)
{
        close_part_done(h->data);
}

static void on_outbox_closed(void *userdata)
{
        close_part_done(userdata);
}

/* Every attempt has completed (cancelled): the entries they held are free
 * to go, and the outbox writes what is pending and closes. */
static void on_mux_closed(void *userdata)
{
        WebhookSink *w = userdata;

        w->mux = NULL;
        outbox_close(w->outbox, on_outbox_closed, w);
        w->outbox = NULL;
}

static void webhook_close(Sink *s)
{
        WebhookSink *w = (WebhookSink *)s;
        WebhookStats st;

        if (w->closing)
                return;
        sink_webhook_stats(s, &st);
        log_info("Webhook '%s': %" PRIu64 " attempt(s), %" PRIu64 " delivered, %" PRIu64 " dropped, %" PRIu64
                 " undelivered kept in the outbox%s.",
                 w->name, st.attempts, st.successes, st.drops, st.queue_depth,
                 st.disabled ? " (disabled by 410 Gone)" : "");
        w->closing = true;
        w->closing_parts = 2;
        uv_close((uv_handle_t *)&w->timer, on_timer_closed);
        httpmux_close(w->mux, on_mux_closed, w);
}

static const SinkOps webhook_ops = {
    .name = "webhook",
    .emit = webhook_emit,
    .close = webhook_close,
    /* Closing is asynchronous: the loop must run afterwards either way. */
    .free = webhook_close,
};

const char *sink_webhook_name(const Sink *s)
{
        return ((const WebhookSink *)s)->name;
}

void sink_webhook_stats(const Sink *s, WebhookStats *ret)
{
        const WebhookSink *w = (const WebhookSink *)s;
        OutboxStats os = {};

        *ret = w->stats;
        if (w->outbox)
                outbox_stats(w->outbox, &os);
        ret->queue_depth = os.pending;
        ret->in_flight = w->in_flight;
        ret->oldest_age_ms = 0;
        if (os.oldest_created_us > 0) {
                int64_t age = realtime_us() - os.oldest_created_us;
                ret->oldest_age_ms = age > 0 ? age / 1000 : 0;
        }
        ret->disabled = w->disabled;
        ret->outbox_degraded = os.degraded;
}

static int webhook_new(uv_loop_t *loop, const SinkWebhookOptions *o, bool orphan, Sink **ret)
{
        const ConfigWebhook *c = o->config;
        OutboxLoadReport rep;
        WebhookSink *w;
        int r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->sink = (Sink){.ops = &webhook_ops, .status_mask = c->statuses};
        w->loop = loop;
        w->orphan = orphan;
        w->format = c->format;
        w->timeout_ms = c->timeout_ms;
        w->retry_min_ms = c->retry_min_ms;
        w->retry_max_ms = c->retry_max_ms;
        w->max_age_ms = c->max_age_ms;
        w->max_in_flight = c->max_in_flight ? c->max_in_flight : 1;
        w->fail_rl = (LogRateLimit)LOG_RATELIMIT_INIT(10000, 5);
        w->drop_rl = (LogRateLimit)LOG_RATELIMIT_INIT(10000, 5);
        w->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)realtime_us() ^ (uint64_t)(uintptr_t)w;
        if (w->rng == 0)
                w->rng = 1;
        w->gen = 1;
        w->name = strdup(c->name);
        w->url = strdup(c->url);
        w->app_url = o->app_url ? strdup(o->app_url) : NULL;
        if (!w->name || !w->url || (o->app_url && !w->app_url) ||
            asprintf(&w->outbox_path, "%s/outbox-%s", o->state_folder ? o->state_folder : ".", c->name) < 0)
                goto oom;
        if (c->n_secret_files > 0) {
                w->keys = calloc(c->n_secret_files, sizeof(WebhookKey));
                if (!w->keys)
                        goto oom;
                for (size_t k = 0; k < c->n_secret_files; k++) {
                        r = webhook_key_from_secret(c->secrets[k], &w->keys[k]);
                        if (r < 0) {
                                log_error(
                                    "Webhook '%s': the secret in '%s' is not a Standard Webhooks secret "
                                    "(whsec_ + base64).",
                                    w->name, c->secret_files[k]);
                                webhook_free_now(w);
                                return r;
                        }
                        w->n_keys++;
                }
        }

        HttpMuxOptions ho = {
            .max_connections = (long)w->max_in_flight,
            .timeout_ms = (long)w->timeout_ms,
            .max_body = RESPONSE_MAX,
            .ca_file = o->ca_file,
        };
        r = httpmux_new(loop, &ho, &w->mux);
        if (r < 0) {
                log_error_errno(r, "Webhook '%s': failed to set up HTTP: %m", w->name);
                webhook_free_now(w);
                return r;
        }
        OutboxOptions oo = {
            .folder = o->state_folder,
            .name = w->name,
            .window_entries = WINDOW_ENTRIES,
            .window_bytes = WINDOW_BYTES,
        };
        /* Test hook: a small window, to show what waits on disk. */
        if (getenv("SW_TEST_HOOKS") && strcmp(getenv("SW_TEST_HOOKS"), "1") == 0 &&
            getenv("SW_TEST_WEBHOOK_WINDOW"))
                oo.window_entries = strtoul(getenv("SW_TEST_WEBHOOK_WINDOW"), NULL, 10);
        r = outbox_open(loop, &oo, on_outbox_ready, w, &w->outbox, &rep);
        if (r < 0) {
                log_error_errno(r, "Webhook '%s': failed to open its outbox in '%s': %m", w->name,
                                o->state_folder);
                /* The mux frees itself from the loop, which the caller
                 * runs to shut down. */
                httpmux_close(w->mux, NULL, NULL);
                w->mux = NULL;
                webhook_free_now(w);
                return r;
        }
        if (rep.corrupt)
                log_error("Webhook '%s': its outbox was unreadable (%s) and was moved to '%s'; undelivered "
                          "events in "
                          "it are lost.",
                          w->name, rep.corrupt_reason, rep.corrupt_path[0] ? rep.corrupt_path : "(nowhere)");
        if (rep.torn_bytes > 0)
                log_notice("Webhook '%s': dropped a torn last record (%" PRIu64 " bytes) from its outbox.",
                           w->name, rep.torn_bytes);
        if (rep.pending > 0)
                log_info("Webhook '%s': %" PRIu64 " undelivered event(s) from before the restart.", w->name,
                         rep.pending);
        uv_timer_init(loop, &w->timer);
        w->timer.data = w;
        *ret = &w->sink;
        /* What the previous run left is written already: start on it (an
         * orphan starts expiring in sink_webhook_orphan()). */
        if (!orphan)
                dispatch(w);
        return 0;
oom:
        webhook_free_now(w);
        return -ENOMEM;
}

int sink_webhook_new(uv_loop_t *loop, const SinkWebhookOptions *o, Sink **ret)
{
        return webhook_new(loop, o, false, ret);
}
