/* metrics-http: the Prometheus endpoint, `GET /metrics` on [metrics] listen.
 *
 * libmicrohttpd runs in its "external epoll" mode: its epoll fd is watched
 * by a uv_poll on the daemon's loop and its timeouts by a uv_timer, so every
 * request is answered on the loop thread and the counters need no lock. A
 * scrape renders the text through a callback. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Fills *ret_text (malloc'd, the caller frees it) and *ret_len with the
 * metrics in the Prometheus text format. Returns 0 or -errno. Runs on the
 * loop thread. */
typedef int (*metrics_render_cb)(void *userdata, char **ret_text, size_t *ret_len);

typedef struct MetricsHttp MetricsHttp;

typedef struct MetricsHttpStats {
        uint64_t scrapes; /* 200 answers to GET /metrics */
        uint64_t errors;  /* other answers */
} MetricsHttpStats;

/* Listens on host:port (host NULL: every address; an IPv6 literal without
 * brackets). Returns 0, -EADDRINUSE and the like, or -EINVAL for a host that
 * does not resolve. */
int metrics_http_new(uv_loop_t *loop, const char *host, uint16_t port, metrics_render_cb render, void *userdata,
                     MetricsHttp **ret);

/* The port actually bound (useful with port 0). */
uint16_t metrics_http_port(const MetricsHttp *m);

void metrics_http_stats(const MetricsHttp *m, MetricsHttpStats *ret);

/* Stops listening, closes the handles and frees `m` from a close callback;
 * then calls `closed(userdata)` (may be NULL). */
void metrics_http_close(MetricsHttp *m, void (*closed)(void *userdata), void *userdata);
