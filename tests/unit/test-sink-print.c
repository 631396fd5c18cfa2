/* Unit tests of the stdout sink: lines as written, and a reader that stops
 * reading never blocks the loop. */
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
#include <unistd.h>
#include <uv.h>

#include "sink.h"

static void make_event(Event *e, unsigned n, char id[static 32])
{
        snprintf(id, 32, "ses%08u", n);
        assert_int_equal(event_init_gone(e, id, "Active", 1700000000000000 + n, "sessionwatchd://test"), 0);
}

/* Reads whatever is in the pipe now. */
static size_t drain(int fd, char *buf, size_t n)
{
        size_t got = 0;
        ssize_t k;

        while (got < n && (k = read(fd, buf + got, n - got)) > 0)
                got += (size_t)k;
        return got;
}

static void test_lines_through_a_pipe(void **state)
{
        uv_loop_t loop;
        int fds[2];
        Sink *s;
        char buf[65536], id[32];
        size_t got;

        assert_int_equal(uv_loop_init(&loop), 0);
        assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
        assert_int_equal(sink_print_new(&loop, fds[1], PRINT_JSON, &s), 0);

        for (unsigned n = 0; n < 3; n++) {
                Event e;

                make_event(&e, n, id);
                sink_emit(s, &e);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
        got = drain(fds[0], buf, sizeof(buf) - 1);
        buf[got] = '\0';
        /* Three whole lines, in order. */
        assert_non_null(strstr(buf, "\"subject\":\"ses00000000\""));
        assert_true(strstr(buf, "ses00000000") < strstr(buf, "ses00000001"));
        assert_true(strstr(buf, "ses00000001") < strstr(buf, "ses00000002"));
        assert_int_equal(buf[got - 1], '\n');
        {
                size_t lines = 0;
                for (size_t i = 0; i < got; i++)
                        lines += buf[i] == '\n';
                assert_int_equal(lines, 3);
        }

        sink_close(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&loop), 0);
        close(fds[0]);
}

static void test_stalled_reader_never_blocks(void **state)
{
        uv_loop_t loop;
        int fds[2];
        Sink *s;
        char id[32];
        size_t total;
        char *buf;

        assert_int_equal(uv_loop_init(&loop), 0);
        assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
        assert_int_equal(sink_print_new(&loop, fds[1], PRINT_JSON, &s), 0);

        /* About 20,000 lines of ~300 bytes: far past the pipe (64 KiB) and
         * the sink's queue (4 MiB). Nobody reads; each emit must return. */
        for (unsigned n = 0; n < 20000; n++) {
                Event e;

                make_event(&e, n, id);
                sink_emit(s, &e);
        }
        uv_run(&loop, UV_RUN_NOWAIT);

        /* What the reader finally gets is whole lines from the start, and
         * less than everything: the rest was dropped, not queued forever. */
        assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
        buf = malloc(8 << 20);
        assert_non_null(buf);
        total = 0;
        for (int round = 0; round < 1000; round++) {
                size_t got = drain(fds[0], buf + total, (8 << 20) - total);

                total += got;
                uv_run(&loop, UV_RUN_NOWAIT);
                if (got == 0 && round > 10)
                        break;
        }
        assert_true(total > 65536);
        assert_true(total < 20000u * 250u);
        assert_int_equal(buf[total - 1], '\n');
        assert_memory_equal(buf, "{\"specversion\"", 14);
        free(buf);

        sink_close(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&loop), 0);
        close(fds[0]);
}

static void test_regular_file(void **state)
{
        char path[] = "/tmp/test-sink-print-XXXXXX", id[32], buf[4096];
        int fd = mkstemp(path);
        Sink *s;
        Event e;
        ssize_t n;

        assert_true(fd >= 0);
        unlink(path);
        assert_int_equal(sink_print_new(NULL, fd, PRINT_TEXT, &s), 0);
        make_event(&e, 7, id);
        sink_emit(s, &e);
        sink_close(s);
        n = pread(fd, buf, sizeof(buf) - 1, 0);
        assert_true(n > 0);
        buf[n] = '\0';
        assert_non_null(strstr(buf, "ses00000007"));
        assert_int_equal(buf[n - 1], '\n');
        close(fd);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_lines_through_a_pipe),
            cmocka_unit_test(test_stalled_reader_never_blocks),
            cmocka_unit_test(test_regular_file),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
