/* control-commands: the JSON replies of the control socket's commands
 * (status, list, watch, unwatch, reload, metrics); control.c owns the
 * socket and the framing. All of it on the loop thread. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <json-c/json.h>

#include "config.h"
#include "control-proto.h"
#include "control.h"
#include "daemon-private.h"
#include "decode.h"
#include "sink-socket.h"
#include "sink-webhook.h"
#include "state.h"

/* Records scanned per list request at most, so a filter that matches
 * little never walks a huge table in one loop turn. */
#define LIST_SCAN_MAX 200000

static json_object *json_string_or_null(const char *s)
{
        return s ? json_object_new_string(s) : NULL;
}

/* What the webhook sinks report about their queues. */
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
                json_object_object_add(o, "oldestAgeSeconds",
                                       json_object_new_double(ws.oldest_age_ms / 1000.0));
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

/* The "sessions" member: how many are watched, by status. */
static json_object *status_sessions(Daemon *d)
{
        json_object *sessions = json_object_new_object(), *by = json_object_new_object();
        SessionCounts counts;

        daemon_count_sessions(d, &counts);
        for (int k = 0; k < _SESSION_STATUS_MAX; k++)
                json_object_object_add(by, session_status_to_string(k),
                                       json_object_new_int64((int64_t)counts.by_status[k]));
        json_object_object_add(sessions, "watched", json_object_new_int64((int64_t)counts.total));
        json_object_object_add(sessions, "byStatus", by);
        json_object_object_add(sessions, "unseen", json_object_new_int64((int64_t)counts.unseen));
        json_object_object_add(sessions, "gone", json_object_new_int64((int64_t)counts.gone));
        return sessions;
}

/* The "state" member, or NULL without a state folder. */
static json_object *status_state(Daemon *d)
{
        json_object *state;
        StateHealth h;

        if (!d->state)
                return NULL;
        state_health(d->state, &h);
        state = json_object_new_object();
        json_object_object_add(state, "path", json_object_new_string(d->config->state.path));
        json_object_object_add(state, "degraded", json_object_new_boolean(h.degraded));
        json_object_object_add(state, "compacting", json_object_new_boolean(h.compacting));
        json_object_object_add(state, "lastError",
                               h.last_error ? json_object_new_string(strerror(-h.last_error)) : NULL);
        json_object_object_add(state, "lastErrorWhat", json_string_or_null(h.last_error_what));
        json_object_object_add(state, "fileBytes", json_object_new_int64((int64_t)h.file_bytes));
        json_object_object_add(state, "pendingBytes", json_object_new_int64((int64_t)h.pending_bytes));
        json_object_object_add(state, "writeErrors", json_object_new_int64((int64_t)h.write_errors));
        json_object_object_add(state, "compactions", json_object_new_int64((int64_t)h.compactions));
        return state;
}

/* The "coverage" member: which sessions sweeps cover, requests by purpose. */
static json_object *status_coverage(Daemon *d)
{
        json_object *cov = json_object_new_object(), *by_purpose = json_object_new_object();
        static const char *const purposes[_PURPOSE_MAX] = {"sweep", "poll", "audit", "confirm"};
        size_t swept = 0;

        for (size_t k = 0; k < discovery_n_scopes(d->disc); k++)
                swept += discovery_scopes(d->disc)[k].enabled;
        json_object_object_add(cov, "mode",
                               json_object_new_string(config_poll_mode_to_string(d->config->poll.mode)));
        json_object_object_add(cov, "covered", json_object_new_int64((int64_t)d->n_covered));
        json_object_object_add(cov, "polled",
                               json_object_new_int64((int64_t)scheduler_queued(&d->sched, SCHEDULER_POLL)));
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
        return cov;
}

static json_object *cmd_status(void *userdata, json_object *req)
{
        Daemon *d = userdata;
        json_object *o = control_reply_ok(), *polls, *errors, *webhooks;
        SinkSocketStats ss = {};

        if (!o)
                return NULL;
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
        if (d->stream)
                sink_socket_stats(d->stream, &ss);

        json_object_object_add(o, "version", json_object_new_string(SW_VERSION));
        json_object_object_add(o, "pid", json_object_new_int64(getpid()));
        json_object_object_add(
            o, "uptimeSeconds",
            json_object_new_int64((int64_t)((daemon_monotonic_usec() - d->start_usec) / 1000000)));
        json_object_object_add(o, "apiUrl", json_object_new_string(d->config->api.url));
        json_object_object_add(o, "sessions", status_sessions(d));
        json_object_object_add(o, "inFlight", json_object_new_int64(d->sched.in_flight));
        json_object_object_add(o, "coverage", status_coverage(d));
        json_object_object_add(o, "polls", polls);
        json_object_object_add(o, "apiErrors", errors);
        json_object_object_add(o, "transitions", json_object_new_int64((int64_t)d->stats.transitions));
        json_object_object_add(o, "events", json_object_new_int64((int64_t)d->stats.events));
        json_object_object_add(o, "webhooks", webhooks);
        json_object_object_add(o, "orphanedQueues", daemon_orphans_status(d));
        json_object_object_add(o, "state", status_state(d));
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
                if (!id || (size_t)json_object_get_string_len(v) != strlen(id) ||
                    !config_session_id_valid(id)) {
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
                        daemon_persist(d, i);
                        json_object_array_add(already, json_object_new_string(id));
                        continue;
                }
                if (r < 0) {
                        json_object_put(added);
                        json_object_put(already);
                        json_object_put(o);
                        daemon_dispatch(d);
                        if (r == -ENOSPC)
                                return control_reply_error(
                                    CONTROL_ERROR_FAILED,
                                    "Cannot watch '%s': [poll] max-sessions (%zu) reached.", id,
                                    d->config->poll.max_sessions);
                        return control_reply_error(CONTROL_ERROR_FAILED, "Cannot watch '%s': %s.", id,
                                                   strerror(-r));
                }
                daemon_persist(d, i);
                daemon_schedule_after(d, i, 0);
                json_object_array_add(added, json_object_new_string(id));
        }
        if (json_object_array_length(added) > 0)
                log_info("Watching %zu more session(s) on request.", json_object_array_length(added));
        daemon_dispatch(d);
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
                daemon_unwatch_session(d, i);
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
        r = daemon_reload_notified(d, errbuf, sizeof(errbuf), &rep);
        if (r < 0)
                return control_reply_error(CONTROL_ERROR_FAILED, "%s", errbuf);
        o = control_reply_ok();
        if (o) {
                json_object_object_add(o, "added", json_object_new_int64((int64_t)rep.added));
                json_object_object_add(o, "removed", json_object_new_int64((int64_t)rep.removed));
                json_object_object_add(o, "watched",
                                       json_object_new_int64((int64_t)sessions_count(d->table)));
                json_object_object_add(o, "webhooksAdded",
                                       json_object_new_int64((int64_t)rep.webhooks_added));
                json_object_object_add(o, "webhooksRemoved",
                                       json_object_new_int64((int64_t)rep.webhooks_removed));
                json_object_object_add(o, "restartNeeded",
                                       rep.restart_needed[0] ? json_object_new_string(rep.restart_needed)
                                                             : NULL);
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

const ControlCommand *daemon_control_commands(void)
{
        return control_commands;
}
