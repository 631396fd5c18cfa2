/* Unit tests of the control socket's pure parts: who may run mutating
 * commands, and the reply builders. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

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

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_peer_allowed),
            cmocka_unit_test(test_replies),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
