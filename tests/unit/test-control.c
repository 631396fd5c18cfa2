/* Unit tests of the control socket's pure parts: who may run mutating
 * commands, the request parser, and the reply builders. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include <json-c/json.h>

#include "control-proto.h"
#include "control.h"

static void test_peer_allowed(void **state)
{
        const gid_t groups[] = {10, 20, 30};
        const gid_t none = (gid_t)-1;

        /* root and the daemon's own uid, whatever the groups */
        assert_true(control_peer_allowed(0, 100, NULL, 0, 1000, none));
        assert_true(control_peer_allowed(1000, 100, NULL, 0, 1000, none));
        /* anyone else only through the control group */
        assert_false(control_peer_allowed(65534, 65534, NULL, 0, 1000, none));
        assert_false(control_peer_allowed(65534, 65534, groups, 3, 1000, 40));
        assert_true(control_peer_allowed(65534, 40, NULL, 0, 1000, 40));
        assert_true(control_peer_allowed(65534, 65534, groups, 3, 1000, 20));
        /* without a group, a primary gid of (gid_t)-1 grants nothing */
        assert_false(control_peer_allowed(65534, none, NULL, 0, 1000, none));
}

static void test_replies(void **state)
{
        json_object *ok = control_reply_ok();
        json_object *err = control_reply_error(CONTROL_ERROR_BAD_ID, "Invalid session id '%s'.", "x y");

        assert_string_equal(json_object_to_json_string_ext(ok, JSON_C_TO_STRING_PLAIN), "{\"ok\":true}");
        assert_string_equal(json_object_to_json_string_ext(err, JSON_C_TO_STRING_PLAIN),
                            "{\"ok\":false,\"error\":\"bad-id\",\"message\":\"Invalid session id 'x y'.\"}");
        json_object_put(ok);
        json_object_put(err);
}

static void test_parse_request(void **state)
{
        static const struct {
                const char *line;
                int expect; /* 0 or -EINVAL */
                const char *reason_part;
        } table[] = {
            {"{\"command\":\"status\"}", 0, NULL},
            {"{\"command\":\"status\"}  \t\r", 0, NULL},
            {"{\"command\":\"status\",\"a\":{\"x\":1},\"b\":[{\"x\":1},{\"x\":2}]}", 0, NULL},
            {"{\"command\":\"st\\\"a,t:us\"}", 0, NULL}, /* quotes, commas and colons inside a string */
            {"{\"command\":\"caf\xc3\xa9\"}", 0, NULL},
            {"{\"command\":\"\xff\xfe\"}", -EINVAL, "not valid UTF-8 (byte 13)"},
            {"{\"command\":\"\xc3\"}", -EINVAL, "UTF-8"},
            {"{\"command\":\"\xed\xa0\x80\"}", -EINVAL, "UTF-8"}, /* a surrogate */
            {"{\"command\":\"\xe0\x80\xaf\"}", -EINVAL, "UTF-8"}, /* overlong */
            {"{\"command\":\"status\",\"command\":\"reload\"}", -EINVAL, "'command' twice"},
            {"{\"command\":\"status\",\"comm\\u0061nd\":\"reload\"}", -EINVAL, "'command' twice"},
            {"{\"command\":\"status\",\"x\":[{\"a\":1,\"b\":2,\"a\":3}]}", -EINVAL, "'a' twice"},
            {"{\"command\":\"status\"} x", -EINVAL, "text after"},
            /* json-c's extensions hid keys from the duplicate check, and a
             * '"' inside them made it read past the line (fuzz.control). */
            {"{\"command\":\"status\",'command':'reload'}", -EINVAL, "single-quoted"},
            {"{\"command\":\"status\",'a\"':1}", -EINVAL, "single-quoted"},
            {"{\"command\":\"status\"/*\"*/}", -EINVAL, "a comment"},
            {"{\"command\":\"a/b'c\"}", 0, NULL}, /* inside a string they are text */
            {"[1]", -EINVAL, "must be a JSON object"},
            {"{\"command\"", -EINVAL, "not valid JSON"},
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
                json_object *req = (json_object *)1;
                char reason[256] = "";
                int r = control_parse_request(table[i].line, strlen(table[i].line), &req, reason,
                                              sizeof(reason));

                if (r != table[i].expect)
                        fail_msg("'%s': %d, expected %d (%s)", table[i].line, r, table[i].expect, reason);
                if (r == 0) {
                        assert_true(json_object_is_type(req, json_type_object));
                        json_object_put(req);
                } else {
                        assert_null(req);
                        if (!strstr(reason, table[i].reason_part))
                                fail_msg("'%s': reason '%s' lacks '%s'", table[i].line, reason,
                                         table[i].reason_part);
                }
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_peer_allowed),
            cmocka_unit_test(test_replies),
            cmocka_unit_test(test_parse_request),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
