/* fanout: the daemon's sinks and the events handed to them, with the
 * latency from the answer that caused an event to its last sink. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "daemon-private.h"
#include "event.h"
#include "sink.h"

static void record_latency(Stats *st, uint64_t since_usec)
{
        uint64_t now = daemon_monotonic_usec(), us = now > since_usec ? now - since_usec : 0;
        unsigned k = 0;

        while (us > 0 && k < LATENCY_BUCKETS - 1) {
                us >>= 1;
                k++;
        }
        st->latency[k]++;
}

/* The upper bound (µs) of the bucket that holds quantile q of the latencies. */
static uint64_t latency_quantile(const Stats *st, double q)
{
        uint64_t total = 0, seen = 0;

        for (unsigned k = 0; k < LATENCY_BUCKETS; k++)
                total += st->latency[k];
        if (total == 0)
                return 0;
        for (unsigned k = 0; k < LATENCY_BUCKETS; k++) {
                seen += st->latency[k];
                if ((double)seen >= q * (double)total)
                        return k == 0 ? 1 : (uint64_t)1 << k;
        }
        return UINT64_MAX;
}

/* Hands one event to every sink. `response_done_usec` is when the response
 * that caused it completed (CLOCK_MONOTONIC), or 0 when no response did. */
void daemon_emit(Daemon *d, const Event *e, uint64_t response_done_usec)
{
        d->stats.events++;
        if (e->kind == EVENT_TRANSITION && e->status == SESSION_STATUS_FAILED) {
                uint64_t minute = uv_now(&d->loop) / 60000;
                unsigned m = (unsigned)(minute % 60);

                if (d->failed_minute_at[m] != minute) {
                        d->failed_minute_at[m] = minute;
                        d->failed_per_minute[m] = 0;
                }
                d->failed_per_minute[m]++;
        }
        for (size_t i = 0; i < d->n_sinks; i++)
                if (d->sinks[i])
                        sink_emit(d->sinks[i], e);
        daemon_web_emit(d, e);
        if (response_done_usec > 0)
                record_latency(&d->stats, response_done_usec);
}

int daemon_sinks_append(Daemon *d, Sink *s)
{
        Sink **sinks = realloc(d->sinks, (d->n_sinks + 1) * sizeof(Sink *));

        if (!sinks)
                return -ENOMEM;
        d->sinks = sinks;
        d->sinks[d->n_sinks++] = s;
        return 0;
}

Sink *daemon_sinks_detach(Daemon *d, size_t k)
{
        Sink *s = d->sinks[k];

        daemon_persist_forget_sink(d, s);
        memmove(&d->sinks[k], &d->sinks[k + 1], (d->n_sinks - k - 1) * sizeof(Sink *));
        d->n_sinks--;
        return s;
}

void daemon_log_stats(const Daemon *d)
{
        const Stats *s = &d->stats;
        uint64_t total = 0;

        for (int k = 0; k < _API_OUTCOME_MAX; k++)
                total += s->polls[k];
        log_info("Stopped after %" PRIu64 " polls (ok %" PRIu64 ", http_4xx %" PRIu64 ", http_5xx %" PRIu64
                 ", rate_limited %" PRIu64 ", timeout %" PRIu64 ", network %" PRIu64 ", tls %" PRIu64
                 ", decode %" PRIu64 ", not_found %" PRIu64 ", auth %" PRIu64 ", forbidden %" PRIu64
                 "), %" PRIu64 " transitions, %" PRIu64 " events, %" PRIu64
                 " quick decodes; event latency p50 <= %" PRIu64 " us, p99 <= %" PRIu64 " us.",
                 total, s->polls[API_OK], s->polls[API_CLIENT], s->polls[API_SERVER],
                 s->polls[API_RATE_LIMITED], s->polls[API_TIMEOUT],
                 s->polls[API_NETWORK] + s->polls[API_TOO_LARGE], s->polls[API_TLS], s->polls[API_DECODE],
                 s->polls[API_NOT_FOUND], s->polls[API_AUTH], s->polls[API_FORBIDDEN], s->transitions,
                 s->events, s->quick_decodes, latency_quantile(s, 0.50), latency_quantile(s, 0.99));
}
