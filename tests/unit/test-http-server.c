/* Unit tests of the HTTP server: libmicrohttpd on the libuv loop, asked by
 * httpmux (libcurl) on the same loop, so a request only completes when both
 * are driven by it correctly. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "http-server.h"
#include "httpmux.h"

typedef struct Ctx {
        uv_loop_t loop;
        HttpMux *mux;
        HttpServer *server;
        unsigned handled;
        unsigned done;
        long status[8];
        char body[8][256];
        int closed;
        /* The stream: what fill() hands out next, and whether it ended. */
        HttpStream *stream;
        const char *pending;
        bool finish, stream_closed;
        uv_timer_t timer;
} Ctx;

static ssize_t fill(void *userdata, char *buf, size_t max)
{
        Ctx *c = userdata;
        size_t n;

        if (!c->pending)
                return c->finish ? -1 : 0;
        n = strlen(c->pending);
        assert_true(n <= max);
        memcpy(buf, c->pending, n);
        c->pending = NULL;
        return (ssize_t)n;
}

static void stream_closed(void *userdata, bool timed_out)
{
        Ctx *c = userdata;

        assert_false(timed_out);
        c->stream_closed = true;
        c->stream = NULL;
}

static const HttpStreamOps ops = {fill, stream_closed};

static void handler(void *userdata, HttpRequest *rq)
{
        Ctx *c = userdata;
        const char *path = http_request_path(rq);

        c->handled++;
        if (strcmp(path, "/text") == 0) {
                const char *who = http_request_arg(rq, "who");
                char *body;

                assert_int_equal(asprintf(&body, "hello %s", who ? who : "nobody"), (int)strlen("hello ") +
                                 (int)strlen(who ? who : "nobody"));
                assert_int_equal(http_reply(rq, 200, "text/plain", body, strlen(body), HTTP_BODY_TAKE, NULL), 0);
        } else if (strcmp(path, "/public") == 0) {
                assert_int_equal(http_reply(rq, 200, "text/plain", "open", 4, HTTP_BODY_STATIC, NULL), 0);
        } else if (strcmp(path, "/stream") == 0) {
                c->pending = "first;";
                assert_int_equal(http_reply_stream(rq, "text/event-stream", &ops, c, &c->stream), 0);
        } else if (strcmp(path, "/nothing") == 0) {
                /* answers nothing: the server sends a 500 */
        } else {
                assert_int_equal(http_reply_error(rq, 404, "not-found", "No \"%s\" here.", path), 0);
        }
}

static void on_done(void *userdata, const HttpResponse *r)
{
        Ctx *c = userdata;

        assert_int_equal(r->error, HTTP_OK);
        c->status[c->done] = r->status;
        snprintf(c->body[c->done], sizeof(c->body[0]), "%.*s", (int)r->body_len, r->body);
        c->done++;
}

static void on_closed(void *userdata)
{
        ((Ctx *)userdata)->closed++;
}

static void get(Ctx *c, const char *path, const HttpHeaders *headers)
{
        char url[128];

        snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", http_server_port(c->server), path);
        assert_int_equal(httpmux_get(c->mux, url, headers, on_done, c), 0);
}

static void run_until(Ctx *c, unsigned done)
{
        while (c->done < done)
                assert_true(uv_run(&c->loop, UV_RUN_ONCE) != 0 || c->done >= done);
}

static const char *const public_paths[] = {"/public", NULL};

static void setup(Ctx *c, const char *token)
{
        HttpServerOptions o = {
            .host = "127.0.0.1",
            .token = token,
            .public_paths = public_paths,
            .handler = handler,
            .userdata = c,
        };

        memset(c, 0, sizeof(*c));
        assert_int_equal(uv_loop_init(&c->loop), 0);
        assert_int_equal(httpmux_new(&c->loop, NULL, &c->mux), 0);
        o.userdata = c;
        assert_int_equal(http_server_new(&c->loop, &o, &c->server), 0);
        assert_true(http_server_port(c->server) > 0);
}

static void teardown(Ctx *c)
{
        http_server_close(c->server, on_closed, c);
        httpmux_close(c->mux, on_closed, c);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        assert_int_equal(c->closed, 2);
        assert_int_equal(uv_loop_close(&c->loop), 0);
}

static void test_routes(void **state)
{
        Ctx c;
        HttpServerStats st;

        setup(&c, NULL);
        get(&c, "/text?who=you%20all", NULL);
        run_until(&c, 1);
        assert_int_equal(c.status[0], 200);
        assert_string_equal(c.body[0], "hello you all");
        get(&c, "/elsewhere", NULL);
        run_until(&c, 2);
        assert_int_equal(c.status[1], 404);
        assert_string_equal(c.body[1], "{\"error\":\"not-found\",\"message\":\"No \\\"/elsewhere\\\" here.\"}\n");
        get(&c, "/nothing", NULL);
        run_until(&c, 3);
        assert_int_equal(c.status[2], 500);
        http_server_stats(c.server, &st);
        assert_int_equal(st.by_class[2], 1);
        assert_int_equal(st.by_class[4], 1);
        assert_int_equal(st.by_class[5], 1);
        teardown(&c);
}

static void test_token(void **state)
{
        Ctx c;
        HttpHeaders *good = NULL, *bad = NULL;
        HttpServerStats st;

        assert_int_equal(http_headers_add(&good, "Authorization", "Bearer s3cret"), 0);
        assert_int_equal(http_headers_add(&bad, "Authorization", "Bearer s3cre"), 0);

        setup(&c, "s3cret");
        get(&c, "/text", NULL);
        run_until(&c, 1);
        assert_int_equal(c.status[0], 401);
        get(&c, "/text", bad);
        run_until(&c, 2);
        assert_int_equal(c.status[1], 401);
        get(&c, "/text", good);
        run_until(&c, 3);
        assert_int_equal(c.status[2], 200);
        get(&c, "/public", NULL);
        run_until(&c, 4);
        assert_int_equal(c.status[3], 200);
        /* The handler never saw the refused ones. */
        assert_int_equal(c.handled, 2);
        http_server_stats(c.server, &st);
        assert_int_equal(st.unauthorized, 2);
        /* A new token applies to the next request. */
        assert_int_equal(http_server_set_token(c.server, "other"), 0);
        get(&c, "/text", good);
        run_until(&c, 5);
        assert_int_equal(c.status[4], 401);
        assert_int_equal(http_server_set_token(c.server, NULL), 0);
        get(&c, "/text", NULL);
        run_until(&c, 6);
        assert_int_equal(c.status[5], 200);
        teardown(&c);
        http_headers_free(good);
        http_headers_free(bad);
}

/* The stream sleeps when fill() has nothing, wakes on http_stream_wake()
 * from a timer, and ends when fill() says so. */
static void on_timer(uv_timer_t *t)
{
        Ctx *c = t->data;

        if (!c->stream) {
                uv_timer_start(t, on_timer, 5, 0);
                return;
        }
        if (!c->pending && !c->finish) {
                c->pending = "second;";
                c->finish = true;
                http_stream_wake(c->stream);
        }
}

static void test_stream(void **state)
{
        Ctx c;

        setup(&c, NULL);
        uv_timer_init(&c.loop, &c.timer);
        c.timer.data = &c;
        uv_timer_start(&c.timer, on_timer, 20, 0);
        get(&c, "/stream", NULL);
        run_until(&c, 1);
        assert_int_equal(c.status[0], 200);
        assert_string_equal(c.body[0], "first;second;");
        assert_true(c.stream_closed);
        uv_close((uv_handle_t *)&c.timer, NULL);
        teardown(&c);
}

static void test_address_in_use(void **state)
{
        Ctx c;
        HttpServer *second = NULL;
        HttpServerOptions o = {.host = "127.0.0.1", .handler = handler};

        setup(&c, NULL);
        o.userdata = &c;
        o.port = http_server_port(c.server);
        assert_true(http_server_new(&c.loop, &o, &second) < 0);
        assert_null(second);
        o.host = "no such host.invalid";
        o.port = 0;
        assert_int_equal(http_server_new(&c.loop, &o, &second), -EINVAL);
        teardown(&c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_routes),
                cmocka_unit_test(test_token),
                cmocka_unit_test(test_stream),
                cmocka_unit_test(test_address_in_use),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
