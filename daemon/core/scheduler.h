/* The scheduler decides when each session is polled, and which request goes
 * first when the budget is short.
 *
 * Two binary min-heaps of session indices ordered by due time, stored next
 * to the sessions table: polls (sessions no sweep covers, first answers,
 * 404 confirmations) and audits (the slow check of covered sessions). The
 * caller also says when a list sweep is due. Plus the shared limits: a
 * token bucket for the API's rate budget, a cap on requests in flight, a
 * global pause (429) and an authentication hold-off (401/403).
 *
 * Priority. When several kinds of work are due and one token is left, a
 * sweep page goes first (one covers many sessions), then a poll, then an
 * audit; the most overdue of its kind. So that nothing waits for ever, a
 * kind that stays due while others go has a floor: polls get at least one
 * request in 4, audits one in 10. Under pressure audits stretch first, then
 * polls, and sweeps last; a kind whose demand alone exceeds the budget
 * cannot make the others late without bound (as weighing lateness would:
 * the late work of an overloaded kind only gets later).
 *
 * It is pure: the caller passes the time (loop milliseconds) and owns the
 * single uv timer. Popping work costs O(log n) per due session; idle
 * sessions cost nothing per tick. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "sessions.h"

typedef struct SchedulerOptions {
        uint64_t interval_ms;         /* Pending, Active, Cancelling, unknown, never seen */
        uint64_t waiting_interval_ms; /* Waiting */
        unsigned jitter_percent;      /* each interval is spread over ±jitter/2 */
        uint64_t backoff_max_ms;      /* cap of the per-session error backoff; 0: 5 minutes */
        double rate_per_sec;          /* 0: unlimited */
        unsigned max_in_flight;
        uint64_t seed;
} SchedulerOptions;

typedef enum SchedulerHeap {
        SCHEDULER_POLL,
        SCHEDULER_AUDIT,
        _SCHEDULER_HEAP_MAX,
} SchedulerHeap;

/* scheduler_next_work(): a sweep page may go now (not a session index). */
#define SCHEDULER_SWEEP (UINT32_MAX - 1)

typedef struct SchedulerQueue {
        uint32_t *heap;
        size_t n, cap;
} SchedulerQueue;

typedef struct Scheduler {
        SessionTable *table;
        SchedulerOptions opt;
        SchedulerQueue q[_SCHEDULER_HEAP_MAX];

        double tokens, burst;
        uint64_t refill_ms;

        unsigned in_flight;
        uint64_t paused_until_ms; /* 429: no request of any kind before this */
        double owed[3];           /* the floors' credit of polls and audits (see the top) */
        uint64_t rng;
} Scheduler;

int scheduler_init(Scheduler *s, SessionTable *table, const SchedulerOptions *opt, uint64_t now_ms);
void scheduler_done(Scheduler *s);
void scheduler_set_options(Scheduler *s, const SchedulerOptions *opt);

/* Makes room for `n` more scheduled sessions in one allocation. */
int scheduler_reserve(Scheduler *s, size_t n);

/* Puts session i in the poll heap due at `due_ms` (moving it if it is in
 * either heap). */
int scheduler_schedule(Scheduler *s, SessionIndex i, uint64_t due_ms);
/* The same in the audit heap, or in `heap`. */
int scheduler_schedule_audit(Scheduler *s, SessionIndex i, uint64_t due_ms);
int scheduler_schedule_in(Scheduler *s, SchedulerHeap heap, SessionIndex i, uint64_t due_ms);
void scheduler_unschedule(Scheduler *s, SessionIndex i);
bool scheduler_is_scheduled(const Scheduler *s, SessionIndex i);
/* Sessions in one heap. */
size_t scheduler_queued(const Scheduler *s, SchedulerHeap heap);
/* How late the most overdue work of either heap is at `now_ms` (0 when
 * nothing is overdue); `sweep_due_ms` as for scheduler_next_work(). */
uint64_t scheduler_behind_ms(const Scheduler *s, uint64_t now_ms, uint64_t sweep_due_ms);

/* The interval to the next poll after a good answer, jittered. */
uint64_t scheduler_interval(Scheduler *s, SessionStatus status);
/* The delay after `failures` consecutive failures (1, 2, …): exponential from
 * the session's interval, capped by backoff_max_ms, with jitter in [½, 1]. */
uint64_t scheduler_backoff(Scheduler *s, SessionStatus status, unsigned failures);
/* A random spread in [0, span) for first polls, so a large watch list does
 * not fire at one instant. */
uint64_t scheduler_spread(Scheduler *s, uint64_t span_ms);

/* Holds every request until `until_ms` (a 429's Retry-After, an auth failure). */
void scheduler_pause(Scheduler *s, uint64_t until_ms);

/* Takes one rate token for a request that is not a session poll (discovery).
 * Returns false when none is available now. */
bool scheduler_take_token(Scheduler *s, uint64_t now_ms);

/* Returns the next session to poll now and counts it in flight, or
 * SESSION_INDEX_NONE; then *ret_wake_ms is when to ask again (UINT64_MAX:
 * nothing is scheduled, or only the in-flight cap holds things back, and a
 * completion will ask again). */
SessionIndex scheduler_next(Scheduler *s, uint64_t now_ms, uint64_t *ret_wake_ms);

/* The next work to start now, across the two heaps and a sweep due at
 * `sweep_due_ms` (UINT64_MAX: none), by priority and floors (see the top).
 * Returns a session index (its heap in *ret_heap), SCHEDULER_SWEEP, or
 * SESSION_INDEX_NONE with *ret_wake_ms as for scheduler_next(). What it
 * returns has taken a token and counts in flight; *ret_late_ms is how late
 * it starts. */
uint32_t scheduler_next_work(Scheduler *s, uint64_t now_ms, uint64_t sweep_due_ms, SchedulerHeap *ret_heap,
                             uint64_t *ret_late_ms, uint64_t *ret_wake_ms);

/* Work counted by scheduler_next() or scheduler_next_work() has completed. */
void scheduler_complete(Scheduler *s);
/* Like scheduler_complete(), for work scheduler_next_work() handed out that
 * made no request after all: its token goes back to the bucket. */
void scheduler_cancel(Scheduler *s);
