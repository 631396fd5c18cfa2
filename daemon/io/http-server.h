/* http-server: the daemon's HTTP listener ([http] listen).
 *
 * libmicrohttpd runs in its "external epoll" mode: its epoll fd is watched
 * by a uv_poll on the daemon's loop and its timeouts by a uv_timer, so every
 * request is answered on the loop thread and the daemon's data needs no
 * lock. The server knows nothing of what it serves: each request goes to one
 * handler, which answers it before returning, either with a whole body or
 * by turning it into a stream that it feeds as data comes (server-sent
 * events).
 *
 * What the server does for every answer: the security headers
 * (Content-Security-Policy: default-src 'self', X-Content-Type-Options:
 * nosniff, Referrer-Policy: no-referrer, Cache-Control: no-store), only GET
 * and HEAD, and, with a token, `Authorization: Bearer TOKEN` on every path
 * but the public ones, compared in constant time. No CORS header is ever
 * sent. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct uv_loop_s uv_loop_t;
typedef struct HttpServer HttpServer;
typedef struct HttpRequest HttpRequest;
typedef struct HttpStream HttpStream;

/* Answers `rq` (with one of the http_reply*() calls) before it returns. A
 * handler that answers nothing gets a 500 sent for it. */
typedef void (*HttpHandler)(void *userdata, HttpRequest *rq);

typedef struct HttpServerOptions {
        const char *host; /* NULL: every address; an IPv6 literal without brackets */
        uint16_t port;    /* 0: any free port (see http_server_port()) */
        const char *token; /* NULL: no authorization asked */
        const char *const *public_paths; /* NULL-terminated; served without the token */
        unsigned max_connections;        /* 0: 64 */
        unsigned timeout_s;              /* idle connections are closed after it; 0: 10 */
        HttpHandler handler;
        void *userdata;
} HttpServerOptions;

typedef struct HttpServerStats {
        uint64_t by_class[6]; /* answers by status class: [2] 2xx, [4] 4xx, [5] 5xx */
        uint64_t unauthorized;
        uint64_t timeouts; /* connections closed by the idle timeout */
} HttpServerStats;

/* Listens and starts serving. Returns 0, -EADDRINUSE and the like, or
 * -EINVAL for a host that does not resolve. */
int http_server_new(uv_loop_t *loop, const HttpServerOptions *o, HttpServer **ret);

/* The port actually bound (useful with port 0). */
uint16_t http_server_port(const HttpServer *s);

/* Replaces the token (a reload); NULL asks for none. Returns 0 or -ENOMEM. */
int http_server_set_token(HttpServer *s, const char *token);

void http_server_stats(const HttpServer *s, HttpServerStats *ret);

/* Stops listening, ends every stream (their closed() callbacks run), closes
 * the handles and frees `s` from a close callback; then calls
 * `closed(userdata)` (may be NULL). */
void http_server_close(HttpServer *s, void (*closed)(void *userdata), void *userdata);

/* ---- In the handler ---- */

/* The path, without the query. */
const char *http_request_path(const HttpRequest *rq);
/* A query argument (decoded), or NULL. */
const char *http_request_arg(const HttpRequest *rq, const char *name);
/* A request header, or NULL. */
const char *http_request_header(const HttpRequest *rq, const char *name);
/* Calls cb for each query argument in order (value may be NULL for "?a");
 * stops at and returns the first non-zero return. */
int http_request_each_arg(const HttpRequest *rq, int (*cb)(void *ud, const char *key, const char *value),
                          void *ud);

typedef enum HttpBody {
        HTTP_BODY_STATIC, /* lives as long as the server */
        HTTP_BODY_COPY,   /* copied now */
        HTTP_BODY_TAKE,   /* malloc'd; the server frees it */
} HttpBody;

/* Answers with a whole body. `extra_header` is one "Name: value" line or
 * NULL. Returns 0 or -ENOMEM (a TAKE body is freed in every case). */
int http_reply(HttpRequest *rq, unsigned status, const char *content_type, const void *body, size_t len,
               HttpBody mode, const char *extra_header);

/* {"error":code,"message":message} with `status`. The message is ours
 * (escaped all the same). */
int http_reply_error(HttpRequest *rq, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

typedef struct HttpStreamOps {
        /* Copies up to `max` bytes of what is to be sent next into buf and
         * returns their count; 0 when there is nothing to send now (the
         * stream sleeps until http_stream_wake()); -1 to end the answer. */
        ssize_t (*fill)(void *userdata, char *buf, size_t max);
        /* The connection ended (the client left, was cut off or timed out,
         * or the server closes): no call on the stream follows; `userdata`
         * may be freed. */
        void (*closed)(void *userdata, bool timed_out);
} HttpStreamOps;

/* Answers 200 with a body of unknown length that `ops->fill` produces.
 * Returns 0 or -ENOMEM (the request then gets nothing: the connection is
 * closed). */
int http_reply_stream(HttpRequest *rq, const char *content_type, const HttpStreamOps *ops, void *userdata,
                      HttpStream **ret);

/* There may be something to send: fill() is called again soon. */
void http_stream_wake(HttpStream *st);

/* Cuts the connection off now (a client that does not keep up); closed()
 * follows on the loop. */
void http_stream_cut(HttpStream *st);
