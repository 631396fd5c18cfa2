/* Unit tests of the process_* metrics: parsing /proc texts (including a
 * command name with spaces and parentheses), the start time arithmetic, and
 * the families written for the running test process. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "process-metrics.h"

/* Fields 14-15 (utime 1234, stime 567), 22 (starttime 98765), 23 (vsize),
 * 24 (rss 2048 pages), after a command name that fools a naive split. */
static const char stat_text[] =
    "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 567 0 0 20 0 3 0 98765 123456789 2048 "
    "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0\n";

static void test_stat_parse(void **state)
{
        ProcessStat st;

        assert_int_equal(process_stat_parse(stat_text, &st), 0);
        assert_int_equal(st.utime_ticks, 1234);
        assert_int_equal(st.stime_ticks, 567);
        assert_int_equal(st.start_ticks, 98765);
        assert_int_equal(st.vsize_bytes, 123456789);
        assert_int_equal(st.rss_pages, 2048);
}

static void test_stat_parse_rejects(void **state)
{
        ProcessStat st;

        assert_int_equal(process_stat_parse("", &st), -EINVAL);
        assert_int_equal(process_stat_parse("12 noparens S 1 2 3", &st), -EINVAL);
        /* Cut short before rss. */
        assert_int_equal(process_stat_parse("1 (x) S 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 7 8\n", &st),
                         -EINVAL);
        /* A number that is not one. */
        assert_int_equal(process_stat_parse("1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 6 0 0 20 0 1 0 7 8 9\n", &st),
                         -EINVAL);
}

static void test_limits_parse(void **state)
{
        static const char limits[] =
            "Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max cpu time              unlimited            unlimited            seconds   \n"
            "Max open files            1024                 524288               files     \n"
            "Max locked memory         8388608              8388608              bytes     \n";
        static const char unlimited[] =
            "Max open files            unlimited            unlimited            files\n";
        uint64_t v = 0;

        assert_int_equal(process_limits_parse_max_fds(limits, &v), 0);
        assert_int_equal(v, 1024);
        assert_int_equal(process_limits_parse_max_fds(unlimited, &v), 0);
        assert_true(v == UINT64_MAX);
        assert_int_equal(process_limits_parse_max_fds("Max processes 10 10 processes\n", &v), -ENOENT);
        assert_int_equal(process_limits_parse_max_fds("Max open files   lots\n", &v), -EINVAL);
}

static void test_start_time(void **state)
{
        /* Booted at 1000 s (now 1500 s, 500 s up); started 250 ticks of 100 Hz
         * after boot. */
        assert_true(process_start_time(1500.0, 500.0, 250, 100) == 1002.5);
        /* A bogus tick rate falls back to the usual 100 Hz. */
        assert_true(process_start_time(1500.0, 500.0, 250, 0) == 1002.5);
}

static double sample(const char *text, const char *name)
{
        char key[128];
        const char *p;

        snprintf(key, sizeof(key), "\n%s ", name);
        p = strstr(text, key);
        assert_non_null(p);
        return strtod(p + strlen(key), NULL);
}

static void test_write_for_this_process(void **state)
{
        MetricsText m = METRICS_TEXT_NULL;
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        double fds_before, fds_after;

        assert_int_equal(process_metrics_write(&m), 0);
        assert_int_equal(m.error, 0);
        assert_non_null(strstr(m.data, "# TYPE process_cpu_seconds_total counter\n"));
        assert_true(sample(m.data, "process_resident_memory_bytes") > 0);
        assert_true(sample(m.data, "process_virtual_memory_bytes") >=
                    sample(m.data, "process_resident_memory_bytes"));
        assert_true(sample(m.data, "process_max_fds") >= 1);
        /* Started within the last hour, not in the future (loose bounds:
         * only the arithmetic is checked, not the speed of the machine). */
        assert_true(sample(m.data, "process_start_time_seconds") > (double)time(NULL) - 3600);
        assert_true(sample(m.data, "process_start_time_seconds") < (double)time(NULL) + 60);
        fds_before = sample(m.data, "process_open_fds");
        metrics_text_done(&m);

        /* One more descriptor is counted as one more. */
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(process_metrics_write(&m), 0);
        fds_after = sample(m.data, "process_open_fds");
        assert_true(fds_after == fds_before - 1);
        metrics_text_done(&m);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_stat_parse),
            cmocka_unit_test(test_stat_parse_rejects),
            cmocka_unit_test(test_limits_parse),
            cmocka_unit_test(test_start_time),
            cmocka_unit_test(test_write_for_this_process),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
