/* persist: the daemon's side of the state file. It loads the folder at
 * start (sessions, removals, discovery watermarks), feeds its compaction,
 * and writes each session's durable fields only once the webhook outboxes
 * hold the events that went before, so a crash in between repeats an event
 * (same id) rather than losing it. All of it on the loop thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon-private.h"
#include "sink-webhook.h"
#include "sink.h"
#include "state.h"

/* The most state writes held back for the webhook outboxes. */
#define PERSIST_HELD_MAX (1u << 20)

/* Writes a session's durable fields to the state file (asynchronously). */
static void persist_now(Daemon *d, SessionIndex i)
{
        const Session *rec = sessions_get(d->table, i);
        StateSession ss = {
            .id = sessions_id(d->table, i),
            .id_len = rec->id_len,
            .updated_at_us = rec->updated_at_us,
            .flags = ((rec->flags & SESSION_DYNAMIC) ? STATE_SESSION_DYNAMIC : 0) |
                     ((rec->flags & SESSION_GONE) ? STATE_SESSION_GONE : 0) |
                     ((rec->flags & SESSION_STALLED) ? STATE_SESSION_STALLED : 0),
        };
        int r;

        if (!d->state || (rec->flags & SESSION_REMOVED))
                return;
        if (rec->flags & SESSION_SEEN) {
                ss.status = sessions_status_raw(d->table, i);
                ss.status_len = strlen(ss.status);
        }
        r = state_put_session(d->state, &ss);
        if (r < 0)
                log_error_errno(r, "Failed to record the state of session '%s': %m", ss.id);
}

static int persist_queue_push(PersistQueue *q, SessionIndex i)
{
        if (q->n == q->cap) {
                size_t cap = q->cap ? q->cap * 2 : 64;
                SessionIndex *v = realloc(q->v, cap * sizeof(*v));

                if (!v)
                        return -ENOMEM;
                q->v = v;
                q->cap = cap;
        }
        q->v[q->n++] = i;
        return 0;
}

static int cmp_index(const void *a, const void *b)
{
        SessionIndex x = *(const SessionIndex *)a, y = *(const SessionIndex *)b;
        return x < y ? -1 : x > y;
}

/* Whether some webhook's outbox has events taken but not yet written. */
static bool outboxes_behind(Daemon *d)
{
        for (size_t k = 0; k < d->n_sinks; k++)
                if (sink_is_webhook(d->sinks[k]) &&
                    !sink_webhook_written_through(d->sinks[k], sink_webhook_mark(d->sinks[k])))
                        return true;
        return false;
}

/* Starts waiting for every outbox to be written up to where it is now; the
 * sessions queued so far are held until then. */
static void persist_arm(Daemon *d)
{
        PersistQueue t = d->persist.wait;

        d->persist.wait = d->persist.next;
        d->persist.next = (PersistQueue){.v = t.v, .cap = t.cap};
        d->persist.n_marks = 0;
        for (size_t k = 0; k < d->n_sinks; k++)
                if (sink_is_webhook(d->sinks[k]))
                        d->persist.marks[d->persist.n_marks++] =
                            (PersistMark){d->sinks[k], sink_webhook_mark(d->sinks[k])};
        d->persist.armed = true;
        d->persist.armed_gen++;
}

static void put_watermark(Daemon *d, const char *key, int64_t newest_us)
{
        int r = state_put_watermark(d->state, key, strlen(key), newest_us);

        if (r < 0)
                log_error_errno(r, "Failed to record the discovery watermark of '%s': %m", key);
}

/* Writes the held watermarks whose batch was written (all of them with
 * `all`). */
static void release_watermarks(Daemon *d, bool all)
{
        size_t kept = 0;

        for (size_t k = 0; k < d->persist.n_held_wm; k++) {
                HeldWatermark *h = &d->persist.held_wm[k];

                if (all || h->gen <= d->persist.released_gen)
                        put_watermark(d, h->key, h->newest_us);
                else
                        d->persist.held_wm[kept++] = *h;
        }
        d->persist.n_held_wm = kept;
}

/* Records a discovery watermark, after the state of every session found
 * before it: a kill in between must not leave a watermark that skips
 * sessions whose state (and events, for the webhooks) never became
 * durable. */
void daemon_persist_watermark(Daemon *d, const char *key, int64_t newest_us)
{
        uint64_t gen;

        if (!d->state)
                return;
        if (!d->persist.armed) {
                put_watermark(d, key, newest_us);
                return;
        }
        /* Sessions queued in `next` belong to the batch armed after this one. */
        gen = d->persist.armed_gen + (d->persist.next.n > 0 ? 1 : 0);
        for (size_t k = 0; k < d->persist.n_held_wm; k++)
                if (strcmp(d->persist.held_wm[k].key, key) == 0) {
                        d->persist.held_wm[k].newest_us = newest_us;
                        d->persist.held_wm[k].gen = gen;
                        return;
                }
        if (strlen(key) >= sizeof(d->persist.held_wm[0].key)) {
                put_watermark(d, key, newest_us);
                return;
        }
        if (d->persist.n_held_wm == d->persist.cap_held_wm) {
                size_t cap = d->persist.cap_held_wm ? d->persist.cap_held_wm * 2 : 8;
                HeldWatermark *v = realloc(d->persist.held_wm, cap * sizeof(*v));

                if (!v) {
                        /* Without memory, the order gives way. */
                        put_watermark(d, key, newest_us);
                        return;
                }
                d->persist.held_wm = v;
                d->persist.cap_held_wm = cap;
        }
        d->persist.held_wm[d->persist.n_held_wm] = (HeldWatermark){.newest_us = newest_us, .gen = gen};
        snprintf(d->persist.held_wm[d->persist.n_held_wm].key, sizeof(d->persist.held_wm[0].key), "%s", key);
        d->persist.n_held_wm++;
}

/* Writes the held sessions whose events are all in the outboxes now. A
 * session held again since (it changed once more) is left to that later
 * write: its current fields may belong to an event not yet written. With
 * `all`, everything held is written (at a stop, or when a webhook goes). */
void daemon_persist_release(Daemon *d, bool all)
{
        for (;;) {
                if (!d->persist.armed)
                        return;
                if (!all)
                        for (size_t k = 0; k < d->persist.n_marks; k++)
                                if (!sink_webhook_written_through(d->persist.marks[k].sink,
                                                                  d->persist.marks[k].mark))
                                        return;
                if (all) {
                        for (size_t k = 0; k < d->persist.wait.n; k++)
                                persist_now(d, d->persist.wait.v[k]);
                        for (size_t k = 0; k < d->persist.next.n; k++)
                                persist_now(d, d->persist.next.v[k]);
                        d->persist.wait.n = d->persist.next.n = 0;
                        d->persist.armed = false;
                        release_watermarks(d, true);
                        return;
                }
                /* qsort() and bsearch() take no NULL array, not even an empty one. */
                if (d->persist.next.n > 0)
                        qsort(d->persist.next.v, d->persist.next.n, sizeof(SessionIndex), cmp_index);
                for (size_t k = 0; k < d->persist.wait.n; k++) {
                        SessionIndex i = d->persist.wait.v[k];

                        if (d->persist.next.n == 0 || !bsearch(&i, d->persist.next.v, d->persist.next.n,
                                                               sizeof(SessionIndex), cmp_index))
                                persist_now(d, i);
                }
                d->persist.wait.n = 0;
                d->persist.armed = false;
                d->persist.released_gen = d->persist.armed_gen;
                release_watermarks(d, false);
                if (d->persist.next.n > 0)
                        persist_arm(d);
        }
}

/* A webhook outbox wrote more records, on the loop thread. */
void daemon_persist_on_outbox_written(void *userdata)
{
        daemon_persist_release(userdata, false);
}

/* Makes a session's durable fields durable, after its events went out, so a
 * crash in between repeats an event (with the same id) rather than losing
 * it. The journal and stdout have the event when daemon_emit() returns; a webhook
 * has it once its outbox record is written (a threadpool job), so while an
 * outbox is behind, the state write waits for it. */
void daemon_persist(Daemon *d, SessionIndex i)
{
        if (!d->state)
                return;
        /* A webhook that went away or whose outbox fails releases what it
         * held without a write to announce it: look before queueing. */
        if (d->persist.armed)
                daemon_persist_release(d, false);
        /* An outbox write that hangs (a stuck disk) must not make this queue
         * grow without bound: past it, ordering gives way to writing. */
        if (d->persist.next.n >= PERSIST_HELD_MAX)
                daemon_persist_release(d, true);
        if (!d->persist.armed && !outboxes_behind(d)) {
                persist_now(d, i);
                return;
        }
        /* While nothing is held, `next` is empty; arming moves it to `wait`. */
        if (persist_queue_push(&d->persist.next, i) < 0) {
                /* Out of memory: better an event repeated for a webhook
                 * after a crash than a state not written at all. */
                persist_now(d, i);
                return;
        }
        if (!d->persist.armed)
                persist_arm(d);
}

/* state_open() callback, before the loop runs: one stored session. */
static int on_state_session(void *userdata, const StateSession *ss)
{
        Daemon *d = userdata;
        SessionIndex i = sessions_find(d->table, ss->id, ss->id_len);
        Session *rec;
        int r;

        if (i == SESSION_INDEX_NONE) {
                /* Watched no more: neither in the config nor added at run time. */
                if (!(ss->flags & STATE_SESSION_DYNAMIC)) {
                        d->state_dropped++;
                        return 0;
                }
                r = sessions_add(d->table, ss->id, ss->id_len, SESSION_DYNAMIC, &i);
                if (r == -ENOSPC) {
                        d->state_dropped++;
                        return 0;
                }
                if (r < 0)
                        return r;
        }
        rec = sessions_get(d->table, i);
        if (ss->flags & STATE_SESSION_DYNAMIC)
                rec->flags |= SESSION_DYNAMIC;
        if (ss->status) {
                r = sessions_restore(d->table, i, ss->status, ss->status_len, ss->updated_at_us);
                if (r < 0)
                        return r;
        }
        if (ss->flags & STATE_SESSION_GONE)
                rec->flags |= SESSION_GONE;
        else
                rec->flags &= ~SESSION_GONE;
        if (ss->flags & STATE_SESSION_STALLED)
                rec->flags |= SESSION_STALLED;
        else
                rec->flags &= ~SESSION_STALLED;
        return 0;
}

/* state_open() callback, before the loop runs: a session was unwatched. */
static int on_state_removed(void *userdata, const char *id, size_t len)
{
        Daemon *d = userdata;
        SessionIndex i = sessions_find(d->table, id, len);

        if (i == SESSION_INDEX_NONE)
                return 0;
        if (sessions_get(d->table, i)->flags & SESSION_CONFIGURED) {
                /* Listed in the config again since: it stays, but what was
                 * known about it went with the removal. */
                sessions_get(d->table, i)->flags &=
                    ~(SESSION_DYNAMIC | SESSION_SEEN | SESSION_REPLAY | SESSION_GONE);
                return 0;
        }
        runbooks_forget(&d->runbooks, i);
        daemon_web_forget(d, i);
        sessions_remove(d->table, i);
        return 0;
}

/* The state module's compaction iterator, on the loop thread. */
static int on_state_next(void *userdata, size_t *cursor, StateSession *ret)
{
        Daemon *d = userdata;
        size_t n = sessions_capacity(d->table);

        for (; *cursor < n; (*cursor)++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)*cursor);

                if (rec->flags & SESSION_REMOVED)
                        continue;
                /* A configured session never observed has nothing to keep. */
                if (!(rec->flags & (SESSION_SEEN | SESSION_DYNAMIC)))
                        continue;
                *ret = (StateSession){
                    .id = sessions_id(d->table, (SessionIndex)*cursor),
                    .id_len = rec->id_len,
                    .updated_at_us = (rec->flags & SESSION_SEEN) ? rec->updated_at_us : 0,
                    .flags = ((rec->flags & SESSION_DYNAMIC) ? STATE_SESSION_DYNAMIC : 0) |
                             ((rec->flags & SESSION_GONE) ? STATE_SESSION_GONE : 0) |
                             ((rec->flags & SESSION_STALLED) ? STATE_SESSION_STALLED : 0),
                };
                if (rec->flags & SESSION_SEEN) {
                        ret->status = sessions_status_raw(d->table, (SessionIndex)*cursor);
                        ret->status_len = strlen(ret->status);
                }
                (*cursor)++;
                return 1;
        }
        return 0;
}

/* state_open() callback, before the loop runs: a stored watermark. */
static int on_state_watermark(void *userdata, const char *key, size_t len, int64_t newest_us)
{
        Daemon *d = userdata;

        return d->disc ? discovery_restore(d->disc, key, len, newest_us) : 0;
}

static const StateCallbacks state_callbacks = {
    .session = on_state_session,
    .removed = on_state_removed,
    .next = on_state_next,
    .watermark = on_state_watermark,
};

int daemon_setup_state(Daemon *d)
{
        StateOptions so = {.path = d->config->state.path};
        StateLoadReport report = {};
        int r;

        if (!so.path) {
                log_notice(
                    "No [state] path and no $STATE_DIRECTORY: session state is not kept across restarts.");
                return 0;
        }
        r = state_open(&d->loop, &so, &state_callbacks, d, &d->state, &report);
        if (r < 0)
                return log_error_errno(r, "Failed to load the state in '%s': %m", so.path);
        if (report.corrupt)
                log_error("The state file in '%s' was unreadable (%s); it was moved to '%s' and the daemon "
                          "starts with empty state.",
                          so.path, report.corrupt_reason ? report.corrupt_reason : "corrupt",
                          report.corrupt_path ? report.corrupt_path : "(not yet moved)");
        if (report.torn_bytes > 0)
                log_notice("Dropped a torn last record (%" PRIu64 " bytes) from the state file in '%s'.",
                           report.torn_bytes, so.path);
        log_info("Loaded %" PRIu64 " state record(s) from '%s' in %" PRIu64 " ms%s.", report.records,
                 so.path, report.duration_us / 1000,
                 report.degraded ? " (the folder cannot be written now)" : "");
        if (d->state_dropped > 0) {
                log_info("Forgetting %zu stored session(s) that are no longer watched.", d->state_dropped);
                (void)state_compact(d->state);
        }
        return 0;
}

int daemon_persist_reserve(Daemon *d, size_t n_webhooks)
{
        PersistMark *marks = realloc(d->persist.marks, (n_webhooks + 1) * sizeof(PersistMark));

        if (!marks)
                return -ENOMEM;
        d->persist.marks = marks;
        return 0;
}

void daemon_persist_forget_sink(Daemon *d, const Sink *s)
{
        for (size_t j = 0; j < d->persist.n_marks;)
                if (d->persist.marks[j].sink == s)
                        d->persist.marks[j] = d->persist.marks[--d->persist.n_marks];
                else
                        j++;
}

/* State writes still held wait for outbox writes that may not be done
 * before the process ends: they are left out, so the next start emits those
 * events again (same ids) rather than losing them for a webhook. */
void daemon_persist_stop(Daemon *d)
{
        daemon_persist_release(d, false);
        d->persist.wait.n = d->persist.next.n = 0;
        d->persist.armed = false;
        d->persist.n_held_wm = 0; /* the next start sweeps from the older watermark */
}

void daemon_persist_done(Daemon *d)
{
        free(d->persist.wait.v);
        free(d->persist.next.v);
        free(d->persist.marks);
        free(d->persist.held_wm);
}
