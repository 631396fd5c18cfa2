/* reload: re-reads the config file (SIGHUP, `sessionwatchctl reload`) and
 * applies what can change at run time, in steps: the [watch] list, the
 * sinks ([journal], [webhook]s), [api], [http], then the [poll] settings and
 * the scheduler. What only a restart applies is named and keeps its running
 * value. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "daemon-private.h"
#include "httpmux.h"
#include "notify.h"
#include "sink-webhook.h"
#include "sink.h"

static bool streq_null(const char *a, const char *b)
{
        return a == b || (a && b && strcmp(a, b) == 0);
}

static void restart_note(ReloadReport *rep, bool changed, const char *what)
{
        size_t len = strlen(rep->restart_needed);

        if (!changed)
                return;
        snprintf(rep->restart_needed + len, sizeof(rep->restart_needed) - len, "%s%s", len ? ", " : "",
                 what);
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
                         old->watch.backfill != c->watch.backfill || ({
                                 bool differ = false;
                                 for (size_t k = 0;
                                      !differ && k < c->watch.n_runbooks && k < old->watch.n_runbooks; k++)
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
                         old->control.mode != c->control.mode ||
                         !streq_null(old->control.group, c->control.group),
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
        ApiOptions ao = daemon_api_options(&c->api);
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

/* Takes sinks[k] out and closes it. */
static void remove_sink(Daemon *d, size_t k)
{
        sink_close(daemon_sinks_detach(d, k));
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
                r = daemon_sinks_append(d, s);
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
                daemon_orphan_webhook(d, daemon_sinks_detach(d, k));
                rep->webhooks_removed++;
        }

        r = daemon_persist_reserve(d, c->n_webhooks);
        if (r < 0)
                return r;

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
                sink_webhook_on_written(s, daemon_persist_on_outbox_written, d);
                r = daemon_sinks_append(d, s);
                if (r < 0) {
                        sink_close(s);
                        return r;
                }
                rep->webhooks_added++;
        }
        return 0;
}

/* Loads the file, refusing what this running daemon could not take. On an
 * invalid file errbuf holds its "file:line: message" lines. */
static int reload_load(Daemon *d, Config **ret, char *errbuf, size_t errlen)
{
        ConfigEnv env;
        Config *c;
        int r;

        config_env_from_environ(&env);
        r = config_load(d->config->path, &env, &c, errbuf, errlen);
        if (r < 0)
                return r;
        if (c->n_webhooks > 0 && !d->config->state.path) {
                snprintf(errbuf, errlen,
                         "%s: webhooks need a state folder for their outboxes: set [state] path "
                         "(and restart)",
                         c->path);
                config_free(c);
                return -EINVAL;
        }
        *ret = c;
        return 0;
}

/* [watch] sessions: new ones are polled, dropped ones unwatched unless they
 * were also added at run time. */
static int reload_watch_list(Daemon *d, const Config *c, ReloadReport *ret)
{
        uint64_t now = uv_now(&d->loop);
        size_t n = c->watch.n_sessions, k, refused = 0;
        SessionIndex *idx = NULL;
        uint8_t *keep = NULL;
        int r = 0;

        idx = calloc(n ? n : 1, sizeof(*idx));
        if (!idx)
                return -ENOMEM;
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
                daemon_unwatch_session(d, (SessionIndex)k);
                ret->removed++;
        }
        r = 0;
out:
        free(keep);
        free(idx);
        return r;
}

/* The sinks, [api] and [http]. A step that fails leaves the ones before it
 * applied. */
static int reload_sinks_and_api(Daemon *d, Config *c, ReloadReport *ret)
{
        int r = reload_journal(d, c);

        if (r >= 0)
                r = reload_webhooks(d, c, ret);
        if (r >= 0)
                r = reload_api(d, c);
        if (r >= 0)
                daemon_reload_http(d, c);
        /* Webhooks that went release what they held. */
        daemon_persist_release(d, false);
        return r;
}

/* The sections applied move into the running config; the old ones go with
 * `c`. What needs a restart keeps its running value. */
static void reload_take_sections(Daemon *d, Config *c)
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

/* The scheduler takes the new intervals and rate. Shorter intervals apply
 * at once: a poll planned further out than the new interval is brought
 * forward (spread over it). */
static void reload_scheduler(Daemon *d, const Config *c)
{
        uint64_t now = uv_now(&d->loop);
        uint64_t old_interval = d->sched.opt.interval_ms, old_waiting = d->sched.opt.waiting_interval_ms;
        SchedulerOptions so = d->sched.opt;

        so.interval_ms = c->poll.interval_ms;
        so.waiting_interval_ms = c->poll.waiting_interval_ms;
        so.jitter_percent = c->poll.jitter_percent;
        so.backoff_max_ms = c->poll.backoff_max_ms;
        so.rate_per_sec = c->api.rate_per_sec;
        so.max_in_flight = d->config->api.max_connections;
        scheduler_set_options(&d->sched, &so);
        if (so.interval_ms >= old_interval && so.waiting_interval_ms >= old_waiting)
                return;
        for (size_t k = 0; k < sessions_capacity(d->table); k++) {
                Session *rec = sessions_get(d->table, (SessionIndex)k);
                uint64_t iv =
                    rec->status == SESSION_STATUS_WAITING ? so.waiting_interval_ms : so.interval_ms;

                if (!(rec->flags & SESSION_REMOVED) && scheduler_is_scheduled(&d->sched, (SessionIndex)k) &&
                    rec->heap == SCHEDULER_POLL && rec->due_ms > now + iv)
                        (void)scheduler_schedule(&d->sched, (SessionIndex)k,
                                                 now + scheduler_spread(&d->sched, iv));
        }
}

/* Re-reads the config file and applies what can change at run time: the
 * [watch] session list, the [poll] settings, [api] rate-limit, [journal]
 * and the [webhook]s. Session state, outboxes, socket clients and requests
 * in flight are kept. Settings that only a restart applies are named in
 * ret->restart_needed and keep their running value. On an invalid file
 * nothing changes, and errbuf holds its "file:line: message" lines.
 * Returns 0 or -errno. */
static int reload(Daemon *d, char *errbuf, size_t errlen, ReloadReport *ret)
{
        Config *c = NULL;
        int r;

        *ret = (ReloadReport){};
        r = reload_load(d, &c, errbuf, errlen);
        if (r < 0)
                return r;
        r = reload_watch_list(d, c, ret);
        if (r >= 0) {
                reload_restart_only(d->config, c, ret);
                if (!streq_null(d->config->api.url, c->api.url))
                        daemon_warn_cleartext(c->api.url, true);
                r = reload_sinks_and_api(d, c, ret);
                if (r < 0)
                        snprintf(
                            errbuf, errlen,
                            "%s: the reload was applied only in part (%s): sessions and sinks "
                            "changed so far stay changed; the rest of the running configuration is kept",
                            c->path, strerror(-r));
        }
        if (r >= 0) {
                reload_take_sections(d, c);
                reload_scheduler(d, c);
                coverage_reload(d);
                log_info(
                    "Reloaded '%s': %zu session(s) added, %zu removed, %zu watched; webhooks: %zu added, "
                    "%zu removed, %zu kept.%s%s%s",
                    d->config->path, ret->added, ret->removed, sessions_count(d->table), ret->webhooks_added,
                    ret->webhooks_removed, ret->webhooks_changed,
                    ret->restart_needed[0] ? " Changes to " : "", ret->restart_needed,
                    ret->restart_needed[0] ? " take effect at the next restart." : "");
                daemon_dispatch(d);
        }
        if (r < 0 && !errbuf[0])
                snprintf(errbuf, errlen, "%s: %s", c->path, strerror(-r));
        config_free(c);
        return r;
}

/* A reload asked for by SIGHUP or `sessionwatchctl reload`, told to the
 * service manager: RELOADING=1, then READY=1 whatever the outcome; a failure
 * stays in STATUS= until the next reload that succeeds. */
int daemon_reload_notified(Daemon *d, char *errbuf, size_t errlen, ReloadReport *rep)
{
        int r;

        errbuf[0] = '\0';
        notify_reloading(d->notify);
        r = reload(d, errbuf, errlen, rep);
        if (r < 0) {
                char status[300];
                size_t first = strcspn(errbuf, "\n");

                log_error("Reload failed, keeping the running configuration:\n%s", errbuf);
                snprintf(status, sizeof(status), "Reload failed, running the previous configuration: %.*s",
                         (int)(first > 250 ? 250 : first), errbuf);
                notify_status_override(d->notify, status, UINT64_MAX / 2);
        } else
                notify_status_override(d->notify, "", 0);
        notify_ready(d->notify);
        return r;
}
