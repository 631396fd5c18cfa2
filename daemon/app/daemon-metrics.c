/* daemon-metrics: the daemon's counters in the Prometheus text format, for
 * the `metrics` control command and GET /metrics on [http] listen.
 *
 * Every counter lives in the Daemon (or in the module it belongs to) and is
 * only touched on the loop thread; the endpoint answers on the loop thread
 * too, so rendering needs no lock. sessionwatchd(8), METRICS, lists
 * every family written here. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "control.h"
#include "config.h"
#include "daemon-private.h"
#include "state.h"
#include "event.h"
#include "metrics.h"
#include "process-metrics.h"
#include "sink-socket.h"
#include "sink-webhook.h"

/* Poll durations, in seconds: from a few milliseconds on a near API to the
 * request timeout. */
static const double poll_duration_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
_Static_assert(sizeof(poll_duration_bounds) / sizeof(poll_duration_bounds[0]) <= METRICS_HISTOGRAM_BOUNDS_MAX,
               "more poll duration bounds than a MetricsHistogram holds");

/* The poll outcomes as the metrics name them: the finer ApiOutcome values
 * fold into the HTTP classes they belong to, so dashboards see one stable
 * set (the control socket's `status` keeps the fine ones). */
static const char *const poll_outcome_names[] = {"ok",      "http_4xx", "http_5xx", "rate_limited",
                                                 "timeout", "network",  "decode",   "tls"};
enum { POLL_OUTCOMES = sizeof(poll_outcome_names) / sizeof(poll_outcome_names[0]) };

/* Index into poll_outcome_names, or -1 for polls not counted (cancelled at
 * shutdown: they never completed). */
static int poll_outcome_index(ApiOutcome o)
{
        switch (o) {
        case API_OK:
                return 0;
        case API_AUTH:
        case API_FORBIDDEN:
        case API_NOT_FOUND:
        case API_CLIENT:
                return 1;
        case API_SERVER:
                return 2;
        case API_RATE_LIMITED:
                return 3;
        case API_TIMEOUT:
                return 4;
        case API_NETWORK:
        case API_TOO_LARGE:
                return 5;
        case API_DECODE:
                return 6;
        case API_TLS:
                return 7;
        default:
                return -1;
        }
}

static uint64_t monotonic_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void daemon_count_sessions(Daemon *d, SessionCounts *ret)
{
        size_t n = sessions_capacity(d->table);

        *ret = (SessionCounts){};
        for (size_t k = 0; k < n; k++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)k);

                if (rec->flags & SESSION_REMOVED)
                        continue;
                ret->total++;
                if (rec->flags & SESSION_GONE)
                        ret->gone++;
                if (rec->flags & SESSION_SEEN)
                        ret->by_status[rec->status < _SESSION_STATUS_MAX ? rec->status
                                                                         : SESSION_STATUS_UNKNOWN]++;
                else
                        ret->unseen++;
        }
}

void daemon_metrics_observe_poll(Daemon *d, uint64_t start_usec, uint64_t done_usec)
{
        /* The bounds are set on first use: the Daemon starts zeroed, and this
         * keeps daemon_run() free of metrics set-up. */
        if (d->poll_duration.n_bounds == 0)
                (void)metrics_histogram_init(&d->poll_duration, poll_duration_bounds,
                                             sizeof(poll_duration_bounds) / sizeof(poll_duration_bounds[0]));
        metrics_histogram_observe(&d->poll_duration,
                                  done_usec > start_usec ? (double)(done_usec - start_usec) / 1e6 : 0);
}

/* Detection delay and schedule lag, in seconds: from well under the poll
 * interval to the audit interval and beyond. */
static const double delay_bounds[] = {0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 60, 120, 300, 600};
_Static_assert(sizeof(delay_bounds) / sizeof(delay_bounds[0]) <= METRICS_HISTOGRAM_BOUNDS_MAX,
               "more delay bounds than a MetricsHistogram holds");

static void init_delay_histograms(Daemon *d)
{
        if (d->detection_delay.n_bounds == 0)
                (void)metrics_histogram_init(&d->detection_delay, delay_bounds,
                                             sizeof(delay_bounds) / sizeof(delay_bounds[0]));
        if (d->schedule_lag.n_bounds == 0)
                (void)metrics_histogram_init(&d->schedule_lag, delay_bounds,
                                             sizeof(delay_bounds) / sizeof(delay_bounds[0]));
}

void daemon_metrics_count_transition(Daemon *d, SessionStatus status, int64_t updated_at_us)
{
        d->transitions_by_status[status < _SESSION_STATUS_MAX ? status : SESSION_STATUS_UNKNOWN]++;
        /* A first observation is not a change that was waited for: its
         * updatedAt may be days old. */
        if (updated_at_us > 0) {
                int64_t delay = daemon_realtime_usec() - updated_at_us;

                init_delay_histograms(d);
                metrics_histogram_observe(&d->detection_delay, delay > 0 ? (double)delay / 1e6 : 0);
        }
}

void daemon_metrics_observe_lag(Daemon *d, uint64_t late_ms)
{
        init_delay_histograms(d);
        metrics_histogram_observe(&d->schedule_lag, (double)late_ms / 1e3);
}

static void write_polls(Daemon *d, MetricsText *m)
{
        uint64_t polls[POLL_OUTCOMES] = {};

        for (int k = 0; k < _API_OUTCOME_MAX; k++) {
                int i = poll_outcome_index(k);

                if (i >= 0)
                        polls[i] += d->stats.polls[k];
        }
        metrics_text_family(m, "sessionwatch_polls_total", "counter",
                            "Session polls by outcome (HTTP 401, 403 and 404 count as http_4xx).");
        for (int i = 0; i < POLL_OUTCOMES; i++)
                metrics_text_labelled(m, "sessionwatch_polls_total", "outcome", poll_outcome_names[i],
                                      (double)polls[i]);

        if (d->poll_duration.n_bounds == 0)
                (void)metrics_histogram_init(&d->poll_duration, poll_duration_bounds,
                                             sizeof(poll_duration_bounds) / sizeof(poll_duration_bounds[0]));
        metrics_text_histogram(m, "sessionwatch_poll_duration_seconds",
                               "Session poll duration, from the start of the request to its completion.",
                               &d->poll_duration);

        metrics_text_single(
            m, "sessionwatch_stale_answers_total", "counter",
            "Poll answers older (by updatedAt) than what was known, with another status, to a "
            "request sent after the known change: the API's clock went backwards.",
            (double)d->clock_backwards);
        metrics_text_single(m, "sessionwatch_requests_in_flight", "gauge", "API requests in flight.",
                            (double)d->sched.in_flight);
        metrics_text_single(m, "sessionwatch_api_paused", "gauge",
                            "1 while every API request is held (after HTTP 429 or a rejected key).",
                            d->sched.paused_until_ms > uv_now(&d->loop) ? 1 : 0);
        metrics_text_family(m, "sessionwatch_api_rate_limit_pauses_total", "counter",
                            "HTTP 429 answers that started or extended the hold on every API request.");
        metrics_text_labelled(m, "sessionwatch_api_rate_limit_pauses_total", "request", "get",
                              (double)d->rate_limit_pauses);
        metrics_text_labelled(m, "sessionwatch_api_rate_limit_pauses_total", "request", "list",
                              (double)d->disc_counters.rate_limited);
}

static void write_sessions(Daemon *d, MetricsText *m)
{
        SessionCounts counts;

        daemon_count_sessions(d, &counts);
        metrics_text_family(m, "sessionwatch_sessions", "gauge",
                            "Watched sessions by current status (\"unseen\": not yet observed).");
        for (int k = 0; k < _SESSION_STATUS_MAX; k++)
                metrics_text_labelled(m, "sessionwatch_sessions", "status", session_status_to_string(k),
                                      (double)counts.by_status[k]);
        metrics_text_labelled(m, "sessionwatch_sessions", "status", "unseen", (double)counts.unseen);
        metrics_text_single(m, "sessionwatch_sessions_watched", "gauge", "Sessions in the table.",
                            (double)counts.total);
        metrics_text_single(m, "sessionwatch_sessions_gone", "gauge",
                            "Watched sessions the API no longer knows (HTTP 404).", (double)counts.gone);

        metrics_text_family(m, "sessionwatch_transitions_total", "counter",
                            "Status transitions by new status.");
        for (int k = 0; k < _SESSION_STATUS_MAX; k++)
                metrics_text_labelled(m, "sessionwatch_transitions_total", "status",
                                      session_status_to_string(k), (double)d->transitions_by_status[k]);
        metrics_text_single(m, "sessionwatch_events_total", "counter", "Events handed to the sinks.",
                            (double)d->stats.events);
        metrics_text_single(m, "sessionwatch_stalled_total", "counter",
                            "Stalled-session events (no change for [poll] stalled-after).",
                            (double)d->disc_counters.stalled);
}

static void write_coverage(Daemon *d, MetricsText *m)
{
        static const char *const purposes[_PURPOSE_MAX] = {"sweep", "poll", "audit", "confirm"};
        uint64_t now = uv_now(&d->loop);

        metrics_text_family(m, "sessionwatch_api_requests_total", "counter",
                            "API requests started, by purpose: sweep (a list page), poll (a session no "
                            "sweep covers, or its first answer), audit (the slow check of a covered "
                            "session), confirm (a second look after a 404).");
        for (int k = 0; k < _PURPOSE_MAX; k++)
                metrics_text_labelled(m, "sessionwatch_api_requests_total", "purpose", purposes[k],
                                      (double)d->requests_by_purpose[k]);
        size_t polled = scheduler_queued(&d->sched, SCHEDULER_POLL), total = sessions_count(d->table);

        metrics_text_family(m, "sessionwatch_sessions_by_coverage", "gauge",
                            "Watched sessions by how they are looked at: running and covered by a sweep, "
                            "polled one by one, or neither (finished, gone, in flight).");
        metrics_text_labelled(m, "sessionwatch_sessions_by_coverage", "coverage", "covered",
                              (double)d->n_covered);
        metrics_text_labelled(m, "sessionwatch_sessions_by_coverage", "coverage", "polled", (double)polled);
        metrics_text_labelled(m, "sessionwatch_sessions_by_coverage", "coverage", "other",
                              total > d->n_covered + polled ? (double)(total - d->n_covered - polled) : 0);
        metrics_text_single(m, "sessionwatch_sweep_scopes", "gauge",
                            "Discovery and coverage scopes being swept.", ({
                                    size_t n = 0;
                                    for (size_t k = 0; k < discovery_n_scopes(d->disc); k++)
                                            n += discovery_scopes(d->disc)[k].enabled;
                                    (double)n;
                            }));
        init_delay_histograms(d);
        metrics_text_histogram(m, "sessionwatch_detection_delay_seconds",
                               "From a session's updatedAt to its transition event being written.",
                               &d->detection_delay);
        metrics_text_histogram(m, "sessionwatch_schedule_lag_seconds",
                               "How late due work (a poll, an audit, a sweep page) started.", &d->schedule_lag);
        metrics_text_single(m, "sessionwatch_schedule_behind_seconds", "gauge",
                            "How late the most overdue work is now (0: on time).",
                            (double)scheduler_behind_ms(&d->sched, now, discovery_due_ms(d->disc)) / 1e3);
}

static void write_discovery(Daemon *d, MetricsText *m)
{
        const DiscoveryCounters *c = &d->disc_counters;

        write_coverage(d, m);
        metrics_text_single(m, "sessionwatch_discovery_list_splits_total", "counter",
                            "Full list pages of unknown order split into two windows.", (double)c->splits);

        metrics_text_single(m, "sessionwatch_discovery_sweeps_total", "counter",
                            "Complete session list sweeps.", (double)c->sweeps);
        metrics_text_single(m, "sessionwatch_discovery_pages_total", "counter",
                            "Session list pages taken in.", (double)c->pages);
        metrics_text_single(m, "sessionwatch_discovery_list_failures_total", "counter",
                            "Session list requests that failed (and were retried).",
                            (double)c->sweep_failures);
        metrics_text_single(m, "sessionwatch_discovery_sessions_discovered_total", "counter",
                            "Sessions added to the table by a list sweep.", (double)c->discovered);
        metrics_text_single(m, "sessionwatch_discovery_sessions_refused_total", "counter",
                            "New sessions refused because [poll] max-sessions was reached.",
                            (double)c->refused);
}

/* One gauge or counter family with a sample per webhook sink. */
typedef enum WebhookField {
        WEBHOOK_FIELD_DROPS,
        WEBHOOK_FIELD_QUEUE,
        WEBHOOK_FIELD_IN_FLIGHT,
        WEBHOOK_FIELD_OLDEST_AGE,
        WEBHOOK_FIELD_DISABLED,
        WEBHOOK_FIELD_DEGRADED,
} WebhookField;

static void write_webhook_family(Daemon *d, MetricsText *m, const char *name, const char *type,
                                 const char *help, WebhookField field)
{
        metrics_text_family(m, name, type, help);
        for (size_t k = 0; k < d->n_sinks; k++) {
                WebhookStats ws;
                double v = 0;

                if (!d->sinks[k] || !sink_is_webhook(d->sinks[k]))
                        continue;
                sink_webhook_stats(d->sinks[k], &ws);
                switch (field) {
                case WEBHOOK_FIELD_DROPS:
                        v = (double)ws.drops;
                        break;
                case WEBHOOK_FIELD_QUEUE:
                        v = (double)ws.queue_depth;
                        break;
                case WEBHOOK_FIELD_IN_FLIGHT:
                        v = (double)ws.in_flight;
                        break;
                case WEBHOOK_FIELD_OLDEST_AGE:
                        v = ws.oldest_age_ms > 0 ? (double)ws.oldest_age_ms / 1000.0 : 0;
                        break;
                case WEBHOOK_FIELD_DISABLED:
                        v = ws.disabled ? 1 : 0;
                        break;
                case WEBHOOK_FIELD_DEGRADED:
                        v = ws.outbox_degraded ? 1 : 0;
                        break;
                }
                metrics_text_labelled(m, name, "webhook", sink_webhook_name(d->sinks[k]), v);
        }
}

static void write_webhooks(Daemon *d, MetricsText *m)
{
        static const char name[] = "sessionwatch_webhook_deliveries_total";

        metrics_text_family(m, name, "counter",
                            "Webhook delivery attempts by outcome (\"expired\": events given up unsent).");
        for (size_t k = 0; k < d->n_sinks; k++) {
                const char *labels[4] = {"webhook", NULL, "outcome", "success"};
                WebhookStats ws;

                if (!d->sinks[k] || !sink_is_webhook(d->sinks[k]))
                        continue;
                sink_webhook_stats(d->sinks[k], &ws);
                labels[1] = sink_webhook_name(d->sinks[k]);
                metrics_text_sample(m, name, labels, 2, (double)ws.successes);
                for (int f = 0; f < _WEBHOOK_FAILURE_MAX; f++) {
                        labels[3] = webhook_failure_to_string(f);
                        metrics_text_sample(m, name, labels, 2, (double)ws.failures[f]);
                }
        }
        write_webhook_family(d, m, "sessionwatch_webhook_dropped_events_total", "counter",
                             "Events a webhook gave up on (HTTP 4xx, expired, refused by the outbox).",
                             WEBHOOK_FIELD_DROPS);
        write_webhook_family(d, m, "sessionwatch_webhook_queue_depth", "gauge",
                             "Events not delivered yet, in memory or only in the outbox file.",
                             WEBHOOK_FIELD_QUEUE);
        write_webhook_family(d, m, "sessionwatch_webhook_in_flight", "gauge", "Webhook requests in flight.",
                             WEBHOOK_FIELD_IN_FLIGHT);
        write_webhook_family(d, m, "sessionwatch_webhook_oldest_pending_age_seconds", "gauge",
                             "Age of the oldest undelivered event (0: none).", WEBHOOK_FIELD_OLDEST_AGE);
        write_webhook_family(d, m, "sessionwatch_webhook_disabled", "gauge",
                             "1 while the webhook is disabled by an HTTP 410.", WEBHOOK_FIELD_DISABLED);
        write_webhook_family(d, m, "sessionwatch_webhook_outbox_degraded", "gauge",
                             "1 while writing the webhook's outbox file fails.", WEBHOOK_FIELD_DEGRADED);
        daemon_orphans_metrics(d, m);
}

static void write_sockets(Daemon *d, MetricsText *m)
{
        SinkSocketStats ss = {};

        if (d->stream)
                sink_socket_stats(d->stream, &ss);
        metrics_text_single(m, "sessionwatch_stream_clients", "gauge", "Event stream clients connected.",
                            (double)ss.clients);
        metrics_text_single(m, "sessionwatch_stream_connections_total", "counter",
                            "Event stream connections accepted.", (double)ss.connections);
        metrics_text_single(m, "sessionwatch_stream_overflows_total", "counter",
                            "Event stream clients cut off for not reading.", (double)ss.overflows);
        metrics_text_single(m, "sessionwatch_stream_refused_total", "counter",
                            "Event stream connections closed at once past the client limit.",
                            (double)ss.refused);
        metrics_text_single(m, "sessionwatch_control_connections", "gauge", "Control socket connections.",
                            d->control ? (double)control_connections(d->control) : 0);
        daemon_http_metrics(d, m);
}

/* Only with a state folder: without one there is nothing to write. */
static void write_state(Daemon *d, MetricsText *m)
{
        StateHealth h;

        if (!d->state)
                return;
        state_health(d->state, &h);
        metrics_text_single(m, "sessionwatch_state_degraded", "gauge",
                            "1 while state file writes fail and the file lags behind memory.",
                            h.degraded ? 1 : 0);
        metrics_text_single(m, "sessionwatch_state_file_bytes", "gauge", "Size of the state file.",
                            (double)h.file_bytes);
        metrics_text_single(m, "sessionwatch_state_pending_bytes", "gauge",
                            "State records formatted but not yet handed to a write.",
                            (double)h.pending_bytes);
        metrics_text_single(m, "sessionwatch_state_records_written_total", "counter",
                            "Records appended to the state file (rewrites not counted).",
                            (double)h.records_appended);
        metrics_text_single(m, "sessionwatch_state_writes_total", "counter",
                            "State file disk jobs done (appends, syncs, compaction steps).",
                            (double)h.write_jobs);
        metrics_text_family(m, "sessionwatch_state_write_duration_seconds", "summary",
                            "Time the threadpool spent on state file disk jobs.");
        metrics_text_value(m, "sessionwatch_state_write_duration_seconds_sum",
                           (double)h.write_us_total / 1e6);
        metrics_text_value(m, "sessionwatch_state_write_duration_seconds_count", (double)h.write_jobs);
        metrics_text_single(m, "sessionwatch_state_write_errors_total", "counter",
                            "Failed state file writes.", (double)h.write_errors);
        metrics_text_single(m, "sessionwatch_state_compactions_total", "counter",
                            "Successful rewrites of the state file.", (double)h.compactions);
}

void daemon_metrics(Daemon *d, MetricsText *m)
{
        write_sessions(d, m);
        write_polls(d, m);
        write_discovery(d, m);
        write_webhooks(d, m);
        write_sockets(d, m);
        write_state(d, m);

        metrics_text_family(m, "sessionwatch_build_info", "gauge",
                            "The running version, as a label; always 1.");
        metrics_text_labelled(m, "sessionwatch_build_info", "version", SW_VERSION, 1);
        metrics_text_single(m, "sessionwatch_uptime_seconds", "gauge", "Seconds since the daemon started.",
                            (double)((monotonic_usec() - d->start_usec) / 1000000));
        /* A /proc file that cannot be read leaves its metrics out rather
         * than failing the whole answer. */
        (void)process_metrics_write(m);
}
