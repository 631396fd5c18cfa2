/* watchlist: which sessions are watched. The config's list fills the table
 * at start, and every session that still needs polling gets its first
 * request; sessions leave by unwatch (control socket, reload) or retire.
 *
 * Retire: after a complete sweep (at most once per discover interval) one
 * pass over the table drops the terminal or gone run-time sessions whose
 * updatedAt is older than `[poll] retain` and at or below every scope's
 * watermark minus the overlap window; state.h says why that needs no
 * tombstone structure of its own. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "daemon-private.h"
#include "state.h"

int daemon_setup_sessions(Daemon *d)
{
        Config *c = d->config;
        uint64_t now = uv_now(&d->loop);
        size_t id_bytes = 0, n = c->watch.n_sessions;
        int r;

        r = sessions_new(c->poll.max_sessions, &d->table);
        if (r < 0)
                return r;
        SchedulerOptions so = {
            .interval_ms = c->poll.interval_ms,
            .waiting_interval_ms = c->poll.waiting_interval_ms,
            .jitter_percent = c->poll.jitter_percent,
            .backoff_max_ms = c->poll.backoff_max_ms,
            .rate_per_sec = c->api.rate_per_sec,
            .max_in_flight = c->api.max_connections,
            .seed = (uint64_t)getpid() ^ (uint64_t)time(NULL),
        };
        r = scheduler_init(&d->sched, d->table, &so, now);
        if (r < 0)
                return r;

        if (n > c->poll.max_sessions)
                n = c->poll.max_sessions;
        for (size_t k = 0; k < n; k++)
                id_bytes += strlen(c->watch.sessions[k]);
        if ((r = sessions_reserve(d->table, n, id_bytes)) < 0 || (r = scheduler_reserve(&d->sched, n)) < 0)
                return r;

        for (size_t k = 0; k < c->watch.n_sessions; k++) {
                const char *id = c->watch.sessions[k];
                SessionIndex i;

                r = sessions_add(d->table, id, strlen(id), SESSION_CONFIGURED, &i);
                if (r == -EEXIST)
                        continue;
                if (r == -ENOSPC) {
                        log_error("More sessions than [poll] max-sessions=%zu; ignoring '%s' and the rest.",
                                  c->poll.max_sessions, id);
                        break;
                }
                if (r < 0)
                        return r;
        }

        /* The table holds the ids now; the config's copies would double the
         * memory of a long watch list. */
        config_release_sessions(c);
        return 0;
}

/* Plans the first poll of every session that still needs polling: terminal
 * and gone ones (restored from state) are done. */
int daemon_schedule_all(Daemon *d)
{
        uint64_t now = uv_now(&d->loop);
        size_t n = sessions_capacity(d->table);
        int r;

        for (size_t k = 0; k < n; k++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)k);

                if (rec->flags & (SESSION_REMOVED | SESSION_GONE))
                        continue;
                if ((rec->flags & SESSION_SEEN) && session_status_is_terminal(rec->status))
                        continue;
                coverage_update(d, (SessionIndex)k);
                /* Spread the first polls over one interval so a long watch
                 * list does not arrive at the API in one burst; covered
                 * sessions get their first audit over the audit interval. */
                if (rec->coverage & SESSION_COV_COVERED)
                        r = scheduler_schedule_audit(
                            &d->sched, (SessionIndex)k,
                            now + scheduler_spread(&d->sched, d->config->poll.audit_interval_ms));
                else
                        r = scheduler_schedule(&d->sched, (SessionIndex)k,
                                               now +
                                                   scheduler_spread(&d->sched, d->config->poll.interval_ms));
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Stops watching session i at once: out of the scheduler, the table and
 * (durably) the state. A poll in flight for it is answered into the void. */
void daemon_unwatch_session(Daemon *d, SessionIndex i)
{
        const char *id = sessions_id(d->table, i);
        Session *rec = sessions_get(d->table, i);

        if (rec->flags & SESSION_IN_FLIGHT)
                daemon_poll_cancel(d, i);
        if (d->state) {
                int r = state_remove_session(d->state, id, rec->id_len);
                if (r < 0)
                        log_error_errno(r, "Failed to record that session '%s' is unwatched: %m", id);
        }
        scheduler_unschedule(&d->sched, i);
        coverage_forget(d, i);
        runbooks_forget(&d->runbooks, i);
        daemon_web_forget(d, i);
        sessions_remove(d->table, i);
}

/* Drops terminal and gone run-time sessions that no sweep can return any
 * more and whose retain time has passed (see the top of this file). */
void daemon_retire_sessions(Daemon *d)
{
        int64_t floor = discovery_floor(discovery_scopes(d->disc), discovery_n_scopes(d->disc),
                                        (int64_t)d->config->watch.list_overlap_ms * 1000);
        int64_t horizon = daemon_realtime_usec() - (int64_t)(d->config->poll.retain_ms * 1000);
        size_t n = sessions_capacity(d->table), retired = 0;

        if (floor == INT64_MIN)
                return;
        for (size_t k = 0; k < n; k++) {
                SessionIndex i = (SessionIndex)k;
                const Session *rec = sessions_get(d->table, i);

                if ((rec->flags & (SESSION_REMOVED | SESSION_CONFIGURED | SESSION_IN_FLIGHT)) ||
                    !(rec->flags & SESSION_DYNAMIC) || !(rec->flags & SESSION_SEEN))
                        continue;
                if (!(rec->flags & SESSION_GONE) && !session_status_is_terminal(rec->status))
                        continue;
                if (rec->updated_at_us > floor || rec->updated_at_us > horizon)
                        continue;
                scheduler_unschedule(&d->sched, i);
                if (d->state) {
                        int r = state_remove_session(d->state, sessions_id(d->table, i), rec->id_len);
                        if (r < 0) {
                                log_error_errno(r, "Failed to record that session '%s' left memory: %m",
                                                sessions_id(d->table, i));
                                continue;
                        }
                }
                coverage_forget(d, i);
                runbooks_forget(&d->runbooks, i);
                daemon_web_forget(d, i);
                sessions_remove(d->table, i);
                retired++;
        }
        if (retired > 0)
                log_debug("%zu finished session(s) left memory ([poll] retain).", retired);
}
