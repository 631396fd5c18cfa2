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
        for (size_t h = 0; h < _SCHEDULER_HEAP_MAX; h++) {
                SchedulerQueue *q = &s->q[h];

                for (size_t k = 0; k < q->n; k++)
                        sessions_get(s->table, q->heap[k])->heap_pos = SESSION_INDEX_NONE;
                free(q->heap);
                *q = (SchedulerQueue){};
        }
}

static uint64_t due_of(Scheduler *s, const SchedulerQueue *q, size_t pos)
{
        return sessions_get(s->table, q->heap[pos])->due_ms;
}

static void heap_set(Scheduler *s, SchedulerQueue *q, size_t pos, uint32_t i)
{
        q->heap[pos] = i;
        sessions_get(s->table, i)->heap_pos = (uint32_t)pos;
}

static void sift_up(Scheduler *s, SchedulerQueue *q, size_t pos)
{
        uint32_t i = q->heap[pos];
        uint64_t due = sessions_get(s->table, i)->due_ms;

        while (pos > 0) {
                size_t parent = (pos - 1) / 2;
                if (due_of(s, q, parent) <= due)
                        break;
                heap_set(s, q, pos, q->heap[parent]);
                pos = parent;
        }
        heap_set(s, q, pos, i);
}

static void sift_down(Scheduler *s, SchedulerQueue *q, size_t pos)
{
        uint32_t i = q->heap[pos];
        uint64_t due = sessions_get(s->table, i)->due_ms;

        for (;;) {
                size_t c = 2 * pos + 1;
                if (c >= q->n)
                        break;
                if (c + 1 < q->n && due_of(s, q, c + 1) < due_of(s, q, c))
                        c++;
                if (due_of(s, q, c) >= due)
                        break;
                heap_set(s, q, pos, q->heap[c]);
                pos = c;
        }
        heap_set(s, q, pos, i);
}

int scheduler_reserve(Scheduler *s, size_t n)
{
        SchedulerQueue *q = &s->q[SCHEDULER_POLL];
        size_t need = q->n + n;
        uint32_t *h;

        if (need <= q->cap)
                return 0;
        h = realloc(q->heap, need * sizeof(*h));
        if (!h)
                return -ENOMEM;
        q->heap = h;
        q->cap = need;
        return 0;
}

int scheduler_schedule_in(Scheduler *s, SchedulerHeap heap, SessionIndex i, uint64_t due_ms)
{
        Session *rec = sessions_get(s->table, i);
        SchedulerQueue *q = &s->q[heap];

        assert(heap < _SCHEDULER_HEAP_MAX);
        if (rec->heap_pos != SESSION_INDEX_NONE && rec->heap == heap) {
                uint64_t old = rec->due_ms;
                rec->due_ms = due_ms;
                if (due_ms < old)
                        sift_up(s, q, rec->heap_pos);
                else
                        sift_down(s, q, rec->heap_pos);
                return 0;
        }
        if (q->n == q->cap) {
                /* At least one more slot: a heap reserved at one session
                 * must still grow when a second is added at run time. */
                size_t n = q->cap ? q->cap + q->cap / 2 + 1 : 64;
                uint32_t *h = realloc(q->heap, n * sizeof(*h));
                if (!h)
                        return -ENOMEM;
                q->heap = h;
                q->cap = n;
        }
        /* In the other heap: out of there first (nothing can fail now). */
        scheduler_unschedule(s, i);
        rec->due_ms = due_ms;
        rec->heap = (uint8_t)heap;
        q->heap[q->n] = i;
        rec->heap_pos = (uint32_t)q->n++;
        sift_up(s, q, rec->heap_pos);
        return 0;
}

int scheduler_schedule(Scheduler *s, SessionIndex i, uint64_t due_ms)
{
        return scheduler_schedule_in(s, SCHEDULER_POLL, i, due_ms);
}

int scheduler_schedule_audit(Scheduler *s, SessionIndex i, uint64_t due_ms)
{
        return scheduler_schedule_in(s, SCHEDULER_AUDIT, i, due_ms);
}

bool scheduler_is_scheduled(const Scheduler *s, SessionIndex i)
{
        return sessions_get(s->table, i)->heap_pos != SESSION_INDEX_NONE;
}

size_t scheduler_queued(const Scheduler *s, SchedulerHeap heap)
{
        return s->q[heap].n;
}

void scheduler_unschedule(Scheduler *s, SessionIndex i)
{
        Session *rec = sessions_get(s->table, i);
        size_t pos = rec->heap_pos;
        SchedulerQueue *q;
        uint32_t last;

        if (pos == SESSION_INDEX_NONE)
                return;
        q = &s->q[rec->heap];
        rec->heap_pos = SESSION_INDEX_NONE;
        last = q->heap[--q->n];
        if (pos == q->n)
                return;
        heap_set(s, q, pos, last);
        sift_up(s, q, pos);
        sift_down(s, q, sessions_get(s->table, last)->heap_pos);
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

/* The floors of the top comment: a due kind earns this much credit each
 * time another kind goes, and goes itself once it has earned one. */
static const double FLOOR_CREDIT[3] = {0, 1.0 / 3, 1.0 / 9};

static uint64_t head_due(Scheduler *s, SchedulerHeap h)
{
        return s->q[h].n ? due_of(s, &s->q[h], 0) : UINT64_MAX;
}

uint64_t scheduler_behind_ms(const Scheduler *s, uint64_t now_ms, uint64_t sweep_due_ms)
{
        uint64_t oldest = sweep_due_ms;

        for (size_t h = 0; h < _SCHEDULER_HEAP_MAX; h++)
                if (s->q[h].n) {
                        uint64_t due = sessions_get(s->table, s->q[h].heap[0])->due_ms;
                        if (due < oldest)
                                oldest = due;
                }
        return oldest < now_ms ? now_ms - oldest : 0;
}

uint32_t scheduler_next_work(Scheduler *s, uint64_t now_ms, uint64_t sweep_due_ms, SchedulerHeap *ret_heap,
                             uint64_t *ret_late_ms, uint64_t *ret_wake_ms)
{
        /* 0: a sweep page, 1: a poll, 2: an audit; in priority order. */
        uint64_t due[3] = {sweep_due_ms, head_due(s, SCHEDULER_POLL), head_due(s, SCHEDULER_AUDIT)};
        uint64_t first = UINT64_MAX;
        bool ready[3];
        int best = -1;

        *ret_wake_ms = UINT64_MAX;
        *ret_late_ms = 0;
        if (s->in_flight >= s->opt.max_in_flight)
                return SESSION_INDEX_NONE;
        for (int k = 0; k < 3; k++) {
                if (due[k] < first)
                        first = due[k];
                ready[k] = due[k] <= now_ms && now_ms >= s->paused_until_ms;
                if (!ready[k])
                        s->owed[k] = 0; /* a floor is not banked while idle */
                else if (best < 0)
                        best = k;
        }
        if (best < 0) {
                if (first != UINT64_MAX)
                        *ret_wake_ms = first > s->paused_until_ms ? first : s->paused_until_ms;
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
        /* A kind below that has earned its turn goes before the top one. */
        for (int k = 1; k < 3; k++)
                if (ready[k] && k != best && s->owed[k] >= 1.0) {
                        best = k;
                        break;
                }
        for (int k = 1; k < 3; k++)
                if (k == best)
                        s->owed[k] = s->owed[k] >= 1.0 ? s->owed[k] - 1.0 : 0;
                else if (ready[k])
                        s->owed[k] += FLOOR_CREDIT[k];
        s->in_flight++;
        *ret_late_ms = now_ms - due[best];
        if (best == 0)
                return SCHEDULER_SWEEP;
        *ret_heap = best == 1 ? SCHEDULER_POLL : SCHEDULER_AUDIT;
        {
                uint32_t i = s->q[*ret_heap].heap[0];

                scheduler_unschedule(s, i);
                return i;
        }
}

SessionIndex scheduler_next(Scheduler *s, uint64_t now_ms, uint64_t *ret_wake_ms)
{
        SchedulerHeap heap;
        uint64_t late;

        return scheduler_next_work(s, now_ms, UINT64_MAX, &heap, &late, ret_wake_ms);
}

void scheduler_complete(Scheduler *s)
{
        assert(s->in_flight > 0);
        s->in_flight--;
}

void scheduler_cancel(Scheduler *s)
{
        scheduler_complete(s);
        if (s->opt.rate_per_sec > 0)
                s->tokens = s->tokens + 1.0 < s->burst ? s->tokens + 1.0 : s->burst;
}
