/* discovery: /sessions/list sweeps, which find the sessions of watched
 * runbooks (or every session the key can see) and, for sessions they cover,
 * stand in for polling each one.
 *
 * Scopes. One per `[watch] runbook`, one for `[watch] all`, and, added at
 * run time, coverage scopes: the runbook of sessions listed by id, swept
 * only to learn their changes (a coverage sweep announces nothing about
 * sessions nobody asked to watch). The daemon says how often each scope is
 * swept and whether a coverage scope is swept at all.
 *
 * Windows. A sweep lists the window (watermark - overlap, T) where T is the
 * wall clock at the sweep's start, with updatedAfter and updatedBefore, and
 * the watermark becomes T once the whole window was read. A session that
 * changes during the sweep leaves the window (its updatedAt passes T) and is
 * read by the next sweep; the overlap is sized to how late a change may
 * reach the API's list ([watch] list-overlap).
 *
 * Paging without knowing the order. The API documents no order for the
 * list, so plain page indices can skip entries when one leaves the window
 * between two pages. A window that fits in one page (a short page) is read
 * in one request and taken in. A full one is split at the median updatedAt
 * of its page into two windows, older first, each read the same way, until
 * every window fits: nothing is skipped under any order, and a burst costs
 * about twice the pages it fills. Only once consecutive full pages show the
 * list in ascending updatedAt order is keyset paging used: the next window
 * starts just below the last instant of the page, which re-reads only the
 * entries of that instant. More than a page of entries at one microsecond
 * is read by page index.
 *
 * A failed page (5xx, network, timeout, 429) is retried where it failed; the
 * watermark moves only when a sweep completes, so a failure loses nothing.
 *
 * The caller's scheduler decides when a page may go (discovery_due_ms(),
 * discovery_start_due()): sweeps share the API's rate budget, the in-flight
 * cap and the 429 pause with polls. At most one page per scope is in
 * flight.
 *
 * The pure part (windows, queries, paging, watermarks) is separate from the
 * part on the loop so that it can be unit tested directly. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "decode.h"
#include "log.h"
#include "scheduler.h"

typedef struct uv_loop_s uv_loop_t;

#define DISCOVERY_PAGE_LIMIT 50
/* The default of [watch] list-overlap. */
#define DISCOVERY_OVERLAP_DEFAULT_US (2 * INT64_C(1000000))
/* The longest query: runbookID, updatedAfter, updatedBefore, limit and page. */
#define DISCOVERY_QUERY_MAX 320
/* How far a watermark moves before it is worth a state record. */
#define DISCOVERY_PERSIST_US (10 * INT64_C(1000000))
/* Pending windows of one sweep; past it the top window is paged by index. */
#define DISCOVERY_WINDOWS_MAX 256
/* No bound on that side of a window. */
#define DISCOVERY_UNBOUNDED_LO INT64_MIN
#define DISCOVERY_UNBOUNDED_HI INT64_MAX

/* Counters for the metrics module and the stop summary. */
typedef struct DiscoveryCounters {
        uint64_t sweeps;         /* complete list sweeps */
        uint64_t sweep_failures; /* list requests that failed (and were retried) */
        uint64_t pages;          /* list pages taken in */
        uint64_t splits;         /* full pages of unknown order split into two windows */
        uint64_t discovered;     /* sessions added to the table by a sweep */
        uint64_t refused;        /* new sessions refused past [poll] max-sessions */
        uint64_t stalled;        /* stalled events */
        uint64_t rate_limited;   /* 429 answers to list requests that started or extended the hold */
} DiscoveryCounters;

/* The part of a sweep between updatedAfter `lo` and updatedBefore `hi`
 * (both strict); `page` is the page index (0 but in index paging). */
typedef struct DiscoveryWindow {
        int64_t lo, hi;
        unsigned page;
} DiscoveryWindow;

/* The windows of one sweep still to read, the top (last) one next. */
typedef struct DiscoveryPager {
        DiscoveryWindow *w;
        size_t n, cap;
        int64_t hi;         /* the sweep's upper bound: its watermark once complete */
        unsigned asc_votes; /* consecutive full pages seen in ascending updatedAt order */
        bool ascending;     /* keyset paging is in use */
        unsigned requests;  /* pages read in this sweep */
} DiscoveryPager;

typedef enum DiscoveryVerdict {
        DISCOVERY_TAKE, /* take the page's entries in */
        DISCOVERY_SKIP, /* the page was split: its entries are read again */
} DiscoveryVerdict;

/* Starts a sweep of (lo, hi). Returns 0 or -ENOMEM. */
int discovery_pager_begin(DiscoveryPager *p, int64_t lo, int64_t hi);
void discovery_pager_done(DiscoveryPager *p);
/* True once every window was read. */
bool discovery_pager_complete(const DiscoveryPager *p);

/* Writes the query string of the next page (escaped; without '?') into buf.
 * `runbook_id` NULL: every runbook. Returns its length, -ENOBUFS when n is
 * too small, -ERANGE for a time that cannot be written as RFC 3339. */
int discovery_pager_query(const DiscoveryPager *p, const char *runbook_id, char *buf, size_t n);

/* A page of `n_items` entries came back for the top window, `updated` the
 * updatedAt of its `n_decoded` decodable entries, in the order of the page
 * (the array is reordered). Moves the windows on and says what to do with
 * the entries. Returns the verdict, or -ENOMEM (nothing changed). */
int discovery_pager_page(DiscoveryPager *p, int64_t *updated, size_t n_decoded, size_t n_items,
                         bool *ret_split);

typedef struct DiscoveryScope {
        char *runbook_id;  /* NULL: every session the key can see */
        bool coverage;     /* made to cover sessions listed by id: announces no new session */
        bool enabled;      /* swept at all */
        bool swept;        /* a sweep completed, in this run or before a restart */
        int64_t newest_us; /* the watermark: every change before it was listed; 0: none */
        int64_t told_us;   /* the watermark last reported as moved (to be made durable) */

        /* The sweep in progress. */
        bool sweeping;
        bool initial; /* the first sweep ever of this scope: finished sessions are not announced */
        bool in_flight;
        DiscoveryPager pager;

        uint64_t interval_ms; /* between the end of a sweep and the start of the next */
        uint64_t due_ms;      /* loop time of the next request */
        uint64_t last_end_ms; /* loop time the last sweep ended; 0: none in this run */
        unsigned failures;
        double requests_per_sweep; /* a moving average, for the cost of covering */
} DiscoveryScope;

/* The key of the scope's watermark in durable state: its runbook id or "*". */
const char *discovery_scope_key(const DiscoveryScope *sc);

/* The updatedAt at or below which no future sweep of any of the scopes can
 * return a session: min over scopes of (watermark - overlap). INT64_MIN when
 * a scope has not completed a sweep yet, INT64_MAX without scopes. Scopes
 * that are not enabled are left out. */
int64_t discovery_floor(const DiscoveryScope *scopes, size_t n, int64_t overlap_us);

typedef struct DiscoveryCallbacks {
        /* One decoded entry of a list page, on the loop thread, oldest
         * first. `initial`: it comes from the first sweep of its scope. */
        void (*session)(void *userdata, const DiscoveryScope *sc, const SessionSnapshot *s, bool initial,
                        uint64_t done_usec);
        /* A page was taken in; `complete`: it ended a sweep of `sc`;
         * `moved`: the watermark is worth making durable (it moves every
         * sweep; this says so at most every DISCOVERY_PERSIST_US, which is
         * all a restart re-reads on top of the overlap). */
        void (*page)(void *userdata, const DiscoveryScope *sc, bool complete, bool moved);
        /* A list request started by discovery_start_due() has ended, in any
         * way (also cancelled): its in-flight count may go. */
        void (*done)(void *userdata);
        /* May be NULL. The API answered a list request with HTTP 401
         * (`rejected`, the HTTP status in `status`) or with a page (not
         * `rejected`): the key is refused for every request, or accepted
         * again. Called before `page`, and the scope's next page waits for
         * the scheduler's pause that this may start. */
        void (*auth)(void *userdata, bool rejected, long status);
} DiscoveryCallbacks;

typedef struct Discovery Discovery;

/* Makes one scope per runbook (duplicates folded) and one for `all`, swept
 * every `interval_ms` until told otherwise. Nothing runs until
 * discovery_start(). Returns 0 or -ENOMEM. */
int discovery_new(uv_loop_t *loop, char *const *runbooks, size_t n_runbooks, bool all, uint64_t interval_ms,
                  int64_t overlap_us, const DiscoveryCallbacks *cb, void *userdata,
                  DiscoveryCounters *counters, Discovery **ret);

size_t discovery_n_scopes(const Discovery *disc);
const DiscoveryScope *discovery_scopes(const Discovery *disc);
/* The index of the scope of `runbook_id` (NULL: the `all` scope), or -ENOENT. */
int discovery_find(const Discovery *disc, const char *runbook_id);

/* Adds a coverage scope for `runbook_id`, disabled; its first sweep starts
 * from now minus the overlap (the sessions it covers are known already).
 * Returns its index, or -ENOMEM. */
int discovery_add_coverage(Discovery *disc, const char *runbook_id);

/* Turns sweeping of scope k on or off, and sets how often it is swept. A
 * shorter interval takes effect at once. */
void discovery_enable(Discovery *disc, size_t k, bool enabled);
void discovery_set_interval(Discovery *disc, size_t k, uint64_t interval_ms);
void discovery_set_overlap(Discovery *disc, int64_t overlap_us);

/* A stored watermark (before start). Returns 1 when a scope has this key
 * (the watermark is taken), 0 when none has. */
int discovery_restore(Discovery *disc, const char *key, size_t len, int64_t newest_us);

/* Lets sweeps go through `api`; the first of every enabled scope is due now. */
void discovery_start(Discovery *disc, Api *api, Scheduler *sched);

/* When the next page of any scope is due (loop time), UINT64_MAX when none. */
uint64_t discovery_due_ms(const Discovery *disc);
/* Starts the most overdue page; the caller has taken its token and counts
 * it in flight. Returns 0 (the done callback follows), or a negative errno
 * when it could not start (the scope retries later; no callback). */
int discovery_start_due(Discovery *disc, uint64_t now_ms);

/* Stops sweeping; a request in flight completes as cancelled. */
void discovery_close(Discovery *disc);
void discovery_free(Discovery *disc);
