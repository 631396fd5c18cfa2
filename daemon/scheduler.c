#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

static uint64_t rng_next(Scheduler *s)
{
        /* splitmix64: tiny, fast and good enough for jitter. */
        uint64_t z = (s->rng += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* A uniform value in [0, n). */
static uint64_t rng_below(Scheduler *s, uint64_t n)
{
        return n ? rng_next(s) % n : 0;
}

void scheduler_set_options(Scheduler *s, const SchedulerOptions *opt)
{
        s->opt = *opt;
        if (s->opt.max_in_flight == 0)
                s->opt.max_in_flight = 1;
        if (s->opt.jitter_percent > 100)
                s->opt.jitter_percent = 100;
        /* One second's worth of tokens may be spent at once, at least one. */
        s->burst = s->opt.rate_per_sec >= 1 ? s->opt.rate_per_sec : 1;
        if (s->tokens > s->burst)
                s->tokens = s->burst;
}

int scheduler_init(Scheduler *s, SessionTable *table, const SchedulerOptions *opt, uint64_t now_ms)
{
        *s = (Scheduler){.table = table, .refill_ms = now_ms, .rng = opt->seed};
        scheduler_set_options(s, opt);
        s->tokens = s->burst;
        return 0;
}

void scheduler_done(Scheduler *s)
{
        /* Leave the records as if never scheduled, so the table can outlive
         * the scheduler (or get a new one). */
        for (size_t k = 0; k < s->n_heap; k++)
                sessions_get(s->table, s->heap[k])->heap_pos = SESSION_INDEX_NONE;
        free(s->heap);
        s->heap = NULL;
        s->n_heap = s->cap_heap = 0;
}

static uint64_t due_of(Scheduler *s, size_t pos)
{
        return sessions_get(s->table, s->heap[pos])->due_ms;
}

static void heap_set(Scheduler *s, size_t pos, uint32_t i)
{
        s->heap[pos] = i;
        sessions_get(s->table, i)->heap_pos = (uint32_t)pos;
}

static void sift_up(Scheduler *s, size_t pos)
{
        uint32_t i = s->heap[pos];
        uint64_t due = sessions_get(s->table, i)->due_ms;

        while (pos > 0) {
                size_t parent = (pos - 1) / 2;
                if (due_of(s, parent) <= due)
                        break;
                heap_set(s, pos, s->heap[parent]);
                pos = parent;
        }
        heap_set(s, pos, i);
}

static void sift_down(Scheduler *s, size_t pos)
{
        uint32_t i = s->heap[pos];
        uint64_t due = sessions_get(s->table, i)->due_ms;

        for (;;) {
                size_t c = 2 * pos + 1;
                if (c >= s->n_heap)
                        break;
                if (c + 1 < s->n_heap && due_of(s, c + 1) < due_of(s, c))
                        c++;
                if (due_of(s, c) >= due)
                        break;
                heap_set(s, pos, s->heap[c]);
                pos = c;
        }
        heap_set(s, pos, i);
}

int scheduler_reserve(Scheduler *s, size_t n)
{
        size_t need = s->n_heap + n;
        uint32_t *h;

        if (need <= s->cap_heap)
                return 0;
        h = realloc(s->heap, need * sizeof(*h));
        if (!h)
                return -ENOMEM;
        s->heap = h;
        s->cap_heap = need;
        return 0;
}

int scheduler_schedule(Scheduler *s, SessionIndex i, uint64_t due_ms)
{
        Session *rec = sessions_get(s->table, i);

        if (rec->heap_pos != SESSION_INDEX_NONE) {
                uint64_t old = rec->due_ms;
                rec->due_ms = due_ms;
                if (due_ms < old)
                        sift_up(s, rec->heap_pos);
                else
                        sift_down(s, rec->heap_pos);
                return 0;
        }
        if (s->n_heap == s->cap_heap) {
                /* At least one more slot: a heap reserved at one session
                 * must still grow when a second is added at run time. */
                size_t n = s->cap_heap ? s->cap_heap + s->cap_heap / 2 + 1 : 64;
                uint32_t *h = realloc(s->heap, n * sizeof(*h));
                if (!h)
                        return -ENOMEM;
                s->heap = h;
                s->cap_heap = n;
        }
        rec->due_ms = due_ms;
        s->heap[s->n_heap] = i;
        rec->heap_pos = (uint32_t)s->n_heap++;
        sift_up(s, rec->heap_pos);
        return 0;
}

bool scheduler_is_scheduled(const Scheduler *s, SessionIndex i)
{
        return sessions_get(s->table, i)->heap_pos != SESSION_INDEX_NONE;
}

void scheduler_unschedule(Scheduler *s, SessionIndex i)
{
        Session *rec = sessions_get(s->table, i);
        size_t pos = rec->heap_pos;
        uint32_t last;

        if (pos == SESSION_INDEX_NONE)
                return;
        rec->heap_pos = SESSION_INDEX_NONE;
        last = s->heap[--s->n_heap];
        if (pos == s->n_heap)
                return;
        heap_set(s, pos, last);
        sift_up(s, pos);
        sift_down(s, sessions_get(s->table, last)->heap_pos);
}

static uint64_t base_interval(const Scheduler *s, SessionStatus status)
{
        return status == SESSION_STATUS_WAITING ? s->opt.waiting_interval_ms : s->opt.interval_ms;
}

uint64_t scheduler_interval(Scheduler *s, SessionStatus status)
{
        uint64_t base = base_interval(s, status);
        uint64_t span = base * s->opt.jitter_percent / 100;

        if (span == 0)
                return base ? base : 1;
        /* Uniform over [base - span/2, base + span/2]. */
        return base - span / 2 + rng_below(s, span + 1);
}

uint64_t scheduler_backoff(Scheduler *s, SessionStatus status, unsigned failures)
{
        uint64_t base = base_interval(s, status), d = base ? base : 1;
        uint64_t cap = s->opt.backoff_max_ms ? s->opt.backoff_max_ms : 300000;

        /* Start from at least a second so a 1 ms interval does not hammer a
         * failing server, double per failure, cap, then pick in [d/2, d]. */
        if (d < 1000)
                d = 1000;
        for (unsigned k = 1; k < failures && d < cap; k++)
                d *= 2;
        if (d > cap)
                d = cap;
        return d / 2 + rng_below(s, d / 2 + 1);
}

uint64_t scheduler_spread(Scheduler *s, uint64_t span_ms)
{
        return rng_below(s, span_ms);
}

void scheduler_pause(Scheduler *s, uint64_t until_ms)
{
        if (until_ms > s->paused_until_ms)
                s->paused_until_ms = until_ms;
}

static void refill(Scheduler *s, uint64_t now_ms)
{
        if (s->opt.rate_per_sec <= 0)
                return;
        if (now_ms > s->refill_ms) {
                s->tokens += (double)(now_ms - s->refill_ms) * s->opt.rate_per_sec / 1000.0;
                if (s->tokens > s->burst)
                        s->tokens = s->burst;
                s->refill_ms = now_ms;
        }
}

/* When the next token will be there. */
static uint64_t token_wake(const Scheduler *s, uint64_t now_ms)
{
        double missing = 1.0 - s->tokens;
        uint64_t ms = (uint64_t)(missing * 1000.0 / s->opt.rate_per_sec) + 1;
        return now_ms + ms;
}

bool scheduler_take_token(Scheduler *s, uint64_t now_ms)
{
        if (now_ms < s->paused_until_ms)
                return false;
        if (s->opt.rate_per_sec <= 0)
                return true;
        refill(s, now_ms);
        if (s->tokens < 1.0)
                return false;
        s->tokens -= 1.0;
        return true;
}

SessionIndex scheduler_next(Scheduler *s, uint64_t now_ms, uint64_t *ret_wake_ms)
{
        uint32_t i;
        uint64_t due;

        *ret_wake_ms = UINT64_MAX;
        if (s->n_heap == 0)
                return SESSION_INDEX_NONE;
        if (s->in_flight >= s->opt.max_in_flight)
                return SESSION_INDEX_NONE;

        due = due_of(s, 0);
        if (due < s->paused_until_ms)
                due = s->paused_until_ms;
        if (due > now_ms) {
                *ret_wake_ms = due;
                return SESSION_INDEX_NONE;
        }
        if (s->opt.rate_per_sec > 0) {
                refill(s, now_ms);
                if (s->tokens < 1.0) {
                        *ret_wake_ms = token_wake(s, now_ms);
                        return SESSION_INDEX_NONE;
                }
                s->tokens -= 1.0;
        }

        i = s->heap[0];
        scheduler_unschedule(s, i);
        s->in_flight++;
        return i;
}

void scheduler_complete(Scheduler *s)
{
        assert(s->in_flight > 0);
        s->in_flight--;
}
