/* Tests for httpmux: a real libuv loop and libcurl against an in-process
 * libmicrohttpd server (one thread per connection) on 127.0.0.1. */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <uv.h>

#include "httpmux.h"

/* ---- the server ---------------------------------------------------------- */

typedef struct Server {
        struct MHD_Daemon *daemon;
        uint16_t port;
        bool tls;
        atomic_uint connections; /* TCP connections accepted, in total */
        atomic_uint slow_waiting;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool release;     /* under lock: lets /slow requests answer */
        uv_async_t *kick; /* wakes the loop when something happens on the server */
} Server;

typedef struct Upload {
        char *data;
        size_t len;
} Upload;

typedef struct Chunked {
        size_t left;
} Chunked;

/* libmicrohttpd content reader: runs on a server thread; produces `left`
 * bytes of 'x' with no Content-Length (chunked encoding). */
static ssize_t chunked_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
        Chunked *c = cls;
        size_t n = c->left < max ? c->left : max;

        if (n == 0)
                return MHD_CONTENT_READER_END_OF_STREAM;
        memset(buf, 'x', n);
        c->left -= n;
        return (ssize_t)n;
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned code, const char *body, size_t len,
                               const char *header, const char *value)
{
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        if (header)
                MHD_add_response_header(resp, header, value);
        ret = MHD_queue_response(conn, code, resp);
        MHD_destroy_response(resp);
        return ret;
}

static size_t query_size(struct MHD_Connection *conn, const char *key)
{
        const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, key);

        return v ? strtoul(v, NULL, 10) : 0;
}

/* libmicrohttpd access handler: runs on the connection's server thread. */
static enum MHD_Result on_server_request(void *cls, struct MHD_Connection *conn, const char *url,
                                         const char *method, const char *version, const char *upload_data,
                                         size_t *upload_data_size, void **req_cls)
{
        Server *s = cls;
        Upload *up = *req_cls;
        char buf[256];

        if (!up) {
                up = calloc(1, sizeof(*up));
                if (!up)
                        return MHD_NO;
                *req_cls = up;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                char *p = realloc(up->data, up->len + *upload_data_size);
                if (!p)
                        return MHD_NO;
                memcpy(p + up->len, upload_data, *upload_data_size);
                up->data = p;
                up->len += *upload_data_size;
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (strcmp(url, "/ok") == 0)
                return respond(conn, 200, "hello", 5, NULL, NULL);
        if (strncmp(url, "/status/", 8) == 0) {
                unsigned code = (unsigned)strtoul(url + 8, NULL, 10);
                int n = snprintf(buf, sizeof(buf), "status %u", code);
                return respond(conn, code, buf, (size_t)n, NULL, NULL);
        }
        if (strcmp(url, "/retry/seconds") == 0)
                return respond(conn, 429, "slow down", 9, "Retry-After", "7");
        if (strcmp(url, "/retry/date") == 0) {
                time_t when = time(NULL) + 120;
                struct tm tm;
                gmtime_r(&when, &tm);
                strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
                return respond(conn, 503, "later", 5, "Retry-After", buf);
        }
        if (strcmp(url, "/retry/bad") == 0)
                return respond(conn, 429, "", 0, "Retry-After", "soon-ish");
        if (strcmp(url, "/big") == 0) {
                size_t n = query_size(conn, "n");
                char *body = malloc(n + 1);
                enum MHD_Result r;
                if (!body)
                        return MHD_NO;
                memset(body, 'y', n);
                r = respond(conn, 200, body, n, NULL, NULL);
                free(body);
                return r;
        }
        if (strcmp(url, "/chunked") == 0) {
                Chunked *c = malloc(sizeof(*c));
                struct MHD_Response *resp;
                enum MHD_Result r;
                if (!c)
                        return MHD_NO;
                c->left = query_size(conn, "n");
                resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, chunked_reader, c, free);
                if (!resp) {
                        free(c);
                        return MHD_NO;
                }
                r = MHD_queue_response(conn, 200, resp);
                MHD_destroy_response(resp);
                return r;
        }
        if (strcmp(url, "/slow") == 0) {
                struct timespec deadline;

                atomic_fetch_add(&s->slow_waiting, 1);
                uv_async_send(s->kick);
                /* The bound only keeps a broken test from hanging forever. */
                clock_gettime(CLOCK_REALTIME, &deadline);
                deadline.tv_sec += 30;
                pthread_mutex_lock(&s->lock);
                while (!s->release)
                        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) != 0)
                                break;
                pthread_mutex_unlock(&s->lock);
                return respond(conn, 200, "late", 4, NULL, NULL);
        }
        if (strcmp(url, "/close") == 0)
                /* Makes libmicrohttpd drop the connection without a response. */
                return MHD_NO;
        if (strcmp(url, "/echo") == 0)
                return respond(conn, 200, up->data ? up->data : "", up->len, "X-Method", method);
        if (strcmp(url, "/method") == 0)
                return respond(conn, 200, method, strlen(method), NULL, NULL);
        if (strcmp(url, "/header") == 0) {
                const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Test");
                const char *ae = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Accept-Encoding");
                int n = snprintf(buf, sizeof(buf), "%s|%s", v ? v : "-", ae ? ae : "-");
                return respond(conn, 200, buf, (size_t)n, NULL, NULL);
        }
        if (strcmp(url, "/redirect") == 0)
                return respond(conn, 301, "moved", 5, "Location", "/ok");
        return respond(conn, 404, "not found", 9, NULL, NULL);
}

/* libmicrohttpd completion notifier: runs on a server thread after each request. */
static void on_server_request_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                                        enum MHD_RequestTerminationCode toe)
{
        Upload *up = *req_cls;

        if (up) {
                free(up->data);
                free(up);
                *req_cls = NULL;
        }
}

/* libmicrohttpd connection notifier: runs on a server thread. */
static void on_server_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                                 enum MHD_ConnectionNotificationCode toe)
{
        Server *s = cls;

        if (toe == MHD_CONNECTION_NOTIFY_STARTED)
                atomic_fetch_add(&s->connections, 1);
}

static void server_start(Server *s, uv_async_t *kick, const char *tls_key, const char *tls_cert)
{
        struct sockaddr_in sa = {
            .sin_family = AF_INET,
            .sin_port = 0,
            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
        const union MHD_DaemonInfo *info;

        memset(s, 0, sizeof(*s));
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        s->kick = kick;
        s->tls = tls_key != NULL;

        if (s->tls)
                s->daemon = MHD_start_daemon(
                    flags | MHD_USE_TLS, 0, NULL, NULL, on_server_request, s, MHD_OPTION_SOCK_ADDR,
                    (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_server_request_completed, s,
                    MHD_OPTION_NOTIFY_CONNECTION, on_server_connection, s, MHD_OPTION_HTTPS_MEM_KEY, tls_key,
                    MHD_OPTION_HTTPS_MEM_CERT, tls_cert, MHD_OPTION_END);
        else
                s->daemon = MHD_start_daemon(
                    flags, 0, NULL, NULL, on_server_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                    MHD_OPTION_NOTIFY_COMPLETED, on_server_request_completed, s,
                    MHD_OPTION_NOTIFY_CONNECTION, on_server_connection, s, MHD_OPTION_END);
        assert_non_null(s->daemon);
        info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
        assert_non_null(info);
        s->port = info->port;
        assert_true(s->port > 0);
}

static void server_release(Server *s)
{
        pthread_mutex_lock(&s->lock);
        s->release = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

static void server_stop(Server *s)
{
        if (!s->daemon)
                return;
        server_release(s);
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
}

/* ---- the fixture: one loop, one server, one mux per test ----------------- */

typedef struct Fixture {
        uv_loop_t loop;
        uv_async_t kick;
        uv_timer_t guard;
        bool guard_fired;
        Server server;
        HttpMux *mux;
        bool closed;
        unsigned done_total;
} Fixture;

/* libuv async callback: runs on the loop; waking it up is all it is for. */
static void on_kick(uv_async_t *handle)
{
}

/* libuv timer callback: runs on the loop when a test waited far too long. */
static void on_guard_expired(uv_timer_t *handle)
{
        Fixture *f = handle->data;

        f->guard_fired = true;
}

/* Runs the loop until `cond` holds; fails if the loop runs out of work first
 * or the guard timer expires. */
#define RUN_UNTIL(f, cond)                                                                                  \
        do {                                                                                                \
                while (!(cond)) {                                                                           \
                        if ((f)->guard_fired)                                                               \
                                fail_msg("timed out waiting for: %s", #cond);                               \
                        if (uv_run(&(f)->loop, UV_RUN_ONCE) == 0 && !(cond))                                \
                                fail_msg("loop went idle before: %s", #cond);                               \
                }                                                                                           \
        } while (0)

static int fixture_setup_with(void **state, const char *tls_key, const char *tls_cert)
{
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        assert_int_equal(uv_loop_init(&f->loop), 0);
        assert_int_equal(uv_async_init(&f->loop, &f->kick, on_kick), 0);
        uv_unref((uv_handle_t *)&f->kick);
        assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
        f->guard.data = f;
        assert_int_equal(uv_timer_start(&f->guard, on_guard_expired, 100000, 0), 0);
        uv_unref((uv_handle_t *)&f->guard);
        server_start(&f->server, &f->kick, tls_key, tls_cert);
        *state = f;
        return 0;
}

static int fixture_setup(void **state)
{
        return fixture_setup_with(state, NULL, NULL);
}

/* httpmux closed callback: runs on the loop at the end of httpmux_close(). */
static void on_mux_closed(void *userdata)
{
        Fixture *f = userdata;

        f->closed = true;
}

static void fixture_close_mux(Fixture *f)
{
        if (!f->mux)
                return;
        httpmux_close(f->mux, on_mux_closed, f);
        RUN_UNTIL(f, f->closed);
        f->mux = NULL;
}

static int fixture_teardown(void **state)
{
        Fixture *f = *state;

        fixture_close_mux(f);
        server_stop(&f->server);
        uv_close((uv_handle_t *)&f->kick, NULL);
        uv_close((uv_handle_t *)&f->guard, NULL);
        assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(uv_loop_close(&f->loop), 0);
        free(f);
        return 0;
}

static void mux_open(Fixture *f, const HttpMuxOptions *options)
{
        assert_int_equal(httpmux_new(&f->loop, options, &f->mux), 0);
}

/* ---- requests ------------------------------------------------------------ */

typedef struct Request {
        Fixture *f;
        unsigned calls;
        HttpError error;
        long status;
        char *body;
        size_t body_len;
        int64_t retry_after_ms;
        uint64_t done_usec;
        char error_text[CURL_ERROR_SIZE];
} Request;

static uint64_t monotonic_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* httpmux done callback: runs on the loop; records the response. */
static void on_request_done(void *userdata, const HttpResponse *r)
{
        Request *q = userdata;

        q->calls++;
        q->f->done_total++;
        q->error = r->error;
        q->status = r->status;
        q->retry_after_ms = r->retry_after_ms;
        q->done_usec = r->done_usec;
        free(q->body);
        q->body = malloc(r->body_len + 1);
        assert_non_null(q->body);
        assert_non_null(r->body);
        assert_int_equal(r->body[r->body_len], '\0');
        memcpy(q->body, r->body, r->body_len + 1);
        q->body_len = r->body_len;
        if (r->error == HTTP_OK)
                assert_null(r->error_text);
        else {
                assert_non_null(r->error_text);
                /* Only a body over the bound comes with its status. */
                if (r->error != HTTP_ERR_TOO_LARGE)
                        assert_int_equal(r->status, 0);
                snprintf(q->error_text, sizeof(q->error_text), "%s", r->error_text);
        }
}

static void url_for(const Fixture *f, const char *path, char *buf, size_t size)
{
        snprintf(buf, size, "%s://127.0.0.1:%u%s", f->server.tls ? "https" : "http", f->server.port, path);
}

static void request_get(Fixture *f, Request *q, const char *path, const HttpHeaders *headers)
{
        char url[256];

        memset(q, 0, sizeof(*q));
        q->f = f;
        url_for(f, path, url, sizeof(url));
        assert_int_equal(httpmux_get(f->mux, url, headers, on_request_done, q), 0);
        /* done never runs from inside httpmux_get(). */
        assert_int_equal(q->calls, 0);
}

/* Runs one GET to completion. */
static void fetch(Fixture *f, Request *q, const char *path)
{
        request_get(f, q, path, NULL);
        RUN_UNTIL(f, q->calls > 0);
        assert_int_equal(q->calls, 1);
}

static void request_clear(Request *q)
{
        free(q->body);
        q->body = NULL;
}

/* ---- tests --------------------------------------------------------------- */

static void test_get_ok(void **state)
{
        Fixture *f = *state;
        Request q;
        uint64_t before;

        mux_open(f, NULL);
        before = monotonic_usec();
        request_get(f, &q, "/ok", NULL);
        assert_int_equal(httpmux_in_flight(f->mux), 1);
        RUN_UNTIL(f, q.calls > 0);
        assert_int_equal(httpmux_in_flight(f->mux), 0);

        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.status, 200);
        assert_string_equal(q.body, "hello");
        assert_int_equal(q.body_len, 5);
        assert_int_equal(q.retry_after_ms, -1);
        assert_true(q.done_usec >= before);
        assert_true(q.done_usec <= monotonic_usec());
        request_clear(&q);

        assert_string_equal(http_error_to_string(HTTP_ERR_TIMEOUT), "timeout");
        assert_null(http_error_to_string(_HTTP_ERR_MAX));
}

static void test_status_codes(void **state)
{
        Fixture *f = *state;
        static const unsigned codes[] = {404, 500, 503, 204};
        Request q;

        mux_open(f, NULL);
        for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
                char path[32], body[32];

                snprintf(path, sizeof(path), "/status/%u", codes[i]);
                fetch(f, &q, path);
                assert_int_equal(q.error, HTTP_OK);
                assert_int_equal(q.status, codes[i]);
                snprintf(body, sizeof(body), "status %u", codes[i]);
                assert_string_equal(q.body, codes[i] == 204 ? "" : body);
                assert_int_equal(q.retry_after_ms, -1);
                request_clear(&q);
        }
}

/* The parser alone: far dates and large numbers stop at a year, without
 * overflowing (a date in year 388627014 once did: found by fuzz.webhook). */
static void test_retry_after_values(void **state)
{
        static const char far[] = "Wed, 21 Oct 388627014";
        static const char huge[] = "000000000000000000000000001000000000";
        static const char past[] = "Wed, 21 Oct 2015 07:28:00 GMT";
        static const char line[] = "Retry-After:  12 \r\n";
        int64_t v = 5;

        (void)state;
        assert_int_equal(httpmux_parse_retry_after(far, strlen(far)), HTTPMUX_RETRY_AFTER_MAX_S * 1000);
        assert_int_equal(httpmux_parse_retry_after(huge, strlen(huge)), HTTPMUX_RETRY_AFTER_MAX_S * 1000);
        assert_int_equal(httpmux_parse_retry_after(past, strlen(past)), 0);
        assert_int_equal(httpmux_parse_retry_after("x", 1), -1);
        assert_int_equal(httpmux_parse_retry_after("", 0), -1);
        httpmux_header_line(line, strlen(line), &v);
        assert_int_equal(v, 12000);
        httpmux_header_line("HTTP/1.1 100 Continue\r\n", 23, &v);
        assert_int_equal(v, -1);
}

static void test_retry_after(void **state)
{
        Fixture *f = *state;
        Request q;

        mux_open(f, NULL);

        fetch(f, &q, "/retry/seconds");
        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.status, 429);
        assert_int_equal(q.retry_after_ms, 7000);
        request_clear(&q);

        /* The server sends now + 120 s as an HTTP date with 1 s resolution. */
        fetch(f, &q, "/retry/date");
        assert_int_equal(q.status, 503);
        assert_in_range(q.retry_after_ms, 100000, 121000);
        request_clear(&q);

        fetch(f, &q, "/retry/bad");
        assert_int_equal(q.status, 429);
        assert_int_equal(q.retry_after_ms, -1);
        request_clear(&q);

        /* The value does not leak into the next request on the pooled handle. */
        fetch(f, &q, "/status/429");
        assert_int_equal(q.status, 429);
        assert_int_equal(q.retry_after_ms, -1);
        request_clear(&q);
}

typedef struct Chain {
        Fixture *f;
        unsigned submitted;
        unsigned completed;
        unsigned failed;
        unsigned total;
        unsigned max_poll_contexts;
        unsigned max_sockets_open;
        char url[256];
} Chain;

static void chain_submit(Chain *c);

/* httpmux done callback: runs on the loop; counts and keeps the chain going. */
static void on_chain_done(void *userdata, const HttpResponse *r)
{
        Chain *c = userdata;
        HttpMuxStats st;

        c->completed++;
        if (r->error != HTTP_OK || r->status != 200 || strcmp(r->body, "hello") != 0)
                c->failed++;
        httpmux_debug_stats(c->f->mux, &st);
        if (st.poll_contexts > c->max_poll_contexts)
                c->max_poll_contexts = st.poll_contexts;
        if (st.sockets_open > c->max_sockets_open)
                c->max_sockets_open = st.sockets_open;
        if (c->submitted < c->total)
                chain_submit(c);
}

static void chain_submit(Chain *c)
{
        assert_int_equal(httpmux_get(c->f->mux, c->url, NULL, on_chain_done, c), 0);
        c->submitted++;
}

static void chain_run(Fixture *f, Chain *c, unsigned total, unsigned window)
{
        memset(c, 0, sizeof(*c));
        c->f = f;
        c->total = total;
        url_for(f, "/ok", c->url, sizeof(c->url));
        for (unsigned i = 0; i < window && i < total; i++)
                chain_submit(c);
        RUN_UNTIL(f, c->completed == total);
        assert_int_equal(c->failed, 0);
        assert_int_equal(httpmux_in_flight(f->mux), 0);
}

static void test_keepalive_sequential(void **state)
{
        Fixture *f = *state;
        HttpMuxStats st;
        Chain c;

        mux_open(f, NULL);
        chain_run(f, &c, 200, 1);

        httpmux_debug_stats(f->mux, &st);
        assert_int_equal(atomic_load(&f->server.connections), 1);
        assert_int_equal(st.sockets_opened, 1);
        /* One poll context for the socket's whole life, not one per request. */
        assert_int_equal(st.poll_contexts_created, 1);
        assert_int_equal(st.requests, 200);
        /* The next request is submitted from `done`, while the finished
         * transfer still holds the body it is showing: two in the pool. */
        assert_int_equal(st.transfers, 2);
}

static void test_keepalive_concurrent(void **state)
{
        Fixture *f = *state;
        HttpMuxOptions o = {.max_connections = 4};
        HttpMuxStats st;
        Chain c;

        mux_open(f, &o);
        chain_run(f, &c, 100, 100);

        httpmux_debug_stats(f->mux, &st);
        assert_in_range(atomic_load(&f->server.connections), 1, 4);
        assert_in_range(st.sockets_opened, 1, 4);
        assert_int_equal(st.poll_contexts_created, st.sockets_opened);
        assert_true(c.max_sockets_open <= 4);
}

static void test_many_requests(void **state)
{
        Fixture *f = *state;
        HttpMuxOptions o = {.max_connections = 16};
        HttpMuxStats st;
        Chain c;

        mux_open(f, &o);
        chain_run(f, &c, 5000, 64);

        httpmux_debug_stats(f->mux, &st);
        assert_in_range(atomic_load(&f->server.connections), 1, 16);
        assert_in_range(st.sockets_opened, 1, 16);
        assert_int_equal(st.poll_contexts_created, st.sockets_opened);
        assert_true(c.max_poll_contexts <= 16);
        assert_true(c.max_sockets_open <= 16);
        assert_true(st.poll_contexts <= st.sockets_open);
        /* Transfers are pooled: never more than were in flight at once, plus
         * the one whose `done` submitted the next request. */
        assert_true(st.transfers <= 65);
        assert_int_equal(st.transfers_idle, st.transfers);
        assert_int_equal(st.requests, 5000);
}

static void test_too_large(void **state)
{
        Fixture *f = *state;
        HttpMuxOptions o = {.max_body = 1000};
        HttpMuxStats st;
        Request q;

        mux_open(f, &o);

        /* Announced by Content-Length: refused before the body is read. */
        fetch(f, &q, "/big?n=5000");
        assert_int_equal(q.error, HTTP_ERR_TOO_LARGE);
        assert_int_equal(q.status, 200); /* the status line did arrive */
        assert_int_equal(q.body_len, 0);
        request_clear(&q);

        /* Chunked: cut short in the write callback. */
        fetch(f, &q, "/chunked?n=200000");
        assert_int_equal(q.error, HTTP_ERR_TOO_LARGE);
        assert_int_equal(q.status, 200);
        assert_int_equal(q.body_len, 0);
        request_clear(&q);

        /* Exactly at the bound is fine, both ways. */
        fetch(f, &q, "/big?n=1000");
        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.body_len, 1000);
        request_clear(&q);
        fetch(f, &q, "/chunked?n=1000");
        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.body_len, 1000);
        request_clear(&q);

        httpmux_debug_stats(f->mux, &st);
        assert_true(st.body_buffer_max <= 1001);
}

static void test_timeout(void **state)
{
        Fixture *f = *state;
        HttpMuxOptions o = {.timeout_ms = 200};
        Request q, p;
        char url[256];

        mux_open(f, &o);
        fetch(f, &q, "/slow");
        assert_int_equal(q.error, HTTP_ERR_TIMEOUT);
        assert_int_equal(q.status, 0);
        assert_true(strlen(q.error_text) > 0);
        request_clear(&q);

        /* A POST's own timeout wins over the default. */
        memset(&p, 0, sizeof(p));
        p.f = f;
        url_for(f, "/slow", url, sizeof(url));
        assert_int_equal(httpmux_post(f->mux, url, NULL, "x", 1, 100, on_request_done, &p), 0);
        RUN_UNTIL(f, p.calls > 0);
        assert_int_equal(p.error, HTTP_ERR_TIMEOUT);
        request_clear(&p);
}

static void test_connect_refused(void **state)
{
        Fixture *f = *state;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sa);
        HttpMuxStats st;
        Request q;
        char url[128];
        int fd;

        /* A bound socket that never listens: connecting to it is refused,
         * and nobody else can take the port meanwhile. */
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);

        mux_open(f, NULL);
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/ok", ntohs(sa.sin_port));
        memset(&q, 0, sizeof(q));
        q.f = f;
        assert_int_equal(httpmux_get(f->mux, url, NULL, on_request_done, &q), 0);
        RUN_UNTIL(f, q.calls > 0);
        assert_int_equal(q.error, HTTP_ERR_CONNECT);
        request_clear(&q);
        close(fd);

        /* The failed socket was closed and so was its poll context. */
        RUN_UNTIL(f, (httpmux_debug_stats(f->mux, &st), st.poll_contexts == 0));
        assert_int_equal(st.sockets_open, 0);
}

/* A host name goes through libcurl's threaded resolver, which may hand us its
 * wake-up socket to poll (when the lookup is not already done by the time
 * libcurl asks). Either way every context must be gone with its socket. */
static void test_resolver_socket(void **state)
{
        Fixture *f = *state;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
        socklen_t len = sizeof(sa);
        char host[256], url[512];
        HttpMuxStats st;
        Request q;
        int fd;

        assert_int_equal(gethostname(host, sizeof(host)), 0);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);

        mux_open(f, NULL);
        snprintf(url, sizeof(url), "http://%s:%u/ok", host, ntohs(sa.sin_port));
        memset(&q, 0, sizeof(q));
        q.f = f;
        assert_int_equal(httpmux_get(f->mux, url, NULL, on_request_done, &q), 0);
        RUN_UNTIL(f, q.calls > 0);
        /* Whether the name resolves here or not, nothing listens. */
        assert_int_equal(q.error, HTTP_ERR_CONNECT);
        request_clear(&q);
        close(fd);

        RUN_UNTIL(f, (httpmux_debug_stats(f->mux, &st), st.poll_contexts == 0));
        assert_int_equal(st.sockets_open, 0);
        assert_true(st.poll_contexts_created >= st.sockets_opened);
}

static void test_closed_without_response(void **state)
{
        Fixture *f = *state;
        Request q;

        mux_open(f, NULL);
        fetch(f, &q, "/close");
        assert_int_equal(q.error, HTTP_ERR_NETWORK);
        request_clear(&q);

        /* The mux recovers: the next request gets a fresh connection. */
        fetch(f, &q, "/ok");
        assert_int_equal(q.error, HTTP_OK);
        request_clear(&q);
}

static void test_post_and_redirect(void **state)
{
        Fixture *f = *state;
        HttpHeaders *headers = NULL;
        size_t len = 100000;
        char *body;
        Request q;
        char url[256];

        mux_open(f, NULL);

        body = malloc(len);
        assert_non_null(body);
        for (size_t i = 0; i < len; i++)
                body[i] = (char)(i * 7 + 3); /* includes NUL bytes */

        assert_int_equal(http_headers_add(&headers, "Content-Type", "application/octet-stream"), 0);
        assert_non_null(headers);
        memset(&q, 0, sizeof(q));
        q.f = f;
        url_for(f, "/echo", url, sizeof(url));
        assert_int_equal(httpmux_post(f->mux, url, headers, body, len, 0, on_request_done, &q), 0);
        assert_int_equal(q.calls, 0);
        RUN_UNTIL(f, q.calls > 0);
        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.status, 200);
        assert_int_equal(q.body_len, len);
        assert_memory_equal(q.body, body, len);
        request_clear(&q);

        /* An empty POST. */
        memset(&q, 0, sizeof(q));
        q.f = f;
        assert_int_equal(httpmux_post(f->mux, url, NULL, NULL, 0, 0, on_request_done, &q), 0);
        RUN_UNTIL(f, q.calls > 0);
        assert_int_equal(q.status, 200);
        assert_int_equal(q.body_len, 0);
        request_clear(&q);

        /* The pooled handle goes back to GET after a POST. */
        fetch(f, &q, "/method");
        assert_string_equal(q.body, "GET");
        request_clear(&q);

        /* Headers are passed; Accept-Encoding is not requested. */
        http_headers_free(headers);
        headers = NULL;
        assert_int_equal(http_headers_add_line(&headers, "X-Test: forty-two"), 0);
        assert_non_null(headers);
        request_get(f, &q, "/header", headers);
        RUN_UNTIL(f, q.calls > 0);
        assert_string_equal(q.body, "forty-two|-");
        request_clear(&q);
        http_headers_free(headers);

        /* Redirects are reported, not followed, for GET and POST. */
        fetch(f, &q, "/redirect");
        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.status, 301);
        assert_string_equal(q.body, "moved");
        request_clear(&q);

        memset(&q, 0, sizeof(q));
        q.f = f;
        url_for(f, "/redirect", url, sizeof(url));
        assert_int_equal(httpmux_post(f->mux, url, NULL, "{}", 2, 0, on_request_done, &q), 0);
        RUN_UNTIL(f, q.calls > 0);
        assert_int_equal(q.status, 301);
        request_clear(&q);

        free(body);
}

static void test_close_in_flight(void **state)
{
        Fixture *f = *state;
        enum { N = 10 };
        Request q[N];
        Request late;
        char url[256];

        mux_open(f, NULL);
        for (unsigned i = 0; i < N; i++)
                request_get(f, &q[i], "/slow", NULL);
        /* Wait until every request reached the server. */
        RUN_UNTIL(f, atomic_load(&f->server.slow_waiting) == N);
        assert_int_equal(httpmux_in_flight(f->mux), N);

        httpmux_close(f->mux, on_mux_closed, f);
        /* Cancelled callbacks run from the loop, not from inside httpmux_close(). */
        for (unsigned i = 0; i < N; i++)
                assert_int_equal(q[i].calls, 0);
        /* Nothing new is accepted while closing. */
        url_for(f, "/ok", url, sizeof(url));
        assert_int_equal(httpmux_get(f->mux, url, NULL, on_request_done, &late), -ECANCELED);

        RUN_UNTIL(f, f->closed);
        f->mux = NULL;
        for (unsigned i = 0; i < N; i++) {
                assert_int_equal(q[i].calls, 1);
                assert_int_equal(q[i].error, HTTP_ERR_CANCELLED);
                request_clear(&q[i]);
        }
        /* The teardown asserts uv_loop_close() == 0. */
}

typedef struct CloseFromDone {
        Fixture *f;
        unsigned calls;
        unsigned ok;
        unsigned cancelled;
} CloseFromDone;

/* httpmux done callback: runs on the loop; the first completion closes the mux. */
static void on_done_close(void *userdata, const HttpResponse *r)
{
        CloseFromDone *c = userdata;

        c->calls++;
        if (r->error == HTTP_OK) {
                c->ok++;
                if (c->ok == 1)
                        httpmux_close(c->f->mux, on_mux_closed, c->f);
        } else if (r->error == HTTP_ERR_CANCELLED)
                c->cancelled++;
}

static void test_close_from_done(void **state)
{
        Fixture *f = *state;
        CloseFromDone c = {.f = f};
        char fast[256], slow[256];

        mux_open(f, NULL);
        url_for(f, "/ok", fast, sizeof(fast));
        url_for(f, "/slow", slow, sizeof(slow));
        assert_int_equal(httpmux_get(f->mux, fast, NULL, on_done_close, &c), 0);
        assert_int_equal(httpmux_get(f->mux, slow, NULL, on_done_close, &c), 0);
        assert_int_equal(httpmux_get(f->mux, slow, NULL, on_done_close, &c), 0);

        RUN_UNTIL(f, f->closed);
        f->mux = NULL;
        assert_int_equal(c.calls, 3);
        assert_int_equal(c.ok, 1);
        assert_int_equal(c.cancelled, 2);
}

static void test_bad_input(void **state)
{
        Fixture *f = *state;
        HttpMuxOptions o = {.ca_file = "/nonexistent/ca.pem"};
        HttpMux *m = NULL;
        Request q;

        assert_int_equal(httpmux_new(&f->loop, &o, &m), -ENOENT);
        assert_null(m);

        mux_open(f, NULL);
        memset(&q, 0, sizeof(q));
        q.f = f;
        /* Unsupported schemes are refused by libcurl when the transfer runs. */
        assert_int_equal(httpmux_get(f->mux, "ftp://127.0.0.1/", NULL, on_request_done, &q), 0);
        RUN_UNTIL(f, q.calls > 0);
        assert_int_equal(q.error, HTTP_ERR_INTERNAL);
        request_clear(&q);
}

/* ---- TLS ----------------------------------------------------------------- */

static char tls_key[4096];
static char tls_cert[4096];
static char tls_cert_path[64];

/* Makes a self-signed EC certificate for 127.0.0.1, as PEM. */
static void tls_make_cert(void)
{
        EVP_PKEY *key = EVP_EC_gen("P-256");
        X509 *x = X509_new();
        X509V3_CTX ctx;
        X509_EXTENSION *ext;
        X509_NAME *name;
        BIO *bio;
        FILE *fp;
        int fd, n;

        assert_non_null(key);
        assert_non_null(x);
        assert_int_equal(X509_set_version(x, 2), 1);
        assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
        assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
        assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600));
        assert_int_equal(X509_set_pubkey(x, key), 1);
        name = X509_get_subject_name(x);
        assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                    (const unsigned char *)"sessionwatch test", -1, -1, 0),
                         1);
        assert_int_equal(X509_set_issuer_name(x, name), 1);
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, "IP:127.0.0.1");
        assert_non_null(ext);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, "critical,CA:TRUE");
        assert_non_null(ext);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        assert_true(X509_sign(x, key, EVP_sha256()) > 0);

        bio = BIO_new(BIO_s_mem());
        assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
        n = BIO_read(bio, tls_key, sizeof(tls_key) - 1);
        assert_true(n > 0);
        tls_key[n] = '\0';
        BIO_free(bio);

        bio = BIO_new(BIO_s_mem());
        assert_int_equal(PEM_write_bio_X509(bio, x), 1);
        n = BIO_read(bio, tls_cert, sizeof(tls_cert) - 1);
        assert_true(n > 0);
        tls_cert[n] = '\0';
        BIO_free(bio);

        X509_free(x);
        EVP_PKEY_free(key);

        snprintf(tls_cert_path, sizeof(tls_cert_path), "/tmp/test-httpmux-ca-XXXXXX");
        fd = mkstemp(tls_cert_path);
        assert_true(fd >= 0);
        fp = fdopen(fd, "w");
        assert_non_null(fp);
        assert_int_equal(fputs(tls_cert, fp) >= 0, 1);
        assert_int_equal(fclose(fp), 0);
}

static int tls_setup(void **state)
{
        if (!MHD_is_feature_supported(MHD_FEATURE_TLS))
                return -1;
        return fixture_setup_with(state, tls_key, tls_cert);
}

static void test_tls(void **state)
{
        Fixture *f = *state;
        HttpMuxOptions o = {.ca_file = tls_cert_path};
        Request q;

        /* The system's roots do not know our self-signed certificate. */
        mux_open(f, NULL);
        fetch(f, &q, "/ok");
        assert_int_equal(q.error, HTTP_ERR_TLS);
        request_clear(&q);
        fixture_close_mux(f);

        /* With it as ca_file the peer verifies, name (IP SAN) included. */
        mux_open(f, &o);
        fetch(f, &q, "/ok");
        assert_int_equal(q.error, HTTP_OK);
        assert_int_equal(q.status, 200);
        assert_string_equal(q.body, "hello");
        request_clear(&q);

        /* Keep-alive over TLS too. */
        fetch(f, &q, "/status/404");
        assert_int_equal(q.status, 404);
        request_clear(&q);
        assert_int_equal(atomic_load(&f->server.connections), 2);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_get_ok, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_status_codes, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_retry_after, fixture_setup, fixture_teardown),
            cmocka_unit_test(test_retry_after_values),
            cmocka_unit_test_setup_teardown(test_keepalive_sequential, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_keepalive_concurrent, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_many_requests, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_too_large, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_timeout, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_connect_refused, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_resolver_socket, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_closed_without_response, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_post_and_redirect, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_close_in_flight, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_close_from_done, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_bad_input, fixture_setup, fixture_teardown),
            cmocka_unit_test_setup_teardown(test_tls, tls_setup, fixture_teardown),
        };
        int r;

        /* Writes to a peer that went away must fail with EPIPE, not kill us. */
        signal(SIGPIPE, SIG_IGN);
        tls_make_cert();
        r = cmocka_run_group_tests(tests, NULL, NULL);
        unlink(tls_cert_path);
        return r;
}
