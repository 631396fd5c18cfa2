#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "metrics-http.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Scrapers are few; a flood of connections must not cost the daemon much. */
#define METRICS_MAX_CONNECTIONS 16
#define METRICS_CONNECTION_TIMEOUT_S 10

struct MetricsHttp {
        uv_loop_t *loop;
        struct MHD_Daemon *mhd;
        uv_poll_t poll;
        uv_timer_t timer;
        metrics_render_cb render;
        void *userdata;
        uint16_t port;
        MetricsHttpStats stats;
        unsigned open_handles;
        void (*closed)(void *userdata);
        void *closed_userdata;
};

static void metrics_http_run(MetricsHttp *m);

static enum MHD_Result answer_text(struct MHD_Connection *c, unsigned status, const char *text)
{
        struct MHD_Response *r =
            MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
        enum MHD_Result ret;

        if (!r)
                return MHD_NO;
        (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
                (void)MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        ret = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return ret;
}

/* libmicrohttpd's request handler; runs inside MHD_run(), on the loop
 * thread. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
        MetricsHttp *m = cls;
        struct MHD_Response *r;
        enum MHD_Result ret;
        char *text = NULL;
        size_t len = 0;
        int e;

        /* The first call only announces the request (headers read). */
        if (*req_cls == NULL) {
                *req_cls = m;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                *upload_data_size = 0; /* a body on a GET is ignored */
                return MHD_YES;
        }
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
                m->stats.errors++;
                return answer_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Only GET and HEAD are served.\n");
        }
        if (strcmp(url, "/metrics") != 0) {
                m->stats.errors++;
                return answer_text(c, MHD_HTTP_NOT_FOUND, "Not found: the metrics are at /metrics.\n");
        }
        e = m->render(m->userdata, &text, &len);
        if (e < 0) {
                m->stats.errors++;
                log_error_errno(e, "Failed to render the metrics: %m");
                return answer_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Failed to render the metrics.\n");
        }
        r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!r) {
                free(text);
                return MHD_NO;
        }
        (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, METRICS_CONTENT_TYPE);
        ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        m->stats.scrapes++;
        return ret;
}

static void on_mhd_timer(uv_timer_t *t)
{
        metrics_http_run(t->data);
}

/* The epoll fd of libmicrohttpd is readable, on the loop thread. */
static void on_mhd_poll(uv_poll_t *p, int status, int events)
{
        metrics_http_run(p->data);
}

/* Lets libmicrohttpd do what it can without blocking, then arms the timer
 * for its next deadline (connection timeouts, buffered data). */
static void metrics_http_run(MetricsHttp *m)
{
        MHD_UNSIGNED_LONG_LONG ms = 0;

        (void)MHD_run(m->mhd);
        if (MHD_get_timeout(m->mhd, &ms) == MHD_YES)
                uv_timer_start(&m->timer, on_mhd_timer, (uint64_t)ms, 0);
        else
                uv_timer_stop(&m->timer);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
        char buf[512];

        vsnprintf(buf, sizeof(buf), fmt, ap);
        buf[strcspn(buf, "\n")] = '\0';
        log_warning("Metrics endpoint: %s", buf);
}

int metrics_http_new(uv_loop_t *loop, const char *host, uint16_t port, metrics_render_cb render, void *userdata,
                     MetricsHttp **ret)
{
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *ai = NULL;
        char service[8];
        const union MHD_DaemonInfo *info;
        unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
        MetricsHttp *m;
        int r, epfd;

        snprintf(service, sizeof(service), "%u", port);
        r = getaddrinfo(host, service, &hints, &ai);
        if (r != 0) {
                log_error("Cannot resolve the metrics address '%s': %s", host ? host : "*", gai_strerror(r));
                return -EINVAL;
        }
        if (ai->ai_family == AF_INET6)
                flags |= MHD_USE_IPv6;

        m = calloc(1, sizeof(*m));
        if (!m) {
                freeaddrinfo(ai);
                return -ENOMEM;
        }
        m->loop = loop;
        m->render = render;
        m->userdata = userdata;
        errno = 0;
        /* The logger goes first, so that messages about the options that
         * follow reach it too. */
        m->mhd = MHD_start_daemon(flags, port, NULL, NULL, on_request, m, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
                                  NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                                  (unsigned)METRICS_MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
                                  (unsigned)METRICS_CONNECTION_TIMEOUT_S, MHD_OPTION_END);
        r = errno;
        freeaddrinfo(ai);
        if (!m->mhd) {
                free(m);
                return r > 0 ? -r : -EADDRNOTAVAIL;
        }
        info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_BIND_PORT);
        m->port = info ? info->port : port;
        info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        epfd = info ? info->epoll_fd : -1;
        if (epfd < 0 || (r = uv_poll_init(loop, &m->poll, epfd)) < 0) {
                MHD_stop_daemon(m->mhd);
                free(m);
                return epfd < 0 ? -EINVAL : r;
        }
        uv_timer_init(loop, &m->timer);
        m->poll.data = m->timer.data = m;
        uv_poll_start(&m->poll, UV_READABLE, on_mhd_poll);
        metrics_http_run(m);
        *ret = m;
        return 0;
}

uint16_t metrics_http_port(const MetricsHttp *m)
{
        return m->port;
}

void metrics_http_stats(const MetricsHttp *m, MetricsHttpStats *ret)
{
        *ret = m->stats;
}

static void on_metrics_closed(uv_handle_t *h)
{
        MetricsHttp *m = h->data;

        if (--m->open_handles > 0)
                return;
        /* The uv_poll no longer watches the epoll fd: libmicrohttpd may close
         * it now, with its sockets. */
        MHD_stop_daemon(m->mhd);
        if (m->closed)
                m->closed(m->closed_userdata);
        free(m);
}

void metrics_http_close(MetricsHttp *m, void (*closed)(void *userdata), void *userdata)
{
        m->closed = closed;
        m->closed_userdata = userdata;
        m->open_handles = 2;
        uv_close((uv_handle_t *)&m->poll, on_metrics_closed);
        uv_close((uv_handle_t *)&m->timer, on_metrics_closed);
}
