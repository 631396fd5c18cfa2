/* service-status: the STATUS= line told to the service manager at every
 * refresh: what is watched, what failed lately, how the webhooks and the
 * state file are, and how far behind the schedule runs. */
#include <inttypes.h>
#include <stdio.h>
#include <uv.h>

#include "daemon-private.h"
#include "sink-webhook.h"
#include "state.h"

/* Sessions counted per STATUS= refresh: a table of a million is counted
 * over about 16 refreshes (seconds) at well under a millisecond each. */
#define STATUS_SCAN_SLICE 65536

void daemon_service_status(void *userdata, char *buf, size_t size)
{
        Daemon *d = userdata;
        size_t n = sessions_capacity(d->table), watched, active, waiting, done;
        uint64_t minute = uv_now(&d->loop) / 60000, failed = 0;
        const char *webhook_problem = NULL, *problem_name = NULL;
        size_t len, end;

        /* The first pass is made whole, so READY=1 comes with true counts. */
        end = d->status_scan.complete ? d->status_scan.cursor + STATUS_SCAN_SLICE : n;
        for (; d->status_scan.cursor < n && d->status_scan.cursor < end; d->status_scan.cursor++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)d->status_scan.cursor);

                if (rec->flags & SESSION_REMOVED)
                        continue;
                d->status_scan.watched++;
                if (!(rec->flags & SESSION_SEEN))
                        continue;
                if (session_status_is_terminal(rec->status) || (rec->flags & SESSION_GONE))
                        d->status_scan.done++;
                else if (rec->status == SESSION_STATUS_WAITING)
                        d->status_scan.waiting++;
                else
                        d->status_scan.active++;
        }
        if (d->status_scan.cursor >= n) {
                d->status_scan.shown[0] = d->status_scan.watched;
                d->status_scan.shown[1] = d->status_scan.active;
                d->status_scan.shown[2] = d->status_scan.waiting;
                d->status_scan.shown[3] = d->status_scan.done;
                d->status_scan.complete = true;
                d->status_scan.cursor = d->status_scan.watched = d->status_scan.active = 0;
                d->status_scan.waiting = d->status_scan.done = 0;
        }
        watched = d->status_scan.shown[0];
        active = d->status_scan.shown[1];
        waiting = d->status_scan.shown[2];
        done = d->status_scan.shown[3];
        for (unsigned m = 0; m < 60; m++)
                if (d->failed_minute_at[m] + 60 > minute)
                        failed += d->failed_per_minute[m];
        for (size_t k = 0; k < d->n_sinks && !webhook_problem; k++) {
                WebhookStats ws;

                if (!sink_is_webhook(d->sinks[k]))
                        continue;
                sink_webhook_stats(d->sinks[k], &ws);
                problem_name = sink_webhook_name(d->sinks[k]);
                if (ws.disabled)
                        webhook_problem = "disabled";
                else if (ws.outbox_degraded)
                        webhook_problem = "outbox failing";
                else if (ws.oldest_age_ms > 60000)
                        webhook_problem = "behind";
        }

        len = (size_t)snprintf(buf, size,
                               "%zu watched: %zu active, %zu waiting, %zu done; %" PRIu64
                               " failed in the last hour; ",
                               watched, active, waiting, done, failed);
        if (len < size) {
                if (webhook_problem)
                        len += (size_t)snprintf(buf + len, size - len, "webhook '%s' %s; ", problem_name,
                                                webhook_problem);
                else
                        len += (size_t)snprintf(buf + len, size - len, "webhooks ok; ");
        }
        if (len < size) {
                StateHealth h = {};

                if (d->state)
                        state_health(d->state, &h);
                len += (size_t)snprintf(buf + len, size - len, "state %s",
                                        !d->state    ? "off"
                                        : h.degraded ? "degraded"
                                                     : "ok");
        }
        if (len < size) {
                /* Only when it matters: work starting late means the budget
                 * does not carry the load (freshness degrades evenly). */
                uint64_t behind =
                    scheduler_behind_ms(&d->sched, uv_now(&d->loop), discovery_due_ms(d->disc));

                if (behind >= 1000)
                        snprintf(buf + len, size - len, "; %" PRIu64 " s behind", behind / 1000);
        }
}
