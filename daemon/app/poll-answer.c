/* poll-answer: what an answer to a poll means. A 200 is decoded (the cheap
 * scanner first) and taken into the table, which decides whether it is a
 * transition; a 404 twice makes a session gone; 401 and 429 hold every
 * request; other failures back off on the one session. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "daemon-private.h"
#include "decode.h"
#include "event.h"
#include "state.h"

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
                uint32_t rb = snap.runbook_id
                                  ? runbooks_find(&d->runbooks, snap.runbook_id, strlen(snap.runbook_id))
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
                        daemon_emit(d, &e, resp->done_usec);
                }
                daemon_persist(d, i);
        }
        session_snapshot_done(&snap);

reschedule:
        daemon_stalled_after_answer(d, i, before_us);
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
                        daemon_schedule_after(
                            d, i, scheduler_backoff(&d->sched, SESSION_STATUS_PENDING, rec->failures));
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
                        daemon_schedule_after(d, i, d->config->poll.interval_ms);
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
        daemon_emit(d, &e, resp->done_usec);
        daemon_persist(d, i);
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
                daemon_schedule_after(d, i, 0);
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
                daemon_schedule_after(d, i, wait);
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
                daemon_schedule_after(d, i, delay);
}

void daemon_poll_answer(Daemon *d, SessionIndex i, ApiOutcome o, const HttpResponse *resp, int64_t sent_us,
                        bool stale_key)
{
        const Session *rec = sessions_get(d->table, i);

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
                                daemon_schedule_after(d, i, 0);
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
}
