#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "http-server.h"
#include "log.h"

#define HTTP_DEFAULT_MAX_CONNECTIONS 64
#define HTTP_DEFAULT_TIMEOUT_S 10
#define HTTP_STREAM_BLOCK 16384
#define HTTP_STREAM_SNDBUF 65536

/* Sent with every answer. */
static const char *const security_headers[][2] = {
    {"Content-Security-Policy", "default-src 'self'"},
    {"X-Content-Type-Options", "nosniff"},
    {"Referrer-Policy", "no-referrer"},
    {"Cache-Control", "no-store"},
};

struct HttpStream {
        HttpServer *server;
        struct MHD_Connection *conn;
        const HttpStreamOps *ops;
        void *userdata;
        HttpStream *prev, *next;
        int fd;
        unsigned refs; /* the completion notice and the response's free callback */
        bool suspended, cut, closing, closed_called, timed_out;
};

struct HttpServer {
        uv_loop_t *loop;
        struct MHD_Daemon *mhd;
        uv_poll_t poll;
        uv_timer_t timer;
        HttpHandler handler;
        void *userdata;
        const char *const *public_paths;
        bool has_token;
        unsigned char token_digest[32];
        uint16_t port;
        bool closing;
        HttpServerStats stats;
        HttpStream *streams;
        unsigned open_handles;
        void (*closed)(void *userdata);
        void *closed_userdata;
        char request_marker; /* *req_cls of a request that is not a stream */
};

struct HttpRequest {
        HttpServer *server;
        struct MHD_Connection *conn;
        const char *path;
        void **req_cls;
        bool answered;
        enum MHD_Result result;
};

static void http_server_run(HttpServer *s);
static void on_mhd_timer(uv_timer_t *t);

/* libmicrohttpd takes resumed connections in at its next run. */
static void schedule_run(HttpServer *s)
{
        if (!s->closing)
                uv_timer_start(&s->timer, on_mhd_timer, 0, 0);
}

static void count_status(HttpServer *s, unsigned status)
{
        unsigned k = status / 100;

        if (k < 6)
                s->stats.by_class[k]++;
}

static void add_common_headers(struct MHD_Response *r)
{
        for (size_t i = 0; i < sizeof(security_headers) / sizeof(security_headers[0]); i++)
                (void)MHD_add_response_header(r, security_headers[i][0], security_headers[i][1]);
}

static int add_extra_header(struct MHD_Response *r, const char *line)
{
        const char *colon = strchr(line, ':');
        char name[64];
        size_t n;

        if (!colon || (n = (size_t)(colon - line)) >= sizeof(name))
                return -EINVAL;
        memcpy(name, line, n);
        name[n] = '\0';
        colon++;
        while (*colon == ' ')
                colon++;
        return MHD_add_response_header(r, name, colon) == MHD_YES ? 0 : -ENOMEM;
}

static int queue(HttpRequest *rq, unsigned status, struct MHD_Response *r)
{
        rq->result = MHD_queue_response(rq->conn, status, r);
        MHD_destroy_response(r);
        rq->answered = true;
        count_status(rq->server, status);
        return rq->result == MHD_YES ? 0 : -EIO;
}

int http_reply(HttpRequest *rq, unsigned status, const char *content_type, const void *body, size_t len,
               HttpBody mode, const char *extra_header)
{
        static const enum MHD_ResponseMemoryMode modes[] = {
            [HTTP_BODY_STATIC] = MHD_RESPMEM_PERSISTENT,
            [HTTP_BODY_COPY] = MHD_RESPMEM_MUST_COPY,
            [HTTP_BODY_TAKE] = MHD_RESPMEM_MUST_FREE,
        };
        struct MHD_Response *r;

        if (rq->answered) {
                if (mode == HTTP_BODY_TAKE)
                        free((void *)body);
                return -EALREADY;
        }
        r = MHD_create_response_from_buffer(len, (void *)body, modes[mode]);
        if (!r) {
                if (mode == HTTP_BODY_TAKE)
                        free((void *)body);
                return -ENOMEM;
        }
        add_common_headers(r);
        if (content_type)
                (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        if (extra_header)
                (void)add_extra_header(r, extra_header);
        return queue(rq, status, r);
}

/* Appends `s` to buf as JSON string contents (no quotes). */
static size_t json_escape(char *buf, size_t size, const char *s)
{
        size_t n = 0;

        for (; *s && n + 7 < size; s++) {
                unsigned char c = (unsigned char)*s;

                if (c == '"' || c == '\\') {
                        buf[n++] = '\\';
                        buf[n++] = (char)c;
                } else if (c < 0x20 || c == 0x7f) {
                        n += (size_t)snprintf(buf + n, size - n, "\\u%04x", c);
                } else {
                        buf[n++] = (char)c;
                }
        }
        buf[n] = '\0';
        return n;
}

int http_reply_error(HttpRequest *rq, unsigned status, const char *code, const char *fmt, ...)
{
        char message[512], escaped[1024], *body;
        va_list ap;
        int n;

        va_start(ap, fmt);
        vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        json_escape(escaped, sizeof(escaped), message);
        n = asprintf(&body, "{\"error\":\"%s\",\"message\":\"%s\"}\n", code, escaped);
        if (n < 0)
                return -ENOMEM;
        return http_reply(rq, status, "application/json", body, (size_t)n, HTTP_BODY_TAKE,
                          status == MHD_HTTP_UNAUTHORIZED       ? "WWW-Authenticate: Bearer realm=\"sessionwatch\""
                          : status == MHD_HTTP_METHOD_NOT_ALLOWED ? "Allow: GET, HEAD"
                                                                  : NULL);
}

const char *http_request_path(const HttpRequest *rq)
{
        return rq->path;
}

const char *http_request_arg(const HttpRequest *rq, const char *name)
{
        return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_request_header(const HttpRequest *rq, const char *name)
{
        return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

typedef struct ArgWalk {
        int (*cb)(void *ud, const char *key, const char *value);
        void *ud;
        int r;
} ArgWalk;

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
        ArgWalk *w = cls;

        (void)kind;
        w->r = w->cb(w->ud, key, value);
        return w->r == 0 ? MHD_YES : MHD_NO;
}

int http_request_each_arg(const HttpRequest *rq, int (*cb)(void *ud, const char *key, const char *value),
                          void *ud)
{
        ArgWalk w = {cb, ud, 0};

        (void)MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, on_arg, &w);
        return w.r;
}

/* ---- Streams ---- */

static void stream_unref(HttpStream *st)
{
        HttpServer *s = st->server;

        if (!st->closed_called) {
                st->closed_called = true;
                if (st->prev)
                        st->prev->next = st->next;
                else
                        s->streams = st->next;
                if (st->next)
                        st->next->prev = st->prev;
                st->ops->closed(st->userdata, st->timed_out);
        }
        if (--st->refs == 0)
                free(st);
}

static ssize_t on_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
        HttpStream *st = cls;
        ssize_t n;

        (void)pos;
        if (st->cut)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        if (st->closing)
                return MHD_CONTENT_READER_END_OF_STREAM;
        n = st->ops->fill(st->userdata, buf, max);
        if (n < 0)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (n == 0) {
                /* Nothing to send: sleep until woken, rather than be asked
                 * again at every turn. */
                st->suspended = true;
                MHD_suspend_connection(st->conn);
        }
        return n;
}

static void on_stream_response_freed(void *cls)
{
        stream_unref(cls);
}

int http_reply_stream(HttpRequest *rq, const char *content_type, const HttpStreamOps *ops, void *userdata,
                      HttpStream **ret)
{
        HttpServer *s = rq->server;
        const union MHD_ConnectionInfo *ci;
        struct MHD_Response *r;
        HttpStream *st;

        if (rq->answered)
                return -EALREADY;
        st = calloc(1, sizeof(*st));
        if (!st)
                return -ENOMEM;
        st->server = s;
        st->conn = rq->conn;
        st->ops = ops;
        st->userdata = userdata;
        ci = MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        st->fd = ci ? ci->connect_fd : -1;
        if (st->fd >= 0) {
                /* A stream lives long: a client that stops reading must not
                 * grow the kernel's buffer for it up to its maximum. */
                int size = HTTP_STREAM_SNDBUF;

                (void)setsockopt(st->fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        }
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, on_stream_read, st,
                                              on_stream_response_freed);
        if (!r) {
                free(st);
                return -ENOMEM;
        }
        /* From here on, the response's free callback owns one reference and
         * the completion notice the other. */
        st->refs = 2;
        st->next = s->streams;
        if (s->streams)
                s->streams->prev = st;
        s->streams = st;
        *rq->req_cls = st;
        add_common_headers(r);
        (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        /* Proxies must pass the events on as they come. */
        (void)MHD_add_response_header(r, "X-Accel-Buffering", "no");
        if (queue(rq, MHD_HTTP_OK, r) < 0) {
                /* The connection is closed; the notices still come. */
                return -EIO;
        }
        *ret = st;
        return 0;
}

void http_stream_wake(HttpStream *st)
{
        if (!st->suspended)
                return;
        st->suspended = false;
        MHD_resume_connection(st->conn);
        schedule_run(st->server);
}

void http_stream_cut(HttpStream *st)
{
        if (st->cut)
                return;
        st->cut = true;
        /* The next write fails or the peer's end shows: libmicrohttpd closes
         * the connection even when the client never reads again. */
        if (st->fd >= 0)
                (void)shutdown(st->fd, SHUT_RDWR);
        if (st->suspended) {
                st->suspended = false;
                MHD_resume_connection(st->conn);
        }
        schedule_run(st->server);
}

/* ---- Requests ---- */

static bool path_is_public(const HttpServer *s, const char *path)
{
        if (!s->public_paths)
                return false;
        for (const char *const *p = s->public_paths; *p; p++)
                if (strcmp(*p, path) == 0)
                        return true;
        return false;
}

static void digest(const char *text, size_t len, unsigned char out[32])
{
        unsigned int n = 32;

        if (EVP_Digest(text, len, out, &n, EVP_sha256(), NULL) != 1)
                memset(out, 0, 32);
}

/* Compares digests, so neither the token's bytes nor its length show in
 * how long the comparison takes. */
static bool authorized(const HttpServer *s, struct MHD_Connection *c)
{
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        unsigned char d[32];

        if (!s->has_token)
                return true;
        if (!h || strncasecmp(h, "Bearer ", 7) != 0)
                return false;
        h += 7;
        while (*h == ' ')
                h++;
        digest(h, strlen(h), d);
        return CRYPTO_memcmp(d, s->token_digest, sizeof(d)) == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
        HttpServer *s = cls;
        HttpRequest rq = {.server = s, .conn = c, .path = url, .req_cls = req_cls, .result = MHD_YES};

        (void)version;
        (void)upload_data;
        /* The first call only announces the request (headers read). */
        if (*req_cls == NULL) {
                *req_cls = &s->request_marker;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                *upload_data_size = 0; /* a body on a GET is ignored */
                return MHD_YES;
        }
        if (s->closing)
                return MHD_NO;
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
                (void)http_reply_error(&rq, MHD_HTTP_METHOD_NOT_ALLOWED, "method-not-allowed",
                                       "Only GET and HEAD are served.");
                return rq.result;
        }
        if (!path_is_public(s, url) && !authorized(s, c)) {
                s->stats.unauthorized++;
                (void)http_reply_error(&rq, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                                       "This needs the header 'Authorization: Bearer TOKEN' with the token "
                                       "of [http] token-file.");
                return rq.result;
        }
        s->handler(s->userdata, &rq);
        if (!rq.answered)
                (void)http_reply_error(&rq, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                                       "The answer could not be made (out of memory?).");
        return rq.answered ? rq.result : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
        HttpServer *s = cls;

        (void)c;
        if (toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED)
                s->stats.timeouts++;
        if (!*req_cls || *req_cls == &s->request_marker)
                return;
        {
                HttpStream *st = *req_cls;

                *req_cls = NULL;
                st->timed_out = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED;
                stream_unref(st);
        }
}

/* ---- The loop ---- */

static void on_mhd_timer(uv_timer_t *t)
{
        http_server_run(t->data);
}

/* The epoll fd of libmicrohttpd is readable, on the loop thread. */
static void on_mhd_poll(uv_poll_t *p, int status, int events)
{
        (void)status;
        (void)events;
        http_server_run(p->data);
}

/* Lets libmicrohttpd do what it can without blocking, then arms the timer
 * for its next deadline (connection timeouts, buffered data, resumed
 * streams). */
static void http_server_run(HttpServer *s)
{
        MHD_UNSIGNED_LONG_LONG ms = 0;

        (void)MHD_run(s->mhd);
        if (s->closing)
                return;
        if (MHD_get_timeout(s->mhd, &ms) == MHD_YES)
                uv_timer_start(&s->timer, on_mhd_timer, (uint64_t)ms, 0);
        else
                uv_timer_stop(&s->timer);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
        char buf[512];

        (void)cls;
        vsnprintf(buf, sizeof(buf), fmt, ap);
        buf[strcspn(buf, "\n")] = '\0';
        log_warning("HTTP: %s", buf);
}

int http_server_set_token(HttpServer *s, const char *token)
{
        s->has_token = token != NULL;
        if (token)
                digest(token, strlen(token), s->token_digest);
        else
                memset(s->token_digest, 0, sizeof(s->token_digest));
        return 0;
}

int http_server_new(uv_loop_t *loop, const HttpServerOptions *o, HttpServer **ret)
{
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *ai = NULL;
        char service[8];
        const union MHD_DaemonInfo *info;
        unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
        HttpServer *s;
        int r, epfd;

        snprintf(service, sizeof(service), "%u", o->port);
        r = getaddrinfo(o->host, service, &hints, &ai);
        if (r != 0) {
                log_error("Cannot resolve the HTTP address '%s': %s", o->host ? o->host : "*", gai_strerror(r));
                return -EINVAL;
        }
        if (ai->ai_family == AF_INET6)
                flags |= MHD_USE_IPv6;

        s = calloc(1, sizeof(*s));
        if (!s) {
                freeaddrinfo(ai);
                return -ENOMEM;
        }
        s->loop = loop;
        s->handler = o->handler;
        s->userdata = o->userdata;
        s->public_paths = o->public_paths;
        (void)http_server_set_token(s, o->token);
        errno = 0;
        /* The logger goes first, so that messages about the options that
         * follow reach it too. */
        s->mhd = MHD_start_daemon(
            flags, o->port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
            MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
            (unsigned)(o->max_connections ? o->max_connections : HTTP_DEFAULT_MAX_CONNECTIONS),
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s ? o->timeout_s : HTTP_DEFAULT_TIMEOUT_S),
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
        r = errno;
        freeaddrinfo(ai);
        if (!s->mhd) {
                free(s);
                return r > 0 ? -r : -EADDRNOTAVAIL;
        }
        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
        s->port = info ? info->port : o->port;
        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        epfd = info ? info->epoll_fd : -1;
        if (epfd < 0 || (r = uv_poll_init(loop, &s->poll, epfd)) < 0) {
                MHD_stop_daemon(s->mhd);
                free(s);
                return epfd < 0 ? -EINVAL : r;
        }
        uv_timer_init(loop, &s->timer);
        s->poll.data = s->timer.data = s;
        uv_poll_start(&s->poll, UV_READABLE, on_mhd_poll);
        http_server_run(s);
        *ret = s;
        return 0;
}

uint16_t http_server_port(const HttpServer *s)
{
        return s->port;
}

void http_server_stats(const HttpServer *s, HttpServerStats *ret)
{
        *ret = s->stats;
}

static void on_server_closed(uv_handle_t *h)
{
        HttpServer *s = h->data;

        if (--s->open_handles > 0)
                return;
        /* The uv_poll no longer watches the epoll fd: libmicrohttpd may close
         * it now, with its sockets (each stream's notices run here). */
        MHD_stop_daemon(s->mhd);
        while (s->streams) /* a stream whose notices never came */
                stream_unref(s->streams);
        if (s->closed)
                s->closed(s->closed_userdata);
        free(s);
}

void http_server_close(HttpServer *s, void (*closed)(void *userdata), void *userdata)
{
        s->closed = closed;
        s->closed_userdata = userdata;
        /* libmicrohttpd stops only without suspended connections: wake them
         * to end, and let it take that in once. */
        for (HttpStream *st = s->streams; st; st = st->next) {
                st->closing = true;
                if (st->suspended) {
                        st->suspended = false;
                        MHD_resume_connection(st->conn);
                }
        }
        (void)MHD_run(s->mhd);
        s->closing = true;
        uv_timer_stop(&s->timer);
        s->open_handles = 2;
        uv_close((uv_handle_t *)&s->poll, on_server_closed);
        uv_close((uv_handle_t *)&s->timer, on_server_closed);
}
