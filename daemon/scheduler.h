/* The scheduler decides when each session is polled.
 *
 * A binary min-heap of session indices ordered by due time, stored next to
 * the sessions table, plus the shared limits: a token bucket for the API's
 * rate budget, a cap on requests in flight, a global pause (429) and an
 * authentication hold-off (401/403). It is pure: the caller passes the time
 * (loop milliseconds) and owns the single uv timer. Popping work costs
 * O(log n) per due session; idle sessions cost nothing per tick. */
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

typedef struct Scheduler {
        SessionTable *table;
        SchedulerOptions opt;
        uint32_t *heap;
        size_t n_heap, cap_heap;

        double tokens, burst;
        uint64_t refill_ms;

        unsigned in_flight;
        uint64_t paused_until_ms; /* 429: no request of any kind before this */
        uint64_t rng;
} Scheduler;

int scheduler_init(Scheduler *s, SessionTable *table, const SchedulerOptions *opt, uint64_t now_ms);
void scheduler_done(Scheduler *s);
void scheduler_set_options(Scheduler *s, const SchedulerOptions *opt);

/* Makes room for `n` more scheduled sessions in one allocation. */
int scheduler_reserve(Scheduler *s, size_t n);

/* Puts session i in the heap due at `due_ms` (moving it if it is there). */
int scheduler_schedule(Scheduler *s, SessionIndex i, uint64_t due_ms);
void scheduler_unschedule(Scheduler *s, SessionIndex i);
bool scheduler_is_scheduled(const Scheduler *s, SessionIndex i);

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

/* A poll counted by scheduler_next() has completed. */
void scheduler_complete(Scheduler *s);
