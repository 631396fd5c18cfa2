/* Unit tests of the runbooks index: interning, per-session references,
 * growth of the hash and the per-session array, bounds. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "runbooks.h"

static void test_set_and_find(void **state)
{
        Runbooks r = {};

        assert_int_equal(runbooks_find(&r, "rbk1", 4), 0);
        assert_null(runbooks_name(&r, 5));
        assert_int_equal(runbooks_set(&r, 5, "rbk1", 4), 0);
        assert_int_equal(runbooks_set(&r, 7, "rbk2", 4), 0);
        assert_int_equal(runbooks_set(&r, 9, "rbk1xyz", 4), 0); /* only the first 4 bytes */
        assert_string_equal(runbooks_name(&r, 5), "rbk1");
        assert_string_equal(runbooks_name(&r, 7), "rbk2");
        assert_int_equal(runbooks_of(&r, 9), runbooks_of(&r, 5));
        assert_int_equal(runbooks_find(&r, "rbk2", 4), runbooks_of(&r, 7));
        assert_int_equal(runbooks_find(&r, "rbk", 3), 0);
        assert_int_equal(runbooks_of(&r, 6), 0);
        assert_int_equal(runbooks_of(&r, 1u << 30), 0);
        /* A session moving to another runbook, then leaving the table. */
        assert_int_equal(runbooks_set(&r, 5, "rbk2", 4), 0);
        assert_string_equal(runbooks_name(&r, 5), "rbk2");
        runbooks_forget(&r, 5);
        assert_null(runbooks_name(&r, 5));
        assert_int_equal(runbooks_set_none(&r, 5000), 0);
        assert_int_equal(runbooks_of(&r, 5000), RUNBOOK_NONE);
        assert_null(runbooks_name(&r, 5000));
        assert_int_equal(runbooks_set(&r, 5000, "rbk1", 4), 0);
        assert_string_equal(runbooks_name(&r, 5000), "rbk1");
        assert_int_equal(r.n_names, 2);
        runbooks_done(&r);
}

static void test_bounds(void **state)
{
        Runbooks r = {};
        char id[RUNBOOK_ID_MAX + 2];

        assert_int_equal(runbooks_set(&r, 0, "", 0), -EINVAL);
        assert_int_equal(runbooks_set(&r, 0, NULL, 3), -EINVAL);
        memset(id, 'a', sizeof(id));
        assert_int_equal(runbooks_set(&r, 0, id, RUNBOOK_ID_MAX + 1), -EINVAL);
        assert_int_equal(runbooks_set(&r, 0, id, RUNBOOK_ID_MAX), 0);
        assert_int_equal(runbooks_set(&r, 1, "a\0b", 3), -EINVAL);
        runbooks_done(&r);
}

static void test_many(void **state)
{
        Runbooks r = {};
        char id[32];

        /* Past a few hash growths and array doublings. */
        for (unsigned k = 0; k < 5000; k++) {
                snprintf(id, sizeof(id), "rbk%u", k % 1500);
                assert_int_equal(runbooks_set(&r, k * 7, id, strlen(id)), 0);
        }
        assert_int_equal(r.n_names, 1500);
        for (unsigned k = 0; k < 5000; k++) {
                snprintf(id, sizeof(id), "rbk%u", k % 1500);
                assert_string_equal(runbooks_name(&r, k * 7), id);
                assert_int_equal(runbooks_find(&r, id, strlen(id)), runbooks_of(&r, k * 7));
        }
        runbooks_done(&r);
}

static void test_cap(void **state)
{
        Runbooks r = {};
        char id[32];

        for (unsigned k = 0; k < RUNBOOKS_MAX; k++) {
                snprintf(id, sizeof(id), "r%u", k);
                assert_int_equal(runbooks_set(&r, 0, id, strlen(id)), 0);
        }
        assert_int_equal(runbooks_set(&r, 1, "one-too-many", 12), -ENOSPC);
        assert_int_equal(runbooks_set(&r, 1, "r7", 2), 0); /* known ones still work */
        runbooks_done(&r);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_set_and_find),
                cmocka_unit_test(test_bounds),
                cmocka_unit_test(test_many),
                cmocka_unit_test(test_cap),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
