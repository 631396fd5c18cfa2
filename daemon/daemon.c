#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <json-c/json.h>

#include "api.h"
#include "config.h"
#include "daemon.h"
#include "daemon-private.h"
#include "decode.h"
#include "discovery.h"
#include "event.h"
#include "httpmux.h"
#include "listenfds.h"
#include "log.h"
#include "notify.h"
#include "scheduler.h"
#include "sessions.h"
#include "sink-webhook.h"
#include "state.h"
#include "control-proto.h"
#include "control.h"
#include "metrics.h"
#include "sink-socket.h"

/* How long a stop waits for requests in flight before cancelling them. */
#define STOP_GRACE_MS 2000
/* The first hold-off after the API rejects the key, doubled while it goes on. */
#define AUTH_PAUSE_MIN_MS 30000
#define AUTH_PAUSE_MAX_MS 600000
/* A 429 without a usable Retry-After holds requests this long. */
#define RATE_LIMIT_DEFAULT_MS 5000
/* The longest hold a Retry-After may impose: a bad value must not silence
 * the daemon for days. */
#define RATE_LIMIT_MAX_MS 3600000
/* The longest status string taken in: what the state file can store, so that
 * every transition can be made durable (and a server cannot make the daemon
 * intern megabytes of "statuses"). */
#define STATUS_MAX STATE_STATUS_MAX


static void dispatch(Daemon *d);
static void on_reload_signal(uv_signal_t *h, int signum);
static void on_tick_timer(uv_timer_t *t);
static void stalled_after_answer(Daemon *d, SessionIndex i, int64_t before_us);
static int64_t realtime_usec(void);
static void retire_sessions(Daemon *d);

static uint64_t now_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void record_latency(Stats *st, uint64_t since_usec)
{
        uint64_t now = now_usec(), us = now > since_usec ? now - since_usec : 0;
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
static void emit(Daemon *d, const Event *e, uint64_t response_done_usec)
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

static void schedule_after(Daemon *d, SessionIndex i, uint64_t delay_ms)
{
        int r = scheduler_schedule(&d->sched, i, uv_now(&d->loop) + delay_ms);
        if (r < 0)
                log_error_errno(r, "Failed to schedule session '%s': %m", sessions_id(d->table, i));
}

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
        PersistQueue t = d->persist_wait;

        d->persist_wait = d->persist_next;
        d->persist_next = (PersistQueue){.v = t.v, .cap = t.cap};
        d->n_persist_marks = 0;
        for (size_t k = 0; k < d->n_sinks; k++)
                if (sink_is_webhook(d->sinks[k]))
                        d->persist_marks[d->n_persist_marks++] =
                            (PersistMark){d->sinks[k], sink_webhook_mark(d->sinks[k])};
        d->persist_armed = true;
        d->persist_armed_gen++;
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

        for (size_t k = 0; k < d->n_held_wm; k++) {
                HeldWatermark *h = &d->held_wm[k];

                if (all || h->gen <= d->persist_released_gen)
                        put_watermark(d, h->key, h->newest_us);
                else
                        d->held_wm[kept++] = *h;
        }
        d->n_held_wm = kept;
}

/* Records a discovery watermark, after the state of every session found
 * before it: a kill in between must not leave a watermark that skips
 * sessions whose state (and events, for the webhooks) never became
 * durable. */
static void persist_watermark(Daemon *d, const char *key, int64_t newest_us)
{
        uint64_t gen;

        if (!d->state)
                return;
        if (!d->persist_armed) {
                put_watermark(d, key, newest_us);
                return;
        }
        /* Sessions queued in `next` belong to the batch armed after this one. */
        gen = d->persist_armed_gen + (d->persist_next.n > 0 ? 1 : 0);
        for (size_t k = 0; k < d->n_held_wm; k++)
                if (strcmp(d->held_wm[k].key, key) == 0) {
                        d->held_wm[k].newest_us = newest_us;
                        d->held_wm[k].gen = gen;
                        return;
                }
        if (strlen(key) >= sizeof(d->held_wm[0].key)) {
                put_watermark(d, key, newest_us);
                return;
        }
        if (d->n_held_wm == d->cap_held_wm) {
                size_t cap = d->cap_held_wm ? d->cap_held_wm * 2 : 8;
                HeldWatermark *v = realloc(d->held_wm, cap * sizeof(*v));

                if (!v) {
                        /* Without memory, the order gives way. */
                        put_watermark(d, key, newest_us);
                        return;
                }
                d->held_wm = v;
                d->cap_held_wm = cap;
        }
        d->held_wm[d->n_held_wm] = (HeldWatermark){.newest_us = newest_us, .gen = gen};
        snprintf(d->held_wm[d->n_held_wm].key, sizeof(d->held_wm[0].key), "%s", key);
        d->n_held_wm++;
}

/* Writes the held sessions whose events are all in the outboxes now. A
 * session held again since (it changed once more) is left to that later
 * write: its current fields may belong to an event not yet written. With
 * `all`, everything held is written (at a stop, or when a webhook goes). */
static void persist_release(Daemon *d, bool all)
{
        for (;;) {
                if (!d->persist_armed)
                        return;
                if (!all)
                        for (size_t k = 0; k < d->n_persist_marks; k++)
                                if (!sink_webhook_written_through(d->persist_marks[k].sink,
                                                                  d->persist_marks[k].mark))
                                        return;
                if (all) {
                        for (size_t k = 0; k < d->persist_wait.n; k++)
                                persist_now(d, d->persist_wait.v[k]);
                        for (size_t k = 0; k < d->persist_next.n; k++)
                                persist_now(d, d->persist_next.v[k]);
                        d->persist_wait.n = d->persist_next.n = 0;
                        d->persist_armed = false;
                        release_watermarks(d, true);
                        return;
                }
                /* qsort() and bsearch() take no NULL array, not even an empty one. */
                if (d->persist_next.n > 0)
                        qsort(d->persist_next.v, d->persist_next.n, sizeof(SessionIndex), cmp_index);
                for (size_t k = 0; k < d->persist_wait.n; k++) {
                        SessionIndex i = d->persist_wait.v[k];

                        if (d->persist_next.n == 0 || !bsearch(&i, d->persist_next.v, d->persist_next.n,
                                                               sizeof(SessionIndex), cmp_index))
                                persist_now(d, i);
                }
                d->persist_wait.n = 0;
                d->persist_armed = false;
                d->persist_released_gen = d->persist_armed_gen;
                release_watermarks(d, false);
                if (d->persist_next.n > 0)
                        persist_arm(d);
        }
}

/* A webhook outbox wrote more records, on the loop thread. */
static void on_outbox_written(void *userdata)
{
        persist_release(userdata, false);
}

/* Makes a session's durable fields durable, after its events went out, so a
 * crash in between repeats an event (with the same id) rather than losing
 * it. The journal and stdout have the event when emit() returns; a webhook
 * has it once its outbox record is written (a threadpool job), so while an
 * outbox is behind, the state write waits for it. */
static void persist(Daemon *d, SessionIndex i)
{
        if (!d->state)
                return;
        /* A webhook that went away or whose outbox fails releases what it
         * held without a write to announce it: look before queueing. */
        if (d->persist_armed)
                persist_release(d, false);
        /* An outbox write that hangs (a stuck disk) must not make this queue
         * grow without bound: past it, ordering gives way to writing. */
        if (d->persist_next.n >= PERSIST_HELD_MAX)
                persist_release(d, true);
        if (!d->persist_armed && !outboxes_behind(d)) {
                persist_now(d, i);
                return;
        }
        /* While nothing is held, `next` is empty; arming moves it to `wait`. */
        if (persist_queue_push(&d->persist_next, i) < 0) {
                /* Out of memory: better an event repeated for a webhook
                 * after a crash than a state not written at all. */
                persist_now(d, i);
                return;
        }
        if (!d->persist_armed)
                persist_arm(d);
}

/* An answer older than what the table holds, with another status, was
 * dropped. A slow answer overtaken by a newer one does that too, so only an
 * answer to a request sent after the held change was dated (`sent_us`, wall
 * clock) says that the API went back in time: that is said and counted. */
static void stale_answer(Daemon *d, SessionIndex i, const Observation *obs, const char *status_raw,
                         size_t status_len, int64_t updated_at_us, int64_t sent_us)
{
        char held[TIMESTAMP_RFC3339_MAX], got[TIMESTAMP_RFC3339_MAX];

        if (!obs->conflict || obs->previous_updated_at_us > sent_us)
                return;
        d->clock_backwards++;
        if (format_timestamp_rfc3339(obs->previous_updated_at_us, held) < 0)
                snprintf(held, sizeof(held), "?");
        if (format_timestamp_rfc3339(updated_at_us, got) < 0)
                snprintf(got, sizeof(got), "?");
        log_ratelimited(&d->stale_rl, uv_now(&d->loop), LOG_WARNING,
                        "Session '%s' answered '%.*s' updated at %s, older than '%s' updated at %s that was "
                        "seen before; the API's clock went backwards. Ignoring the older answer.",
                        sessions_id(d->table, i), (int)(status_len > 64 ? 64 : status_len), status_raw, got,
                        obs->previous_raw, held);
}

/* The session answered 200: decide whether it changed, emit, plan the next
 * poll. `sent_us` is the wall clock when the request went out. Returns
 * API_OK or API_DECODE. */
static ApiOutcome handle_session_body(Daemon *d, SessionIndex i, const HttpResponse *resp, int64_t sent_us)
{
        const char *id = sessions_id(d->table, i);
        Session *rec = sessions_get(d->table, i);
        SessionSnapshot snap = SESSION_SNAPSHOT_NULL;
        SessionQuick q;
        const char *reason = NULL;
        Observation obs;
        int64_t before_us = rec->updated_at_us;
        int r;

        /* The steady state: most answers repeat what we know. The scanner
         * reads status and updatedAt without building a tree; only a body
         * that may carry news goes through the full decoder, which stays the
         * authority on what a valid session is. */
        if (decode_session_quick(resp->body, resp->body_len, &q) == 0 && q.id_len == rec->id_len &&
            q.status_raw_len <= STATUS_MAX && memcmp(q.id, id, q.id_len) == 0 &&
            runbooks_of(&d->runbooks, i) != 0 &&
            sessions_peek(d->table, i, q.status_raw, q.status_raw_len, q.updated_at_us) !=
                OBSERVE_TRANSITION) {
                d->stats.quick_decodes++;
                (void)sessions_observe(d->table, i, q.status_raw, q.status_raw_len, q.updated_at_us, &obs);
                if (obs.result == OBSERVE_STALE)
                        stale_answer(d, i, &obs, q.status_raw, q.status_raw_len, q.updated_at_us, sent_us);
                goto reschedule;
        }

        r = decode_session(resp->body, resp->body_len, &snap, &reason);
        if (r < 0)
                goto bad;
        if (snap.id_len != rec->id_len || memcmp(snap.id, id, snap.id_len) != 0) {
                reason = "the answer is about another session";
                session_snapshot_done(&snap);
                goto bad;
        }
        if (snap.status_raw_len > STATUS_MAX) {
                reason = "field 'status' is longer than 1024 bytes";
                session_snapshot_done(&snap);
                goto bad;
        }

        {
                uint32_t rb = snap.runbook_id ? runbooks_find(&d->runbooks, snap.runbook_id, strlen(snap.runbook_id))
                                              : RUNBOOK_NONE;

                if (rb == 0 || rb != runbooks_of(&d->runbooks, i)) {
                        /* Counted under its old runbook (if any) until now. */
                        coverage_forget(d, i);
                        if (!snap.runbook_id ||
                            runbooks_set(&d->runbooks, i, snap.runbook_id, strlen(snap.runbook_id)) < 0)
                                (void)runbooks_set_none(&d->runbooks, i);
                }
        }
        daemon_web_learn_name(d, i, snap.name);
        (void)sessions_observe(d->table, i, snap.status_raw, snap.status_raw_len, snap.updated_at_us, &obs);
        if (obs.result == OBSERVE_STALE)
                stale_answer(d, i, &obs, snap.status_raw, snap.status_raw_len, snap.updated_at_us, sent_us);
        if (obs.result == OBSERVE_TRANSITION) {
                Event e;

                r = event_init_transition(&e, &snap, obs.first ? NULL : obs.previous_raw, d->source);
                if (r < 0)
                        log_error_errno(r, "Failed to make the event for session '%s': %m", id);
                else {
                        e.replayed = obs.replayed;
                        e.skipped = obs.skipped;
                        d->stats.transitions++;
                        daemon_metrics_count_transition(d, snap.status, obs.first ? 0 : snap.updated_at_us);
                        emit(d, &e, resp->done_usec);
                }
                persist(d, i);
        }
        session_snapshot_done(&snap);

reschedule:
        stalled_after_answer(d, i, before_us);
        rec->failures = 0;
        rec->coverage &= (uint8_t)~SESSION_COV_SUSPECT;
        coverage_update(d, i);
        coverage_reschedule(d, i);
        return API_OK;

bad:
        log_ratelimited(&d->decode_rl, uv_now(&d->loop), LOG_WARNING,
                        "Undecodable answer for session '%s': %s.", id, reason ? reason : "invalid body");
        return API_DECODE;
}

static void handle_not_found(Daemon *d, SessionIndex i, const HttpResponse *resp)
{
        Session *rec = sessions_get(d->table, i);
        const char *id = sessions_id(d->table, i);
        Event e;
        int r;

        if (!(rec->flags & SESSION_SEEN)) {
                /* Never seen: a typo, or a session not created yet. Keep
                 * looking, gently, and say so once. */
                if (rec->failures == 0)
                        log_warning("Session '%s' does not exist (HTTP 404); retrying with backoff.", id);
                if (rec->failures < UINT8_MAX)
                        rec->failures++;
                if (!d->stopping)
                        schedule_after(d, i,
                                       scheduler_backoff(&d->sched, SESSION_STATUS_PENDING, rec->failures));
                return;
        }
        if (rec->flags & SESSION_GONE)
                return;
        if (!(rec->coverage & SESSION_COV_SUSPECT)) {
                /* A proxy or a deploy answers 404 now and then: gone takes a
                 * second 404 at least an interval later, with no 200 (nor a
                 * list entry) between. Covered or not, that look is a GET. */
                rec->coverage |= SESSION_COV_SUSPECT;
                log_info("Session '%s' answered HTTP 404; asking again in %" PRIu64 " ms before calling it "
                         "gone.",
                         id, d->config->poll.interval_ms);
                if (!d->stopping)
                        schedule_after(d, i, d->config->poll.interval_ms);
                return;
        }

        rec->coverage &= (uint8_t)~SESSION_COV_SUSPECT;
        rec->flags |= SESSION_GONE;
        coverage_update(d, i);
        log_notice("Session '%s' is gone (HTTP 404 twice after being seen); no longer polling it.", id);
        r = event_init_gone(&e, id, sessions_status_raw(d->table, i), rec->updated_at_us, d->source);
        if (r < 0) {
                log_error_errno(r, "Failed to make the gone event for session '%s': %m", id);
                return;
        }
        emit(d, &e, resp->done_usec);
        persist(d, i);
}

void daemon_auth_rejected(Daemon *d, long status)
{
        uint64_t now = uv_now(&d->loop), pause;

        /* Every session would get the same answer: hold all requests instead
         * of failing them one by one, and say it once per hold-off. */
        if (now >= d->sched.paused_until_ms) {
                pause = AUTH_PAUSE_MIN_MS;
                for (unsigned k = 0; k < d->auth_level && pause < AUTH_PAUSE_MAX_MS; k++)
                        pause *= 2;
                if (pause > AUTH_PAUSE_MAX_MS)
                        pause = AUTH_PAUSE_MAX_MS;
                if (d->auth_level == 0)
                        log_error("The API rejected the key (HTTP %ld); holding all requests for %" PRIu64
                                  " s. Check [api] key-file.",
                                  status, pause / 1000);
                d->auth_level++;
                scheduler_pause(&d->sched, now + pause);
        }
}

void daemon_auth_accepted(Daemon *d)
{
        /* Only an answer to a request sent once the hold was over says the
         * key works: one already in flight at the 401 proves nothing. */
        if (d->auth_level > 0 && uv_now(&d->loop) >= d->sched.paused_until_ms) {
                log_notice("The API accepts the key again.");
                d->auth_level = 0;
        }
}

static void handle_auth(Daemon *d, SessionIndex i, long status)
{
        daemon_auth_rejected(d, status);
        if (!d->stopping)
                schedule_after(d, i, 0);
}

static void handle_rate_limited(Daemon *d, SessionIndex i, int64_t retry_after_ms)
{
        uint64_t now = uv_now(&d->loop);
        uint64_t wait = retry_after_ms >= 0 ? (uint64_t)retry_after_ms : RATE_LIMIT_DEFAULT_MS;

        if (wait > RATE_LIMIT_MAX_MS) {
                log_warning("Retry-After asks for %" PRIu64 " s; holding requests for %d s only.",
                            wait / 1000, RATE_LIMIT_MAX_MS / 1000);
                wait = RATE_LIMIT_MAX_MS;
        }

        if (now + wait > d->sched.paused_until_ms) {
                log_ratelimited(&d->rate_limit_rl, now, LOG_WARNING,
                                "The API is rate limiting us (HTTP 429); holding all requests for %" PRIu64
                                " ms.",
                                wait);
                d->rate_limit_pauses++;
        }
        scheduler_pause(&d->sched, now + wait);
        if (!d->stopping)
                schedule_after(d, i, wait);
}

static void handle_failure(Daemon *d, SessionIndex i, ApiOutcome o, const HttpResponse *resp)
{
        Session *rec = sessions_get(d->table, i);
        uint64_t delay;

        if (rec->failures < UINT8_MAX)
                rec->failures++;
        delay = scheduler_backoff(&d->sched, rec->status, rec->failures);
        if (o != API_DECODE && o != API_FORBIDDEN) {
                if (resp->error == HTTP_OK)
                        log_ratelimited(&d->poll_errors_rl, uv_now(&d->loop), LOG_WARNING,
                                        "Polling session '%s' failed: HTTP %ld; retrying in %" PRIu64 " ms.",
                                        sessions_id(d->table, i), resp->status, delay);
                else
                        log_ratelimited(&d->poll_errors_rl, uv_now(&d->loop), LOG_WARNING,
                                        "Polling session '%s' failed: %s (%s); retrying in %" PRIu64 " ms.",
                                        sessions_id(d->table, i), api_outcome_to_string(o),
                                        resp->error_text ? resp->error_text : "", delay);
        }
        if (!d->stopping)
                schedule_after(d, i, delay);
}

static void finish(Daemon *d);

/* httpmux completion, on the loop thread, once per poll. */
static void on_poll_done(void *userdata, const HttpResponse *resp)
{
        PollSlot *slot = userdata;
        Daemon *d = slot->daemon;
        SessionIndex i = slot->session;
        Session *rec;
        ApiOutcome o = api_classify(resp);
        /* The wall clock when the request went out, for stale_answer(). */
        int64_t sent_us = realtime_usec() - (int64_t)(now_usec() - slot->start_usec);
        bool stale_key;

        if (o != API_CANCELLED)
                daemon_metrics_observe_poll(d, slot->start_usec, resp->done_usec);
        if (slot->cancelled) {
                /* Unwatched while in flight: the record may be reused already. */
                slot_release(d, slot);
                scheduler_complete(&d->sched);
                if (!d->stopping)
                        dispatch(d);
                else if (d->sched.in_flight == 0)
                        finish(d);
                return;
        }
        rec = sessions_get(d->table, i);
        stale_key = api_answer_stale(&d->api);
        slot_release(d, slot);
        scheduler_complete(&d->sched);
        rec->flags &= ~SESSION_IN_FLIGHT;

        if (o == API_OK)
                o = handle_session_body(d, i, resp, sent_us);
        d->stats.polls[o]++;

        switch (o) {
        case API_OK:
                daemon_auth_accepted(d);
                break;
        case API_NOT_FOUND:
                handle_not_found(d, i, resp);
                break;
        case API_AUTH:
                /* Sent with a key a reload has replaced since: ask again
                 * with the new one instead of holding everything. */
                if (stale_key) {
                        if (!d->stopping)
                                schedule_after(d, i, 0);
                } else
                        handle_auth(d, i, resp->status);
                break;
        case API_RATE_LIMITED:
                handle_rate_limited(d, i, resp->retry_after_ms);
                break;
        case API_CANCELLED:
                break;
        case API_FORBIDDEN:
                /* One private session: say so once, then back off on it alone. */
                if (rec->failures == 0)
                        log_warning(
                            "The API refuses access to session '%s' (HTTP 403); retrying with backoff.",
                            sessions_id(d->table, i));
                handle_failure(d, i, o, resp);
                break;
        default:
                handle_failure(d, i, o, resp);
                break;
        }

        if (!d->stopping)
                dispatch(d);
        else if (d->sched.in_flight == 0)
                finish(d);
}

/* Starts every request that is due and allowed now (polls, audits and sweep
 * pages, in the scheduler's order), then arms the one timer for the next
 * moment something may be. */
static void dispatch(Daemon *d)
{
        uint64_t now = uv_now(&d->loop), wake;
        SessionIndex i;

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
                        schedule_after(d, i, 1);
                        wake = now + 1;
                        break;
                }
                slot->daemon = d;
                slot->session = i;
                slot->start_usec = now_usec();
                slot->purpose = (rec->coverage & SESSION_COV_SUSPECT) ? PURPOSE_CONFIRM
                                : heap == SCHEDULER_AUDIT              ? PURPOSE_AUDIT
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
                        schedule_after(d, i, scheduler_backoff(&d->sched, rec->status, rec->failures));
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
        dispatch(t->data);
}

static void on_handle_closed(uv_handle_t *h)
{
        Daemon *d = h->data;
        d->open_handles--;
}

static void on_mux_closed(void *userdata)
{
        Daemon *d = userdata;
        d->mux = NULL;
}

static void on_notify_closed(void *userdata)
{
        Daemon *d = userdata;
        d->open_handles--;
}

static void close_handle(Daemon *d, uv_handle_t *h)
{
        if (!uv_is_closing(h)) {
                d->open_handles++;
                uv_close(h, on_handle_closed);
        }
}

/* Every poll has come back (or the grace period ran out): tear down. */
static void finish(Daemon *d)
{
        if (d->finishing)
                return;
        d->finishing = true;
        /* No event can come after this point (what is still in flight is
         * cancelled): let the sinks close what they hold on the loop.
         * State writes still held wait for outbox writes that may not be
         * done before the process ends: they are left out, so the next start
         * emits those events again (same ids) rather than losing them for a
         * webhook. */
        persist_release(d, false);
        d->persist_wait.n = d->persist_next.n = 0;
        d->persist_armed = false;
        d->n_held_wm = 0; /* the next start sweeps from the older watermark */
        for (size_t i = 0; i < d->n_sinks; i++) {
                sink_close(d->sinks[i]);
                d->sinks[i] = NULL;
        }
        daemon_orphans_close(d);
        if (d->control) {
                control_close(d->control);
                d->control = NULL;
        }
        daemon_close_http(d);
        d->stream = NULL; /* closed with the sinks */
        close_handle(d, (uv_handle_t *)&d->tick);
        close_handle(d, (uv_handle_t *)&d->stop_timer);
        close_handle(d, (uv_handle_t *)&d->sig_term);
        close_handle(d, (uv_handle_t *)&d->sig_int);
        close_handle(d, (uv_handle_t *)&d->sig_hup);
        close_handle(d, (uv_handle_t *)&d->sig_stall);
        d->open_handles++;
        notify_close(&d->notify, on_notify_closed, d);
        discovery_close(d->disc);
        /* Cancels whatever is still in flight; their completions run first. */
        if (d->mux)
                httpmux_close(d->mux, on_mux_closed, d);
        /* Blocking is fine now: nothing else is left to do. After a clean
         * stop the file holds everything, so a restart repeats no event. */
        if (d->state) {
                (void)state_flush_sync(d->state);
                state_close(d->state, NULL, NULL);
                d->state = NULL;
        }
}

static void on_stop_timer(uv_timer_t *t)
{
        Daemon *d = t->data;

        log_notice("%u request(s) still in flight after %d ms; cancelling them.", d->sched.in_flight,
                   STOP_GRACE_MS);
        finish(d);
}

/* SIGTERM or SIGINT, delivered on the loop thread by libuv. */
static void on_stop_signal(uv_signal_t *s, int signum)
{
        Daemon *d = s->data;

        if (d->stopping)
                return;
        log_info("Received %s, stopping.", strsignal(signum));
        notify_stopping(&d->notify);
        d->stopping = true;
        uv_timer_stop(&d->tick);
        discovery_close(d->disc);
        if (d->sched.in_flight == 0)
                finish(d);
        else
                uv_timer_start(&d->stop_timer, on_stop_timer, STOP_GRACE_MS, 0);
}

/* Test hook, SIGUSR2 on the loop thread when SW_TEST_HOOKS=1: blocks the
 * loop for SW_TEST_STALL_MS (default 3000) so tests can see that a stalled
 * loop stops the watchdog pings. */
static void on_stall_signal(uv_signal_t *s, int signum)
{
        const char *ms = getenv("SW_TEST_STALL_MS");
        long v = ms ? strtol(ms, NULL, 10) : 3000;
        struct timespec ts = {.tv_sec = v / 1000, .tv_nsec = (v % 1000) * 1000000L};

        log_warning("Test hook: blocking the loop for %ld ms.", v);
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* The STATUS= line: what is watched, what failed lately, how the sinks and
 * the state file are. */
/* Sessions counted per STATUS= refresh: a table of a million is counted
 * over about 16 refreshes (seconds) at well under a millisecond each. */
#define STATUS_SCAN_SLICE 65536

static void on_notify_status(void *userdata, char *buf, size_t size)
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

        len = (size_t)snprintf(buf, size, "%zu watched: %zu active, %zu waiting, %zu done; %" PRIu64
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
                                        !d->state ? "off" : h.degraded ? "degraded" : "ok");
        }
        if (len < size) {
                /* Only when it matters: work starting late means the budget
                 * does not carry the load (freshness degrades evenly). */
                uint64_t behind = scheduler_behind_ms(&d->sched, uv_now(&d->loop), discovery_due_ms(d->disc));

                if (behind >= 1000)
                        snprintf(buf + len, size - len, "; %" PRIu64 " s behind", behind / 1000);
        }
}

static int make_source(Daemon *d)
{
        char host[256];

        if (gethostname(host, sizeof(host)) < 0)
                return -errno;
        host[sizeof(host) - 1] = '\0';
        snprintf(d->source, sizeof(d->source), "sessionwatchd://%s", host);
        return 0;
}

/* One sink per [webhook] section. Their outboxes live in the state folder:
 * without one, at-least-once delivery cannot be kept, so the daemon refuses
 * to start rather than lose events silently. */
static int setup_webhooks(Daemon *d)
{
        const Config *c = d->config;
        Sink *s;
        int r;

        if (c->n_webhooks > 0 && !c->state.path) {
                log_error("Webhooks need a state folder for their outboxes: set [state] path (or run with "
                          "StateDirectory=).");
                return -EINVAL;
        }
        for (size_t k = 0; k < c->n_webhooks; k++) {
                SinkWebhookOptions wo = {
                    .config = &c->webhooks[k],
                    .state_folder = c->state.path,
                    .app_url = c->api.app_url,
                    .ca_file = c->api.ca_file,
                };

                r = sink_webhook_new(&d->loop, &wo, &s);
                if (r < 0)
                        return r;
                sink_webhook_on_written(s, on_outbox_written, d);
                d->sinks[d->n_sinks++] = s;
        }
        d->persist_marks = calloc(c->n_webhooks + 1, sizeof(PersistMark));
        if (!d->persist_marks)
                return -ENOMEM;
        return 0;
}

static int setup_sinks(Daemon *d, const DaemonOptions *o)
{
        Sink *s;
        int r;

        d->sinks = calloc(2 + d->config->n_webhooks, sizeof(Sink *));
        if (!d->sinks)
                return -ENOMEM;
        if (d->config->journal.enable) {
                r = sink_journal_new(d->config->journal.statuses, &s);
                if (r < 0)
                        return r;
                d->sinks[d->n_sinks++] = s;
        }
        if (o->print != PRINT_NONE) {
                r = sink_print_new(&d->loop, STDOUT_FILENO, o->print, &s);
                if (r < 0)
                        return r;
                d->sinks[d->n_sinks++] = s;
        }
        return setup_webhooks(d);
}

static int setup_sessions(Daemon *d)
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

static int on_state_watermark(void *userdata, const char *key, size_t len, int64_t newest_us);

static const StateCallbacks state_callbacks = {
    .session = on_state_session,
    .removed = on_state_removed,
    .next = on_state_next,
    .watermark = on_state_watermark,
};

static int setup_state(Daemon *d)
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

/* Plans the first poll of every session that still needs polling: terminal
 * and gone ones (restored from state) are done. */
static int schedule_all(Daemon *d)
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
                                               now + scheduler_spread(&d->sched, d->config->poll.interval_ms));
                if (r < 0)
                        return r;
        }
        return 0;
}

static int setup_sockets(Daemon *d);

/* What the API client takes of [api]; the strings stay the config's. */
static ApiOptions api_options(const ConfigApi *a)
{
        return (ApiOptions){.url = a->url, .key = a->api_key, .team_id = a->team_id, .env_slug = a->env_slug};
}

static int setup_http(Daemon *d)
{
        const Config *c = d->config;
        HttpMuxOptions ho = {
            .max_connections = c->api.max_connections,
            .timeout_ms = (long)c->api.timeout_ms,
            .max_body = c->api.max_body,
            .ca_file = c->api.ca_file,
        };
        ApiOptions ao = api_options(&c->api);
        int r;

        r = httpmux_new(&d->loop, &ho, &d->mux);
        if (r < 0)
                return r;
        r = api_init(&d->api, d->mux, &ao);
        if (r < 0)
                return r;

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

static void log_stats(const Daemon *d)
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

/* ---- Discovery, retain and stalled sessions ----
 *
 * Discovery (discovery.c) hands every entry of a list page to
 * on_discovered_session(), which takes it into the table exactly as a poll
 * answer: the table decides by updatedAt whether it is news. New sessions are
 * added with SESSION_DYNAMIC (persisted as `d`), so that a restart finds them
 * in the state file as sessions added at run time.
 *
 * Retain: after a complete sweep (at most once per discover interval) one
 * pass over the table drops the terminal or gone run-time sessions whose
 * updatedAt is older than `[poll] retain` and at or below every scope's
 * watermark minus the overlap window; state.h says why that needs no
 * tombstone structure of its own.
 *
 * Stalled: checked lazily when a poll answer or a list entry repeats what is
 * known (non-terminal sessions are polled every interval anyway), so a
 * million quiet sessions cost no timer each. The quiet time runs from the
 * session's updatedAt (the API's clock) to our CLOCK_REALTIME; the event is
 * therefore up to one poll interval late, and a clock skew shifts it. */

static int64_t realtime_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

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
static void stalled_after_answer(Daemon *d, SessionIndex i, int64_t before_us)
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
                        persist(d, i);
                }
                return;
        }
        if (!(rec->flags & SESSION_SEEN) || (rec->flags & (SESSION_STALLED | SESSION_GONE)) ||
            session_status_is_terminal(rec->status))
                return;
        limit = stalled_limit_ms(d, rec->status);
        if (limit == 0)
                return;
        quiet_us = realtime_usec() - rec->updated_at_us;
        if (quiet_us < 0 || (uint64_t)quiet_us < limit * 1000)
                return;

        rec->flags |= SESSION_STALLED;
        r = event_init_stalled(&e, id, sessions_status_raw(d->table, i), rec->updated_at_us, quiet_us,
                               d->source);
        if (r < 0)
                log_error_errno(r, "Failed to make the stalled event for session '%s': %m", id);
        else {
                d->disc_counters.stalled++;
                emit(d, &e, 0);
        }
        persist(d, i);
}

/* Drops terminal and gone run-time sessions that no sweep can return any
 * more and whose retain time has passed (see the top of this block). */
static void retire_sessions(Daemon *d)
{
        int64_t floor = discovery_floor(discovery_scopes(d->disc), discovery_n_scopes(d->disc),
                                        (int64_t)d->config->watch.list_overlap_ms * 1000);
        int64_t horizon = realtime_usec() - (int64_t)(d->config->poll.retain_ms * 1000);
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

/* state_open() callback, before the loop runs: a stored watermark. */
static int on_state_watermark(void *userdata, const char *key, size_t len, int64_t newest_us)
{
        Daemon *d = userdata;

        return d->disc ? discovery_restore(d->disc, key, len, newest_us) : 0;
}

static void log_discovery_stats(const Daemon *d)
{
        const DiscoveryCounters *c = &d->disc_counters;

        if (!d->disc && c->stalled == 0)
                return;
        log_info("Discovery: %" PRIu64 " sweeps, %" PRIu64 " pages, %" PRIu64
                 " failed list requests, %" PRIu64 " sessions discovered, %" PRIu64
                 " refused past max-sessions; %" PRIu64 " stalled events.",
                 c->sweeps, c->pages, c->sweep_failures, c->discovered, c->refused, c->stalled);
}

static void daemon_free(Daemon *d)
{
        runbooks_done(&d->runbooks);
        free(d->persist_wait.v);
        free(d->persist_next.v);
        free(d->persist_marks);
        free(d->held_wm);
        for (size_t i = 0; i < d->n_sinks; i++)
                sink_free(d->sinks[i]);
        free(d->sinks);
        api_done(&d->api);
        scheduler_done(&d->sched);
        sessions_free(d->table);
        free(d->slots);
        discovery_free(d->disc);
        coverage_done(d);
        daemon_free_http(d);
        config_free(d->config);
}

/* Said once at start, and again when a reload brings another URL: the
 * API key travels in every request. */
static void warn_cleartext(const char *url, bool reload)
{
        if (config_url_is_cleartext(url))
                log_warning(
                    "The API URL '%s' is plain http:// to a host that is not the loopback: the API key "
                    "is sent in clear text%s.",
                    url, reload ? " from the next request" : "");
}

int daemon_run(const DaemonOptions *o)
{
        Daemon d = {
            .poll_errors_rl = LOG_RATELIMIT_INIT(10000, 10),
            .decode_rl = LOG_RATELIMIT_INIT(10000, 5),
            .rate_limit_rl = LOG_RATELIMIT_INIT(10000, 3),
            .refuse_rl = LOG_RATELIMIT_INIT(10000, 3),
            .stale_rl = LOG_RATELIMIT_INIT(10000, 3),
        };
        char errbuf[4096];
        ConfigEnv env;
        int r, ret = 1;

        d.start_usec = now_usec();

        config_env_from_environ(&env);
        r = config_load(o->config_path, &env, &d.config, errbuf, sizeof(errbuf));
        if (r < 0) {
                fprintf(stderr, "%s\n", errbuf);
                return r == -ENOMEM ? 1 : EX_CONFIG;
        }

        r = uv_loop_init(&d.loop);
        if (r < 0) {
                log_error_errno(r, "Failed to create the event loop: %m");
                config_free(d.config);
                return 1;
        }
        uv_timer_init(&d.loop, &d.tick);
        uv_timer_init(&d.loop, &d.stop_timer);
        uv_signal_init(&d.loop, &d.sig_term);
        uv_signal_init(&d.loop, &d.sig_int);
        uv_signal_init(&d.loop, &d.sig_stall);
        uv_signal_init(&d.loop, &d.sig_hup);
        d.tick.data = d.stop_timer.data = d.sig_term.data = d.sig_int.data = d.sig_stall.data = &d;
        d.sig_hup.data = &d;
        (void)notify_init(&d.notify, &d.loop, on_notify_status, &d);

        if ((r = make_source(&d)) < 0 || (r = setup_sinks(&d, o)) < 0 || (r = daemon_orphans_scan(&d)) < 0 ||
            (r = setup_sessions(&d)) < 0 || (r = coverage_setup(&d)) < 0 || (r = setup_state(&d)) < 0 ||
            (r = schedule_all(&d)) < 0 || (r = setup_http(&d)) < 0 || (r = setup_sockets(&d)) < 0 ||
            (r = daemon_setup_http(&d)) < 0) {
                log_error_errno(r, "Failed to start: %m");
                d.stopping = true;
                finish(&d);
                uv_run(&d.loop, UV_RUN_DEFAULT);
                goto out;
        }
        uv_signal_start(&d.sig_term, on_stop_signal, SIGTERM);
        uv_signal_start(&d.sig_int, on_stop_signal, SIGINT);
        uv_signal_start(&d.sig_hup, on_reload_signal, SIGHUP);
        if (getenv("SW_TEST_HOOKS") && strcmp(getenv("SW_TEST_HOOKS"), "1") == 0) {
                uv_signal_start(&d.sig_stall, on_stall_signal, SIGUSR2);
                uv_unref((uv_handle_t *)&d.sig_stall);
        }
        /* The writer of events must learn of a vanished reader by EPIPE, not
         * die of SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);

        /* Start-up freed the config's copies of a possibly long watch list:
         * hand those pages back rather than carry them as resident memory. */
        malloc_trim(0);
        log_info("Watching %zu session(s) at %s.", sessions_count(d.table), d.config->api.url);
        warn_cleartext(d.config->api.url, false);
        if (d.config->http_listen_deprecated_line)
                log_warning("%s:%u: 'listen' in section '[metrics]' is deprecated: write it as 'listen' in "
                            "section '[http]', which serves /metrics and the status page and API.",
                            d.config->path, d.config->http_listen_deprecated_line);
        if (d.disc)
                discovery_start(d.disc, &d.api, &d.sched);
        dispatch(&d);
        notify_ready(&d.notify);

        uv_run(&d.loop, UV_RUN_DEFAULT);
        log_stats(&d);
        log_discovery_stats(&d);
        ret = 0;
out:
        r = uv_loop_close(&d.loop);
        if (r < 0) {
                log_error_errno(r, "The event loop still had open handles at exit: %m");
                ret = 1;
        }
        daemon_free(&d);
        return ret;
}

/* ------------------------------------------------------------------------
 * The sockets: the event stream sink and the control commands (issue 7).
 * Everything here runs on the loop thread.
 * ------------------------------------------------------------------------ */

/* Records scanned per list request at most, so a filter that matches
 * little never walks a huge table in one loop turn. */
#define LIST_SCAN_MAX 200000

/* The stream sink's snapshot iterator: every session whose status is known. */
static int on_stream_snapshot_next(void *userdata, size_t *cursor, SinkSocketEntry *ret)
{
        Daemon *d = userdata;
        size_t n = sessions_capacity(d->table);

        for (; *cursor < n; (*cursor)++) {
                SessionIndex i = (SessionIndex)*cursor;
                const Session *rec = sessions_get(d->table, i);

                if ((rec->flags & SESSION_REMOVED) || !(rec->flags & SESSION_SEEN))
                        continue;
                *ret = (SinkSocketEntry){
                    .id = sessions_id(d->table, i),
                    .status_raw = sessions_status_raw(d->table, i),
                    .updated_at_us = rec->updated_at_us,
                };
                (*cursor)++;
                return 1;
        }
        return 0;
}

/* Stops watching session i at once: out of the scheduler, the table and
 * (durably) the state. A poll in flight for it is answered into the void. */
static void unwatch_session(Daemon *d, SessionIndex i)
{
        const char *id = sessions_id(d->table, i);
        Session *rec = sessions_get(d->table, i);

        if (rec->flags & SESSION_IN_FLIGHT)
                for (unsigned k = 0; k < CONFIG_MAX_CONNECTIONS_MAX; k++)
                        if (d->slots[k].busy && d->slots[k].session == i)
                                d->slots[k].cancelled = true;
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

typedef struct ReloadReport {
        size_t added;
        size_t removed;
        size_t webhooks_added, webhooks_removed, webhooks_changed;
        char restart_needed[256]; /* settings changed that only a restart applies, e.g. "[api] url" */
} ReloadReport;

static bool streq_null(const char *a, const char *b)
{
        return a == b || (a && b && strcmp(a, b) == 0);
}

static void restart_note(ReloadReport *rep, bool changed, const char *what)
{
        size_t len = strlen(rep->restart_needed);

        if (!changed)
                return;
        snprintf(rep->restart_needed + len, sizeof(rep->restart_needed) - len, "%s%s", len ? ", " : "", what);
}

/* Lists the settings a reload cannot apply (they need a restart) that differ. */
static void reload_restart_only(const Config *old, const Config *c, ReloadReport *rep)
{
        restart_note(rep, !streq_null(old->api.ca_file, c->api.ca_file), "[api] ca-file");
        restart_note(rep, old->api.max_body != c->api.max_body, "[api] max-body");
        restart_note(rep, !streq_null(old->api.app_url, c->api.app_url), "[api] app-url");
        restart_note(rep, old->poll.max_sessions != c->poll.max_sessions, "[poll] max-sessions");
        restart_note(rep, old->poll.mode != c->poll.mode, "[poll] mode");
        restart_note(rep,
                     old->watch.n_runbooks != c->watch.n_runbooks || old->watch.all != c->watch.all ||
                         old->watch.discover_interval_ms != c->watch.discover_interval_ms ||
                         old->watch.backfill != c->watch.backfill ||
                         ({
                                 bool differ = false;
                                 for (size_t k = 0; !differ && k < c->watch.n_runbooks &&
                                                    k < old->watch.n_runbooks;
                                      k++)
                                         differ = strcmp(old->watch.runbooks[k], c->watch.runbooks[k]) != 0;
                                 differ;
                         }),
                     "[watch] runbook/all/discover-interval/backfill");
        restart_note(rep,
                     !streq_null(old->events.path, c->events.path) || old->events.mode != c->events.mode ||
                         !streq_null(old->events.group, c->events.group) ||
                         old->events.client_buffer != c->events.client_buffer,
                     "[events]");
        restart_note(rep,
                     !streq_null(old->control.path, c->control.path) ||
                         old->control.mode != c->control.mode || !streq_null(old->control.group, c->control.group),
                     "[control]");
        restart_note(rep, !streq_null(old->state.path, c->state.path), "[state]");
        restart_note(rep,
                     old->http.max_connections != c->http.max_connections &&
                         streq_null(old->http.listen.listen, c->http.listen.listen),
                     "[http] max-connections");
}

static void swap_str(char **a, char **b)
{
        char *t = *a;

        *a = *b;
        *b = t;
}

/* Applies [api] url, key-file (read again by the load, even under the same
 * name: that is how a key is rotated), team-id, env-slug, timeout and
 * max-connections to the requests started from now on; those in flight
 * finish with what they started with. The old strings go with `c`, which
 * wipes the old key. */
static int reload_api(Daemon *d, Config *c)
{
        ConfigApi *old = &d->config->api;
        bool key_changed = !streq_null(old->api_key, c->api.api_key);
        ApiOptions ao = api_options(&c->api);
        int r;

        if (old->max_connections != c->api.max_connections) {
                r = httpmux_set_max_connections(d->mux, (long)c->api.max_connections);
                if (r < 0)
                        return r;
                old->max_connections = c->api.max_connections;
        }
        if (old->timeout_ms != c->api.timeout_ms) {
                httpmux_set_timeout(d->mux, (long)c->api.timeout_ms);
                old->timeout_ms = c->api.timeout_ms;
        }
        if (!key_changed && streq_null(old->url, c->api.url) && streq_null(old->team_id, c->api.team_id) &&
            streq_null(old->env_slug, c->api.env_slug)) {
                swap_str(&old->key_file, &c->api.key_file);
                return 0;
        }
        r = api_reconfigure(&d->api, &ao);
        if (r < 0)
                return r;
        if (!streq_null(old->url, c->api.url))
                log_info("Requests go to '%s' from now on.", c->api.url);
        swap_str(&old->url, &c->api.url);
        swap_str(&old->key_file, &c->api.key_file);
        swap_str(&old->api_key, &c->api.api_key);
        swap_str(&old->team_id, &c->api.team_id);
        swap_str(&old->env_slug, &c->api.env_slug);
        if (key_changed) {
                log_info("Using the API key from '%s' for requests started from now on.", old->key_file);
                /* A hold-off for a rejected key is over: the new one may well
                 * be accepted, and the next poll tells. */
                if (d->auth_level > 0) {
                        d->sched.paused_until_ms = uv_now(&d->loop);
                        d->auth_level = 0;
                }
        }
        return 0;
}

/* Removes sinks[k] from the array (keeping the order of the others) and
 * closes it; held state writes stop waiting for it. */
/* Takes sink k out of sinks[] and returns it. */
static Sink *detach_sink(Daemon *d, size_t k)
{
        Sink *s = d->sinks[k];

        for (size_t j = 0; j < d->n_persist_marks;)
                if (d->persist_marks[j].sink == s)
                        d->persist_marks[j] = d->persist_marks[--d->n_persist_marks];
                else
                        j++;
        memmove(&d->sinks[k], &d->sinks[k + 1], (d->n_sinks - k - 1) * sizeof(Sink *));
        d->n_sinks--;
        return s;
}

static void remove_sink(Daemon *d, size_t k)
{
        sink_close(detach_sink(d, k));
}

static int append_sink(Daemon *d, Sink *s)
{
        Sink **sinks = realloc(d->sinks, (d->n_sinks + 1) * sizeof(Sink *));

        if (!sinks)
                return -ENOMEM;
        d->sinks = sinks;
        d->sinks[d->n_sinks++] = s;
        return 0;
}

static bool sink_is_journal(const Sink *s)
{
        return strcmp(s->ops->name, "journal") == 0;
}

/* [journal]: switched on or off, or a new status filter. */
static int reload_journal(Daemon *d, const Config *c)
{
        for (size_t k = 0; k < d->n_sinks; k++) {
                if (!sink_is_journal(d->sinks[k]))
                        continue;
                if (!c->journal.enable)
                        remove_sink(d, k);
                else
                        d->sinks[k]->status_mask = c->journal.statuses;
                return 0;
        }
        if (c->journal.enable) {
                Sink *s;
                int r = sink_journal_new(c->journal.statuses, &s);

                if (r < 0)
                        return r;
                r = append_sink(d, s);
                if (r < 0) {
                        sink_free(s);
                        return r;
                }
        }
        return 0;
}

/* [webhook]s, matched by name: a new name starts a sink (its outbox may hold
 * what an earlier run left), a known one is reconfigured in place (outbox,
 * queue and attempts in flight kept), a name no longer there is closed (its
 * outbox file stays, for a later run that names it again). */
static int reload_webhooks(Daemon *d, const Config *c, ReloadReport *rep)
{
        PersistMark *marks;
        int r;

        for (size_t k = 0; k < d->n_sinks;) {
                Sink *s = d->sinks[k];
                bool found = false;

                if (!sink_is_webhook(s)) {
                        k++;
                        continue;
                }
                for (size_t j = 0; j < c->n_webhooks && !found; j++)
                        found = strcmp(c->webhooks[j].name, sink_webhook_name(s)) == 0;
                if (found) {
                        k++;
                        continue;
                }
                log_info("Webhook '%s' is no longer configured; its undelivered events stay in its outbox "
                         "until they expire.",
                         sink_webhook_name(s));
                daemon_orphan_webhook(d, detach_sink(d, k));
                rep->webhooks_removed++;
        }

        marks = realloc(d->persist_marks, (c->n_webhooks + 1) * sizeof(PersistMark));
        if (!marks)
                return -ENOMEM;
        d->persist_marks = marks;

        for (size_t j = 0; j < c->n_webhooks; j++) {
                SinkWebhookOptions wo = {
                    .config = &c->webhooks[j],
                    .state_folder = d->config->state.path,
                    .app_url = d->config->api.app_url,
                    .ca_file = d->config->api.ca_file,
                };
                Sink *s = NULL;

                for (size_t k = 0; k < d->n_sinks && !s; k++)
                        if (sink_is_webhook(d->sinks[k]) &&
                            strcmp(sink_webhook_name(d->sinks[k]), c->webhooks[j].name) == 0)
                                s = d->sinks[k];
                if (s) {
                        r = sink_webhook_reconfigure(s, &wo);
                        if (r < 0)
                                return r;
                        rep->webhooks_changed++;
                        continue;
                }
                if (!wo.state_folder) {
                        log_error("Webhook '%s' needs a state folder for its outbox; not started.",
                                  c->webhooks[j].name);
                        return -EINVAL;
                }
                s = daemon_orphan_take(d, c->webhooks[j].name);
                if (s) {
                        /* Its orphaned queue, with what it still holds. */
                        r = sink_webhook_adopt(s, &wo);
                        if (r < 0) {
                                daemon_orphan_webhook(d, s);
                                return r;
                        }
                } else {
                        /* Loading the outbox blocks for a moment, as at start-up. */
                        r = sink_webhook_new(&d->loop, &wo, &s);
                        if (r < 0)
                                return r;
                }
                sink_webhook_on_written(s, on_outbox_written, d);
                r = append_sink(d, s);
                if (r < 0) {
                        sink_close(s);
                        return r;
                }
                rep->webhooks_added++;
        }
        return 0;
}

/* Re-reads the config file and applies what can change at run time: the
 * [watch] session list (new ones are polled, dropped ones unwatched unless
 * they were also added at run time), the [poll] settings, [api] rate-limit,
 * [journal] and the [webhook]s. Session state, outboxes, socket clients and
 * requests in flight are kept. Settings that only a restart applies are
 * named in ret->restart_needed and keep their running value. On an invalid
 * file nothing changes, and errbuf holds its "file:line: message" lines.
 * Returns 0 or -errno. */
static int daemon_reload(Daemon *d, char *errbuf, size_t errlen, ReloadReport *ret)
{
        uint64_t now = uv_now(&d->loop);
        Config *c = NULL;
        SessionIndex *idx = NULL;
        uint8_t *keep = NULL;
        ConfigEnv env;
        size_t n, k, refused = 0;
        int r;

        *ret = (ReloadReport){};
        config_env_from_environ(&env);
        r = config_load(d->config->path, &env, &c, errbuf, errlen);
        if (r < 0)
                return r;
        if (c->n_webhooks > 0 && !d->config->state.path) {
                snprintf(errbuf, errlen, "%s: webhooks need a state folder for their outboxes: set [state] path "
                         "(and restart)", c->path);
                config_free(c);
                return -EINVAL;
        }

        n = c->watch.n_sessions;
        idx = calloc(n ? n : 1, sizeof(*idx));
        if (!idx) {
                r = -ENOMEM;
                goto out;
        }
        for (k = 0; k < n; k++) {
                const char *id = c->watch.sessions[k];

                r = sessions_add(d->table, id, strlen(id), SESSION_CONFIGURED, &idx[k]);
                if (r == -EEXIST) {
                        sessions_get(d->table, idx[k])->flags |= SESSION_CONFIGURED;
                        continue;
                }
                if (r == -ENOSPC) {
                        /* Sessions already watched further down the list
                         * must still be kept: go on, skipping new ones. */
                        if (refused++ == 0)
                                log_error("More sessions than [poll] max-sessions=%zu; not adding '%s' (nor "
                                          "any other new one).",
                                          d->config->poll.max_sessions, id);
                        idx[k] = SESSION_INDEX_NONE;
                        continue;
                }
                if (r < 0)
                        goto out;
                ret->added++;
                r = scheduler_schedule(&d->sched, idx[k],
                                       now + scheduler_spread(&d->sched, c->poll.interval_ms));
                if (r < 0)
                        goto out;
        }

        keep = calloc(sessions_capacity(d->table) + 1, 1);
        if (!keep) {
                r = -ENOMEM;
                goto out;
        }
        for (k = 0; k < n; k++)
                if (idx[k] != SESSION_INDEX_NONE)
                        keep[idx[k]] = 1;
        for (k = 0; k < sessions_capacity(d->table); k++) {
                Session *rec = sessions_get(d->table, (SessionIndex)k);

                if ((rec->flags & SESSION_REMOVED) || !(rec->flags & SESSION_CONFIGURED) || keep[k])
                        continue;
                if (rec->flags & SESSION_DYNAMIC) {
                        rec->flags &= ~SESSION_CONFIGURED;
                        continue;
                }
                unwatch_session(d, (SessionIndex)k);
                ret->removed++;
        }

        reload_restart_only(d->config, c, ret);
        if (!streq_null(d->config->api.url, c->api.url))
                warn_cleartext(c->api.url, true);
        r = reload_journal(d, c);
        if (r >= 0)
                r = reload_webhooks(d, c, ret);
        if (r >= 0)
                r = reload_api(d, c);
        if (r >= 0)
                daemon_reload_http(d, c);
        /* Webhooks that went release what they held. */
        persist_release(d, false);
        if (r < 0) {
                snprintf(errbuf, errlen,
                         "%s: the reload was applied only in part (%s): sessions and sinks "
                         "changed so far stay changed; the rest of the running configuration is kept",
                         c->path, strerror(-r));
                goto out;
        }

        /* The sections applied move into the running config; the old ones go
         * with `c`. What needs a restart keeps its running value. */
        {
                size_t max_sessions = d->config->poll.max_sessions;
                ConfigPollMode mode = d->config->poll.mode;
                ConfigWebhook *w = d->config->webhooks;
                size_t nw = d->config->n_webhooks;

                d->config->poll = c->poll;
                d->config->poll.max_sessions = max_sessions;
                d->config->poll.mode = mode;
                d->config->watch.list_overlap_ms = c->watch.list_overlap_ms;
                d->config->journal = c->journal;
                d->config->api.rate_per_sec = c->api.rate_per_sec;
                d->config->webhooks = c->webhooks;
                d->config->n_webhooks = c->n_webhooks;
                c->webhooks = w;
                c->n_webhooks = nw;
        }
        SchedulerOptions so = d->sched.opt;
        so.interval_ms = c->poll.interval_ms;
        so.waiting_interval_ms = c->poll.waiting_interval_ms;
        so.jitter_percent = c->poll.jitter_percent;
        so.backoff_max_ms = c->poll.backoff_max_ms;
        so.rate_per_sec = c->api.rate_per_sec;
        so.max_in_flight = d->config->api.max_connections;
        {
                uint64_t old_interval = d->sched.opt.interval_ms, old_waiting = d->sched.opt.waiting_interval_ms;

                scheduler_set_options(&d->sched, &so);
                /* Shorter intervals apply at once: a poll planned further out
                 * than the new interval is brought forward (spread over it). */
                if (so.interval_ms < old_interval || so.waiting_interval_ms < old_waiting)
                        for (k = 0; k < sessions_capacity(d->table); k++) {
                                Session *rec = sessions_get(d->table, (SessionIndex)k);
                                uint64_t iv = rec->status == SESSION_STATUS_WAITING ? so.waiting_interval_ms
                                                                                   : so.interval_ms;

                                if (!(rec->flags & SESSION_REMOVED) &&
                                    scheduler_is_scheduled(&d->sched, (SessionIndex)k) &&
                                    rec->heap == SCHEDULER_POLL && rec->due_ms > now + iv)
                                        (void)scheduler_schedule(&d->sched, (SessionIndex)k,
                                                                 now + scheduler_spread(&d->sched, iv));
                        }
        }
        coverage_reload(d);
        r = 0;
        log_info("Reloaded '%s': %zu session(s) added, %zu removed, %zu watched; webhooks: %zu added, %zu "
                 "removed, %zu kept.%s%s%s",
                 d->config->path, ret->added, ret->removed, sessions_count(d->table), ret->webhooks_added,
                 ret->webhooks_removed, ret->webhooks_changed,
                 ret->restart_needed[0] ? " Changes to " : "", ret->restart_needed,
                 ret->restart_needed[0] ? " take effect at the next restart." : "");
        if (!d->stopping)
                dispatch(d);
out:
        if (r < 0 && !errbuf[0])
                snprintf(errbuf, errlen, "%s: %s", c->path, strerror(-r));
        free(keep);
        free(idx);
        config_free(c);
        return r;
}

/* A reload asked for by SIGHUP or `sessionwatchctl reload`, told to the
 * service manager: RELOADING=1, then READY=1 whatever the outcome; a failure
 * stays in STATUS= until the next reload that succeeds. */
static int reload_notified(Daemon *d, char *errbuf, size_t errlen, ReloadReport *rep)
{
        int r;

        errbuf[0] = '\0';
        notify_reloading(&d->notify);
        r = daemon_reload(d, errbuf, errlen, rep);
        if (r < 0) {
                char status[300];
                size_t first = strcspn(errbuf, "\n");

                log_error("Reload failed, keeping the running configuration:\n%s", errbuf);
                snprintf(status, sizeof(status), "Reload failed, running the previous configuration: %.*s",
                         (int)(first > 250 ? 250 : first), errbuf);
                notify_status_override(&d->notify, status, UINT64_MAX / 2);
        } else
                notify_status_override(&d->notify, "", 0);
        notify_ready(&d->notify);
        return r;
}

/* SIGHUP, on the loop thread. */
static void on_reload_signal(uv_signal_t *h, int signum)
{
        Daemon *d = h->data;
        char errbuf[4096];
        ReloadReport rep;

        if (d->stopping)
                return;
        log_info("Received %s, reloading '%s'.", strsignal(signum), d->config->path);
        (void)reload_notified(d, errbuf, sizeof(errbuf), &rep);
}

static json_object *json_string_or_null(const char *s)
{
        return s ? json_object_new_string(s) : NULL;
}

/* What the webhook sink reports about its queues; none on this branch yet. */
static void status_add_webhooks(Daemon *d, json_object *list)
{
        for (size_t k = 0; k < d->n_sinks; k++) {
                json_object *o, *failures;
                WebhookStats ws;

                if (!sink_is_webhook(d->sinks[k]))
                        continue;
                sink_webhook_stats(d->sinks[k], &ws);
                o = json_object_new_object();
                failures = json_object_new_object();
                if (!o || !failures) {
                        json_object_put(o);
                        json_object_put(failures);
                        return;
                }
                json_object_object_add(o, "name", json_object_new_string(sink_webhook_name(d->sinks[k])));
                json_object_object_add(o, "state",
                                       json_object_new_string(ws.disabled          ? "disabled"
                                                              : ws.outbox_degraded ? "outbox-failing"
                                                                                   : "ok"));
                json_object_object_add(o, "queued", json_object_new_int64((int64_t)ws.queue_depth));
                json_object_object_add(o, "inFlight", json_object_new_int64((int64_t)ws.in_flight));
                json_object_object_add(o, "oldestAgeSeconds", json_object_new_double(ws.oldest_age_ms / 1000.0));
                json_object_object_add(o, "attempts", json_object_new_int64((int64_t)ws.attempts));
                json_object_object_add(o, "delivered", json_object_new_int64((int64_t)ws.successes));
                json_object_object_add(o, "dropped", json_object_new_int64((int64_t)ws.drops));
                for (int f = 0; f < _WEBHOOK_FAILURE_MAX; f++)
                        json_object_object_add(failures, webhook_failure_to_string(f),
                                               json_object_new_int64((int64_t)ws.failures[f]));
                json_object_object_add(o, "failures", failures);
                json_object_array_add(list, o);
        }
}

static json_object *cmd_status(void *userdata, json_object *req)
{
        Daemon *d = userdata;
        json_object *o = control_reply_ok(), *sessions, *by, *polls, *errors, *webhooks, *state;
        SessionCounts counts;
        SinkSocketStats ss = {};

        if (!o)
                return NULL;
        daemon_count_sessions(d, &counts);
        sessions = json_object_new_object();
        by = json_object_new_object();
        for (int k = 0; k < _SESSION_STATUS_MAX; k++)
                json_object_object_add(by, session_status_to_string(k),
                                       json_object_new_int64((int64_t)counts.by_status[k]));
        json_object_object_add(sessions, "watched", json_object_new_int64((int64_t)counts.total));
        json_object_object_add(sessions, "byStatus", by);
        json_object_object_add(sessions, "unseen", json_object_new_int64((int64_t)counts.unseen));
        json_object_object_add(sessions, "gone", json_object_new_int64((int64_t)counts.gone));

        polls = json_object_new_object();
        errors = json_object_new_object();
        for (int k = 0; k < _API_OUTCOME_MAX; k++) {
                json_object_object_add(polls, api_outcome_to_string(k),
                                       json_object_new_int64((int64_t)d->stats.polls[k]));
                if (k != API_OK && k != API_CANCELLED)
                        json_object_object_add(errors, api_outcome_to_string(k),
                                               json_object_new_int64((int64_t)d->stats.polls[k]));
        }
        webhooks = json_object_new_array();
        status_add_webhooks(d, webhooks);

        if (d->state) {
                StateHealth h;

                state_health(d->state, &h);
                state = json_object_new_object();
                json_object_object_add(state, "path", json_object_new_string(d->config->state.path));
                json_object_object_add(state, "degraded", json_object_new_boolean(h.degraded));
                json_object_object_add(state, "compacting", json_object_new_boolean(h.compacting));
                json_object_object_add(state, "lastError",
                                       h.last_error ? json_object_new_string(strerror(-h.last_error))
                                                    : NULL);
                json_object_object_add(state, "lastErrorWhat", json_string_or_null(h.last_error_what));
                json_object_object_add(state, "fileBytes", json_object_new_int64((int64_t)h.file_bytes));
                json_object_object_add(state, "pendingBytes",
                                       json_object_new_int64((int64_t)h.pending_bytes));
                json_object_object_add(state, "writeErrors", json_object_new_int64((int64_t)h.write_errors));
                json_object_object_add(state, "compactions", json_object_new_int64((int64_t)h.compactions));
        } else
                state = NULL;

        if (d->stream)
                sink_socket_stats(d->stream, &ss);

        json_object_object_add(o, "version", json_object_new_string(SW_VERSION));
        json_object_object_add(o, "pid", json_object_new_int64(getpid()));
        json_object_object_add(o, "uptimeSeconds",
                               json_object_new_int64((int64_t)((now_usec() - d->start_usec) / 1000000)));
        json_object_object_add(o, "apiUrl", json_object_new_string(d->config->api.url));
        json_object_object_add(o, "sessions", sessions);
        json_object_object_add(o, "inFlight", json_object_new_int64(d->sched.in_flight));
        {
                json_object *cov = json_object_new_object(), *by_purpose = json_object_new_object();
                static const char *const purposes[_PURPOSE_MAX] = {"sweep", "poll", "audit", "confirm"};
                size_t swept = 0;

                for (size_t k = 0; k < discovery_n_scopes(d->disc); k++)
                        swept += discovery_scopes(d->disc)[k].enabled;
                json_object_object_add(cov, "mode",
                                       json_object_new_string(config_poll_mode_to_string(d->config->poll.mode)));
                json_object_object_add(cov, "covered", json_object_new_int64((int64_t)d->n_covered));
                json_object_object_add(
                    cov, "polled", json_object_new_int64((int64_t)scheduler_queued(&d->sched, SCHEDULER_POLL)));
                json_object_object_add(cov, "sweptScopes", json_object_new_int64((int64_t)swept));
                for (int k = 0; k < _PURPOSE_MAX; k++)
                        json_object_object_add(by_purpose, purposes[k],
                                               json_object_new_int64((int64_t)d->requests_by_purpose[k]));
                json_object_object_add(cov, "requests", by_purpose);
                json_object_object_add(
                    cov, "behindSeconds",
                    json_object_new_double(
                        (double)scheduler_behind_ms(&d->sched, uv_now(&d->loop), discovery_due_ms(d->disc)) /
                        1000.0));
                json_object_object_add(o, "coverage", cov);
        }
        json_object_object_add(o, "polls", polls);
        json_object_object_add(o, "apiErrors", errors);
        json_object_object_add(o, "transitions", json_object_new_int64((int64_t)d->stats.transitions));
        json_object_object_add(o, "events", json_object_new_int64((int64_t)d->stats.events));
        json_object_object_add(o, "webhooks", webhooks);
        json_object_object_add(o, "orphanedQueues", daemon_orphans_status(d));
        json_object_object_add(o, "state", state);
        json_object_object_add(o, "eventsSocket",
                               d->stream ? json_string_or_null(sink_socket_path(d->stream)) : NULL);
        json_object_object_add(o, "streamClients", json_object_new_int64(ss.clients));
        json_object_object_add(o, "streamOverflows", json_object_new_int64((int64_t)ss.overflows));
        json_object_object_add(o, "lastSequence",
                               d->stream ? json_object_new_int64(ss.last_sequence) : NULL);
        return o;
}

/* A member that must be absent or of `type`; *ret is NULL when absent. */
static bool get_member(json_object *req, const char *key, json_type type, json_object **ret)
{
        *ret = NULL;
        if (!json_object_object_get_ex(req, key, ret) || !*ret) {
                *ret = NULL;
                return true;
        }
        return json_object_is_type(*ret, type);
}

json_object *daemon_status_json(Daemon *d)
{
        return cmd_status(d, NULL);
}

static json_object *cmd_list(void *userdata, json_object *req)
{
        Daemon *d = userdata;
        json_object *status, *runbook, *limit_o, *cursor_o, *o, *list;
        int64_t limit = CONTROL_LIST_DEFAULT_LIMIT, cursor = 0;
        size_t n = sessions_capacity(d->table), k, scanned = 0, found = 0;
        uint32_t runbook_wanted = 0;

        if (!get_member(req, "status", json_type_string, &status) ||
            !get_member(req, "runbook", json_type_string, &runbook) ||
            !get_member(req, "limit", json_type_int, &limit_o) ||
            !get_member(req, "cursor", json_type_int, &cursor_o))
                return control_reply_error(CONTROL_ERROR_BAD_REQUEST,
                                           "'list' takes optional 'status' and 'runbook' strings and "
                                           "'limit' and 'cursor' integers.");
        if (runbook) {
                const char *rb = json_object_get_string(runbook);

                runbook_wanted = runbooks_find(&d->runbooks, rb, strlen(rb));
                if (runbook_wanted == 0) /* never seen: nothing matches */
                        cursor_o = NULL, n = 0;
        }
        if (limit_o)
                limit = json_object_get_int64(limit_o);
        if (cursor_o)
                cursor = json_object_get_int64(cursor_o);
        if (limit < 1 || limit > CONTROL_LIST_MAX_LIMIT || cursor < 0)
                return control_reply_error(
                    CONTROL_ERROR_BAD_REQUEST,
                    "'limit' must be 1-%d and 'cursor' a value from an earlier reply.",
                    CONTROL_LIST_MAX_LIMIT);

        o = control_reply_ok();
        list = json_object_new_array();
        if (!o || !list) {
                json_object_put(o);
                json_object_put(list);
                return NULL;
        }
        for (k = (size_t)cursor; k < n && found < (size_t)limit && scanned < LIST_SCAN_MAX; k++, scanned++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)k);
                const char *st = NULL;
                json_object *e;
                char updated[TIMESTAMP_RFC3339_MAX];

                if (rec->flags & SESSION_REMOVED)
                        continue;
                if (rec->flags & SESSION_SEEN)
                        st = sessions_status_raw(d->table, (SessionIndex)k);
                if (status && (!st || strcmp(st, json_object_get_string(status)) != 0))
                        continue;
                if (runbook_wanted && runbooks_of(&d->runbooks, (SessionIndex)k) != runbook_wanted)
                        continue;
                e = json_object_new_object();
                json_object_object_add(e, "id",
                                       json_object_new_string(sessions_id(d->table, (SessionIndex)k)));
                json_object_object_add(e, "status", json_string_or_null(st));
                json_object_object_add(e, "updatedAt",
                                       (rec->flags & SESSION_SEEN) &&
                                               format_timestamp_rfc3339(rec->updated_at_us, updated) >= 0
                                           ? json_object_new_string(updated)
                                           : NULL);
                json_object_object_add(e, "runbook",
                                       json_string_or_null(runbooks_name(&d->runbooks, (SessionIndex)k)));
                json_object_object_add(e, "configured",
                                       json_object_new_boolean(rec->flags & SESSION_CONFIGURED));
                json_object_object_add(e, "dynamic", json_object_new_boolean(rec->flags & SESSION_DYNAMIC));
                json_object_object_add(e, "gone", json_object_new_boolean(rec->flags & SESSION_GONE));
                json_object_array_add(list, e);
                found++;
        }
        json_object_object_add(o, "sessions", list);
        json_object_object_add(o, "next", k < n ? json_object_new_int64((int64_t)k) : NULL);
        return o;
}

/* The "ids" member of watch and unwatch: a non-empty array of valid ids.
 * Returns NULL with *ret_error set when it is not. */
static json_object *get_ids(json_object *req, const char *command, json_object **ret_error)
{
        json_object *ids;
        size_t n;

        *ret_error = NULL;
        if (!json_object_object_get_ex(req, "ids", &ids) || !json_object_is_type(ids, json_type_array) ||
            (n = json_object_array_length(ids)) == 0 || n > CONTROL_IDS_MAX) {
                *ret_error = control_reply_error(CONTROL_ERROR_BAD_REQUEST,
                                                 "'%s' needs 'ids': an array of 1-%d session ids.", command,
                                                 CONTROL_IDS_MAX);
                return NULL;
        }
        for (size_t k = 0; k < n; k++) {
                json_object *v = json_object_array_get_idx(ids, k);
                const char *id = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;

                /* An id with a NUL inside would be cut short, to another id. */
                if (!id || (size_t)json_object_get_string_len(v) != strlen(id) || !config_session_id_valid(id)) {
                        char shown[80] = "(not a string)";

                        if (id) {
                                snprintf(shown, sizeof(shown), "%s", id);
                                for (char *p = shown; *p; p++)
                                        if ((unsigned char)*p < 0x20 || *p == '\'')
                                                *p = '?';
                        }
                        *ret_error =
                            control_reply_error(CONTROL_ERROR_BAD_ID,
                                                "Invalid session id '%s': ids are 1-64 characters of "
                                                "A-Z, a-z, 0-9, '_' and '-'. Nothing was changed.",
                                                shown);
                        return NULL;
                }
        }
        return ids;
}

static json_object *cmd_watch(void *userdata, json_object *req)
{
        Daemon *d = userdata;
        json_object *err, *ids = get_ids(req, CONTROL_CMD_WATCH, &err), *o, *added, *already;

        if (!ids)
                return err;
        if (d->stopping)
                return control_reply_error(CONTROL_ERROR_FAILED, "The daemon is stopping.");
        o = control_reply_ok();
        added = json_object_new_array();
        already = json_object_new_array();
        for (size_t k = 0; k < json_object_array_length(ids); k++) {
                const char *id = json_object_get_string(json_object_array_get_idx(ids, k));
                SessionIndex i;
                int r = sessions_add(d->table, id, strlen(id), SESSION_DYNAMIC, &i);

                if (r == -EEXIST) {
                        /* Watched already; now also explicitly, so it stays
                         * when a reload drops it from the config. */
                        sessions_get(d->table, i)->flags |= SESSION_DYNAMIC;
                        persist(d, i);
                        json_object_array_add(already, json_object_new_string(id));
                        continue;
                }
                if (r < 0) {
                        json_object_put(added);
                        json_object_put(already);
                        json_object_put(o);
                        dispatch(d);
                        if (r == -ENOSPC)
                                return control_reply_error(
                                    CONTROL_ERROR_FAILED,
                                    "Cannot watch '%s': [poll] max-sessions (%zu) reached.", id,
                                    d->config->poll.max_sessions);
                        return control_reply_error(CONTROL_ERROR_FAILED, "Cannot watch '%s': %s.", id,
                                                   strerror(-r));
                }
                persist(d, i);
                schedule_after(d, i, 0);
                json_object_array_add(added, json_object_new_string(id));
        }
        if (json_object_array_length(added) > 0)
                log_info("Watching %zu more session(s) on request.", json_object_array_length(added));
        dispatch(d);
        json_object_object_add(o, "added", added);
        json_object_object_add(o, "already", already);
        return o;
}

static json_object *cmd_unwatch(void *userdata, json_object *req)
{
        Daemon *d = userdata;
        json_object *err, *ids = get_ids(req, CONTROL_CMD_UNWATCH, &err), *o, *removed, *unknown;

        if (!ids)
                return err;
        o = control_reply_ok();
        removed = json_object_new_array();
        unknown = json_object_new_array();
        for (size_t k = 0; k < json_object_array_length(ids); k++) {
                const char *id = json_object_get_string(json_object_array_get_idx(ids, k));
                SessionIndex i = sessions_find(d->table, id, strlen(id));

                if (i == SESSION_INDEX_NONE) {
                        json_object_array_add(unknown, json_object_new_string(id));
                        continue;
                }
                unwatch_session(d, i);
                json_object_array_add(removed, json_object_new_string(id));
        }
        if (json_object_array_length(removed) > 0)
                log_info("Stopped watching %zu session(s) on request.", json_object_array_length(removed));
        json_object_object_add(o, "removed", removed);
        json_object_object_add(o, "unknown", unknown);
        return o;
}

static json_object *cmd_reload(void *userdata, json_object *req)
{
        Daemon *d = userdata;
        char errbuf[4096] = "";
        ReloadReport rep;
        json_object *o;
        int r;

        if (d->stopping)
                return control_reply_error(CONTROL_ERROR_FAILED, "The daemon is stopping.");
        r = reload_notified(d, errbuf, sizeof(errbuf), &rep);
        if (r < 0)
                return control_reply_error(CONTROL_ERROR_FAILED, "%s", errbuf);
        o = control_reply_ok();
        if (o) {
                json_object_object_add(o, "added", json_object_new_int64((int64_t)rep.added));
                json_object_object_add(o, "removed", json_object_new_int64((int64_t)rep.removed));
                json_object_object_add(o, "watched",
                                       json_object_new_int64((int64_t)sessions_count(d->table)));
                json_object_object_add(o, "webhooksAdded", json_object_new_int64((int64_t)rep.webhooks_added));
                json_object_object_add(o, "webhooksRemoved",
                                       json_object_new_int64((int64_t)rep.webhooks_removed));
                json_object_object_add(o, "restartNeeded",
                                       rep.restart_needed[0] ? json_object_new_string(rep.restart_needed) : NULL);
        }
        return o;
}

static json_object *cmd_metrics(void *userdata, json_object *req)
{
        MetricsText m = METRICS_TEXT_NULL;
        json_object *o;

        daemon_metrics(userdata, &m);
        if (m.error < 0) {
                metrics_text_done(&m);
                return NULL;
        }
        o = control_reply_ok();
        if (o)
                json_object_object_add(o, "text", json_object_new_string_len(m.data, (int)m.len));
        metrics_text_done(&m);
        return o;
}

static const ControlCommand control_commands[] = {
    {CONTROL_CMD_STATUS, false, cmd_status},
    {CONTROL_CMD_LIST, false, cmd_list},
    {CONTROL_CMD_WATCH, true, cmd_watch},
    {CONTROL_CMD_UNWATCH, true, cmd_unwatch},
    {CONTROL_CMD_RELOAD, true, cmd_reload},
    {CONTROL_CMD_METRICS, false, cmd_metrics},
    {},
};

/* The event stream (a sink) and the control socket. Either is left out,
 * with a notice, when its path is not configured and no $RUNTIME_DIRECTORY
 * gives a default. */
static int setup_sockets(Daemon *d)
{
        const ConfigSocket *ev = &d->config->events, *ct = &d->config->control;
        ListenFds lfds;
        int r, ev_fd, ct_fd;

        /* Sockets passed by the service manager (sessionwatchd.socket) are
         * used as they are; the config's paths then only name them. */
        r = listenfds_collect(&lfds);
        if (r < 0)
                return r;
        ev_fd = listenfds_take(&lfds, "events");
        ct_fd = listenfds_take(&lfds, "control");
        listenfds_done(&lfds);
        if (ev_fd >= 0)
                log_info("Using the event stream socket passed by the service manager.");
        if (ct_fd >= 0)
                log_info("Using the control socket passed by the service manager.");

        if (!ev->path && ev_fd < 0)
                log_notice(
                    "No [events] path and no $RUNTIME_DIRECTORY: running without the event stream socket.");
        else {
                SinkSocketOptions so = {
                    .path = ev->path,
                    .fd = ev_fd,
                    .mode = ev->mode,
                    .group = ev->group,
                    .client_buffer = ev->client_buffer,
                    .source = d->source,
                    .snapshot_next = on_stream_snapshot_next,
                    .userdata = d,
                };
                Sink **sinks = realloc(d->sinks, (d->n_sinks + 1) * sizeof(Sink *));
                Sink *s;

                if (!sinks)
                        return -ENOMEM;
                d->sinks = sinks;
                r = sink_socket_new(&d->loop, &so, &s);
                if (r < 0)
                        return r;
                d->sinks[d->n_sinks++] = s;
                d->stream = s;
        }

        if (!ct->path && ct_fd < 0)
                log_notice(
                    "No [control] path and no $RUNTIME_DIRECTORY: running without the control socket.");
        else {
                ControlOptions co = {
                    .path = ct->path,
                    .fd = ct_fd,
                    .mode = ct->mode,
                    .group = ct->group,
                    .commands = control_commands,
                    .userdata = d,
                };

                r = control_new(&d->loop, &co, &d->control);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- For the parts split from this file (daemon-private.h) ---- */

void daemon_dispatch(Daemon *d)
{
        if (!d->stopping)
                dispatch(d);
}

void daemon_emit(Daemon *d, const Event *e, uint64_t response_done_usec)
{
        emit(d, e, response_done_usec);
}

void daemon_persist(Daemon *d, SessionIndex i)
{
        persist(d, i);
}

void daemon_persist_watermark(Daemon *d, const char *key, int64_t newest_us)
{
        persist_watermark(d, key, newest_us);
}

void daemon_stalled_after_answer(Daemon *d, SessionIndex i, int64_t before_us)
{
        stalled_after_answer(d, i, before_us);
}

void daemon_retire_sessions(Daemon *d)
{
        retire_sessions(d);
}

void daemon_schedule_after(Daemon *d, SessionIndex i, uint64_t delay_ms)
{
        schedule_after(d, i, delay_ms);
}

int64_t daemon_realtime_usec(void)
{
        return realtime_usec();
}

void daemon_request_done(Daemon *d)
{
        scheduler_complete(&d->sched);
        if (!d->stopping)
                dispatch(d);
        else if (d->sched.in_flight == 0)
                finish(d);
}
