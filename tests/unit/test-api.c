/* Unit tests of the api module: URL escaping and response classification. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>


#include "api.h"

static void test_escape(void **state)
{
        static const struct {
                const char *in;
                const char *out;
        } table[] = {
                { "ses20220120za1pskd", "ses20220120za1pskd" },
                { "a-b_c.d~e", "a-b_c.d~e" },
                { "a b", "a%20b" },
                { "a&id=x", "a%26id%3Dx" },
                { "../x?y#z", "..%2Fx%3Fy%23z" },
                { "\xc3\xa9", "%C3%A9" },
                { "", "" },
        };
        char buf[64];

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
                int r = api_escape(table[i].in, buf, sizeof(buf));
                assert_int_equal(r, (int)strlen(table[i].out));
                assert_string_equal(buf, table[i].out);
        }
}

static void test_escape_bounds(void **state)
{
        char buf[4];

        /* "abc" needs 4 bytes with its NUL; "abcd" does not fit, nor does one
         * escaped byte after two plain ones. */
        assert_int_equal(api_escape("abc", buf, sizeof(buf)), 3);
        assert_int_equal(api_escape("abcd", buf, sizeof(buf)), -ENOBUFS);
        assert_int_equal(api_escape("ab ", buf, sizeof(buf)), -ENOBUFS);
        assert_int_equal(api_escape(" ", buf, sizeof(buf)), 3);
        assert_string_equal(buf, "%20");
}

static void test_classify(void **state)
{
        static const struct {
                HttpError error;
                long status;
                ApiOutcome outcome;
        } table[] = {
                { HTTP_OK, 200, API_OK },
                { HTTP_OK, 401, API_AUTH },
                { HTTP_OK, 403, API_FORBIDDEN },
                { HTTP_OK, 404, API_NOT_FOUND },
                { HTTP_OK, 429, API_RATE_LIMITED },
                { HTTP_OK, 500, API_SERVER },
                { HTTP_OK, 502, API_SERVER },
                { HTTP_OK, 503, API_SERVER },
                { HTTP_OK, 599, API_SERVER },
                { HTTP_OK, 400, API_CLIENT },
                { HTTP_OK, 301, API_CLIENT },
                { HTTP_OK, 204, API_CLIENT },
                { HTTP_ERR_TIMEOUT, 0, API_TIMEOUT },
                { HTTP_ERR_CONNECT, 0, API_NETWORK },
                { HTTP_ERR_NETWORK, 0, API_NETWORK },
                { HTTP_ERR_TLS, 0, API_TLS },
                { HTTP_ERR_TOO_LARGE, 0, API_TOO_LARGE },
                { HTTP_ERR_CANCELLED, 0, API_CANCELLED },
                { HTTP_ERR_INTERNAL, 0, API_NETWORK },
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
                HttpResponse r = { .error = table[i].error, .status = table[i].status, .retry_after_ms = -1 };
                assert_int_equal(api_classify(&r), table[i].outcome);
        }
        for (int o = 0; o < _API_OUTCOME_MAX; o++)
                assert_string_not_equal(api_outcome_to_string(o), "invalid");
}

static void test_init_prefixes(void **state)
{
        Api a;
        ApiOptions o = { .url = "http://127.0.0.1:1/v0", .key = "k", .team_id = "tea1" };
        size_t n = 0;
        bool saw_team = false, saw_key = false;

        assert_int_equal(api_init(&a, NULL, &o), 0);
        assert_string_equal(a.get_prefix, "http://127.0.0.1:1/v0/sessions/get?id=");
        assert_string_equal(a.list_prefix, "http://127.0.0.1:1/v0/sessions/list?");
        for (const char *line; (line = http_headers_get(a.headers->list, n)); n++) {
                saw_team |= strcmp(line, "X-Team-ID: tea1") == 0;
                saw_key |= strcmp(line, "X-Airplane-API-Key: k") == 0;
        }
        assert_true(saw_team);
        assert_true(saw_key);
        assert_int_equal(n, 3); /* key, Accept, team; no env slug when unset */
        api_done(&a);
}

/* A reload's new key and URL apply to what starts next; the header set a
 * request in flight borrowed stays valid until that request lets go of it. */
static void test_reconfigure(void **state)
{
        Api a;
        ApiOptions o = { .url = "http://127.0.0.1:1/v0", .key = "old" };
        ApiHeaders *before;

        assert_int_equal(api_init(&a, NULL, &o), 0);
        before = a.headers;
        before->refs++; /* as a request in flight holds it */
        o = (ApiOptions){ .url = "http://127.0.0.1:2/v1", .key = "new", .env_slug = "prod" };
        assert_int_equal(api_reconfigure(&a, &o), 0);
        assert_ptr_not_equal(a.headers, before);
        assert_int_equal(before->refs, 1);
        assert_string_equal(http_headers_get(before->list, 0), "X-Airplane-API-Key: old");
        assert_string_equal(http_headers_get(a.headers->list, 0), "X-Airplane-API-Key: new");
        assert_string_equal(http_headers_get(a.headers->list, 2), "X-Airplane-Env-Slug: prod");
        assert_string_equal(a.get_prefix, "http://127.0.0.1:2/v1/sessions/get?id=");
        assert_int_equal(a.get_prefix_len, strlen(a.get_prefix));
        assert_string_equal(a.list_prefix, "http://127.0.0.1:2/v1/sessions/list?");
        api_done(&a);
        /* What the request in flight would do when it is done. */
        http_headers_free(before->list);
        free(before);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_escape),
                cmocka_unit_test(test_reconfigure),
                cmocka_unit_test(test_escape_bounds),
                cmocka_unit_test(test_classify),
                cmocka_unit_test(test_init_prefixes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
