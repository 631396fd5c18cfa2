#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static const char *const outcome_names[_API_OUTCOME_MAX] = {
    [API_OK] = "ok",
    [API_AUTH] = "auth",
    [API_NOT_FOUND] = "not_found",
    [API_RATE_LIMITED] = "rate_limited",
    [API_SERVER] = "http_5xx",
    [API_CLIENT] = "http_4xx",
    [API_TIMEOUT] = "timeout",
    [API_NETWORK] = "network",
    [API_TLS] = "tls",
    [API_TOO_LARGE] = "too_large",
    [API_DECODE] = "decode",
    [API_CANCELLED] = "cancelled",
    [API_FORBIDDEN] = "forbidden",
};

const char *api_outcome_to_string(ApiOutcome o)
{
        return o < _API_OUTCOME_MAX ? outcome_names[o] : "invalid";
}

static void headers_unref(ApiHeaders *h)
{
        if (!h || --h->refs > 0)
                return;
        /* The header lines hold the key: the list is wiped as it is freed. */
        http_headers_free(h->list);
        free(h);
}

static int headers_new(const ApiOptions *o, ApiHeaders **ret)
{
        ApiHeaders *h = calloc(1, sizeof(*h));
        int r;

        if (!h)
                return -ENOMEM;
        h->refs = 1;
        if ((r = http_headers_add(&h->list, "X-Airplane-API-Key", o->key)) < 0 ||
            (r = http_headers_add(&h->list, "Accept", "application/json")) < 0 ||
            (o->team_id && *o->team_id && (r = http_headers_add(&h->list, "X-Team-ID", o->team_id)) < 0) ||
            (o->env_slug && *o->env_slug &&
             (r = http_headers_add(&h->list, "X-Airplane-Env-Slug", o->env_slug)) < 0)) {
                headers_unref(h);
                return r;
        }
        *ret = h;
        return 0;
}

int api_init(Api *a, HttpMux *mux, const ApiOptions *o)
{
        *a = (Api){.mux = mux};
        return api_reconfigure(a, o);
}

int api_reconfigure(Api *a, const ApiOptions *o)
{
        ApiHeaders *h = NULL;
        char *get_prefix = NULL, *list_prefix = NULL;
        int r;

        r = headers_new(o, &h);
        if (r < 0)
                return r;
        /* asprintf() leaves its pointer undefined on failure. */
        if (asprintf(&get_prefix, "%s/sessions/get?id=", o->url) < 0) {
                headers_unref(h);
                return -ENOMEM;
        }
        if (asprintf(&list_prefix, "%s/sessions/list?", o->url) < 0) {
                free(get_prefix);
                headers_unref(h);
                return -ENOMEM;
        }
        headers_unref(a->headers);
        free(a->get_prefix);
        free(a->list_prefix);
        a->headers = h;
        a->get_prefix = get_prefix;
        a->get_prefix_len = strlen(get_prefix);
        a->list_prefix = list_prefix;
        return 0;
}

void api_done(Api *a)
{
        /* Requests still in flight hold their own reference. */
        headers_unref(a->headers);
        free(a->get_prefix);
        free(a->list_prefix);
        *a = (Api){};
}

/* One request in flight: the headers it borrows and whom to tell. */
typedef struct ApiCall {
        Api *api;
        ApiHeaders *headers;
        httpmux_done_cb done;
        void *userdata;
} ApiCall;

/* httpmux's done callback, on the loop thread: passes the response on, then
 * lets go of the headers the request used. */
static void call_done_cb(void *userdata, const HttpResponse *r)
{
        ApiCall *c = userdata;

        /* httpmux answers one request at a time, never from inside another
         * request's callback, so one flag serves api_answer_stale(). */
        c->api->answer_stale = c->headers != c->api->headers;
        c->done(c->userdata, r);
        c->api->answer_stale = false;
        headers_unref(c->headers);
        free(c);
}

static int api_submit(Api *a, const char *url, httpmux_done_cb done, void *userdata)
{
        ApiCall *c = malloc(sizeof(*c));
        int r;

        if (!c)
                return -ENOMEM;
        *c = (ApiCall){.api = a, .headers = a->headers, .done = done, .userdata = userdata};
        r = httpmux_get(a->mux, url, a->headers->list, call_done_cb, c);
        if (r < 0) {
                free(c);
                return r;
        }
        a->headers->refs++;
        return 0;
}

int api_escape(const char *s, char *buf, size_t n)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t j = 0;

        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                             c == '-' || c == '_' || c == '.' || c == '~';

                if (j + (plain ? 1 : 3) >= n)
                        return -ENOBUFS;
                if (plain)
                        buf[j++] = (char)c;
                else {
                        buf[j++] = '%';
                        buf[j++] = hex[c >> 4];
                        buf[j++] = hex[c & 15];
                }
        }
        if (j >= n)
                return -ENOBUFS;
        buf[j] = '\0';
        return (int)j;
}

int api_get_session(Api *a, const char *id, httpmux_done_cb done, void *userdata)
{
        /* Ids are at most 64 bytes; escaped that is 192. The URL lives on the
         * stack because libcurl copies it. */
        char url[a->get_prefix_len + 3 * 256 + 1];
        int r;

        memcpy(url, a->get_prefix, a->get_prefix_len);
        r = api_escape(id, url + a->get_prefix_len, sizeof(url) - a->get_prefix_len);
        if (r < 0)
                return r;
        return api_submit(a, url, done, userdata);
}

int api_list_sessions(Api *a, const char *query, httpmux_done_cb done, void *userdata)
{
        char *url;
        int r;

        if (asprintf(&url, "%s%s", a->list_prefix, query) < 0)
                return -ENOMEM;
        r = api_submit(a, url, done, userdata);
        free(url);
        return r;
}

bool api_answer_stale(const Api *a)
{
        return a->answer_stale;
}

ApiOutcome api_classify(const HttpResponse *r)
{
        switch (r->error) {
        case HTTP_OK:
                break;
        case HTTP_ERR_TIMEOUT:
                return API_TIMEOUT;
        case HTTP_ERR_TOO_LARGE:
                return API_TOO_LARGE;
        case HTTP_ERR_CANCELLED:
                return API_CANCELLED;
        case HTTP_ERR_TLS:
                /* A certificate or a handshake that fails is a set-up
                 * problem (a wrong URL, a missing CA), not a flaky network:
                 * it gets its own name so that it can be told apart. */
                return API_TLS;
        default:
                return API_NETWORK;
        }

        switch (r->status) {
        case 200:
                return API_OK;
        case 401:
                return API_AUTH;
        case 403:
                /* Sessions can be private: a 403 speaks of one session, not
                 * of the key, so it must not hold the others. */
                return API_FORBIDDEN;
        case 404:
                return API_NOT_FOUND;
        case 429:
                return API_RATE_LIMITED;
        default:
                if (r->status >= 500 && r->status <= 599)
                        return API_SERVER;
                return API_CLIENT;
        }
}
