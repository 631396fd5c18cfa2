/* Unit tests for the scheduler: the min-heap of due times over the sessions
 * table, the in-flight cap, the token bucket, the 429 pause, interval jitter
 * and the error backoff. All times are passed in: nothing here sleeps. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler.h"
#include "sessions.h"

static uint64_t rnd_next(uint64_t *state)
{
        uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* clang-format off */
static const SchedulerOptions default_options = {
        .interval_ms = 5000,
        .waiting_interval_ms = 30000,
        .jitter_percent = 10,
        .backoff_max_ms = 300000,
        .rate_per_sec = 0,
        .max_in_flight = UINT_MAX,
        .seed = 1,
};
/* clang-format on */

typedef struct Fixture {
        SessionTable *table;
        Scheduler sched;
} Fixture;

static void fixture_init(Fixture *f, size_t n, const SchedulerOptions *opt, uint64_t now_ms)
{
        char id[32];

        *f = (Fixture){};
        assert_int_equal(sessions_new(0, &f->table), 0);
        for (size_t k = 0; k < n; k++) {
                SessionIndex i;
                int len = snprintf(id, sizeof(id), "ses%06zu", k);

                assert_int_equal(sessions_add(f->table, id, (size_t)len, 0, &i), 0);
                assert_int_equal(i, k);
        }
        assert_int_equal(scheduler_init(&f->sched, f->table, opt ? opt : &default_options, now_ms), 0);
}

static void fixture_done(Fixture *f)
{
        scheduler_done(&f->sched);
        sessions_free(f->table);
}

static uint64_t due(Fixture *f, SessionIndex i)
{
        return sessions_get(f->table, i)->due_ms;
}

/* Checks the heap through its public fields: the order property, and that
 * every record knows its own position. */
static void heap_check(Fixture *f)
{
        const Scheduler *s = &f->sched;

        for (size_t pos = 0; pos < s->q[SCHEDULER_POLL].n; pos++) {
                SessionIndex i = s->q[SCHEDULER_POLL].heap[pos];

                if (sessions_get(f->table, i)->heap_pos != pos)
                        fail_msg("heap[%zu] = %" PRIu32 " records position %" PRIu32, pos, i,
                                 sessions_get(f->table, i)->heap_pos);
                if (pos > 0 && due(f, s->q[SCHEDULER_POLL].heap[(pos - 1) / 2]) > due(f, i))
                        fail_msg("heap[%zu] due %" PRIu64 " before its parent's %" PRIu64, pos, due(f, i),
                                 due(f, s->q[SCHEDULER_POLL].heap[(pos - 1) / 2]));
        }
}

/* Pops everything (no limits in the way) and checks the order. Returns the
 * number popped; `seen` (optional) marks the popped indices. */
static size_t pop_all(Fixture *f, bool *seen)
{
        uint64_t last = 0, wake;
        size_t n = 0;
        SessionIndex i;

        while ((i = scheduler_next(&f->sched, UINT64_MAX - 1, &wake)) != SESSION_INDEX_NONE) {
                if (due(f, i) < last)
                        fail_msg("popped due %" PRIu64 " after %" PRIu64, due(f, i), last);
                last = due(f, i);
                assert_false(scheduler_is_scheduled(&f->sched, i));
                if (seen) {
                        assert_false(seen[i]);
                        seen[i] = true;
                }
                scheduler_complete(&f->sched);
                n++;
        }
        assert_int_equal(wake, UINT64_MAX);
        assert_int_equal(f->sched.q[SCHEDULER_POLL].n, 0);
        return n;
}

static void test_heap_order(void **state)
{
        const size_t n = 20000;
        uint64_t rng = 3;
        Fixture f;
        bool *seen = calloc(n, sizeof(*seen));

        assert_non_null(seen);
        fixture_init(&f, n, NULL, 0);
        for (size_t k = 0; k < n; k++) {
                /* Few distinct values too, so that equal due times are exercised. */
                uint64_t d = k % 2 ? rnd_next(&rng) % 1000000 : rnd_next(&rng) % 16;

                assert_int_equal(scheduler_schedule(&f.sched, (SessionIndex)k, d), 0);
                assert_true(scheduler_is_scheduled(&f.sched, (SessionIndex)k));
        }
        assert_int_equal(f.sched.q[SCHEDULER_POLL].n, n);
        heap_check(&f);

        assert_int_equal(pop_all(&f, seen), n);
        for (size_t k = 0; k < n; k++)
                assert_true(seen[k]);

        /* An empty heap can be filled again. */
        assert_int_equal(scheduler_schedule(&f.sched, 5, 10), 0);
        assert_int_equal(pop_all(&f, NULL), 1);

        fixture_done(&f);
        free(seen);
}

static void test_reschedule(void **state)
{
        const size_t n = 3000;
        uint64_t rng = 11;
        Fixture f;

        fixture_init(&f, n, NULL, 0);
        for (size_t k = 0; k < n; k++)
                assert_int_equal(
                    scheduler_schedule(&f.sched, (SessionIndex)k, 1000000 + rnd_next(&rng) % 1000000), 0);

        /* Move sessions earlier, later, to the same time, to the front and to
         * the back; the heap must stay one heap with each session once. */
        for (size_t step = 0; step < 3 * n; step++) {
                SessionIndex i = (SessionIndex)(rnd_next(&rng) % n);
                uint64_t d;

                switch (step % 5) {
                case 0:
                        d = due(&f, i) / 2 + 1; /* earlier */
                        break;
                case 1:
                        d = due(&f, i) + rnd_next(&rng) % 1000000; /* later */
                        break;
                case 2:
                        d = due(&f, i); /* unchanged */
                        break;
                case 3:
                        d = 1; /* to the front */
                        break;
                default:
                        d = 10000000 + step; /* to the back */
                        break;
                }
                assert_int_equal(scheduler_schedule(&f.sched, i, d), 0);
                assert_int_equal(due(&f, i), d);
                assert_int_equal(f.sched.q[SCHEDULER_POLL].n, n);
                if (step % 97 == 0)
                        heap_check(&f);
        }
        heap_check(&f);

        /* The root moved later goes down, a leaf moved first (the only due 0) comes up. */
        {
                SessionIndex root = f.sched.q[SCHEDULER_POLL].heap[0],
                             leaf = f.sched.q[SCHEDULER_POLL].heap[n - 1];
                uint64_t wake;

                assert_int_equal(scheduler_schedule(&f.sched, root, UINT64_MAX - 10), 0);
                assert_int_equal(scheduler_schedule(&f.sched, leaf, 0), 0);
                heap_check(&f);
                assert_int_equal(f.sched.q[SCHEDULER_POLL].heap[0], leaf);
                assert_int_equal(scheduler_next(&f.sched, 0, &wake), leaf);
                scheduler_complete(&f.sched);
        }

        assert_int_equal(pop_all(&f, NULL), n - 1);
        fixture_done(&f);
}

static void test_unschedule(void **state)
{
        const size_t n = 5000;
        uint64_t rng = 5;
        Fixture f;
        bool *dropped = calloc(n, sizeof(*dropped)), *seen = calloc(n, sizeof(*seen));
        size_t left = n;

        assert_non_null(dropped);
        assert_non_null(seen);
        fixture_init(&f, n, NULL, 0);
        for (size_t k = 0; k < n; k++)
                assert_int_equal(scheduler_schedule(&f.sched, (SessionIndex)k, rnd_next(&rng) % 100000), 0);

        /* From the middle, from the root and from the end. */
        for (size_t step = 0; step < n / 2; step++) {
                size_t pos;
                SessionIndex i;

                switch (step % 3) {
                case 0:
                        pos = rnd_next(&rng) % f.sched.q[SCHEDULER_POLL].n;
                        break;
                case 1:
                        pos = 0;
                        break;
                default:
                        pos = f.sched.q[SCHEDULER_POLL].n - 1;
                        break;
                }
                i = f.sched.q[SCHEDULER_POLL].heap[pos];
                scheduler_unschedule(&f.sched, i);
                assert_false(scheduler_is_scheduled(&f.sched, i));
                assert_int_equal(sessions_get(f.table, i)->heap_pos, SESSION_INDEX_NONE);
                dropped[i] = true;
                left--;
                assert_int_equal(f.sched.q[SCHEDULER_POLL].n, left);
                if (step % 53 == 0)
                        heap_check(&f);

                /* Unscheduling again is harmless. */
                scheduler_unschedule(&f.sched, i);
                assert_int_equal(f.sched.q[SCHEDULER_POLL].n, left);
        }
        heap_check(&f);

        /* An unscheduled session leaves the table cleanly. */
        for (size_t k = 0; k < n; k++)
                if (dropped[k]) {
                        sessions_remove(f.table, (SessionIndex)k);
                        break;
                }

        assert_int_equal(pop_all(&f, seen), left);
        for (size_t k = 0; k < n; k++)
                assert_true(seen[k] != dropped[k]);

        fixture_done(&f);
        free(seen);
        free(dropped);
}

/* Drains what scheduler_next() gives at `now` without completing anything. */
static size_t drain(Fixture *f, uint64_t now, uint64_t *ret_wake)
{
        size_t n = 0;

        while (scheduler_next(&f->sched, now, ret_wake) != SESSION_INDEX_NONE)
                n++;
        return n;
}

static void test_in_flight_cap(void **state)
{
        SchedulerOptions opt = default_options;
        Fixture f;
        uint64_t wake;

        opt.max_in_flight = 3;
        fixture_init(&f, 10, &opt, 0);
        for (size_t k = 0; k < 10; k++)
                assert_int_equal(scheduler_schedule(&f.sched, (SessionIndex)k, k), 0);

        assert_int_equal(drain(&f, 100, &wake), 3);
        assert_int_equal(f.sched.in_flight, 3);
        /* Only the cap holds things back: a completion asks again. */
        assert_int_equal(wake, UINT64_MAX);
        assert_int_equal(f.sched.q[SCHEDULER_POLL].n, 7);

        scheduler_complete(&f.sched);
        assert_int_equal(drain(&f, 100, &wake), 1);
        scheduler_complete(&f.sched);
        scheduler_complete(&f.sched);
        assert_int_equal(drain(&f, 100, &wake), 2);
        assert_int_equal(f.sched.in_flight, 3);
        for (int k = 0; k < 3; k++)
                scheduler_complete(&f.sched);
        assert_int_equal(drain(&f, 100, &wake), 3);
        assert_int_equal(f.sched.q[SCHEDULER_POLL].n, 1);
        fixture_done(&f);

        /* Zero means one, not unlimited and not none. */
        opt.max_in_flight = 0;
        fixture_init(&f, 4, &opt, 0);
        for (size_t k = 0; k < 4; k++)
                assert_int_equal(scheduler_schedule(&f.sched, (SessionIndex)k, 0), 0);
        assert_int_equal(drain(&f, 0, &wake), 1);
        scheduler_complete(&f.sched);
        assert_int_equal(drain(&f, 0, &wake), 1);
        fixture_done(&f);
}

typedef struct RateStep {
        uint64_t now_ms;
        size_t pops;
} RateStep;

typedef struct RateCase {
        const char *name;
        double rate_per_sec;
        size_t n_steps;
        RateStep steps[12];
} RateCase;

/* clang-format off */
#define RATE_CASE(nm, rate, ...)                                                                   \
        {                                                                                          \
                .name = (nm), .rate_per_sec = (rate),                                              \
                .n_steps = sizeof((RateStep[]){ __VA_ARGS__ }) / sizeof(RateStep), .steps = { __VA_ARGS__ } \
        }

static const RateCase rate_cases[] = {
        RATE_CASE("10/s", 10,
                { 0, 10 },       /* the burst: one second's worth */
                { 0, 0 },
                { 50, 0 },       /* half a token */
                { 99, 0 },
                { 100, 1 },
                { 150, 0 },
                { 200, 1 },
                { 450, 2 },      /* 2.5 tokens: the half stays */
                { 500, 1 },
                { 1500, 10 },    /* a full second refills the burst */
                { 60000, 10 },   /* and no more than the burst */
                { 60001, 0 }),
        RATE_CASE("1/s", 1,
                { 1000, 1 },
                { 1000, 0 },
                { 1999, 0 },
                { 2000, 1 },
                { 4500, 1 },     /* burst 1: the idle time is not banked */
                { 5000, 0 },
                { 5500, 1 }),
        RATE_CASE("0.5/s keeps a burst of one", 0.5,
                { 1000, 1 },
                { 2000, 0 },
                { 2999, 0 },
                { 3000, 1 }),
        RATE_CASE("50/s", 50,
                { 0, 50 },
                { 19, 0 },
                { 20, 1 },
                { 100, 4 },
                { 1100, 50 }),
        RATE_CASE("unlimited", 0, { 0, 200 }),
};
/* clang-format on */

static void test_rate_table(void **state)
{
        for (size_t c = 0; c < sizeof(rate_cases) / sizeof(rate_cases[0]); c++) {
                const RateCase *rc = &rate_cases[c];
                SchedulerOptions opt = default_options;
                uint64_t start = rc->steps[0].now_ms;
                Fixture f;

                opt.rate_per_sec = rc->rate_per_sec;
                fixture_init(&f, 200, &opt, start);
                for (size_t k = 0; k < 200; k++)
                        assert_int_equal(scheduler_schedule(&f.sched, (SessionIndex)k, 0), 0);

                assert_true(rc->n_steps > 0 && rc->n_steps <= sizeof(rc->steps) / sizeof(rc->steps[0]));
                for (size_t k = 0; k < rc->n_steps; k++) {
                        const RateStep *st = &rc->steps[k];
                        uint64_t wake = 0;
                        size_t n;

                        n = drain(&f, st->now_ms, &wake);
                        if (n != st->pops)
                                fail_msg("%s: at %" PRIu64 " ms %zu pops, expected %zu", rc->name,
                                         st->now_ms, n, st->pops);
                        if (rc->rate_per_sec > 0) {
                                /* Out of tokens with work due: wake when the next token is there. */
                                uint64_t max_wait = (uint64_t)(1000.0 / rc->rate_per_sec) + 1;

                                if (wake <= st->now_ms || wake > st->now_ms + max_wait)
                                        fail_msg("%s: at %" PRIu64 " ms wake %" PRIu64
                                                 ", expected within (now, now+%" PRIu64 "]",
                                                 rc->name, st->now_ms, wake, max_wait);
                        }
                }
                fixture_done(&f);
        }
}

/* Waking at each announced time always finds a token, and over a long run
 * the rate is exactly the configured one. */
static void test_rate_long_run(void **state)
{
        static const double rates[] = {1, 3, 7, 10, 13.5, 50, 333};

        for (size_t c = 0; c < sizeof(rates) / sizeof(rates[0]); c++) {
                SchedulerOptions opt = default_options;
                const uint64_t end = 60000;
                uint64_t now = 0, wake;
                size_t pops = 0, expected, burst;
                bool woke = false;
                Fixture f;

                opt.rate_per_sec = rates[c];
                fixture_init(&f, 1, &opt, 0);
                burst = (size_t)rates[c];
                expected = burst + (size_t)(rates[c] * (double)end / 1000.0);

                assert_int_equal(scheduler_schedule(&f.sched, 0, 0), 0);
                while (now <= end) {
                        SessionIndex i = scheduler_next(&f.sched, now, &wake);

                        if (i == SESSION_INDEX_NONE) {
                                /* The announced time is never early. */
                                if (woke)
                                        fail_msg("%.1f/s: no token at the announced wake time %" PRIu64,
                                                 rates[c], now);
                                assert_true(wake > now);
                                now = wake;
                                woke = true;
                                continue;
                        }
                        woke = false;
                        pops++;
                        scheduler_complete(&f.sched);
                        assert_int_equal(scheduler_schedule(&f.sched, 0, now), 0);
                }
                if (pops + 1 < expected || pops > expected)
                        fail_msg("%.1f/s: %zu requests in %" PRIu64 " ms, expected %zu", rates[c], pops, end,
                                 expected);
                fixture_done(&f);
        }
}

/* Requests that are not polls share the bucket. */
static void test_take_token(void **state)
{
        SchedulerOptions opt = default_options;
        Fixture f;
        uint64_t wake;

        opt.rate_per_sec = 4;
        fixture_init(&f, 2, &opt, 1000);
        for (int k = 0; k < 3; k++)
                assert_true(scheduler_take_token(&f.sched, 1000));
        assert_int_equal(scheduler_schedule(&f.sched, 0, 0), 0);
        assert_int_equal(scheduler_schedule(&f.sched, 1, 0), 0);
        assert_int_equal(drain(&f, 1000, &wake), 1);
        assert_false(scheduler_take_token(&f.sched, 1000));
        assert_false(scheduler_take_token(&f.sched, 1249));
        assert_true(scheduler_take_token(&f.sched, 1250));
        assert_int_equal(drain(&f, 1250, &wake), 0);
        assert_int_equal(drain(&f, 1500, &wake), 1);
        fixture_done(&f);

        /* Unlimited: always. */
        fixture_init(&f, 1, NULL, 0);
        for (int k = 0; k < 1000; k++)
                assert_true(scheduler_take_token(&f.sched, 0));
        fixture_done(&f);
}

static void test_pause(void **state)
{
        SchedulerOptions opt = default_options;
        Fixture f;
        uint64_t wake;

        opt.rate_per_sec = 10;
        fixture_init(&f, 3, &opt, 0);

        /* Paused with nothing scheduled: nothing to wake for. */
        scheduler_pause(&f.sched, 5000);
        assert_int_equal(scheduler_next(&f.sched, 100, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, UINT64_MAX);

        assert_int_equal(scheduler_schedule(&f.sched, 0, 100), 0);
        assert_int_equal(scheduler_schedule(&f.sched, 1, 200), 0);
        assert_int_equal(scheduler_schedule(&f.sched, 2, 8000), 0);

        /* Due, but paused: wake at the end of the pause. */
        assert_int_equal(scheduler_next(&f.sched, 1000, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 5000);
        assert_false(scheduler_take_token(&f.sched, 1000));

        /* A shorter pause does not cut a longer one short. */
        scheduler_pause(&f.sched, 3000);
        assert_int_equal(scheduler_next(&f.sched, 4999, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 5000);
        assert_false(scheduler_take_token(&f.sched, 4999));

        /* At its end, the due sessions go in due order; the next one waits for its time. */
        assert_int_equal(scheduler_next(&f.sched, 5000, &wake), 0);
        assert_int_equal(scheduler_next(&f.sched, 5000, &wake), 1);
        assert_int_equal(scheduler_next(&f.sched, 5000, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 8000);

        /* A longer pause extends it past a due time. */
        scheduler_pause(&f.sched, 9000);
        assert_int_equal(scheduler_next(&f.sched, 8500, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 9000);
        assert_int_equal(scheduler_next(&f.sched, 9000, &wake), 2);
        assert_true(scheduler_take_token(&f.sched, 9000));

        fixture_done(&f);
}

static void test_wake_when_nothing_due(void **state)
{
        SchedulerOptions opt = default_options;
        Fixture f;
        uint64_t wake = 0;

        opt.rate_per_sec = 10;
        fixture_init(&f, 3, &opt, 0);

        /* Empty: nothing to wake for. */
        assert_int_equal(scheduler_next(&f.sched, 0, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, UINT64_MAX);

        /* The earliest due time, whatever the order of scheduling. */
        assert_int_equal(scheduler_schedule(&f.sched, 0, 9000), 0);
        assert_int_equal(scheduler_schedule(&f.sched, 1, 4000), 0);
        assert_int_equal(scheduler_schedule(&f.sched, 2, 7000), 0);
        assert_int_equal(scheduler_next(&f.sched, 1000, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 4000);
        assert_int_equal(scheduler_next(&f.sched, 3999, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 4000);
        assert_int_equal(scheduler_next(&f.sched, 4000, &wake), 1);
        assert_int_equal(scheduler_next(&f.sched, 4000, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 7000);

        /* Waiting for a due time does not spend tokens. */
        assert_true(f.sched.tokens >= 9.0);

        /* Rescheduling earlier moves the wake time with it. */
        assert_int_equal(scheduler_schedule(&f.sched, 0, 5000), 0);
        assert_int_equal(scheduler_next(&f.sched, 4500, &wake), SESSION_INDEX_NONE);
        assert_int_equal(wake, 5000);
        fixture_done(&f);
}

typedef struct IntervalCase {
        const char *name;
        uint64_t interval_ms, waiting_interval_ms;
        unsigned jitter_percent;
        SessionStatus status;
        uint64_t lo, hi;
} IntervalCase;

/* clang-format off */
static const IntervalCase interval_cases[] = {
        { "10% of 5 s", 5000, 30000, 10, SESSION_STATUS_ACTIVE, 4750, 5250 },
        { "Pending uses the interval", 5000, 30000, 10, SESSION_STATUS_PENDING, 4750, 5250 },
        { "Cancelling uses the interval", 5000, 30000, 10, SESSION_STATUS_CANCELLING, 4750, 5250 },
        { "unknown uses the interval", 5000, 30000, 10, SESSION_STATUS_UNKNOWN, 4750, 5250 },
        { "Waiting uses waiting_interval", 5000, 30000, 10, SESSION_STATUS_WAITING, 28500, 31500 },
        { "20% of 30 s", 1000, 30000, 20, SESSION_STATUS_WAITING, 27000, 33000 },
        { "0% is exact", 5000, 30000, 0, SESSION_STATUS_ACTIVE, 5000, 5000 },
        { "0% is exact for Waiting", 5000, 30000, 0, SESSION_STATUS_WAITING, 30000, 30000 },
        { "100%", 1000, 30000, 100, SESSION_STATUS_ACTIVE, 500, 1500 },
        { "over 100% is 100%", 1000, 30000, 250, SESSION_STATUS_ACTIVE, 500, 1500 },
        { "1% of 1 h", 3600000, 30000, 1, SESSION_STATUS_ACTIVE, 3582000, 3618000 },
        { "a zero interval is still a delay", 0, 0, 10, SESSION_STATUS_ACTIVE, 1, 1 },
};
/* clang-format on */

static void test_interval_jitter(void **state)
{
        const size_t draws = 20000;

        for (size_t c = 0; c < sizeof(interval_cases) / sizeof(interval_cases[0]); c++) {
                const IntervalCase *ic = &interval_cases[c];
                SchedulerOptions opt = default_options;
                uint64_t min = UINT64_MAX, max = 0;
                double sum = 0, mid = ((double)ic->lo + (double)ic->hi) / 2;
                Fixture f;

                opt.interval_ms = ic->interval_ms;
                opt.waiting_interval_ms = ic->waiting_interval_ms;
                opt.jitter_percent = ic->jitter_percent;
                opt.seed = 1000 + c;
                fixture_init(&f, 0, &opt, 0);
                for (size_t k = 0; k < draws; k++) {
                        uint64_t v = scheduler_interval(&f.sched, ic->status);

                        if (v < ic->lo || v > ic->hi)
                                fail_msg("%s: %" PRIu64 " outside [%" PRIu64 ", %" PRIu64 "]", ic->name, v,
                                         ic->lo, ic->hi);
                        min = v < min ? v : min;
                        max = v > max ? v : max;
                        sum += (double)v;
                }
                /* The whole range is used, evenly around the middle. */
                if (min > ic->lo + (ic->hi - ic->lo) / 50 || max + (ic->hi - ic->lo) / 50 < ic->hi)
                        fail_msg("%s: draws only span [%" PRIu64 ", %" PRIu64 "]", ic->name, min, max);
                if (sum / (double)draws < mid - (double)(ic->hi - ic->lo) / 20 - 1 ||
                    sum / (double)draws > mid + (double)(ic->hi - ic->lo) / 20 + 1)
                        fail_msg("%s: mean %.1f, expected about %.1f", ic->name, sum / (double)draws, mid);
                fixture_done(&f);
        }
}

/* d = max(interval, 1 s) · 2^(failures-1), capped; the delay is in [d/2, d]. */
static uint64_t backoff_ceiling(uint64_t interval_ms, uint64_t cap_ms, unsigned failures)
{
        uint64_t d = interval_ms > 1000 ? interval_ms : 1000;

        for (unsigned k = 1; k < failures; k++) {
                if (d >= cap_ms)
                        break;
                d *= 2;
        }
        return d < cap_ms ? d : cap_ms;
}

typedef struct BackoffCase {
        const char *name;
        uint64_t interval_ms, waiting_interval_ms, backoff_max_ms;
        SessionStatus status;
        uint64_t base_ms; /* the interval the backoff grows from */
} BackoffCase;

/* clang-format off */
static const BackoffCase backoff_cases[] = {
        { "5 s, cap 5 min", 5000, 30000, 300000, SESSION_STATUS_ACTIVE, 5000 },
        { "Waiting grows from waiting_interval", 5000, 30000, 300000, SESSION_STATUS_WAITING, 30000 },
        { "a short interval starts at a second", 10, 30000, 300000, SESSION_STATUS_ACTIVE, 1000 },
        { "a zero interval starts at a second", 0, 30000, 60000, SESSION_STATUS_PENDING, 1000 },
        { "a cap below a second", 5000, 30000, 700, SESSION_STATUS_ACTIVE, 5000 },
        { "a cap that is no power of two away", 3000, 30000, 100000, SESSION_STATUS_ACTIVE, 3000 },
        { "a high cap", 1500, 30000, 24 * 3600 * 1000ULL, SESSION_STATUS_ACTIVE, 1500 },
};
/* clang-format on */

static void test_backoff_table(void **state)
{
        for (size_t c = 0; c < sizeof(backoff_cases) / sizeof(backoff_cases[0]); c++) {
                const BackoffCase *bc = &backoff_cases[c];
                SchedulerOptions opt = default_options;
                Fixture f;

                opt.interval_ms = bc->interval_ms;
                opt.waiting_interval_ms = bc->waiting_interval_ms;
                opt.backoff_max_ms = bc->backoff_max_ms;
                opt.jitter_percent = 0; /* the backoff brings its own */
                opt.seed = 77 + c;
                fixture_init(&f, 0, &opt, 0);
                for (unsigned failures = 1; failures <= 20; failures++) {
                        uint64_t d = backoff_ceiling(bc->base_ms, bc->backoff_max_ms, failures);
                        uint64_t min = UINT64_MAX, max = 0;

                        for (int k = 0; k < 2000; k++) {
                                uint64_t v = scheduler_backoff(&f.sched, bc->status, failures);

                                if (v < d / 2 || v > d)
                                        fail_msg("%s: failures %u: %" PRIu64 " outside [%" PRIu64
                                                 ", %" PRIu64 "]",
                                                 bc->name, failures, v, d / 2, d);
                                min = v < min ? v : min;
                                max = v > max ? v : max;
                        }
                        /* Jittered over the whole half-range, not pinned to one end. */
                        if (min > d / 2 + d / 50 || max + d / 50 < d)
                                fail_msg("%s: failures %u: draws only span [%" PRIu64 ", %" PRIu64
                                         "] of [%" PRIu64 ", %" PRIu64 "]",
                                         bc->name, failures, min, max, d / 2, d);
                }
                fixture_done(&f);
        }

        /* The arithmetic spelled out for the defaults: 5 s doubles to the 5 min cap. */
        {
                static const struct {
                        unsigned failures;
                        uint64_t d;
                } expect[] = {
                    {1, 5000},  {2, 10000},  {3, 20000},  {4, 40000},
                    {5, 80000}, {6, 160000}, {7, 300000}, {20, 300000},
                };

                for (size_t k = 0; k < sizeof(expect) / sizeof(expect[0]); k++)
                        assert_int_equal(backoff_ceiling(5000, 300000, expect[k].failures), expect[k].d);
        }
}

static void test_deterministic(void **state)
{
        SchedulerOptions opt = default_options;
        Fixture a, b, c;
        size_t differ = 0;

        opt.seed = 12345;
        fixture_init(&a, 0, &opt, 0);
        fixture_init(&b, 0, &opt, 0);
        opt.seed = 12346;
        fixture_init(&c, 0, &opt, 0);
        for (int k = 0; k < 1000; k++) {
                uint64_t va, vb, vc;

                switch (k % 3) {
                case 0:
                        va = scheduler_interval(&a.sched, SESSION_STATUS_ACTIVE);
                        vb = scheduler_interval(&b.sched, SESSION_STATUS_ACTIVE);
                        vc = scheduler_interval(&c.sched, SESSION_STATUS_ACTIVE);
                        break;
                case 1:
                        va = scheduler_backoff(&a.sched, SESSION_STATUS_WAITING, 3);
                        vb = scheduler_backoff(&b.sched, SESSION_STATUS_WAITING, 3);
                        vc = scheduler_backoff(&c.sched, SESSION_STATUS_WAITING, 3);
                        break;
                default:
                        va = scheduler_spread(&a.sched, 60000);
                        vb = scheduler_spread(&b.sched, 60000);
                        vc = scheduler_spread(&c.sched, 60000);
                        break;
                }
                assert_int_equal(va, vb);
                differ += va != vc;
        }
        /* Another seed gives another sequence. */
        assert_true(differ > 900);
        fixture_done(&a);
        fixture_done(&b);
        fixture_done(&c);
}

static void test_spread(void **state)
{
        Fixture f;
        uint64_t min = UINT64_MAX, max = 0;

        fixture_init(&f, 0, NULL, 0);
        assert_int_equal(scheduler_spread(&f.sched, 0), 0);
        assert_int_equal(scheduler_spread(&f.sched, 1), 0);
        for (int k = 0; k < 10000; k++) {
                uint64_t v = scheduler_spread(&f.sched, 30000);

                assert_true(v < 30000);
                min = v < min ? v : min;
                max = v > max ? v : max;
        }
        assert_true(min < 300);
        assert_true(max > 29700);
        fixture_done(&f);
}

/* New options take effect at once; a lower rate trims a full bucket. */
static void test_set_options(void **state)
{
        SchedulerOptions opt = default_options;
        Fixture f;
        uint64_t wake;

        opt.rate_per_sec = 10;
        opt.max_in_flight = 100;
        fixture_init(&f, 20, &opt, 0);
        for (size_t k = 0; k < 20; k++)
                assert_int_equal(scheduler_schedule(&f.sched, (SessionIndex)k, 0), 0);

        opt.rate_per_sec = 2;
        scheduler_set_options(&f.sched, &opt);
        assert_int_equal(drain(&f, 0, &wake), 2);
        assert_int_equal(drain(&f, 499, &wake), 0);
        assert_int_equal(drain(&f, 500, &wake), 1);

        opt.rate_per_sec = 0;
        opt.max_in_flight = 5;
        scheduler_set_options(&f.sched, &opt);
        assert_int_equal(drain(&f, 500, &wake), 2); /* 3 already in flight */
        assert_int_equal(wake, UINT64_MAX);

        opt.interval_ms = 1000;
        opt.jitter_percent = 0;
        scheduler_set_options(&f.sched, &opt);
        assert_int_equal(scheduler_interval(&f.sched, SESSION_STATUS_ACTIVE), 1000);
        fixture_done(&f);
}

/* Sweeps, polls and audits share one budget: with one token at a time the
 * most weighted-late work goes (sweep x4, poll x2, audit x1), each heap stays
 * a heap, and nothing waits for ever. */
/* Work handed out that made no request gives its token back: with one token
 * a second, cancelling lets the next work start at once, completing does
 * not. */
static void test_cancel_returns_the_token(void **unused)
{
        SchedulerOptions opt = default_options;
        SchedulerHeap heap;
        uint64_t wake, late;
        Fixture f;

        (void)unused;
        opt.rate_per_sec = 1;
        fixture_init(&f, 3, &opt, 1000);
        for (SessionIndex i = 0; i < 3; i++)
                assert_int_equal(scheduler_schedule(&f.sched, i, 500 + i), 0);
        assert_int_equal(scheduler_next_work(&f.sched, 1000, UINT64_MAX, &heap, &late, &wake), 0);
        assert_int_equal(f.sched.in_flight, 1);
        scheduler_cancel(&f.sched);
        assert_int_equal(f.sched.in_flight, 0);
        assert_int_equal(scheduler_next_work(&f.sched, 1000, UINT64_MAX, &heap, &late, &wake), 1);
        scheduler_complete(&f.sched);
        assert_int_equal(scheduler_next_work(&f.sched, 1000, UINT64_MAX, &heap, &late, &wake),
                         SESSION_INDEX_NONE);
        assert_true(wake > 1000 && wake <= 2001);
        /* Never more than the burst. */
        assert_int_equal(scheduler_next_work(&f.sched, 60000, UINT64_MAX, &heap, &late, &wake), 2);
        scheduler_cancel(&f.sched);
        assert_true(f.sched.tokens <= f.sched.burst);
        fixture_done(&f);
}

static void test_priorities(void **unused)
{
        SchedulerOptions opt = default_options;
        SchedulerHeap heap;
        uint64_t wake, late;
        Fixture f;
        uint32_t w;
        unsigned audits = 0, polls = 0, sweeps = 0;

        (void)unused;
        opt.rate_per_sec = 0;
        opt.max_in_flight = 100;
        fixture_init(&f, 6, &opt, 1000);
        assert_int_equal(scheduler_schedule(&f.sched, 0, 900), 0);       /* poll, 100 ms late */
        assert_int_equal(scheduler_schedule_audit(&f.sched, 1, 700), 0); /* audit, 300 ms late */
        assert_int_equal(scheduler_schedule_audit(&f.sched, 2, 850), 0); /* audit, 150 ms late */
        assert_int_equal(scheduler_queued(&f.sched, SCHEDULER_POLL), 1);
        assert_int_equal(scheduler_queued(&f.sched, SCHEDULER_AUDIT), 2);
        assert_int_equal(scheduler_behind_ms(&f.sched, 1000, UINT64_MAX), 300);
        assert_int_equal(scheduler_behind_ms(&f.sched, 1000, 500), 500);

        /* A sweep goes first, however late the others are... */
        w = scheduler_next_work(&f.sched, 1000, 940, &heap, &late, &wake);
        assert_int_equal(w, SCHEDULER_SWEEP);
        assert_int_equal(late, 60);
        /* ... then the poll before the audits, 300 ms late as they are ... */
        w = scheduler_next_work(&f.sched, 1000, UINT64_MAX, &heap, &late, &wake);
        assert_int_equal(w, 0);
        assert_int_equal(heap, SCHEDULER_POLL);
        assert_int_equal(late, 100);
        /* ... then the audits, most overdue first. */
        w = scheduler_next_work(&f.sched, 1000, UINT64_MAX, &heap, &late, &wake);
        assert_int_equal(w, 1);
        assert_int_equal(heap, SCHEDULER_AUDIT);
        assert_int_equal(late, 300);
        w = scheduler_next_work(&f.sched, 1000, UINT64_MAX, &heap, &late, &wake);
        assert_int_equal(w, 2);
        w = scheduler_next_work(&f.sched, 1000, 2000, &heap, &late, &wake);
        assert_int_equal(w, SESSION_INDEX_NONE);
        assert_int_equal(wake, 2000);
        for (int k = 0; k < 4; k++)
                scheduler_complete(&f.sched);

        /* Moving between heaps keeps both consistent. */
        assert_int_equal(scheduler_schedule(&f.sched, 3, 5000), 0);
        assert_int_equal(scheduler_schedule_audit(&f.sched, 3, 6000), 0);
        assert_int_equal(scheduler_queued(&f.sched, SCHEDULER_POLL), 0);
        assert_int_equal(scheduler_queued(&f.sched, SCHEDULER_AUDIT), 1);
        scheduler_unschedule(&f.sched, 3);
        assert_false(scheduler_is_scheduled(&f.sched, 3));

        /* Under a budget of 10/s with everything always due again, every
         * kind keeps getting its turn. */
        opt.rate_per_sec = 10;
        scheduler_set_options(&f.sched, &opt);
        assert_int_equal(scheduler_schedule(&f.sched, 4, 0), 0);
        assert_int_equal(scheduler_schedule_audit(&f.sched, 5, 0), 0);
        for (uint64_t now = 10000; now < 70000; now += 10) {
                uint64_t sweep_due = now - now % 500; /* a sweep is always due */

                w = scheduler_next_work(&f.sched, now, sweep_due, &heap, &late, &wake);
                if (w == SESSION_INDEX_NONE)
                        continue;
                scheduler_complete(&f.sched);
                if (w == SCHEDULER_SWEEP)
                        sweeps++;
                else if (heap == SCHEDULER_POLL) {
                        polls++;
                        assert_int_equal(scheduler_schedule(&f.sched, w, now + 100), 0);
                } else {
                        audits++;
                        assert_int_equal(scheduler_schedule_audit(&f.sched, w, now + 100), 0);
                }
        }
        assert_true(sweeps + polls + audits <= 10 * 60 + 11);
        assert_true(sweeps > polls && polls > audits);
        /* The floors: polls one request in 4, audits one in 10. */
        assert_true(polls * 100 >= (sweeps + polls + audits) * 24);
        assert_true(audits * 100 >= (sweeps + polls + audits) * 9);
        fixture_done(&f);
}

/* Audits whose demand alone exceeds the budget (200 always due against 10
 * requests a second) stretch by themselves: sweeps, due every 500 ms, stay
 * on time, and the audits still get their tenth. */
static void test_overloaded_audits_do_not_delay_sweeps(void **unused)
{
        SchedulerOptions opt = default_options;
        SchedulerHeap heap;
        uint64_t wake, late, worst_sweep = 0, sweep_due = 10000;
        unsigned audits = 0, sweeps = 0;
        Fixture f;
        uint32_t w;

        (void)unused;
        opt.rate_per_sec = 10;
        opt.max_in_flight = 100;
        fixture_init(&f, 200, &opt, 0);
        for (SessionIndex i = 0; i < 200; i++)
                assert_int_equal(scheduler_schedule_audit(&f.sched, i, i), 0);
        for (uint64_t now = 10000; now < 130000; now += 10) {
                w = scheduler_next_work(&f.sched, now, sweep_due, &heap, &late, &wake);
                if (w == SESSION_INDEX_NONE)
                        continue;
                scheduler_complete(&f.sched);
                if (w == SCHEDULER_SWEEP) {
                        sweeps++;
                        if (late > worst_sweep)
                                worst_sweep = late;
                        sweep_due = now + 500;
                } else {
                        assert_int_equal(heap, SCHEDULER_AUDIT);
                        audits++;
                        /* Due again at once: always more audits than budget. */
                        assert_int_equal(scheduler_schedule_audit(&f.sched, w, now), 0);
                }
        }
        assert_true(sweeps >= 2 * 120 - 2);
        if (worst_sweep > 200)
                fail_msg("a sweep started %" PRIu64 " ms late behind audits", worst_sweep);
        assert_true(audits * 100 >= (sweeps + audits) * 9);
        fixture_done(&f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_heap_order),
            cmocka_unit_test(test_reschedule),
            cmocka_unit_test(test_unschedule),
            cmocka_unit_test(test_in_flight_cap),
            cmocka_unit_test(test_rate_table),
            cmocka_unit_test(test_rate_long_run),
            cmocka_unit_test(test_take_token),
            cmocka_unit_test(test_pause),
            cmocka_unit_test(test_wake_when_nothing_due),
            cmocka_unit_test(test_interval_jitter),
            cmocka_unit_test(test_backoff_table),
            cmocka_unit_test(test_deterministic),
            cmocka_unit_test(test_spread),
            cmocka_unit_test(test_set_options),
            cmocka_unit_test(test_priorities),
            cmocka_unit_test(test_cancel_returns_the_token),
            cmocka_unit_test(test_overloaded_audits_do_not_delay_sweeps),
        };

        return cmocka_run_group_tests_name("scheduler", tests, NULL, NULL);
}
