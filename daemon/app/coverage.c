/* coverage: which sessions a /sessions/list sweep covers, so that the
 * daemon's requests follow the rate of change instead of the number of
 * sessions.
 *
 * A session is covered when a sweep will list it whenever it changes: its
 * runbook is swept ([watch] runbook, or a coverage scope made for sessions
 * listed by id), or [watch] all is on. A covered session gets no periodic
 * GET: the sweeps of its runbook are its polls, and a slow audit GET
 * ([poll] audit-interval) catches what a list might never show. A session
 * is covered only once it has been seen (the first answer of a session
 * listed by id is a GET, which also tells its runbook).
 *
 * Every running session is counted under its runbook (active or waiting;
 * the record's coverage bits say how, so it can be taken out exactly), and
 * those counts set each scope's pace: the poll interval while one of its
 * sessions runs and does not wait, waiting-interval while all of them wait,
 * discover-interval when none runs. With [poll] mode = auto a coverage
 * scope is swept only while that costs fewer requests than polling its
 * sessions one by one (with a margin, and a lower one to stop, so it does
 * not flap); with mode = list whenever it covers a running session; with
 * mode = get nothing is covered and sweeps only discover.
 *
 * Everything here runs on the loop thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon-private.h"
#include "event.h"
#include "state.h"

/* A coverage scope starts once polling its sessions would cost this many
 * more requests per interval than sweeping them, and stops below the lower
 * margin. */
#define COVER_START_MARGIN 2.0
#define COVER_STOP_MARGIN 1.0

static bool mode_covers(const Daemon *d)
{
        return d->config->poll.mode != CONFIG_POLL_GET;
}

static CoverageRunbook *rb_info(Daemon *d, uint32_t rb)
{
        if (rb == 0 || rb == RUNBOOK_NONE)
                return NULL;
        if (rb >= d->n_cov_rb) {
                size_t n = d->n_cov_rb ? d->n_cov_rb : 16;
                CoverageRunbook *v;

                while (n <= rb)
                        n *= 2;
                v = realloc(d->cov_rb, n * sizeof(*v));
                if (!v)
                        return NULL;
                for (size_t k = d->n_cov_rb; k < n; k++)
                        v[k] = (CoverageRunbook){.scope = -1};
                d->cov_rb = v;
                d->n_cov_rb = n;
        }
        return &d->cov_rb[rb];
}

/* The class session i should be counted under now. */
static uint8_t count_class(const Session *rec)
{
        if (!(rec->flags & SESSION_SEEN) || (rec->flags & (SESSION_GONE | SESSION_REMOVED)) ||
            session_status_is_terminal(rec->status))
                return 0;
        return rec->status == SESSION_STATUS_WAITING ? SESSION_COV_COUNTED_WAITING
                                                     : SESSION_COV_COUNTED_ACTIVE;
}

static void count(Daemon *d, SessionIndex i, Session *rec, uint8_t cls, int sign)
{
        CoverageRunbook *info = rb_info(d, runbooks_of(&d->runbooks, i));

        if (cls == SESSION_COV_COUNTED_ACTIVE) {
                d->all_active += (size_t)sign;
                if (info)
                        info->active += (uint32_t)sign;
        } else if (cls == SESSION_COV_COUNTED_WAITING) {
                d->all_waiting += (size_t)sign;
                if (info)
                        info->waiting += (uint32_t)sign;
        }
        if (sign > 0)
                rec->coverage |= cls;
        else
                rec->coverage &= (uint8_t)~cls;
}

static uint64_t pace(const Daemon *d, size_t active, size_t waiting)
{
        /* mode = get: its GETs poll, sweeps only discover. */
        if (!mode_covers(d))
                return d->config->watch.discover_interval_ms;
        if (active > 0)
                return d->config->poll.interval_ms;
        if (waiting > 0)
                return d->config->poll.waiting_interval_ms;
        return d->config->watch.discover_interval_ms;
}

/* Whether a scope is swept and covers its sessions now. */
static bool scope_covers(const Daemon *d, int k)
{
        const DiscoveryScope *sc;

        if (k < 0 || !d->disc || (size_t)k >= discovery_n_scopes(d->disc))
                return false;
        sc = &discovery_scopes(d->disc)[k];
        return sc->enabled;
}

static bool is_covered(Daemon *d, SessionIndex i, const Session *rec)
{
        uint32_t rb;

        /* Finished sessions are looked at no more: not covered either. */
        if (!mode_covers(d) || !d->disc || count_class(rec) == 0)
                return false;
        if (scope_covers(d, d->all_scope))
                return true;
        rb = runbooks_of(&d->runbooks, i);
        return rb != 0 && rb != RUNBOOK_NONE && rb < d->n_cov_rb && scope_covers(d, d->cov_rb[rb].scope);
}

/* When a covered session that was just seen gets its next audit: one
 * audit interval on, give or take a tenth, so audits of sessions seen
 * together drift apart. */
static uint64_t next_audit_ms(Daemon *d, uint64_t now)
{
        uint64_t a = d->config->poll.audit_interval_ms;

        return now + a - a / 10 + scheduler_spread(&d->sched, a / 5 + 1);
}

/* Moves session i to the heap its coverage asks for, keeping a due time
 * that is already near. */
static void apply(Daemon *d, SessionIndex i)
{
        Session *rec = sessions_get(d->table, i);
        bool covered = is_covered(d, i, rec), was = rec->coverage & SESSION_COV_COVERED;
        uint64_t now = uv_now(&d->loop);
        int r = 0;

        if (covered == was)
                return;
        if (covered) {
                rec->coverage |= SESSION_COV_COVERED;
                d->n_covered++;
        } else {
                rec->coverage &= (uint8_t)~SESSION_COV_COVERED;
                d->n_covered--;
        }
        if (!scheduler_is_scheduled(&d->sched, i) || (rec->coverage & SESSION_COV_SUSPECT))
                return; /* in flight, done, or waiting for a 404's confirmation */
        if (covered && rec->heap == SCHEDULER_POLL)
                /* Half an interval to one and a half: a scope turned on
                 * for many sessions spreads their audits over a whole
                 * interval. */
                r = scheduler_schedule_audit(
                    &d->sched, i,
                    now + d->config->poll.audit_interval_ms / 2 +
                        scheduler_spread(&d->sched, d->config->poll.audit_interval_ms));
        else if (!covered && rec->heap == SCHEDULER_AUDIT)
                r = scheduler_schedule(&d->sched, i,
                                       now + scheduler_spread(&d->sched, d->config->poll.interval_ms));
        if (r < 0)
                log_error_errno(r, "Failed to schedule session '%s': %m", sessions_id(d->table, i));
}

/* Applies coverage to every session of runbook rb (every session for 0),
 * after its scope was turned on or off. */
static void apply_runbook(Daemon *d, uint32_t rb)
{
        size_t n = sessions_capacity(d->table);

        for (size_t k = 0; k < n; k++) {
                const Session *rec = sessions_get(d->table, (SessionIndex)k);

                if (rec->flags & SESSION_REMOVED)
                        continue;
                if (rb == 0 || runbooks_of(&d->runbooks, (SessionIndex)k) == rb)
                        apply(d, (SessionIndex)k);
        }
}

/* The counts of runbook rb changed: set the pace of its scope, and in
 * auto and list modes decide whether a coverage scope is worth sweeping. */
static void review_runbook(Daemon *d, uint32_t rb)
{
        CoverageRunbook *info = rb_info(d, rb);
        const DiscoveryScope *sc;
        const ConfigPoll *p = &d->config->poll;
        bool want;

        if (!info || !d->disc)
                return;
        if (info->scope < 0) {
                int k;

                if (!mode_covers(d) || info->active + info->waiting == 0)
                        return;
                /* Cheap test first: in auto mode a scope is only made when
                 * it would start at once. */
                if (p->mode == CONFIG_POLL_AUTO &&
                    info->active + info->waiting * (double)p->interval_ms / (double)p->waiting_interval_ms <
                        1 + COVER_START_MARGIN)
                        return;
                k = discovery_add_coverage(d->disc, d->runbooks.names[rb - 1]);
                if (k < 0) {
                        log_error_errno(k, "Failed to add a sweep of runbook '%s': %m",
                                        d->runbooks.names[rb - 1]);
                        return;
                }
                info->scope = k;
        }
        sc = &discovery_scopes(d->disc)[info->scope];
        discovery_set_interval(d->disc, (size_t)info->scope, pace(d, info->active, info->waiting));
        if (!sc->coverage)
                return;

        if (!mode_covers(d) || info->active + info->waiting == 0)
                want = false;
        else if (p->mode == CONFIG_POLL_LIST)
                want = true;
        else {
                /* Requests per interval: one GET per session (waiting ones
                 * less often) against the sweeps, which go at the pace of
                 * the busiest session and take a few pages each. */
                double get_cost =
                    info->active + info->waiting * (double)p->interval_ms / (double)p->waiting_interval_ms;
                double per_sweep = sc->requests_per_sweep > 1 ? sc->requests_per_sweep : 1;
                double sweep_cost =
                    info->active > 0 ? per_sweep
                                     : per_sweep * (double)p->interval_ms / (double)p->waiting_interval_ms;

                want = sc->enabled ? get_cost >= sweep_cost + COVER_STOP_MARGIN
                                   : get_cost >= sweep_cost + COVER_START_MARGIN;
        }
        if (want == sc->enabled)
                return;
        discovery_enable(d->disc, (size_t)info->scope, want);
        log_debug("%s covering the sessions of runbook '%s' by sweeps (%" PRIu32 " running, %" PRIu32
                  " waiting).",
                  want ? "Started" : "Stopped", sc->runbook_id, info->active, info->waiting);
        apply_runbook(d, rb);
        daemon_dispatch(d);
}

void coverage_forget(Daemon *d, SessionIndex i)
{
        Session *rec = sessions_get(d->table, i);
        uint8_t cls = rec->coverage & (SESSION_COV_COUNTED_ACTIVE | SESSION_COV_COUNTED_WAITING);
        uint32_t rb = runbooks_of(&d->runbooks, i);

        if (cls)
                count(d, i, rec, cls, -1);
        if (rec->coverage & SESSION_COV_COVERED) {
                rec->coverage &= (uint8_t)~SESSION_COV_COVERED;
                d->n_covered--;
        }
        if (cls)
                review_runbook(d, rb);
}

void coverage_update(Daemon *d, SessionIndex i)
{
        Session *rec = sessions_get(d->table, i);
        uint8_t old = rec->coverage & (SESSION_COV_COUNTED_ACTIVE | SESSION_COV_COUNTED_WAITING);
        uint8_t cls = count_class(rec);

        if (cls != old) {
                if (old)
                        count(d, i, rec, old, -1);
                if (cls)
                        count(d, i, rec, cls, +1);
                review_runbook(d, runbooks_of(&d->runbooks, i));
                if (d->all_scope >= 0)
                        discovery_set_interval(d->disc, (size_t)d->all_scope,
                                               pace(d, d->all_active, d->all_waiting));
        }
        apply(d, i);
}

void coverage_reschedule(Daemon *d, SessionIndex i)
{
        Session *rec = sessions_get(d->table, i);
        uint64_t now = uv_now(&d->loop);
        int r;

        if (d->stopping || session_status_is_terminal(rec->status) || (rec->flags & SESSION_GONE)) {
                scheduler_unschedule(&d->sched, i);
                return;
        }
        if (rec->coverage & SESSION_COV_COVERED)
                r = scheduler_schedule_audit(&d->sched, i, next_audit_ms(d, now));
        else
                r = scheduler_schedule(&d->sched, i, now + scheduler_interval(&d->sched, rec->status));
        if (r < 0)
                log_error_errno(r, "Failed to schedule session '%s': %m", sessions_id(d->table, i));
}

/* discovery callback, on the loop thread: one entry of a list page. */
static void on_discovered_session(void *userdata, const DiscoveryScope *sc, const SessionSnapshot *snap,
                                  bool initial, uint64_t done_usec)
{
        Daemon *d = userdata;
        SessionIndex i;
        Session *rec;
        Observation obs;
        int64_t before_us;
        int r;

        if (d->stopping)
                return;
        if (!config_session_id_valid(snap->id) || snap->status_raw_len > STATE_STATUS_MAX) {
                log_ratelimited(&d->decode_rl, uv_now(&d->loop), LOG_WARNING,
                                "Ignoring listed session '%.64s': %s.", snap->id,
                                snap->status_raw_len > STATE_STATUS_MAX ? "status longer than 1024 bytes"
                                                                        : "not a valid session id");
                return;
        }
        i = sessions_find(d->table, snap->id, snap->id_len);
        if (i == SESSION_INDEX_NONE) {
                /* A sweep made only to cover sessions listed by id says
                 * nothing about the others of the runbook. */
                if (sc->coverage)
                        return;
                r = sessions_add(d->table, snap->id, snap->id_len, SESSION_DYNAMIC, &i);
                if (r == -ENOSPC) {
                        /* Never silently: counted, and said (rate-limited). */
                        d->disc_counters.refused++;
                        log_ratelimited(&d->refuse_rl, uv_now(&d->loop), LOG_ERR,
                                        "Not watching discovered session '%s': [poll] max-sessions=%zu "
                                        "reached (%" PRIu64 " refused so far).",
                                        snap->id, d->config->poll.max_sessions, d->disc_counters.refused);
                        return;
                }
                if (r < 0) {
                        log_error_errno(r, "Failed to add discovered session '%s': %m", snap->id);
                        return;
                }
                d->disc_counters.discovered++;
        }
        rec = sessions_get(d->table, i);
        if (rec->flags & SESSION_GONE) {
                /* Two 404s said gone, yet the list shows it changed since:
                 * the 404s were a proxy's or a deploy's, not the end. */
                if (snap->updated_at_us <= rec->updated_at_us)
                        return;
                rec->flags &= ~SESSION_GONE;
                log_notice("Session '%s' is listed again, changed since it was called gone; watching it again.",
                           snap->id);
                daemon_persist(d, i);
        }
        /* Listed: it exists, whatever a 404 said. */
        rec->coverage &= (uint8_t)~SESSION_COV_SUSPECT;
        if (snap->runbook_id) {
                uint32_t rb = runbooks_find(&d->runbooks, snap->runbook_id, strlen(snap->runbook_id));

                if (rb == 0 || rb != runbooks_of(&d->runbooks, i)) {
                        coverage_forget(d, i);
                        (void)runbooks_set(&d->runbooks, i, snap->runbook_id, strlen(snap->runbook_id));
                }
        }
        daemon_web_learn_name(d, i, snap->name);
        before_us = rec->updated_at_us;
        (void)sessions_observe(d->table, i, snap->status_raw, snap->status_raw_len, snap->updated_at_us,
                               &obs);
        if (obs.result == OBSERVE_TRANSITION) {
                /* The first sweep learns what exists: what had already
                 * finished is history, not news (unless backfill asks). */
                bool quiet = obs.first && initial && session_status_is_terminal(snap->status) &&
                             !d->config->watch.backfill;

                if (!quiet) {
                        Event e;

                        r = event_init_transition(&e, snap, obs.first ? NULL : obs.previous_raw, d->source);
                        if (r < 0)
                                log_error_errno(r, "Failed to make the event for session '%s': %m",
                                                snap->id);
                        else {
                                e.replayed = obs.replayed;
                                e.skipped = obs.skipped;
                                d->stats.transitions++;
                                daemon_metrics_count_transition(
                                    d, snap->status, obs.first && initial ? 0 : snap->updated_at_us);
                                daemon_emit(d, &e, done_usec);
                        }
                }
                daemon_persist(d, i);
        } else if (obs.result == OBSERVE_UNCHANGED)
                daemon_stalled_after_answer(d, i, before_us);

        coverage_update(d, i);
        if (session_status_is_terminal(rec->status)) {
                /* Nothing more to poll; an answer in flight finds it terminal. */
                scheduler_unschedule(&d->sched, i);
        } else if (!(rec->flags & SESSION_IN_FLIGHT) && !scheduler_is_scheduled(&d->sched, i)) {
                uint64_t now = uv_now(&d->loop);

                /* Just listed: its audit is a whole audit interval away. */
                if (rec->coverage & SESSION_COV_COVERED)
                        (void)scheduler_schedule_audit(&d->sched, i, next_audit_ms(d, now));
                else
                        daemon_schedule_after(d, i, scheduler_interval(&d->sched, rec->status));
        }
}

/* discovery callback, on the loop thread: a page was taken in. */
static void on_discovery_page(void *userdata, const DiscoveryScope *sc, bool complete, bool moved)
{
        Daemon *d = userdata;
        uint64_t now = uv_now(&d->loop);

        if (d->stopping)
                return;
        if (moved)
                daemon_persist_watermark(d, discovery_scope_key(sc), sc->newest_us);
        if (complete &&
            (d->last_retire_ms == 0 || now - d->last_retire_ms >= d->config->watch.discover_interval_ms)) {
                d->last_retire_ms = now;
                daemon_retire_sessions(d);
        }
        if (complete && sc->coverage && sc->runbook_id) {
                /* Its cost per sweep is known better now. */
                uint32_t rb = runbooks_find(&d->runbooks, sc->runbook_id, strlen(sc->runbook_id));

                if (rb)
                        review_runbook(d, rb);
        }
}

/* discovery callback, on the loop thread: a list request ended. */
static void on_discovery_done(void *userdata)
{
        daemon_request_done(userdata);
}

/* discovery callback, on the loop thread: a list request was answered 401,
 * or with a page. A 401 holds every request exactly as a poll's does. */
static void on_discovery_auth(void *userdata, bool rejected, long status)
{
        Daemon *d = userdata;

        if (rejected)
                daemon_auth_rejected(d, status);
        else
                daemon_auth_accepted(d);
}

const DiscoveryCallbacks coverage_discovery_callbacks = {
    .session = on_discovered_session,
    .page = on_discovery_page,
    .done = on_discovery_done,
    .auth = on_discovery_auth,
};

int coverage_setup(Daemon *d)
{
        const ConfigWatch *w = &d->config->watch;
        int r;

        d->all_scope = -1;
        /* Without runbooks to discover, sweeps may still cover sessions
         * listed by id, unless mode = get. */
        if (w->n_runbooks == 0 && !w->all && !mode_covers(d))
                return 0;
        r = discovery_new(&d->loop, w->runbooks, w->n_runbooks, w->all, w->discover_interval_ms,
                          (int64_t)w->list_overlap_ms * 1000, &coverage_discovery_callbacks, d,
                          &d->disc_counters, &d->disc);
        if (r < 0)
                return r;
        if (w->all)
                d->all_scope = discovery_find(d->disc, NULL);
        /* The configured runbooks are known runbooks: their counts go to
         * their scopes. */
        for (size_t k = 0; k < discovery_n_scopes(d->disc); k++) {
                const char *id = discovery_scopes(d->disc)[k].runbook_id;
                uint32_t rb;
                CoverageRunbook *info;

                if (!id)
                        continue;
                r = runbooks_intern(&d->runbooks, id, strlen(id), &rb);
                if (r < 0)
                        return r;
                info = rb_info(d, rb);
                if (!info)
                        return -ENOMEM;
                info->scope = (int32_t)k;
        }
        return 0;
}

void coverage_reload(Daemon *d)
{
        if (!d->disc)
                return;
        discovery_set_overlap(d->disc, (int64_t)d->config->watch.list_overlap_ms * 1000);
        for (uint32_t rb = 1; rb < d->n_cov_rb; rb++)
                if (d->cov_rb[rb].scope >= 0)
                        review_runbook(d, rb);
        if (d->all_scope >= 0)
                discovery_set_interval(d->disc, (size_t)d->all_scope,
                                       pace(d, d->all_active, d->all_waiting));
}

void coverage_done(Daemon *d)
{
        free(d->cov_rb);
        d->cov_rb = NULL;
        d->n_cov_rb = 0;
}
