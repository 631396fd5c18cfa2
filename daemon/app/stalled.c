/* stalled: a session quiet for too long gets one stalled event.
 *
 * Checked lazily when a poll answer or a list entry repeats what is known
 * (non-terminal sessions are polled every interval anyway), so a million
 * quiet sessions cost no timer each. The quiet time runs from the session's
 * updatedAt (the API's clock) to our CLOCK_REALTIME; the event is therefore
 * up to one poll interval late, and a clock skew shifts it. */
#include "config.h"
#include "daemon-private.h"
#include "event.h"

/* The quiet time after which a session in `status` is stalled, in ms; 0: never. */
static uint64_t stalled_limit_ms(const Daemon *d, SessionStatus status)
{
        const ConfigPoll *p = &d->config->poll;

        if (status == SESSION_STATUS_WAITING && p->stalled_after_waiting_ms > 0)
                return p->stalled_after_waiting_ms;
        return p->stalled_after_ms;
}

/* After an answer about session i was taken in: a change (a new status or a
 * newer updatedAt) clears the stalled mark; a session quiet for too long gets
 * its one stalled event. `before_us`: its updatedAt before the answer. */
void daemon_stalled_after_answer(Daemon *d, SessionIndex i, int64_t before_us)
{
        Session *rec = sessions_get(d->table, i);
        const char *id = sessions_id(d->table, i);
        int64_t quiet_us;
        uint64_t limit;
        Event e;
        int r;

        if (rec->updated_at_us != before_us) {
                /* sessions_observe() clears the mark on a transition (and
                 * the transition was persisted); a newer updatedAt with the
                 * same status is a change too. */
                if (rec->flags & SESSION_STALLED) {
                        rec->flags &= ~SESSION_STALLED;
                        daemon_persist(d, i);
                }
                return;
        }
        if (!(rec->flags & SESSION_SEEN) || (rec->flags & (SESSION_STALLED | SESSION_GONE)) ||
            session_status_is_terminal(rec->status))
                return;
        limit = stalled_limit_ms(d, rec->status);
        if (limit == 0)
                return;
        quiet_us = daemon_realtime_usec() - rec->updated_at_us;
        if (quiet_us < 0 || (uint64_t)quiet_us < limit * 1000)
                return;

        rec->flags |= SESSION_STALLED;
        r = event_init_stalled(&e, id, sessions_status_raw(d->table, i), rec->updated_at_us, quiet_us,
                               d->source);
        if (r < 0)
                log_error_errno(r, "Failed to make the stalled event for session '%s': %m", id);
        else {
                d->disc_counters.stalled++;
                daemon_emit(d, &e, 0);
        }
        daemon_persist(d, i);
}
