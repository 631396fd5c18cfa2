/* httpmux: libcurl's multi socket-action interface driven by a libuv loop.
 *
 * This is the only module that includes both uv.h and curl/curl.h; callers
 * see neither. One HttpMux owns one curl multi handle, its connection pool and
 * a pool of reusable transfers (easy handles with their body buffers), so a
 * request in steady state allocates nothing. All callbacks run on the loop
 * thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct uv_loop_s uv_loop_t;

typedef struct HttpMux HttpMux;

typedef enum HttpError {
        HTTP_OK = 0,        /* a complete response with a status code arrived (any status) */
        HTTP_ERR_TIMEOUT,   /* the request's timeout passed */
        HTTP_ERR_CONNECT,   /* name resolution or connection failed */
        HTTP_ERR_NETWORK,   /* reset, closed early, malformed response, other transport errors */
        HTTP_ERR_TOO_LARGE, /* the body exceeded max_body */
        HTTP_ERR_TLS,       /* handshake or peer verification failed */
        HTTP_ERR_CANCELLED, /* httpmux_close() ran while the request was in flight */
        HTTP_ERR_INTERNAL,  /* out of memory or libcurl refused the transfer */
        _HTTP_ERR_MAX,
} HttpError;

typedef struct HttpResponse {
        HttpError error;
        long status;      /* HTTP status code when error == HTTP_OK or HTTP_ERR_TOO_LARGE, else 0 */
        const char *body; /* NUL-terminated; valid only during the callback */
        size_t body_len;
        int64_t retry_after_ms; /* Retry-After (delta seconds or HTTP date) as ms from now; -1 if none */
        const char *error_text; /* libcurl's explanation when error != HTTP_OK, for logs */
        uint64_t done_usec;     /* CLOCK_MONOTONIC when the transfer completed */
} HttpResponse;

/* Called exactly once per accepted request, on the loop thread, never from
 * inside httpmux_get()/httpmux_post() themselves. It may submit new requests. */
typedef void (*httpmux_done_cb)(void *userdata, const HttpResponse *r);

typedef struct HttpMuxOptions {
        long max_connections;   /* cap on open connections (CURLMOPT_MAX_TOTAL_CONNECTIONS); 0: 16 */
        long timeout_ms;        /* default per-request timeout; 0: 10 s */
        size_t max_body;        /* response body bound; 0: 1 MiB */
        const char *ca_file;    /* extra CA bundle (PEM), added to the system roots; NULL: none */
        const char *user_agent; /* NULL: "sessionwatchd/VERSION" */
} HttpMuxOptions;

/* Counters for tests, metrics and the benchmark. All are cumulative since
 * httpmux_new() unless said otherwise. */
typedef struct HttpMuxStats {
        uint64_t requests;              /* accepted by httpmux_get()/httpmux_post() */
        uint64_t sockets_opened;        /* sockets libcurl opened for connections */
        uint64_t poll_contexts_created; /* uv_poll handles created (one per socket) */
        unsigned sockets_open;          /* now: opened and not yet closed by libcurl */
        unsigned poll_contexts;         /* now: uv_poll handles not yet freed (incl. closing) */
        unsigned transfers;             /* now: pooled easy handles, in flight or idle */
        unsigned transfers_idle;        /* now: pooled easy handles waiting for a request */
        size_t body_buffer_max;         /* largest response buffer ever allocated, bytes */
} HttpMuxStats;

const char *http_error_to_string(HttpError e);

/* Request header lines, "Name: value", in the order added; NULL is the
 * empty list. A request borrows its list until its `done` has run. */
typedef struct HttpHeaders HttpHeaders;

/* Appends "name: value". Returns 0, or -ENOMEM with the list unchanged. */
int http_headers_add(HttpHeaders **h, const char *name, const char *value);
/* Appends one line as it is: "Name:" with nothing after the colon keeps a
 * header the client would add by itself from being sent. */
int http_headers_add_line(HttpHeaders **h, const char *line);
/* Line i (from 0), or NULL past the end. */
const char *http_headers_get(const HttpHeaders *h, size_t i);
/* Wipes every line (one may hold a key) and frees the list. */
void http_headers_free(HttpHeaders *h);

/* Creates a mux on `loop`. `options` may be NULL; strings in it are copied.
 * The first mux initialises libcurl globally (curl_global_init) and the last
 * one freed cleans it up again, so the process needs no separate call; this is
 * not thread-safe, which is fine in a single-threaded daemon. Reads `ca_file`
 * once, here: -errno if it cannot be read. */
int httpmux_new(uv_loop_t *loop, const HttpMuxOptions *options, HttpMux **ret);

/* Sets the default per-request timeout (0: 10 s) for requests started from
 * now on; those in flight keep theirs. */
void httpmux_set_timeout(HttpMux *m, long timeout_ms);

/* Changes the cap on open connections (0: 16). Connections over a lower cap
 * close as their transfers end; nothing in flight is cut. Returns 0 or
 * -EINVAL when libcurl refuses. */
int httpmux_set_max_connections(HttpMux *m, long max_connections);

/* Starts a GET. `headers` is borrowed and must stay valid until `done` runs.
 * Returns 0 (and `done` runs later) or -errno (and `done` never runs):
 * -ECANCELED once httpmux_close() was called, -ENOMEM, -EINVAL for a URL
 * libcurl refuses. The default timeout applies. No Accept-Encoding is sent, so
 * bodies arrive as the server sent them. */
int httpmux_get(HttpMux *m, const char *url, const HttpHeaders *headers, httpmux_done_cb done,
                void *userdata);

/* Starts a POST of `body` (borrowed until `done`). timeout_ms 0 uses the
 * default. Redirects are never followed: a 3xx is reported as such. Without a
 * Content-Type in `headers` libcurl sends application/x-www-form-urlencoded. */
int httpmux_post(HttpMux *m, const char *url, const HttpHeaders *headers, const char *body,
                 size_t body_len, long timeout_ms, httpmux_done_cb done, void *userdata);

/* Requests started and not yet completed. */
unsigned httpmux_in_flight(const HttpMux *m);

void httpmux_debug_stats(const HttpMux *m, HttpMuxStats *ret);

/* Cancels what is in flight (their callbacks run with HTTP_ERR_CANCELLED, from
 * the loop, after this returns), closes every uv handle and the multi handle,
 * then calls `closed` (may be NULL) from the loop and frees `m`. The loop must
 * keep running until then. May be called from a `done` callback; call it once. */
void httpmux_close(HttpMux *m, void (*closed)(void *userdata), void *userdata);

/* The longest Retry-After taken as such, in seconds: a year. */
#define HTTPMUX_RETRY_AFTER_MAX_S ((int64_t)366 * 24 * 3600)

/* Parses a Retry-After value: delta-seconds or an HTTP-date, as milliseconds
 * from now (0 for a date in the past, at most HTTPMUX_RETRY_AFTER_MAX_S
 * seconds), or -1 if it is neither. Pure apart from reading the clock. */
int64_t httpmux_parse_retry_after(const char *v, size_t len);

/* Looks at one response header line as libcurl hands it over (status lines
 * included, with its CRLF): a status line forgets an earlier Retry-After
 * (*retry_after_ms = -1), a Retry-After line sets it, others leave it. */
void httpmux_header_line(const char *line, size_t n, int64_t *retry_after_ms);
