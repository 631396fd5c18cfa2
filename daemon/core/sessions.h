/* The sessions table: every watched session, keyed by id, compact.
 *
 * It alone decides what is a transition. It is pure (no I/O, no clock): the
 * scheduler keeps its bookkeeping in the same records so that a watched
 * session costs one Session, its id bytes, a hash slot and a heap slot. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define SESSION_ID_MAX 64
#define SESSION_INDEX_NONE UINT32_MAX

typedef uint32_t SessionIndex;

enum {
        SESSION_SEEN = 1u << 0,       /* at least one observation was taken in */
        SESSION_IN_FLIGHT = 1u << 1,  /* a poll for it is outstanding */
        SESSION_GONE = 1u << 2,       /* answered 404 after being seen: no longer polled */
        SESSION_CONFIGURED = 1u << 3, /* listed in the config file */
        SESSION_DYNAMIC = 1u << 4,    /* added at run time */
        SESSION_STALLED = 1u << 5,    /* a stalled event went out since the last change */
        SESSION_REMOVED = 1u << 6,    /* a free record, waiting for reuse */
        SESSION_REPLAY = 1u << 7,     /* status came from durable state; the next change is a replay */
};

typedef struct Session {
        int64_t updated_at_us; /* updatedAt of the newest observation; 0 before the first */
        uint64_t due_ms;       /* scheduler: when the next poll is due (loop time) */
        uint32_t heap_pos;     /* scheduler: position in its heap, or SESSION_INDEX_NONE */
        uint32_t id_off;       /* offset of the NUL-terminated id in the table's id arena */
        uint16_t unknown;      /* for SESSION_STATUS_UNKNOWN: 1 + index of the interned raw string */
        uint8_t status;        /* SessionStatus; meaningful only with SESSION_SEEN */
        uint8_t flags;
        uint8_t failures; /* consecutive failed polls, for the backoff */
        uint8_t id_len;
        uint8_t heap;     /* scheduler: which of its heaps holds it (SchedulerHeap) */
        uint8_t coverage; /* the daemon's coverage bookkeeping (SESSION_COV_*) */
} Session;

/* Session.coverage. The class a session is counted under in its runbook's
 * running counts (so it can be taken out again exactly), and whether a 404
 * waits for its confirmation. */
enum {
        SESSION_COV_COUNTED_ACTIVE = 1u << 0,  /* counted as running, not waiting */
        SESSION_COV_COUNTED_WAITING = 1u << 1, /* counted as waiting */
        SESSION_COV_COVERED = 1u << 2,         /* a sweep lists it when it changes: audits only */
        SESSION_COV_SUSPECT = 1u << 3,         /* answered 404 once since its last 200 */
};

typedef struct SessionTable SessionTable;

typedef enum ObserveResult {
        OBSERVE_UNCHANGED,  /* same status; a newer updatedAt is taken in silently */
        OBSERVE_STALE,      /* older than what the table holds: ignored (see Observation.conflict) */
        OBSERVE_TRANSITION, /* first observation or a changed status */
} ObserveResult;

typedef struct Observation {
        ObserveResult result;
        bool first;                     /* no previous status */
        bool replayed;                  /* the previous status came from durable state */
        bool conflict;                  /* OBSERVE_STALE with another status than the one held */
        bool skipped;                   /* a transition that must have missed a step in between */
        SessionStatus previous;         /* valid unless first */
        const char *previous_raw;       /* the previous status as the API spelled it, unless first */
        int64_t previous_updated_at_us; /* the updatedAt held before this observation, unless first */
} Observation;

int sessions_new(size_t max_sessions, SessionTable **ret);
void sessions_free(SessionTable *t);

/* Makes room for `n` more sessions whose ids take `id_bytes` bytes in all,
 * so that loading a long watch list allocates once and exactly (growth
 * slack would otherwise cost up to half the table). */
int sessions_reserve(SessionTable *t, size_t n, size_t id_bytes);

/* Adds `id` (validated by the caller) with `flags`. Returns 0 and the new
 * index, -EEXIST and the existing index, -ENOSPC past max_sessions, -ENOMEM. */
int sessions_add(SessionTable *t, const char *id, size_t len, uint8_t flags, SessionIndex *ret);

/* Frees the record; the scheduler must have dropped it first. */
void sessions_remove(SessionTable *t, SessionIndex i);

SessionIndex sessions_find(const SessionTable *t, const char *id, size_t len);
Session *sessions_get(SessionTable *t, SessionIndex i);
const char *sessions_id(const SessionTable *t, SessionIndex i);
size_t sessions_count(const SessionTable *t);
/* One past the largest index in use, to iterate (skip SESSION_REMOVED). */
size_t sessions_capacity(const SessionTable *t);
/* The raw status string of a session's current status. */
const char *sessions_status_raw(const SessionTable *t, SessionIndex i);

/* Takes in an observation of session `i` and says whether it is a transition.
 * `status_raw` is the status string as the API sent it. */
int sessions_observe(SessionTable *t, SessionIndex i, const char *status_raw, size_t status_len,
                     int64_t updated_at_us, Observation *ret);

/* What sessions_observe() would answer, without changing anything: lets the
 * caller skip the full decode of a body that brings nothing new. */
ObserveResult sessions_peek(const SessionTable *t, SessionIndex i, const char *status_raw, size_t status_len,
                            int64_t updated_at_us);

/* Restores a status from durable state without making it a transition. */
int sessions_restore(SessionTable *t, SessionIndex i, const char *status_raw, size_t status_len,
                     int64_t updated_at_us);

/* Memory held by the table, for the benchmark's bytes-per-session figure. */
size_t sessions_memory_usage(const SessionTable *t);
