/* setup: the parts the daemon makes at start-up, in the order daemon_run()
 * calls them: the sinks (journal, stdout, webhooks), the API client over
 * the HTTP multiplexer, and the sockets (the event stream and control). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "daemon-private.h"
#include "httpmux.h"
#include "listenfds.h"
#include "sink-socket.h"
#include "sink-webhook.h"
#include "sink.h"

int daemon_make_source(Daemon *d)
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
                sink_webhook_on_written(s, daemon_persist_on_outbox_written, d);
                d->sinks[d->n_sinks++] = s;
        }
        return daemon_persist_reserve(d, c->n_webhooks);
}

int daemon_setup_sinks(Daemon *d, const DaemonOptions *o)
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

ApiOptions daemon_api_options(const ConfigApi *a)
{
        return (ApiOptions){
            .url = a->url, .key = a->api_key, .team_id = a->team_id, .env_slug = a->env_slug};
}

int daemon_setup_api(Daemon *d)
{
        const Config *c = d->config;
        HttpMuxOptions ho = {
            .max_connections = c->api.max_connections,
            .timeout_ms = (long)c->api.timeout_ms,
            .max_body = c->api.max_body,
            .ca_file = c->api.ca_file,
        };
        ApiOptions ao = daemon_api_options(&c->api);
        int r;

        r = httpmux_new(&d->loop, &ho, &d->mux);
        if (r < 0)
                return r;
        r = api_init(&d->api, d->mux, &ao);
        if (r < 0)
                return r;

        return daemon_poll_init(d);
}

/* Said once at start, and again when a reload brings another URL: the
 * API key travels in every request. */
void daemon_warn_cleartext(const char *url, bool reload)
{
        if (config_url_is_cleartext(url))
                log_warning(
                    "The API URL '%s' is plain http:// to a host that is not the loopback: the API key "
                    "is sent in clear text%s.",
                    url, reload ? " from the next request" : "");
}

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

/* The event stream (a sink) and the control socket. Either is left out,
 * with a notice, when its path is not configured and no $RUNTIME_DIRECTORY
 * gives a default. */
int daemon_setup_sockets(Daemon *d)
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
                Sink *s;

                r = sink_socket_new(&d->loop, &so, &s);
                if (r < 0)
                        return r;
                r = daemon_sinks_append(d, s);
                if (r < 0) {
                        sink_close(s);
                        return r;
                }
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
                    .commands = daemon_control_commands(),
                    .userdata = d,
                };

                r = control_new(&d->loop, &co, &d->control);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- For the parts split from this file (daemon-private.h) ---- */
