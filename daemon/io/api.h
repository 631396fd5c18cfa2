/* api: the Airplane API requests the daemon makes, and what their outcomes mean.
 *
 * Builds URLs (ids escaped) and the fixed header set once, submits through
 * httpmux, and classifies every response into one ApiOutcome that the daemon
 * acts on. It never logs the key: the only copy outside the config lives in
 * the header list handed to libcurl. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "httpmux.h"

typedef enum ApiOutcome {
        API_OK,           /* 200 */
        API_AUTH,         /* 401: the key is wrong; hold every request */
        API_FORBIDDEN,    /* 403: the key may not read this session (a private one) */
        API_NOT_FOUND,    /* 404 */
        API_RATE_LIMITED, /* 429: hold every request until Retry-After */
        API_SERVER,       /* 5xx */
        API_CLIENT,       /* another 4xx, or a status we do not expect */
        API_TIMEOUT,
        API_NETWORK,   /* connect, reset, truncated transfer */
        API_TLS,       /* TLS handshake or certificate verification failed */
        API_TOO_LARGE, /* body over the bound */
        API_DECODE,    /* a 200 whose body is not a session */
        API_CANCELLED, /* shutting down */
        _API_OUTCOME_MAX,
} ApiOutcome;

typedef struct ApiOptions {
        const char *url; /* base URL, e.g. https://api.airplane.dev/v0, no trailing slash */
        const char *key;
        const char *team_id;  /* optional */
        const char *env_slug; /* optional */
} ApiOptions;

/* The header lines (with the key) that requests borrow. A reload builds a
 * new set; a request started before keeps the one it started with, so each
 * set is counted and freed when the last request using it is done. */
typedef struct ApiHeaders {
        unsigned refs; /* one per request in flight, plus one while current */
        HttpHeaders *list;
} ApiHeaders;

typedef struct Api {
        HttpMux *mux;
        ApiHeaders *headers;
        char *get_prefix; /* "{url}/sessions/get?id=" */
        size_t get_prefix_len;
        char *list_prefix; /* "{url}/sessions/list?" */
        bool answer_stale; /* see api_answer_stale() */
} Api;

int api_init(Api *a, HttpMux *mux, const ApiOptions *o);
void api_done(Api *a);

/* Applies new options (key, URL, team, env) to requests started from now on;
 * requests in flight finish with what they started with. On failure nothing
 * changes. */
int api_reconfigure(Api *a, const ApiOptions *o);

/* Percent-encodes everything but RFC 3986 unreserved characters. Returns
 * the length written, or -ENOBUFS when `n` is too small. */
int api_escape(const char *s, char *buf, size_t n);

/* GET /sessions/get?id=ID. Returns 0 (done runs later) or -errno. */
int api_get_session(Api *a, const char *id, httpmux_done_cb done, void *userdata);

/* GET /sessions/list with the given query (already escaped). */
int api_list_sessions(Api *a, const char *query, httpmux_done_cb done, void *userdata);

/* Only from inside a done callback of api_get_session() or
 * api_list_sessions(): true when the request went out with a key (or URL,
 * team, env) that api_reconfigure() has replaced since, so a 401 says
 * nothing about the key in use now. */
bool api_answer_stale(const Api *a);

ApiOutcome api_classify(const HttpResponse *r);
const char *api_outcome_to_string(ApiOutcome o);
