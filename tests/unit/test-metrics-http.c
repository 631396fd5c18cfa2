/* Unit tests of the metrics endpoint: libmicrohttpd on the libuv loop,
 * scraped by httpmux (libcurl) on the same loop, so a request only completes
 * when both are driven by it correctly. */
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

#include "httpmux.h"
#include "metrics-http.h"

typedef struct Ctx {
        uv_loop_t loop;
        HttpMux *mux;
        MetricsHttp *metrics;
        unsigned renders;
        int render_error;
        unsigned done;
        long status[8];
        char body[8][256];
        int closed;
} Ctx;

static int render(void *userdata, char **ret_text, size_t *ret_len)
{
        Ctx *c = userdata;
        char *text;

        if (c->render_error)
                return c->render_error;
        c->renders++;
        if (asprintf(&text, "# TYPE sw_test_total counter\nsw_test_total %u\n", c->renders) < 0)
                return -ENOMEM;
        *ret_text = text;
        *ret_len = strlen(text);
        return 0;
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

static void get(Ctx *c, const char *path)
{
        char url[128];

        snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", metrics_http_port(c->metrics), path);
        assert_int_equal(httpmux_get(c->mux, url, NULL, on_done, c), 0);
}

static void run_until(Ctx *c, unsigned done)
{
        while (c->done < done)
                assert_true(uv_run(&c->loop, UV_RUN_ONCE) != 0 || c->done >= done);
}

static void setup(Ctx *c)
{
        memset(c, 0, sizeof(*c));
        assert_int_equal(uv_loop_init(&c->loop), 0);
        assert_int_equal(httpmux_new(&c->loop, NULL, &c->mux), 0);
        assert_int_equal(metrics_http_new(&c->loop, "127.0.0.1", 0, render, c, &c->metrics), 0);
        assert_true(metrics_http_port(c->metrics) > 0);
}

static void teardown(Ctx *c)
{
        metrics_http_close(c->metrics, on_closed, c);
        httpmux_close(c->mux, on_closed, c);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        assert_int_equal(c->closed, 2);
        assert_int_equal(uv_loop_close(&c->loop), 0);
}

static void test_scrape(void **state)
{
        Ctx c;
        MetricsHttpStats st;

        setup(&c);
        get(&c, "/metrics");
        run_until(&c, 1);
        assert_int_equal(c.status[0], 200);
        assert_string_equal(c.body[0], "# TYPE sw_test_total counter\nsw_test_total 1\n");
        /* Each scrape renders anew. */
        get(&c, "/metrics");
        run_until(&c, 2);
        assert_string_equal(c.body[1], "# TYPE sw_test_total counter\nsw_test_total 2\n");
        metrics_http_stats(c.metrics, &st);
        assert_int_equal(st.scrapes, 2);
        assert_int_equal(st.errors, 0);
        teardown(&c);
}

static void test_errors(void **state)
{
        Ctx c;
        MetricsHttpStats st;

        setup(&c);
        get(&c, "/other");
        run_until(&c, 1);
        assert_int_equal(c.status[0], 404);
        c.render_error = -EIO;
        get(&c, "/metrics");
        run_until(&c, 2);
        assert_int_equal(c.status[1], 500);
        assert_int_equal(c.renders, 0);
        metrics_http_stats(c.metrics, &st);
        assert_int_equal(st.scrapes, 0);
        assert_int_equal(st.errors, 2);
        teardown(&c);
}

static void test_address_in_use(void **state)
{
        Ctx c;
        MetricsHttp *second = NULL;

        setup(&c);
        assert_true(metrics_http_new(&c.loop, "127.0.0.1", metrics_http_port(c.metrics), render, &c, &second) < 0);
        assert_null(second);
        assert_int_equal(metrics_http_new(&c.loop, "no such host.invalid", 0, render, &c, &second), -EINVAL);
        teardown(&c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_scrape),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_address_in_use),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
