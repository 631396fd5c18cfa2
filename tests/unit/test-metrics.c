/* Unit tests of the Prometheus text writer: family headers, labels, values
 * and the escaping rules of the text format. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "metrics.h"

static void test_family_and_samples(void **state)
{
        MetricsText m = METRICS_TEXT_NULL;
        const char *labels[] = {"outcome", "ok", "kind", "get"};

        metrics_text_family(&m, "sw_polls_total", "counter", "Polls by outcome.");
        metrics_text_sample(&m, "sw_polls_total", labels, 2, 12);
        metrics_text_labelled(&m, "sw_polls_total", "outcome", "timeout", 0);
        metrics_text_value(&m, "sw_up", 1);
        assert_int_equal(m.error, 0);
        assert_string_equal(m.data, "# HELP sw_polls_total Polls by outcome.\n"
                                    "# TYPE sw_polls_total counter\n"
                                    "sw_polls_total{outcome=\"ok\",kind=\"get\"} 12\n"
                                    "sw_polls_total{outcome=\"timeout\"} 0\n"
                                    "sw_up 1\n");
        assert_int_equal(m.len, strlen(m.data));
        metrics_text_done(&m);
        assert_null(m.data);
}

static void test_single(void **state)
{
        MetricsText m = METRICS_TEXT_NULL;

        metrics_text_single(&m, "sw_up", "gauge", "Up or not.", 1);
        assert_string_equal(m.data, "# HELP sw_up Up or not.\n# TYPE sw_up gauge\nsw_up 1\n");
        metrics_text_done(&m);
}

static void test_escaping(void **state)
{
        MetricsText m = METRICS_TEXT_NULL;

        /* HELP escapes backslash and newline, not quotes; label values all three. */
        metrics_text_family(&m, "x", "gauge", "a \"b\" \\ c\nd");
        metrics_text_labelled(&m, "x", "path", "C:\\dir \"q\"\nnext", 2);
        assert_int_equal(m.error, 0);
        assert_string_equal(m.data, "# HELP x a \"b\" \\\\ c\\nd\n"
                                    "# TYPE x gauge\n"
                                    "x{path=\"C:\\\\dir \\\"q\\\"\\nnext\"} 2\n");
        metrics_text_done(&m);
}

static void test_values(void **state)
{
        MetricsText m = METRICS_TEXT_NULL;

        metrics_text_value(&m, "a", 1.5);
        metrics_text_value(&m, "b", -3);
        metrics_text_value(&m, "c", NAN);
        metrics_text_value(&m, "d", INFINITY);
        metrics_text_value(&m, "e", -INFINITY);
        metrics_text_value(&m, "f", 18446744073709551615.0);
        metrics_text_value(&m, "g", 0.1 + 0.2);
        metrics_text_value(&m, "h", 0.000372);
        assert_string_equal(m.data, "a 1.5\nb -3\nc NaN\nd +Inf\ne -Inf\nf 1.8446744073709552e+19\n"
                                    "g 0.30000000000000004\nh 0.000372\n");
        metrics_text_done(&m);
}

static void test_grows(void **state)
{
        MetricsText m = METRICS_TEXT_NULL;
        char name[32];

        for (int k = 0; k < 5000; k++) {
                snprintf(name, sizeof(name), "metric_%d", k);
                metrics_text_value(&m, name, k);
        }
        assert_int_equal(m.error, 0);
        assert_non_null(strstr(m.data, "\nmetric_4999 4999\n"));
        assert_int_equal(m.len, strlen(m.data));
        metrics_text_done(&m);
}

static void test_histogram(void **state)
{
        static const double bounds[] = {0.01, 0.1, 1};
        MetricsHistogram h;
        MetricsText m = METRICS_TEXT_NULL;

        assert_int_equal(metrics_histogram_init(&h, bounds, 3), 0);
        /* A value on a bound belongs to that bucket ("le"); above the last,
         * only to +Inf. */
        metrics_histogram_observe(&h, 0.01);
        metrics_histogram_observe(&h, 0.05);
        metrics_histogram_observe(&h, 0.5);
        metrics_histogram_observe(&h, 0.75);
        metrics_histogram_observe(&h, 7);
        metrics_text_histogram(&m, "x_seconds", "Durations.", &h);
        assert_int_equal(m.error, 0);
        assert_string_equal(m.data, "# HELP x_seconds Durations.\n"
                                    "# TYPE x_seconds histogram\n"
                                    "x_seconds_bucket{le=\"0.01\"} 1\n"
                                    "x_seconds_bucket{le=\"0.1\"} 2\n"
                                    "x_seconds_bucket{le=\"1\"} 4\n"
                                    "x_seconds_bucket{le=\"+Inf\"} 5\n"
                                    "x_seconds_sum 8.31\n"
                                    "x_seconds_count 5\n");
        metrics_text_done(&m);
}

static void test_histogram_empty_and_bad_bounds(void **state)
{
        static const double unordered[] = {1, 0.5};
        static const double many[METRICS_HISTOGRAM_BOUNDS_MAX + 1] = {};
        MetricsHistogram h;
        MetricsText m = METRICS_TEXT_NULL;

        assert_int_equal(metrics_histogram_init(&h, unordered, 2), -EINVAL);
        assert_int_equal(metrics_histogram_init(&h, many, METRICS_HISTOGRAM_BOUNDS_MAX + 1), -EINVAL);
        /* No bounds: just +Inf, and nothing observed yet. */
        assert_int_equal(metrics_histogram_init(&h, NULL, 0), 0);
        metrics_text_histogram(&m, "y", "Empty.", &h);
        assert_non_null(strstr(m.data, "\ny_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"));
        metrics_text_done(&m);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_family_and_samples),
            cmocka_unit_test(test_single),
            cmocka_unit_test(test_escaping),
            cmocka_unit_test(test_values),
            cmocka_unit_test(test_grows),
            cmocka_unit_test(test_histogram),
            cmocka_unit_test(test_histogram_empty_and_bad_bounds),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
