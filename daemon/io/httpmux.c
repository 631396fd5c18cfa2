/* httpmux: libcurl's multi socket-action interface driven by a libuv loop.
 *
 * How the pieces fit:
 *
 * - One uv_timer carries libcurl's single timeout (CURLMOPT_TIMERFUNCTION).
 *   Even a 0 ms timeout goes through the timer, so libcurl is never re-entered
 *   from one of its own callbacks.
 *
 * - One PollContext (a uv_poll_t) per socket, for the socket's whole life.
 *   Sockets are opened and closed through CURLOPT_OPENSOCKETFUNCTION and
 *   CURLOPT_CLOSESOCKETFUNCTION, so we know exactly when a connection's socket
 *   comes and goes: the context is created when the socket is opened and closed
 *   (uv_close, freed in its close callback) when libcurl closes the socket.
 *   CURL_POLL_REMOVE only stops polling: an idle keep-alive connection keeps
 *   its context and gets it back (through a per-fd table and
 *   curl_multi_assign) when a later transfer reuses the connection. Sockets
 *   that libcurl did not open through us (the threaded resolver's wake-up
 *   socketpair) get a context that lives from their first CURL_POLL_IN/OUT to
 *   CURL_POLL_REMOVE, which libcurl announces before it closes them.
 *
 * - Transfers (easy handle, body buffer, error buffer) are pooled. A request
 *   in steady state sets only its per-request options on a pooled handle and
 *   allocates nothing here.
 *
 * - Completions are collected with curl_multi_info_read() after every
 *   curl_multi_socket_action(), outside libcurl's callbacks, and `done` runs
 *   from there, so it may submit new requests or even close the mux.
 *
 * Everything runs on the loop's thread. */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <uv.h>

#include "httpmux.h"

#ifndef SW_VERSION
#define SW_VERSION "0"
#endif

#define DEFAULT_MAX_CONNECTIONS 16L
#define DEFAULT_TIMEOUT_MS 10000L
#define DEFAULT_MAX_BODY ((size_t)1024 * 1024)
/* A connect (TCP and TLS handshake) longer than this fails even when the
 * request's own timeout is longer, so a black-holed address is given up on
 * quickly; the request's timeout still bounds it when shorter. */
#define CONNECT_TIMEOUT_MS 5000L
/* Response buffers up to this size stay with their pooled transfer; larger ones
 * (rare, for unusually big bodies) are freed when the transfer is released, so
 * the pool does not pin max_body bytes per transfer. */
#define BODY_KEEP_MAX ((size_t)64 * 1024)
#define BODY_MIN_ALLOC ((size_t)4096)
/* Bound on a CA bundle we read into memory. */
#define CA_FILE_MAX ((size_t)16 * 1024 * 1024)

typedef struct PollContext PollContext;
typedef struct Transfer Transfer;

struct PollContext {
        uv_poll_t poll;
        HttpMux *mux;
        curl_socket_t fd;
        /* Opened by opensocket_cb: lives until closesocket_cb. Otherwise the
         * socket is libcurl's own and the context lives until CURL_POLL_REMOVE. */
        bool ours;
        /* libcurl waits on this socket (between its POLL_IN/OUT and
         * POLL_REMOVE), and the uv events we poll for now (0: stopped). An
         * idle keep-alive socket stays in epoll for reading after
         * CURL_POLL_REMOVE: libcurl re-adds it for the next request moments
         * later, and leaving it registered saves an epoll_ctl() pair per
         * request. It reads nothing while idle, unless the server closes. */
        bool wanted;
        int events;
};

struct Transfer {
        HttpMux *mux;
        CURL *easy;
        /* Linked into the mux's in-flight list, or (next only) its idle or
         * cancelled list. */
        Transfer *prev, *next;

        httpmux_done_cb done;
        void *userdata;

        char *body;
        size_t body_len;
        size_t body_cap;
        int64_t retry_after_ms;
        bool too_large;
        bool out_of_memory;

        char error[CURL_ERROR_SIZE];
};

struct HttpMux {
        uv_loop_t *loop;
        CURLM *multi;
        uv_timer_t timer;
        /* libcurl's "call me again at once" (a 0 ms timeout). An idle handle
         * runs it on the next loop turn, after epoll has been asked: a 0 ms
         * timer restarted from its own callback would run again before
         * epoll, over and over, and libcurl would then find every response
         * by poll(2)ing each socket itself instead of being told. */
        uv_idle_t kick;
        bool kick_closed;
        /* A proxy variable was set at start: let libcurl honour it. */
        bool proxy_from_env;

        long max_connections;
        long timeout_ms;
        size_t max_body;
        char *user_agent;
        char *ca_blob; /* NULL: libcurl's default trust store only */
        size_t ca_blob_len;

        /* fd → context, for every socket that has one. A socket's fd is only
         * reused by the kernel after close(2), and the slot is cleared before
         * that, so a slot never names a stale context. */
        PollContext **sockets;
        size_t n_sockets;

        Transfer *in_flight;
        Transfer *idle;
        Transfer *cancelled;
        unsigned n_in_flight;

        HttpMuxStats stats;

        bool closing;
        bool timer_closed;
        void (*closed)(void *userdata);
        void *closed_userdata;
};

static unsigned global_refs;

static const char *const http_error_table[_HTTP_ERR_MAX] = {
    [HTTP_OK] = "ok",
    [HTTP_ERR_TIMEOUT] = "timeout",
    [HTTP_ERR_CONNECT] = "connect",
    [HTTP_ERR_NETWORK] = "network",
    [HTTP_ERR_TOO_LARGE] = "too-large",
    [HTTP_ERR_TLS] = "tls",
    [HTTP_ERR_CANCELLED] = "cancelled",
    [HTTP_ERR_INTERNAL] = "internal",
};

const char *http_error_to_string(HttpError e)
{
        if (e < 0 || e >= _HTTP_ERR_MAX)
                return NULL;
        return http_error_table[e];
}

static uint64_t now_usec(clockid_t clock)
{
        struct timespec ts;

        if (clock_gettime(clock, &ts) < 0)
                return 0;
        return (uint64_t)ts.tv_sec * UINT64_C(1000000) + (uint64_t)ts.tv_nsec / 1000;
}

static int global_ref(void)
{
        if (global_refs == 0 && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -ENOMEM;
        global_refs++;
        return 0;
}

static void global_unref(void)
{
        assert(global_refs > 0);
        if (--global_refs == 0)
                curl_global_cleanup();
}

static HttpError http_error_from_curl(CURLcode code, const Transfer *t)
{
        switch (code) {
        case CURLE_OK:
                return HTTP_OK;
        case CURLE_OPERATION_TIMEDOUT:
                return HTTP_ERR_TIMEOUT;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_CONNECT:
                return HTTP_ERR_CONNECT;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_ENGINE_NOTFOUND:
        case CURLE_SSL_ENGINE_SETFAILED:
        case CURLE_SSL_ENGINE_INITFAILED:
        case CURLE_SSL_SHUTDOWN_FAILED:
        case CURLE_SSL_CRL_BADFILE:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_SSL_INVALIDCERTSTATUS:
        case CURLE_SSL_CLIENTCERT:
        case CURLE_USE_SSL_FAILED:
                return HTTP_ERR_TLS;
        case CURLE_FILESIZE_EXCEEDED:
                return HTTP_ERR_TOO_LARGE;
        case CURLE_WRITE_ERROR:
                /* Only our write callback fails writes: either the body passed
                 * max_body or the buffer could not grow. */
                if (t->too_large)
                        return HTTP_ERR_TOO_LARGE;
                return HTTP_ERR_INTERNAL;
        case CURLE_OUT_OF_MEMORY:
        case CURLE_FAILED_INIT:
        case CURLE_BAD_FUNCTION_ARGUMENT:
        case CURLE_URL_MALFORMAT:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_NOT_BUILT_IN:
                return HTTP_ERR_INTERNAL;
        default:
                /* RECV_ERROR, SEND_ERROR, GOT_NOTHING, PARTIAL_FILE,
                 * WEIRD_SERVER_REPLY, HTTP2, HTTP2_STREAM and the like: the
                 * transport failed before a complete response arrived. */
                return HTTP_ERR_NETWORK;
        }
}

int64_t httpmux_parse_retry_after(const char *v, size_t len)
{
        char buf[128];
        int64_t seconds = 0;
        time_t when;
        bool digits = true;

        while (len > 0 && (*v == ' ' || *v == '\t')) {
                v++;
                len--;
        }
        while (len > 0 &&
               (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\r' || v[len - 1] == '\n'))
                len--;
        if (len == 0 || len >= sizeof(buf))
                return -1;

        for (size_t i = 0; i < len; i++)
                if (v[i] < '0' || v[i] > '9') {
                        digits = false;
                        break;
                }
        if (digits) {
                for (size_t i = 0; i < len; i++) {
                        seconds = seconds * 10 + (v[i] - '0');
                        /* Anything beyond a year is as good as forever; clamp
                         * instead of overflowing. */
                        if (seconds > HTTPMUX_RETRY_AFTER_MAX_S)
                                seconds = HTTPMUX_RETRY_AFTER_MAX_S;
                }
                return seconds * 1000;
        }

        /* curl_getdate() is a pure parser that touches no handle, so calling
         * it from the header callback does not re-enter libcurl. */
        memcpy(buf, v, len);
        buf[len] = '\0';
        when = curl_getdate(buf, NULL);
        if (when == (time_t)-1)
                return -1;

        /* In seconds first: a date in year 300000000 parses, and its
         * milliseconds would not fit. */
        int64_t now_ms = (int64_t)(now_usec(CLOCK_REALTIME) / 1000);
        int64_t now_s = now_ms / 1000;
        if ((int64_t)when <= now_s)
                return 0;
        if ((int64_t)when - now_s > HTTPMUX_RETRY_AFTER_MAX_S)
                return (int64_t)HTTPMUX_RETRY_AFTER_MAX_S * 1000;
        int64_t delta_ms = (int64_t)when * 1000 - now_ms;
        return delta_ms > 0 ? delta_ms : 0;
}

/* libcurl write callback: runs inside curl_multi_socket_action() with a piece
 * of the response body. Returning less than the size fails the transfer with
 * CURLE_WRITE_ERROR, which is how a body over max_body is cut short even when
 * no Content-Length announced it. */
static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        Transfer *t = userdata;
        size_t n = size * nmemb;
        size_t max_body = t->mux->max_body;

        if (n > max_body - t->body_len) {
                t->too_large = true;
                return 0;
        }

        if (t->body_len + n + 1 > t->body_cap) {
                size_t cap = t->body_cap > 0 ? t->body_cap : BODY_MIN_ALLOC;
                char *p;

                while (cap < t->body_len + n + 1)
                        cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
                /* Never allocate past the bound (+1 for the NUL). */
                if (cap > max_body + 1)
                        cap = max_body + 1;

                p = realloc(t->body, cap);
                if (!p) {
                        t->out_of_memory = true;
                        return 0;
                }
                t->body = p;
                t->body_cap = cap;
                if (cap > t->mux->stats.body_buffer_max)
                        t->mux->stats.body_buffer_max = cap;
        }

        memcpy(t->body + t->body_len, ptr, n);
        t->body_len += n;
        return n;
}

void httpmux_header_line(const char *line, size_t n, int64_t *retry_after_ms)
{
        static const char name[] = "retry-after:";

        /* A new status line starts a new response (after a 100 Continue, for
         * example): forget what an earlier one said. */
        if (n >= 5 && memcmp(line, "HTTP/", 5) == 0)
                *retry_after_ms = -1;
        else if (n > sizeof(name) - 1 && strncasecmp(line, name, sizeof(name) - 1) == 0)
                *retry_after_ms = httpmux_parse_retry_after(line + sizeof(name) - 1, n - (sizeof(name) - 1));
}

/* libcurl header callback: runs inside curl_multi_socket_action() once per
 * header line, status lines included. Only Retry-After is looked at; nothing
 * is copied otherwise. */
static size_t header_cb(char *buffer, size_t size, size_t nitems, void *userdata)
{
        Transfer *t = userdata;
        size_t n = size * nitems;

        httpmux_header_line(buffer, n, &t->retry_after_ms);
        return n;
}

static int socket_table_set(HttpMux *m, curl_socket_t fd, PollContext *c)
{
        assert(fd >= 0);

        if ((size_t)fd >= m->n_sockets) {
                size_t n = m->n_sockets > 0 ? m->n_sockets : 64;
                PollContext **p;

                if (!c)
                        return 0;
                while (n <= (size_t)fd)
                        n *= 2;
                p = realloc(m->sockets, n * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                memset(p + m->n_sockets, 0, (n - m->n_sockets) * sizeof(*p));
                m->sockets = p;
                m->n_sockets = n;
        }

        m->sockets[fd] = c;
        return 0;
}

static PollContext *socket_table_get(HttpMux *m, curl_socket_t fd)
{
        if (fd < 0 || (size_t)fd >= m->n_sockets)
                return NULL;
        return m->sockets[fd];
}

static void mux_maybe_finish_close(HttpMux *m);

/* libuv close callback: runs on the loop after uv_close() of a poll context;
 * only now may its memory go. */
static void on_poll_close(uv_handle_t *handle)
{
        PollContext *c = handle->data;
        HttpMux *m = c->mux;

        free(c);
        assert(m->stats.poll_contexts > 0);
        m->stats.poll_contexts--;
        mux_maybe_finish_close(m);
}

static int poll_context_new(HttpMux *m, curl_socket_t fd, bool ours, PollContext **ret)
{
        PollContext *c;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;

        r = uv_poll_init_socket(m->loop, &c->poll, fd);
        if (r < 0) {
                /* The handle never reached the loop: free directly. */
                free(c);
                return r;
        }
        c->poll.data = c;
        c->mux = m;
        c->fd = fd;
        c->ours = ours;
        m->stats.poll_contexts++;
        m->stats.poll_contexts_created++;

        r = socket_table_set(m, fd, c);
        if (r < 0) {
                uv_close((uv_handle_t *)&c->poll, on_poll_close);
                return r;
        }

        *ret = c;
        return 0;
}

/* Forgets the context of `fd` and closes it. uv_close() of a poll handle
 * stops polling right away (the fd leaves epoll), so the caller may close(2)
 * the fd as soon as this returns; the memory goes in on_poll_close(). */
static void poll_context_close(HttpMux *m, PollContext *c)
{
        if (socket_table_get(m, c->fd) == c)
                m->sockets[c->fd] = NULL;
        uv_close((uv_handle_t *)&c->poll, on_poll_close);
}

static void mux_drain(HttpMux *m);

static void mux_socket_action(HttpMux *m, curl_socket_t fd, int flags)
{
        int running;

        if (m->closing)
                return;

        (void)curl_multi_socket_action(m->multi, fd, flags, &running);
        mux_drain(m);
}

/* libuv poll callback: runs on the loop when a socket libcurl waits on is
 * ready, or failed (status < 0), which libcurl learns as CURL_CSELECT_ERR. */
static void on_poll_event(uv_poll_t *handle, int status, int events)
{
        PollContext *c = handle->data;
        int flags = 0;

        /* libuv stops a poll handle itself when it reports an error. */
        if (status < 0)
                c->events = 0;
        if (!c->wanted) {
                /* An idle connection woke up: the server closed it (or sent
                 * something unasked). libcurl finds out when it next picks
                 * the connection; until then, stop listening to it. */
                (void)uv_poll_stop(&c->poll);
                c->events = 0;
                return;
        }
        if (status < 0)
                flags = CURL_CSELECT_ERR;
        else {
                if (events & UV_READABLE)
                        flags |= CURL_CSELECT_IN;
                if (events & UV_WRITABLE)
                        flags |= CURL_CSELECT_OUT;
        }

        mux_socket_action(c->mux, c->fd, flags);
}

/* libcurl socket callback (CURLMOPT_SOCKETFUNCTION): runs inside
 * curl_multi_socket_action(), curl_multi_add_handle(),
 * curl_multi_remove_handle() or curl_multi_cleanup(). It only (re)arms or stops
 * polling; curl_multi_assign() is the one libcurl call documented as fine
 * here. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
        HttpMux *m = userp;
        PollContext *c = socketp;
        int events = 0;

        if (!c)
                c = socket_table_get(m, fd);

        if (what == CURL_POLL_REMOVE) {
                if (!c)
                        return 0;
                if (c->ours) {
                        /* The connection may go back to the cache and be reused:
                         * keep the context until libcurl closes the socket, and
                         * keep polling it for reading (see PollContext). A
                         * writable socket would fire at once: stop that. */
                        c->wanted = false;
                        if (c->events & UV_WRITABLE) {
                                (void)uv_poll_stop(&c->poll);
                                c->events = 0;
                        }
                        /* An idle connection must not keep the loop alive. */
                        uv_unref((uv_handle_t *)&c->poll);
                } else
                        /* libcurl closes its own sockets right after this. */
                        poll_context_close(m, c);
                return 0;
        }

        if (m->closing)
                return 0;

        if (!c) {
                if (poll_context_new(m, fd, false, &c) < 0)
                        return -1;
        }
        if (!socketp)
                (void)curl_multi_assign(m->multi, fd, c);

        if (what & CURL_POLL_IN)
                events |= UV_READABLE;
        if (what & CURL_POLL_OUT)
                events |= UV_WRITABLE;

        c->wanted = true;
        uv_ref((uv_handle_t *)&c->poll);
        /* libuv re-registers the fd with epoll on every uv_poll_start(), even
         * for the same events: skip the call when nothing changes. */
        if (events == c->events)
                return 0;
        if (uv_poll_start(&c->poll, events, on_poll_event) < 0)
                return -1;
        c->events = events;
        return 0;
}

/* libuv timer callback: runs on the loop when libcurl's timeout expires. */
static void on_timer_fire(uv_timer_t *handle)
{
        mux_socket_action(handle->data, CURL_SOCKET_TIMEOUT, 0);
}

/* libcurl timer callback (CURLMOPT_TIMERFUNCTION): runs inside libcurl's multi
 * functions. A 0 ms timeout also starts the uv timer rather than calling
 * curl_multi_socket_action() from here, which would recurse into libcurl. */
/* libuv idle callback: runs once on the next loop turn after libcurl asked
 * to be called again at once. */
static void on_kick(uv_idle_t *handle)
{
        (void)uv_idle_stop(handle);
        mux_socket_action(handle->data, CURL_SOCKET_TIMEOUT, 0);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
        HttpMux *m = userp;

        if (m->closing)
                return 0;
        if (timeout_ms <= 0) {
                (void)uv_timer_stop(&m->timer);
                if (timeout_ms < 0)
                        return uv_idle_stop(&m->kick) < 0 ? -1 : 0;
                return uv_idle_start(&m->kick, on_kick) < 0 ? -1 : 0;
        }
        (void)uv_idle_stop(&m->kick);
        return uv_timer_start(&m->timer, on_timer_fire, (uint64_t)timeout_ms, 0) < 0 ? -1 : 0;
}

/* libcurl open-socket callback: runs inside curl_multi_socket_action() when a
 * connection is about to be made. The socket's poll context is born here, so
 * it lives exactly as long as the socket. */
static curl_socket_t opensocket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
        HttpMux *m = clientp;
        PollContext *c;
        int fd;

        fd = socket(address->family, address->socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, address->protocol);
        if (fd < 0)
                return CURL_SOCKET_BAD;

        if (poll_context_new(m, fd, true, &c) < 0) {
                close(fd);
                return CURL_SOCKET_BAD;
        }

        m->stats.sockets_opened++;
        m->stats.sockets_open++;
        return fd;
}

/* libcurl close-socket callback: runs inside libcurl's multi functions when a
 * connection (or a failed connection attempt) goes away. The context is
 * closed first, which takes the fd out of epoll, and only then is the fd
 * closed, so a new socket that gets the same number starts clean. */
static int closesocket_cb(void *clientp, curl_socket_t fd)
{
        HttpMux *m = clientp;
        PollContext *c = socket_table_get(m, fd);

        if (c) {
                if (c->ours) {
                        assert(m->stats.sockets_open > 0);
                        m->stats.sockets_open--;
                }
                poll_context_close(m, c);
        }

        return close(fd) < 0 ? 1 : 0;
}

static void transfer_free(Transfer *t)
{
        if (!t)
                return;
        if (t->easy)
                curl_easy_cleanup(t->easy);
        assert(t->mux->stats.transfers > 0);
        t->mux->stats.transfers--;
        free(t->body);
        free(t);
}

/* Creates a pooled transfer with every option that does not change between
 * requests. */
static int transfer_new(HttpMux *m, Transfer **ret)
{
        Transfer *t;
        CURL *e;
        bool ok = true;

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->mux = m;
        m->stats.transfers++;

        e = t->easy = curl_easy_init();
        if (!e) {
                transfer_free(t);
                return -ENOMEM;
        }

        ok = ok && curl_easy_setopt(e, CURLOPT_PRIVATE, t) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_WRITEDATA, t) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_HEADERDATA, t) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, opensocket_cb) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, m) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, closesocket_cb) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, m) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)m->max_body) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
        ok = ok && curl_easy_setopt(e, CURLOPT_USERAGENT, m->user_agent) == CURLE_OK;
        /* Without a proxy in the environment, say so once: libcurl would
         * otherwise look up (and copy) the proxy variables on every request. */
        if (!m->proxy_from_env)
                ok = ok && curl_easy_setopt(e, CURLOPT_PROXY, "") == CURLE_OK;
        if (ok && m->ca_blob) {
                /* The mux outlives every easy handle, so libcurl need not copy. */
                struct curl_blob blob = {
                    .data = m->ca_blob,
                    .len = m->ca_blob_len,
                    .flags = CURL_BLOB_NOCOPY,
                };
                ok = curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob) == CURLE_OK;
        }
        if (!ok) {
                transfer_free(t);
                return -ENOMEM;
        }
        /* HTTP/2 over TLS when the server offers it (ALPN), HTTP/1.1 otherwise.
         * A libcurl built without HTTP/2 refuses this; HTTP/1.1 then is fine. */
        (void)curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);

        *ret = t;
        return 0;
}

static int transfer_acquire(HttpMux *m, Transfer **ret)
{
        Transfer *t = m->idle;

        if (!t)
                return transfer_new(m, ret);

        m->idle = t->next;
        t->next = NULL;
        assert(m->stats.transfers_idle > 0);
        m->stats.transfers_idle--;
        *ret = t;
        return 0;
}

static void transfer_release(HttpMux *m, Transfer *t)
{
        t->done = NULL;
        t->userdata = NULL;
        t->prev = NULL;
        if (t->body_cap > BODY_KEEP_MAX) {
                free(t->body);
                t->body = NULL;
                t->body_cap = 0;
        }
        t->body_len = 0;

        t->next = m->idle;
        m->idle = t;
        m->stats.transfers_idle++;
}

static void in_flight_link(HttpMux *m, Transfer *t)
{
        t->prev = NULL;
        t->next = m->in_flight;
        if (m->in_flight)
                m->in_flight->prev = t;
        m->in_flight = t;
        m->n_in_flight++;
}

static void in_flight_unlink(HttpMux *m, Transfer *t)
{
        if (t->prev)
                t->prev->next = t->next;
        else
                m->in_flight = t->next;
        if (t->next)
                t->next->prev = t->prev;
        t->prev = t->next = NULL;
        assert(m->n_in_flight > 0);
        m->n_in_flight--;
}

static void transfer_notify(Transfer *t, HttpError error, CURLcode code)
{
        HttpResponse r = {
            .error = error,
            .body = "",
            .retry_after_ms = -1,
            .done_usec = now_usec(CLOCK_MONOTONIC),
        };

        if (error == HTTP_OK) {
                long status = 0;

                (void)curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
                r.status = status;
                r.retry_after_ms = t->retry_after_ms;
                if (t->body) {
                        t->body[t->body_len] = '\0';
                        r.body = t->body;
                        r.body_len = t->body_len;
                }
        } else if (error == HTTP_ERR_CANCELLED)
                r.error_text = "cancelled";
        else if (error == HTTP_ERR_TOO_LARGE) {
                long status = 0;

                /* The status line did arrive: callers that do not need the
                 * body (a webhook's 200) can still act on it. */
                (void)curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
                r.status = status;
                snprintf(t->error, sizeof(t->error), "response body exceeds %zu bytes", t->mux->max_body);
                r.error_text = t->error;
        } else if (t->out_of_memory)
                r.error_text = "out of memory for the response body";
        else
                r.error_text = t->error[0] ? t->error : curl_easy_strerror(code);

        t->done(t->userdata, &r);
}

/* Collects finished transfers. Runs on the loop right after
 * curl_multi_socket_action() returned, so removing handles and calling `done`
 * (which may submit, or close the mux) is safe here. */
static void mux_drain(HttpMux *m)
{
        CURLMsg *msg;
        int left;

        while (!m->closing && (msg = curl_multi_info_read(m->multi, &left))) {
                CURL *easy = msg->easy_handle;
                CURLcode code = msg->data.result;
                char *p = NULL;
                Transfer *t;

                if (msg->msg != CURLMSG_DONE)
                        continue;

                /* msg is invalid once the handle is removed: copy first. */
                (void)curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p);
                t = (Transfer *)p;
                (void)curl_multi_remove_handle(m->multi, easy);
                in_flight_unlink(m, t);

                transfer_notify(t, http_error_from_curl(code, t), code);
                transfer_release(m, t);
        }
}

/* ---- Header lists ----
 *
 * An HttpHeaders is libcurl's own list: the pointer is only ever converted
 * back, here, so no caller sees curl. */

static struct curl_slist *headers_list(const HttpHeaders *h)
{
        return (struct curl_slist *)h;
}

int http_headers_add_line(HttpHeaders **h, const char *line)
{
        struct curl_slist *n = curl_slist_append(headers_list(*h), line);

        if (!n)
                return -ENOMEM;
        *h = (HttpHeaders *)n;
        return 0;
}

int http_headers_add(HttpHeaders **h, const char *name, const char *value)
{
        char *line;
        int r;

        if (asprintf(&line, "%s: %s", name, value) < 0)
                return -ENOMEM;
        r = http_headers_add_line(h, line);
        /* The line may carry a key: wipe our copy, libcurl keeps its own. */
        explicit_bzero(line, strlen(line));
        free(line);
        return r;
}

const char *http_headers_get(const HttpHeaders *h, size_t i)
{
        const struct curl_slist *l = headers_list(h);

        while (l && i-- > 0)
                l = l->next;
        return l ? l->data : NULL;
}

void http_headers_free(HttpHeaders *h)
{
        /* Clear the lines before the memory goes back to the allocator. */
        for (struct curl_slist *l = headers_list(h); l; l = l->next)
                explicit_bzero(l->data, strlen(l->data));
        curl_slist_free_all(headers_list(h));
}

static int transfer_start(HttpMux *m, const char *url, const HttpHeaders *headers, const char *body,
                          size_t body_len, bool post, long timeout_ms, httpmux_done_cb done, void *userdata)
{
        Transfer *t;
        CURLMcode mc;
        bool ok = true;
        int r;

        assert(m);
        assert(url);
        assert(done);
        assert(!post || body || body_len == 0);

        if (m->closing)
                return -ECANCELED;

        r = transfer_acquire(m, &t);
        if (r < 0)
                return r;

        t->done = done;
        t->userdata = userdata;
        t->body_len = 0;
        t->retry_after_ms = -1;
        t->too_large = false;
        t->out_of_memory = false;
        t->error[0] = '\0';

        if (curl_easy_setopt(t->easy, CURLOPT_URL, url) != CURLE_OK) {
                transfer_release(m, t);
                return -EINVAL;
        }
        ok = ok && curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, headers_list(headers)) == CURLE_OK;
        if (post) {
                /* The size goes first, so libcurl does not strlen() the body. */
                ok = ok && curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len) ==
                               CURLE_OK;
                ok = ok && curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, body ? body : "") == CURLE_OK;
        } else
                ok = ok && curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L) == CURLE_OK;
        ok = ok && curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS,
                                    timeout_ms > 0 ? timeout_ms : m->timeout_ms) == CURLE_OK;
        if (!ok) {
                transfer_release(m, t);
                return -ENOMEM;
        }

        /* Adding only schedules work through timer_cb; no completion can run
         * from here. */
        mc = curl_multi_add_handle(m->multi, t->easy);
        if (mc != CURLM_OK) {
                transfer_release(m, t);
                return mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
        }

        in_flight_link(m, t);
        m->stats.requests++;
        return 0;
}

int httpmux_get(HttpMux *m, const char *url, const HttpHeaders *headers, httpmux_done_cb done,
                void *userdata)
{
        return transfer_start(m, url, headers, NULL, 0, false, 0, done, userdata);
}

int httpmux_post(HttpMux *m, const char *url, const HttpHeaders *headers, const char *body,
                 size_t body_len, long timeout_ms, httpmux_done_cb done, void *userdata)
{
        return transfer_start(m, url, headers, body, body_len, true, timeout_ms, done, userdata);
}

unsigned httpmux_in_flight(const HttpMux *m)
{
        assert(m);
        return m->n_in_flight;
}

void httpmux_debug_stats(const HttpMux *m, HttpMuxStats *ret)
{
        assert(m);
        assert(ret);
        *ret = m->stats;
}

static int read_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
        struct stat st;
        char *buf;
        size_t len = 0;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto finish;
        }
        if (!S_ISREG(st.st_mode)) {
                r = -EINVAL;
                goto finish;
        }
        if ((uint64_t)st.st_size > max) {
                r = -EFBIG;
                goto finish;
        }

        buf = malloc((size_t)st.st_size + 1);
        if (!buf) {
                r = -ENOMEM;
                goto finish;
        }
        while (len < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        free(buf);
                        goto finish;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = '\0';
        *ret = buf;
        *ret_len = len;

finish:
        close(fd);
        return r;
}

/* Builds the PEM blob handed to CURLOPT_CAINFO_BLOB. A blob replaces
 * libcurl's default CA *file*, but libcurl (OpenSSL backend) still consults
 * the default CA *directory* next to it, so the system roots stay trusted.
 * A libcurl built without a default directory would lose them: then the
 * default bundle file is put into the blob too. */
static int ca_blob_build(const char *ca_file, char **ret, size_t *ret_len)
{
        const curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);
        char *extra = NULL, *system = NULL, *blob;
        size_t extra_len = 0, system_len = 0;
        int r;

        r = read_file(ca_file, CA_FILE_MAX, &extra, &extra_len);
        if (r < 0)
                return r;

        if (!info->capath && info->cainfo && read_file(info->cainfo, CA_FILE_MAX, &system, &system_len) < 0)
                system_len = 0;

        if (system_len == 0) {
                free(system);
                *ret = extra;
                *ret_len = extra_len;
                return 0;
        }

        blob = malloc(system_len + 1 + extra_len + 1);
        if (!blob) {
                free(system);
                free(extra);
                return -ENOMEM;
        }
        memcpy(blob, system, system_len);
        blob[system_len] = '\n';
        memcpy(blob + system_len + 1, extra, extra_len);
        blob[system_len + 1 + extra_len] = '\0';
        free(system);
        free(extra);
        *ret = blob;
        *ret_len = system_len + 1 + extra_len;
        return 0;
}

static void mux_free(HttpMux *m)
{
        Transfer *t;

        while ((t = m->idle)) {
                m->idle = t->next;
                m->stats.transfers_idle--;
                transfer_free(t);
        }
        if (m->multi)
                curl_multi_cleanup(m->multi);
        free(m->sockets);
        free(m->user_agent);
        free(m->ca_blob);
        free(m);
        global_unref();
}

void httpmux_set_timeout(HttpMux *m, long timeout_ms)
{
        m->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
}

int httpmux_set_max_connections(HttpMux *m, long max_connections)
{
        long n = max_connections > 0 ? max_connections : DEFAULT_MAX_CONNECTIONS;

        /* Outside any libcurl callback: only reloads call this. */
        if (curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, n) != CURLM_OK ||
            curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, n) != CURLM_OK ||
            curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, n) != CURLM_OK)
                return -EINVAL;
        m->max_connections = n;
        return 0;
}

int httpmux_new(uv_loop_t *loop, const HttpMuxOptions *options, HttpMux **ret)
{
        static const HttpMuxOptions defaults = {};
        HttpMux *m;
        bool ok = true;
        int r;

        assert(loop);
        assert(ret);

        if (!options)
                options = &defaults;
        if (options->max_connections < 0 || options->timeout_ms < 0)
                return -EINVAL;

        r = global_ref();
        if (r < 0)
                return r;

        m = calloc(1, sizeof(*m));
        if (!m) {
                global_unref();
                return -ENOMEM;
        }
        m->loop = loop;
        m->max_connections =
            options->max_connections > 0 ? options->max_connections : DEFAULT_MAX_CONNECTIONS;
        m->timeout_ms = options->timeout_ms > 0 ? options->timeout_ms : DEFAULT_TIMEOUT_MS;
        m->max_body = options->max_body > 0 ? options->max_body : DEFAULT_MAX_BODY;
        {
                /* The variables libcurl consults for an http(s) URL. */
                static const char *const proxy_vars[] = {"http_proxy", "https_proxy", "HTTPS_PROXY",
                                                         "all_proxy", "ALL_PROXY"};
                for (size_t k = 0; k < sizeof(proxy_vars) / sizeof(proxy_vars[0]); k++) {
                        const char *v = getenv(proxy_vars[k]);
                        if (v && *v)
                                m->proxy_from_env = true;
                }
        }
        /* Keep body_len + 1 and the realloc bound from overflowing. */
        if (m->max_body > SIZE_MAX / 4)
                m->max_body = SIZE_MAX / 4;

        m->user_agent = strdup(options->user_agent ? options->user_agent : "sessionwatchd/" SW_VERSION);
        if (!m->user_agent) {
                r = -ENOMEM;
                goto fail;
        }

        if (options->ca_file) {
                r = ca_blob_build(options->ca_file, &m->ca_blob, &m->ca_blob_len);
                if (r < 0)
                        goto fail;
        }

        m->multi = curl_multi_init();
        if (!m->multi) {
                r = -ENOMEM;
                goto fail;
        }
        ok = ok && curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, socket_cb) == CURLM_OK;
        ok = ok && curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m) == CURLM_OK;
        ok = ok && curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb) == CURLM_OK;
        ok = ok && curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m) == CURLM_OK;
        ok = ok && curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) == CURLM_OK;
        /* max_connections bounds open connections in total; one host (the API)
         * may use all of them; the cache keeps that many idle ones around. */
        ok = ok &&
             curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, m->max_connections) == CURLM_OK;
        ok =
            ok && curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, m->max_connections) == CURLM_OK;
        ok = ok && curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, m->max_connections) == CURLM_OK;
        if (!ok) {
                r = -EINVAL;
                goto fail;
        }

        /* Last, because from here on teardown must go through the loop. */
        r = uv_timer_init(loop, &m->timer);
        if (r < 0)
                goto fail;
        m->timer.data = m;
        /* uv_idle_init() cannot fail. */
        (void)uv_idle_init(loop, &m->kick);
        m->kick.data = m;

        *ret = m;
        return 0;

fail:
        mux_free(m);
        return r;
}

static void mux_maybe_finish_close(HttpMux *m)
{
        void (*closed)(void *userdata);
        void *userdata;

        if (!m->closing || !m->timer_closed || !m->kick_closed || m->stats.poll_contexts > 0)
                return;

        closed = m->closed;
        userdata = m->closed_userdata;
        mux_free(m);
        if (closed)
                closed(userdata);
}

/* libuv close callback: runs on the loop once the timer is closed, the last
 * step of httpmux_close() unless poll contexts are still closing. */
static void on_timer_close(uv_handle_t *handle)
{
        HttpMux *m = handle->data;

        m->timer_closed = true;
        mux_maybe_finish_close(m);
}

static void on_kick_close(uv_handle_t *handle)
{
        HttpMux *m = handle->data;

        m->kick_closed = true;
        mux_maybe_finish_close(m);
}

/* libuv timer callback: runs on the loop one iteration after httpmux_close(),
 * so cancelled requests hear about it from the loop, never from inside the
 * httpmux_close() call (which may itself run inside some `done`). */
static void on_close_timer(uv_timer_t *handle)
{
        HttpMux *m = handle->data;
        Transfer *t;

        while ((t = m->cancelled)) {
                m->cancelled = t->next;
                t->next = NULL;
                assert(m->n_in_flight > 0);
                m->n_in_flight--;
                transfer_notify(t, HTTP_ERR_CANCELLED, CURLE_OK);
                transfer_free(t);
        }

        uv_close((uv_handle_t *)&m->kick, on_kick_close);
        uv_close((uv_handle_t *)&m->timer, on_timer_close);
}

void httpmux_close(HttpMux *m, void (*closed)(void *userdata), void *userdata)
{
        Transfer *t;

        assert(m);
        assert(!m->closing);

        m->closing = true;
        m->closed = closed;
        m->closed_userdata = userdata;
        (void)uv_timer_stop(&m->timer);
        (void)uv_idle_stop(&m->kick);

        /* Detach every transfer in flight; their connections close (and so do
         * the poll contexts, via closesocket_cb). We are not inside a libcurl
         * callback: httpmux_close() is called from the loop or from `done`. */
        for (t = m->in_flight; t; t = t->next)
                (void)curl_multi_remove_handle(m->multi, t->easy);
        m->cancelled = m->in_flight;
        m->in_flight = NULL;

        /* Closes the cached connections, again through closesocket_cb, while
         * the loop is still alive. */
        curl_multi_cleanup(m->multi);
        m->multi = NULL;

        /* Whatever libcurl did not close through us (it should be nothing)
         * stops being polled now. */
        for (size_t fd = 0; fd < m->n_sockets; fd++)
                if (m->sockets[fd])
                        poll_context_close(m, m->sockets[fd]);

        (void)uv_timer_start(&m->timer, on_close_timer, 0, 0);
}
