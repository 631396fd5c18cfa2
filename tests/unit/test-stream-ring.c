/* Unit tests of the event stream's ring of recent lines: limits by count and
 * bytes, lookup by sequence, what a {"since": N} can be served from, and
 * reference counting of the shared chunks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "stream-ring.h"

static StreamChunk *line(long seq, size_t len)
{
        char buf[256];

        assert_true(len <= sizeof(buf));
        memset(buf, 'a' + (int)(seq % 26), len);
        return stream_chunk_new(buf, len, seq);
}

static void push(StreamRing *r, long seq, size_t len)
{
        StreamChunk *c = line(seq, len);

        assert_int_equal(stream_ring_push(r, c), 0);
        stream_chunk_unref(c);
}

static void test_empty(void **state)
{
        StreamRing r;

        assert_int_equal(stream_ring_init(&r, 4, 1000, 100), 0);
        assert_int_equal(r.last, 99);
        assert_int_equal(stream_ring_first(&r), 100);
        /* A client that saw everything (99) needs nothing; anything else is
         * not held. */
        assert_true(stream_ring_covers(&r, 99));
        assert_false(stream_ring_covers(&r, 98));
        assert_false(stream_ring_covers(&r, 100));
        assert_null(stream_ring_get(&r, 99));
        stream_ring_done(&r);
}

static void test_count_limit(void **state)
{
        StreamRing r;

        assert_int_equal(stream_ring_init(&r, 3, 1 << 20, 1), 0);
        for (long s = 1; s <= 5; s++)
                push(&r, s, 10);
        assert_int_equal(r.n, 3);
        assert_int_equal(stream_ring_first(&r), 3);
        assert_int_equal(r.last, 5);
        assert_null(stream_ring_get(&r, 2));
        for (long s = 3; s <= 5; s++) {
                StreamChunk *c = stream_ring_get(&r, s);
                assert_non_null(c);
                assert_int_equal(c->sequence, s);
                assert_int_equal(c->data[0], 'a' + (int)(s % 26));
        }
        assert_null(stream_ring_get(&r, 6));
        assert_true(stream_ring_covers(&r, 2));
        assert_true(stream_ring_covers(&r, 5));
        assert_false(stream_ring_covers(&r, 1));
        assert_false(stream_ring_covers(&r, 6));
        assert_int_equal(r.bytes, 30);
        stream_ring_done(&r);
}

static void test_byte_limit_keeps_the_newest(void **state)
{
        StreamRing r;

        assert_int_equal(stream_ring_init(&r, 100, 250, 1), 0);
        push(&r, 1, 100);
        push(&r, 2, 100);
        assert_int_equal(r.n, 2);
        push(&r, 3, 100); /* 300 > 250: the oldest goes */
        assert_int_equal(r.n, 2);
        assert_int_equal(stream_ring_first(&r), 2);
        assert_int_equal(r.bytes, 200);
        /* A line bigger than the budget is still held, alone. */
        push(&r, 4, 255);
        assert_int_equal(r.n, 1);
        assert_int_equal(stream_ring_first(&r), 4);
        assert_non_null(stream_ring_get(&r, 4));
        stream_ring_done(&r);
}

static void test_out_of_order_refused(void **state)
{
        StreamRing r;
        StreamChunk *c = line(7, 5);

        assert_int_equal(stream_ring_init(&r, 4, 1000, 1), 0);
        assert_int_equal(stream_ring_push(&r, c), -EINVAL);
        assert_int_equal(c->refs, 1);
        stream_chunk_unref(c);
        push(&r, 1, 5);
        c = line(1, 5);
        assert_int_equal(stream_ring_push(&r, c), -EINVAL);
        stream_chunk_unref(c);
        stream_ring_done(&r);
}

static void test_shared_chunks_outlive_the_ring(void **state)
{
        StreamRing r;
        StreamChunk *c = line(1, 20), *held;

        assert_int_equal(stream_ring_init(&r, 1, 1000, 1), 0);
        assert_int_equal(stream_ring_push(&r, c), 0);
        assert_int_equal(c->refs, 2);
        /* A write in flight holds its own reference. */
        held = stream_chunk_ref(c);
        stream_chunk_unref(c);
        push(&r, 2, 20); /* evicts line 1 */
        assert_int_equal(held->refs, 1);
        assert_int_equal(held->len, 20);
        assert_int_equal(held->data[19], 'b');
        stream_chunk_unref(held);
        stream_ring_done(&r);
}

static void test_wraps_many_times(void **state)
{
        StreamRing r;

        assert_int_equal(stream_ring_init(&r, 7, 1 << 20, 1000), 0);
        for (long s = 1000; s < 1000 + 7 * 50 + 3; s++)
                push(&r, s, 1 + (size_t)(s % 13));
        assert_int_equal(r.n, 7);
        for (long s = stream_ring_first(&r); s <= r.last; s++)
                assert_int_equal(stream_ring_get(&r, s)->sequence, s);
        stream_ring_done(&r);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_empty),
            cmocka_unit_test(test_count_limit),
            cmocka_unit_test(test_byte_limit_keeps_the_newest),
            cmocka_unit_test(test_out_of_order_refused),
            cmocka_unit_test(test_shared_chunks_outlive_the_ring),
            cmocka_unit_test(test_wraps_many_times),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
