/* poll: the poll cycle. One timer wakes daemon_dispatch() when the scheduler has
 * work due; each poll takes a slot that its completion finds its session
 * by, and what the answer means is poll-answer.c's. */
#include <errno.h>
#include <stdlib.h>
#include <uv.h>

#include "config.h"
#include "daemon-private.h"

static void on_tick_timer(uv_timer_t *t);

static PollSlot *slot_take(Daemon *d)
{
        PollSlot *s;

        if (d->free_slot == UINT32_MAX)
                return NULL;
        s = &d->slots[d->free_slot];
        d->free_slot = s->next_free;
        s->busy = true;
        s->cancelled = false;
        return s;
}

static void slot_release(Daemon *d, PollSlot *s)
{
        s->busy = false;
        s->next_free = d->free_slot;
        d->free_slot = (uint32_t)(s - d->slots);
}

void daemon_schedule_after(Daemon *d, SessionIndex i, uint64_t delay_ms)
{
        int r = scheduler_schedule(&d->sched, i, uv_now(&d->loop) + delay_ms);
        if (r < 0)
                log_error_errno(r, "Failed to schedule session '%s': %m", sessions_id(d->table, i));
}

/* After a request completed: the next ones, or the end of a stop. */
static void after_request(Daemon *d)
{
        if (!d->stopping)
                daemon_dispatch(d);
        else if (d->sched.in_flight == 0)
                daemon_finish(d);
}

/* httpmux completion, on the loop thread, once per poll. */
static void on_poll_done(void *userdata, const HttpResponse *resp)
{
        PollSlot *slot = userdata;
        Daemon *d = slot->daemon;
        SessionIndex i = slot->session;
        Session *rec;
        ApiOutcome o = api_classify(resp);
        /* The wall clock when the request went out, for the answer. */
        int64_t sent_us = daemon_realtime_usec() - (int64_t)(daemon_monotonic_usec() - slot->start_usec);
        bool stale_key;

        if (o != API_CANCELLED)
                daemon_metrics_observe_poll(d, slot->start_usec, resp->done_usec);
        if (slot->cancelled) {
                /* Unwatched while in flight: the record may be reused already. */
                slot_release(d, slot);
                scheduler_complete(&d->sched);
                after_request(d);
                return;
        }
        rec = sessions_get(d->table, i);
        stale_key = api_answer_stale(&d->api);
        slot_release(d, slot);
        scheduler_complete(&d->sched);
        rec->flags &= ~SESSION_IN_FLIGHT;
        daemon_poll_answer(d, i, o, resp, sent_us, stale_key);
        after_request(d);
}

/* Starts every request that is due and allowed now (polls, audits and sweep
 * pages, in the scheduler's order), then arms the one timer for the next
 * moment something may be. */
void daemon_dispatch(Daemon *d)
{
        uint64_t now = uv_now(&d->loop), wake;
        SessionIndex i;

        if (d->stopping)
                return;

        for (;;) {
                SchedulerHeap heap = SCHEDULER_POLL;
                uint64_t late;
                PollSlot *slot;
                Session *rec;
                int r;

                i = scheduler_next_work(&d->sched, now, discovery_due_ms(d->disc), &heap, &late, &wake);
                if (i == SESSION_INDEX_NONE)
                        break;
                daemon_metrics_observe_lag(d, late);
                if (i == SCHEDULER_SWEEP) {
                        r = discovery_start_due(d->disc, now);
                        if (r < 0) /* logged; the scope tries again later */
                                scheduler_complete(&d->sched);
                        else
                                d->requests_by_purpose[PURPOSE_SWEEP]++;
                        continue;
                }
                rec = sessions_get(d->table, i);
                if (heap == SCHEDULER_POLL && (rec->coverage & SESSION_COV_COVERED) &&
                    !(rec->coverage & SESSION_COV_SUSPECT) && (rec->flags & SESSION_SEEN)) {
                        /* Covered since it was planned: its sweeps poll it
                         * now, this is only its audit. */
                        scheduler_cancel(&d->sched);
                        coverage_reschedule(d, i);
                        continue;
                }
                slot = slot_take(d);
                if (!slot) { /* cannot happen: slots match max_in_flight */
                        scheduler_complete(&d->sched);
                        daemon_schedule_after(d, i, 1);
                        wake = now + 1;
                        break;
                }
                slot->daemon = d;
                slot->session = i;
                slot->start_usec = daemon_monotonic_usec();
                slot->purpose = (rec->coverage & SESSION_COV_SUSPECT) ? PURPOSE_CONFIRM
                                : heap == SCHEDULER_AUDIT             ? PURPOSE_AUDIT
                                                                      : PURPOSE_POLL;
                r = api_get_session(&d->api, sessions_id(d->table, i), on_poll_done, slot);
                if (r < 0) {
                        slot_release(d, slot);
                        scheduler_complete(&d->sched);
                        if (rec->failures < UINT8_MAX)
                                rec->failures++;
                        log_ratelimited_errno(&d->poll_errors_rl, now, LOG_ERR, r,
                                              "Failed to start a poll of session '%s': %m",
                                              sessions_id(d->table, i));
                        daemon_schedule_after(d, i,
                                              scheduler_backoff(&d->sched, rec->status, rec->failures));
                        continue;
                }
                d->requests_by_purpose[slot->purpose]++;
                rec->flags |= SESSION_IN_FLIGHT;
        }

        if (wake == UINT64_MAX)
                uv_timer_stop(&d->tick);
        else
                (void)uv_timer_start(&d->tick, on_tick_timer, wake > now ? wake - now : 0, 0);
}

/* The poll timer fired, on the loop thread. */
static void on_tick_timer(uv_timer_t *t)
{
        daemon_dispatch(t->data);
}

void daemon_request_done(Daemon *d)
{
        scheduler_complete(&d->sched);
        after_request(d);
}

void daemon_poll_cancel(Daemon *d, SessionIndex i)
{
        for (unsigned k = 0; k < CONFIG_MAX_CONNECTIONS_MAX; k++)
                if (d->slots[k].busy && d->slots[k].session == i)
                        d->slots[k].cancelled = true;
}

/* One slot per poll in flight for the most [api] max-connections allows, so
 * a reload can raise it: requests in flight point into the array. */
int daemon_poll_init(Daemon *d)
{
        d->slots = calloc(CONFIG_MAX_CONNECTIONS_MAX, sizeof(PollSlot));
        if (!d->slots)
                return -ENOMEM;
        d->free_slot = UINT32_MAX;
        for (uint32_t k = CONFIG_MAX_CONNECTIONS_MAX; k-- > 0;) {
                d->slots[k].next_free = d->free_slot;
                d->free_slot = k;
        }
        return 0;
}
