/* The webhook sink: one per [webhook "NAME"] section. Each event enters the
 * webhook's durable outbox (outbox.h) while emit() runs and is delivered,
 * signed, by the webhook's own HttpMux, so a dead, slow or disabled webhook
 * never takes connections or time from polling or from another sink. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "httpmux.h"
#include "sink.h"

typedef enum WebhookFailure {
        WEBHOOK_FAILURE_HTTP_4XX,     /* dropped: a 4xx other than 410 and 429 */
        WEBHOOK_FAILURE_HTTP_5XX,     /* retried (503 honours Retry-After) */
        WEBHOOK_FAILURE_RATE_LIMITED, /* 429: retried after Retry-After */
        WEBHOOK_FAILURE_TIMEOUT,      /* retried */
        WEBHOOK_FAILURE_NETWORK,      /* connect, reset...: retried */
        WEBHOOK_FAILURE_REDIRECT,     /* 3xx, never followed: retried */
        WEBHOOK_FAILURE_GONE,         /* 410: the webhook is disabled */
        WEBHOOK_FAILURE_EXPIRED,      /* older than max-age: dropped */
        WEBHOOK_FAILURE_TLS,          /* handshake or certificate verification: retried */
        _WEBHOOK_FAILURE_MAX,
} WebhookFailure;

typedef struct WebhookStats {
        uint64_t attempts;  /* requests started */
        uint64_t successes; /* 2xx answers */
        uint64_t failures[_WEBHOOK_FAILURE_MAX];
        uint64_t drops;        /* events given up on (4xx, expired, outbox refused them) */
        uint64_t queue_depth;  /* events not delivered yet, in memory or only on disk */
        uint64_t in_flight;    /* attempts now */
        int64_t oldest_age_ms; /* age of the oldest undelivered event; 0: none */
        bool disabled;         /* a 410 disabled it until restart or reload */
        bool outbox_degraded;  /* writing the outbox is failing */
} WebhookStats;

const char *webhook_failure_to_string(WebhookFailure f);

/* What an attempt's answer means for the event. */
typedef enum WebhookVerdict {
        WEBHOOK_VERDICT_DELIVERED, /* a 2xx: done */
        WEBHOOK_VERDICT_RETRY,     /* tried again later */
        WEBHOOK_VERDICT_DROP,      /* a 4xx other than 410 and 429: given up */
        WEBHOOK_VERDICT_DISABLE,   /* 410: the webhook stops */
        WEBHOOK_VERDICT_KEEP,      /* cancelled by closing: stays in the outbox, nothing counted */
} WebhookVerdict;

/* Classifies an attempt's answer (transport error, status code, Retry-After
 * as httpmux parsed it; the body is not looked at). *ret_kind is the failure
 * counted (_WEBHOOK_FAILURE_MAX for DELIVERED and KEEP); *ret_honour tells
 * whether the Retry-After sets the delay and pauses the webhook (429, or 503
 * with one). Pure. */
WebhookVerdict sink_webhook_classify(const HttpResponse *resp, WebhookFailure *ret_kind, bool *ret_honour);

typedef struct SinkWebhookOptions {
        const ConfigWebhook *config; /* copied what is needed; may go after the call */
        const char *state_folder;    /* where the outbox file lives */
        const char *app_url;         /* for links in the Slack format; may be NULL */
        const char *ca_file;         /* extra CA bundle; may be NULL */
} SinkWebhookOptions;

/* Creates the sink and loads its outbox (blocking, a short while), which
 * starts delivering what a previous run left. Returns 0, -EINVAL for a
 * secret that does not decode, or the -errno of the outbox or HTTP setup.
 * The sink is closed with sink_close() and needs the loop to run until its
 * handles are closed; what is undelivered then stays in the outbox for the
 * next start. */
int sink_webhook_new(uv_loop_t *loop, const SinkWebhookOptions *options, Sink **ret);

/* Applies a new [webhook] section of the same name (a reload): URL,
 * secrets, statuses, format, timeouts, retries, max-age, max-in-flight (the
 * connection cap stays as created). The outbox and what is queued stay; a
 * webhook disabled by 410 is enabled again. Returns 0, or -EINVAL for a
 * secret that does not decode or -ENOMEM, and then changes nothing. */
int sink_webhook_reconfigure(Sink *s, const SinkWebhookOptions *options);

/* Orphaned queues. The outbox of a webhook that left the config (by a
 * reload, or found in the state folder at start-up) is kept as a sink that
 * takes no events and attempts nothing (attempts already in flight finish):
 * its events leave it only by max-age, and once none is left its file is
 * removed and `emptied` runs on the loop (the owner then closes the sink).
 * A webhook of that name that comes back adopts it with its queue.
 *
 * sink_webhook_new_orphan() opens STATE/outbox-NAME (blocking, like
 * sink_webhook_new()) with the given max-age; it does nothing until
 * sink_webhook_orphan() sets its callback. sink_webhook_orphan() turns a
 * configured sink into an orphan, keeping its max-age. sink_webhook_adopt()
 * makes it a configured webhook again, as sink_webhook_reconfigure() does
 * (and fails the same way, leaving it an orphan). */
int sink_webhook_new_orphan(uv_loop_t *loop, const char *state_folder, const char *name, uint64_t max_age_ms,
                            Sink **ret);
void sink_webhook_orphan(Sink *s, void (*emptied)(void *userdata, Sink *s), void *userdata);
int sink_webhook_adopt(Sink *s, const SinkWebhookOptions *options);
bool sink_webhook_is_orphan(const Sink *s);

/* STATE/outbox-NAME. */
const char *sink_webhook_outbox_path(const Sink *s);

/* The name of the [webhook "NAME"] section. */
const char *sink_webhook_name(const Sink *s);

void sink_webhook_stats(const Sink *s, WebhookStats *ret);

/* Ordering with the state file. The daemon records a transition in its state
 * only once every webhook's outbox holds the event on disk, so that a kill in
 * between repeats the event rather than losing it for a webhook.
 * sink_webhook_mark() is the position of the last event taken;
 * sink_webhook_written_through() tells whether everything up to `mark` is
 * written (also true when it never will be: the outbox is failing and
 * dropping, or the sink is closing), and `cb` runs on the loop whenever
 * more got written. */
bool sink_is_webhook(const Sink *s);
uint64_t sink_webhook_mark(const Sink *s);
bool sink_webhook_written_through(const Sink *s, uint64_t mark);
void sink_webhook_on_written(Sink *s, void (*cb)(void *userdata), void *userdata);
