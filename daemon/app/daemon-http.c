/* daemon-http: what the daemon serves on [http] listen.
 *
 *   /metrics                 the Prometheus text (daemon-metrics.c)
 *   /, /app.js, /app.css     the status page (web/, compiled in)
 *   /favicon.ico             204: no icon (browsers ask for one by themselves)
 *   /api/v1/status           what `sessionwatchctl status --json` says
 *   /api/v1/sessions         the sessions, filtered, keyset-paged (http-sessions.c)
 *   /api/v1/sessions/ID      one session and its events still in the ring
 *   /api/v1/events           server-sent events, resumable by Last-Event-ID
 *                            (http-events.c)
 *
 * This file routes the requests and owns the listener: its start, its move
 * or new token on a reload, its close. */
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon-http.h"

extern const unsigned char web_index_html[], web_app_js[], web_app_css[];
extern const size_t web_index_html_len, web_app_js_len, web_app_css_len;

/* ---- Routing ---- */

static void serve_status(DaemonWeb *w, HttpRequest *rq)
{
        json_object *o = daemon_status_json(w->d);

        if (o) {
                json_object_object_del(o, "ok");
                json_object_object_add(o, "appUrl", json_object_new_string(w->d->config->api.app_url));
        }
        web_reply_json(rq, 200, o);
}

static void serve_metrics(DaemonWeb *w, HttpRequest *rq)
{
        MetricsText m = METRICS_TEXT_NULL;

        daemon_metrics(w->d, &m);
        if (m.error < 0) {
                log_error_errno(m.error, "Failed to render the metrics: %m");
                metrics_text_done(&m);
                w->scrape_errors++;
                (void)http_reply_error(rq, 500, "internal", "Failed to render the metrics.");
                return;
        }
        w->scrapes++;
        (void)http_reply(rq, 200, "text/plain; version=0.0.4; charset=utf-8", m.data, m.len, HTTP_BODY_TAKE,
                         NULL);
}

static void on_http_request(void *userdata, HttpRequest *rq)
{
        DaemonWeb *w = userdata;
        const char *path = http_request_path(rq);

        if (strcmp(path, "/metrics") == 0)
                serve_metrics(w, rq);
        else if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0)
                (void)http_reply(rq, 200, "text/html; charset=utf-8", web_index_html, web_index_html_len,
                                 HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/app.js") == 0)
                (void)http_reply(rq, 200, "text/javascript; charset=utf-8", web_app_js, web_app_js_len,
                                 HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/app.css") == 0)
                (void)http_reply(rq, 200, "text/css; charset=utf-8", web_app_css, web_app_css_len,
                                 HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/favicon.ico") == 0)
                /* Browsers ask for it on their own; no icon, and no 404 in their console. */
                (void)http_reply(rq, 204, NULL, "", 0, HTTP_BODY_STATIC, NULL);
        else if (strcmp(path, "/api/v1/status") == 0)
                serve_status(w, rq);
        else if (strcmp(path, "/api/v1/sessions") == 0)
                web_serve_sessions(w, rq);
        else if (strncmp(path, "/api/v1/sessions/", 17) == 0)
                web_serve_session(w, rq, path + 17);
        else if (strcmp(path, "/api/v1/events") == 0)
                web_serve_events(w, rq);
        else
                (void)http_reply_error(
                    rq, 404, "not-found",
                    "Nothing here: see /, /metrics and /api/v1/ (status, sessions, events).");
}

static const char *const public_paths[] = {"/", "/index.html", "/app.js", "/app.css", "/favicon.ico", NULL};

/* ---- Set-up, reload, close ---- */

static int server_start(DaemonWeb *w, const ConfigHttp *c, HttpServer **ret)
{
        HttpServerOptions o = {
            .host = c->listen.host,
            .port = c->listen.port,
            .token = c->token,
            .public_paths = public_paths,
            .max_connections = c->max_connections,
            .handler = on_http_request,
            .userdata = w,
        };

        return http_server_new(&w->d->loop, &o, ret);
}

static void log_serving(const ConfigHttp *c, HttpServer *s)
{
        log_info("Serving HTTP on %s (port %u): the status page at /, the API at /api/v1/, metrics at "
                 "/metrics%s.",
                 c->listen.listen, (unsigned)http_server_port(s),
                 c->token ? "; a bearer token is required" : "");
}

static void add_stats(HttpServerStats *into, const HttpServer *s)
{
        HttpServerStats st;

        http_server_stats(s, &st);
        for (size_t k = 0; k < 6; k++)
                into->by_class[k] += st.by_class[k];
        into->unauthorized += st.unauthorized;
        into->timeouts += st.timeouts;
}

int daemon_setup_http(Daemon *d)
{
        const ConfigHttp *c = &d->config->http;
        DaemonWeb *w;
        struct timespec ts;
        int r;

        if (!c->listen.listen)
                return 0;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->d = d;
        /* Sequences start at the start time in µs, as the socket's do, so an
         * id from an earlier run is never taken for one of this run. */
        clock_gettime(CLOCK_REALTIME, &ts);
        r = stream_ring_init(&w->ring, RING_EVENTS, RING_BYTES,
                             (long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
        if (r < 0) {
                free(w);
                return r;
        }
        r = server_start(w, c, &w->server);
        if (r < 0) {
                log_error_errno(r, "Failed to listen for HTTP on %s ([http] listen): %m", c->listen.listen);
                stream_ring_done(&w->ring);
                free(w);
                return r;
        }
        w->listen = strdup(c->listen.listen);
        uv_timer_init(&d->loop, &w->heartbeat);
        w->heartbeat.data = w;
        w->heartbeat_open = true;
        uv_timer_start(&w->heartbeat, web_on_heartbeat, c->heartbeat_ms, c->heartbeat_ms);
        d->web = w;
        log_serving(c, w->server);
        return 0;
}

static void on_heartbeat_closed(uv_handle_t *h)
{
        DaemonWeb *w = h->data;

        w->heartbeat_open = false;
}

void daemon_close_http(Daemon *d)
{
        DaemonWeb *w = d->web;

        if (!w)
                return;
        if (w->server) {
                add_stats(&w->closed_stats, w->server);
                http_server_close(w->server, NULL, NULL);
                w->server = NULL;
        }
        if (w->heartbeat_open && !uv_is_closing((uv_handle_t *)&w->heartbeat))
                uv_close((uv_handle_t *)&w->heartbeat, on_heartbeat_closed);
}

void daemon_free_http(Daemon *d)
{
        DaemonWeb *w = d->web;

        if (!w)
                return;
        /* The server's close callbacks ran: every stream is gone. */
        stream_ring_done(&w->ring);
        event_buffer_done(&w->buf);
        web_views_free(w);
        free(w->listen);
        free(w);
        d->web = NULL;
}

static bool str_equal(const char *a, const char *b)
{
        return a == b || (a && b && strcmp(a, b) == 0);
}

void daemon_reload_http(Daemon *d, Config *c)
{
        DaemonWeb *w = d->web;
        ConfigHttp *old = &d->config->http, t;
        HttpServer *s = NULL;
        int r;

        if (!w) {
                if (!c->http.listen.listen)
                        return;
                /* Turned on by this reload. */
                t = *old, *old = c->http, c->http = t;
                if (daemon_setup_http(d) < 0) {
                        t = *old, *old = c->http, c->http = t;
                        log_error("Not serving HTTP: [http] listen %s in '%s' cannot be bound.",
                                  c->http.listen.listen, c->path);
                }
                return;
        }
        if (!str_equal(w->listen, c->http.listen.listen)) {
                if (c->http.listen.listen) {
                        r = server_start(w, &c->http, &s);
                        if (r < 0) {
                                log_error_errno(
                                    r,
                                    "Failed to listen for HTTP on %s ([http] listen in '%s'): %m; "
                                    "still serving on %s.",
                                    c->http.listen.listen, c->path, w->listen ? w->listen : "nothing");
                                /* Keep the running address and token alike. */
                                return;
                        }
                }
                if (w->server) {
                        add_stats(&w->closed_stats, w->server);
                        http_server_close(w->server, NULL, NULL);
                }
                w->server = s;
                free(w->listen);
                w->listen = c->http.listen.listen ? strdup(c->http.listen.listen) : NULL;
                if (s)
                        log_serving(&c->http, s);
                else
                        log_info("No longer serving HTTP (on %s).", old->listen.listen);
        } else if (w->server && !str_equal(old->token, c->http.token)) {
                if (http_server_set_token(w->server, c->http.token) >= 0)
                        log_info("HTTP token replaced (%s).",
                                 c->http.token_file ? c->http.token_file : "none");
        }
        if (old->heartbeat_ms != c->http.heartbeat_ms && w->heartbeat_open)
                uv_timer_start(&w->heartbeat, web_on_heartbeat, c->http.heartbeat_ms, c->http.heartbeat_ms);
        /* The old values go with `c`. */
        t = *old;
        *old = c->http;
        c->http = t;
}

void daemon_http_metrics(Daemon *d, MetricsText *m)
{
        DaemonWeb *w = d->web;
        HttpServerStats st = {};
        static const char *const classes[] = {NULL, NULL, "2xx", "3xx", "4xx", "5xx"};

        if (!w)
                return;
        st = w->closed_stats;
        if (w->server)
                add_stats(&st, w->server);
        metrics_text_family(m, "sessionwatch_http_requests_total", "counter",
                            "HTTP answers by status class.");
        for (size_t k = 2; k < 6; k++)
                metrics_text_labelled(m, "sessionwatch_http_requests_total", "code", classes[k],
                                      (double)st.by_class[k]);
        metrics_text_single(m, "sessionwatch_http_unauthorized_total", "counter",
                            "HTTP requests refused for a missing or wrong bearer token.",
                            (double)st.unauthorized);
        metrics_text_single(m, "sessionwatch_http_event_streams", "gauge",
                            "HTTP event stream clients connected.", (double)w->n_streams);
        metrics_text_single(m, "sessionwatch_http_event_streams_total", "counter",
                            "HTTP event stream clients accepted.", (double)w->streams_total);
        metrics_text_single(m, "sessionwatch_http_event_stream_overflows_total", "counter",
                            "HTTP event stream clients cut off for not reading.", (double)w->overflows);
        metrics_text_single(m, "sessionwatch_http_event_streams_refused_total", "counter",
                            "HTTP event stream clients refused past [http] max-event-streams.",
                            (double)w->refused);
        metrics_text_family(m, "sessionwatch_metrics_scrapes_total", "counter",
                            "Answers of GET /metrics by result.");
        metrics_text_labelled(m, "sessionwatch_metrics_scrapes_total", "result", "ok", (double)w->scrapes);
        metrics_text_labelled(m, "sessionwatch_metrics_scrapes_total", "result", "error",
                              (double)w->scrape_errors);
}
