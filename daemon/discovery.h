/* discovery: finds the sessions of watched runbooks (or every session the key
 * can see) through /sessions/list sweeps, so nobody has to list their ids.
 *
 * One scope per `[watch] runbook` and one for `[watch] all`. Every
 * discover-interval a scope is swept: GET /sessions/list?runbookID=…&
 * updatedAfter=…&limit=50, page after page until a short page. The scope's
 * watermark is the newest updatedAt any complete sweep returned; a sweep asks
 * for updatedAfter = watermark - DISCOVERY_OVERLAP_US, so a session whose
 * update reached the API's list a little late (or a clock that steps) is not
 * missed, and the sessions table drops what it already knows by updatedAt.
 *
 * Paging. The contract pages by index over a list ordered by updatedAt, with
 * no cursor. A session that changes while a sweep pages through moves to the
 * end of the order and shifts every later entry one place forward, so plain
 * page indices can skip an entry at a page boundary. Each full page therefore
 * restarts at page 0 with updatedAfter = (last updatedAt of the page) - 1 µs,
 * which re-reads at most the entries that share that last instant; only when
 * a whole page shares one instant does the page index grow instead. Either
 * the lower bound or the index moves forward on every page, so a sweep ends.
 *
 * A failed page (5xx, network, timeout, 429) is retried where it failed; the
 * watermark moves only when a sweep completes, so a failure loses nothing.
 * Requests take a token from the scheduler's shared rate budget and respect
 * its global pause (a 429 anywhere holds discovery too, and a 429 on a list
 * page holds polls). One list request is in flight at a time.
 *
 * The pure part (scopes, queries, paging, watermarks) is separate from the
 * part on the loop so that it can be unit tested directly. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "api.h"
#include "decode.h"
#include "log.h"
#include "scheduler.h"

#define DISCOVERY_PAGE_LIMIT 50
/* How far below the watermark each sweep starts (clock skew, late list
 * entries). Sessions updated in this window are listed again and dropped by
 * the sessions table; terminal ones stay in the table at least this long. */
#define DISCOVERY_OVERLAP_US (120 * INT64_C(1000000))
/* The longest query: runbookID, updatedAfter, limit and page. */
#define DISCOVERY_QUERY_MAX 256

/* Counters for the metrics module and the stop summary. */
typedef struct DiscoveryCounters {
        uint64_t sweeps;         /* complete list sweeps */
        uint64_t sweep_failures; /* list requests that failed (and were retried) */
        uint64_t pages;          /* list pages taken in */
        uint64_t discovered;     /* sessions added to the table by a sweep */
        uint64_t refused;        /* new sessions refused past [poll] max-sessions */
        uint64_t stalled;        /* stalled events */
        uint64_t rate_limited;   /* 429 answers to list requests that started or extended the hold */
} DiscoveryCounters;

/* Where the next page of a sweep is read. */
typedef struct DiscoveryCursor {
        bool has_after;   /* false: no updatedAfter (a first sweep) */
        int64_t after_us; /* updatedAfter, strict */
        unsigned page;
} DiscoveryCursor;

typedef struct DiscoveryScope {
        char *runbook_id;  /* NULL: every session the key can see */
        bool swept;        /* a sweep completed, in this run or before a restart */
        int64_t newest_us; /* the watermark: newest updatedAt of all complete sweeps; 0: none seen */

        /* The sweep in progress. */
        bool sweeping;
        bool initial; /* the first sweep ever of this scope: finished sessions are not announced */
        DiscoveryCursor cursor;
        int64_t sweep_newest_us;

        uint64_t due_ms; /* loop time of the next request */
        unsigned failures;
} DiscoveryScope;

/* The key of the scope's watermark in durable state: its runbook id or "*". */
const char *discovery_scope_key(const DiscoveryScope *sc);

/* Starts a sweep: from the watermark minus `overlap_us` when there is one,
 * from the beginning otherwise. */
void discovery_sweep_begin(DiscoveryScope *sc, int64_t overlap_us);

/* Writes the query string of the next page (escaped; without '?') into buf.
 * Returns its length, -ENOBUFS when n is too small, -ERANGE for a time that
 * cannot be written as RFC 3339. */
int discovery_format_query(const DiscoveryScope *sc, char *buf, size_t n);

/* A page of `n_items` entries came back, the newest (last) of the decodable
 * ones updated at `last_us` (ignored when no entry was decodable). Takes the
 * page into the sweep's newest and moves the cursor. Returns true when
 * another page must be read, false when the sweep is complete. */
bool discovery_page_done(DiscoveryScope *sc, size_t n_items, bool have_last, int64_t last_us);

/* Completes the sweep: the watermark takes the sweep's newest. */
void discovery_sweep_end(DiscoveryScope *sc);

/* The updatedAt at or below which no future sweep of any of the scopes can
 * return a session: min over scopes of (watermark - overlap). INT64_MIN when
 * a scope has not completed a sweep yet, INT64_MAX without scopes. */
int64_t discovery_floor(const DiscoveryScope *scopes, size_t n, int64_t overlap_us);

typedef struct DiscoveryCallbacks {
        /* One decoded entry of a list page, on the loop thread. `initial`:
         * it comes from the first sweep of its scope. */
        void (*session)(void *userdata, const SessionSnapshot *s, bool initial, uint64_t done_usec);
        /* A page was taken in; `complete`: it ended a sweep of `sc`;
         * `moved`: that sweep changed the watermark (to be made durable). */
        void (*page)(void *userdata, const DiscoveryScope *sc, bool complete, bool moved);
} DiscoveryCallbacks;

typedef struct Discovery Discovery;

/* Makes one scope per runbook (duplicates folded) and one for `all`.
 * Nothing runs until discovery_start(). Returns 0 or -ENOMEM. */
int discovery_new(uv_loop_t *loop, char *const *runbooks, size_t n_runbooks, bool all, uint64_t interval_ms,
                  const DiscoveryCallbacks *cb, void *userdata, DiscoveryCounters *counters,
                  Discovery **ret);

size_t discovery_n_scopes(const Discovery *disc);
const DiscoveryScope *discovery_scopes(const Discovery *disc);

/* A stored watermark (before start). Returns 1 when a scope has this key
 * (the watermark is taken), 0 when none has. */
int discovery_restore(Discovery *disc, const char *key, size_t len, int64_t newest_us);

/* Starts sweeping every scope now, through `api`, sharing `sched`'s rate
 * budget and pause. */
void discovery_start(Discovery *disc, Api *api, Scheduler *sched);

/* Stops sweeping and closes the timer (asynchronously); a request in flight
 * completes as cancelled. discovery_free() once the loop has run the close. */
void discovery_close(Discovery *disc);
void discovery_free(Discovery *disc);
