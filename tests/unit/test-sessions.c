/* Unit tests for the sessions table: the hash index with backward-shift
 * deletion, record reuse, the limits, and sessions_observe(), which alone
 * decides what is a transition. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sessions.h"

/* The project's budget is 128 bytes per session including the scheduler's
 * heap slot (4 to 6 bytes); the table itself must stay well inside it. */
#define BYTES_PER_SESSION_MAX 100

/* splitmix64: the tests' own deterministic random numbers. */
static uint64_t rnd_next(uint64_t *state)
{
        uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* Writes an id shaped like the API's (ses20220120za1pskd: a date and seven
 * base-36 characters). Distinct n give distinct ids: n is scrambled by a
 * multiplier coprime to 36, a bijection modulo 36^7. */
static size_t make_id(char *buf, uint64_t n)
{
        static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        const uint64_t mod = 78364164096ULL; /* 36^7 */
        uint64_t v = (n * 2654435761ULL) % mod;
        char tail[8];

        assert_true(n < mod);
        for (int k = 6; k >= 0; k--) {
                tail[k] = digits[v % 36];
                v /= 36;
        }
        tail[7] = '\0';
        return (size_t)snprintf(buf, SESSION_ID_MAX + 1, "ses2022%02u%02u%s", (unsigned)(1 + n % 12),
                                (unsigned)(1 + n % 28), tail);
}

static void shuffle(uint32_t *a, size_t n, uint64_t *rng)
{
        for (size_t k = n; k > 1; k--) {
                size_t j = rnd_next(rng) % k;
                uint32_t tmp = a[k - 1];

                a[k - 1] = a[j];
                a[j] = tmp;
        }
}

static SessionIndex add_ok(SessionTable *t, const char *id)
{
        SessionIndex i = SESSION_INDEX_NONE;

        assert_int_equal(sessions_add(t, id, strlen(id), 0, &i), 0);
        assert_int_not_equal(i, SESSION_INDEX_NONE);
        return i;
}

static void test_add_find(void **state)
{
        SessionTable *t = NULL;
        SessionIndex a, b, i;
        char long_id[SESSION_ID_MAX + 1];

        assert_int_equal(sessions_new(0, &t), 0);
        assert_int_equal(sessions_count(t), 0);
        assert_int_equal(sessions_find(t, "ses1", 4), SESSION_INDEX_NONE);

        a = add_ok(t, "ses20220120za1pskd");
        b = add_ok(t, "x");
        assert_int_not_equal(a, b);
        assert_int_equal(sessions_count(t), 2);
        assert_true(sessions_capacity(t) >= 2);
        assert_true(a < sessions_capacity(t) && b < sessions_capacity(t));

        assert_int_equal(sessions_find(t, "ses20220120za1pskd", 18), a);
        assert_int_equal(sessions_find(t, "x", 1), b);
        assert_string_equal(sessions_id(t, a), "ses20220120za1pskd");
        assert_string_equal(sessions_id(t, b), "x");
        assert_int_equal(sessions_get(t, a)->id_len, 18);

        /* The length counts, not a terminator: a prefix or an extension is another id. */
        assert_int_equal(sessions_find(t, "ses20220120za1pskd", 17), SESSION_INDEX_NONE);
        assert_int_equal(sessions_find(t, "ses20220120za1pskdX", 19), SESSION_INDEX_NONE);
        assert_int_equal(sessions_find(t, "xyz", 1), b);

        /* The longest id is kept whole. */
        memset(long_id, 'q', SESSION_ID_MAX);
        long_id[SESSION_ID_MAX] = '\0';
        i = add_ok(t, long_id);
        assert_int_equal(sessions_find(t, long_id, SESSION_ID_MAX), i);
        assert_string_equal(sessions_id(t, i), long_id);

        /* A second add of the same id answers -EEXIST with the existing index. */
        i = SESSION_INDEX_NONE;
        assert_int_equal(sessions_add(t, "ses20220120za1pskd", 18, 0, &i), -EEXIST);
        assert_int_equal(i, a);
        assert_int_equal(sessions_add(t, "ses20220120za1pskd", 18, 0, NULL), -EEXIST);
        assert_int_equal(sessions_count(t), 3);

        sessions_free(t);
}

static void test_add_flags(void **state)
{
        SessionTable *t = NULL;
        SessionIndex i;
        Session *s;

        assert_int_equal(sessions_new(0, &t), 0);

        /* Only the caller's own flags are kept: a new record is never seen, in
         * flight or removed, whatever the caller passes. */
        assert_int_equal(
            sessions_add(t, "ses1", 4,
                         SESSION_CONFIGURED | SESSION_SEEN | SESSION_IN_FLIGHT | SESSION_REMOVED, &i),
            0);
        s = sessions_get(t, i);
        assert_int_equal(s->flags, SESSION_CONFIGURED);
        assert_int_equal(s->heap_pos, SESSION_INDEX_NONE);
        assert_int_equal(s->updated_at_us, 0);
        assert_int_equal(s->failures, 0);

        assert_int_equal(sessions_add(t, "ses2", 4, SESSION_DYNAMIC, &i), 0);
        assert_int_equal(sessions_get(t, i)->flags, SESSION_DYNAMIC);

        sessions_free(t);
}

static void test_enospc(void **state)
{
        SessionTable *t = NULL;
        SessionIndex a, i;

        assert_int_equal(sessions_new(3, &t), 0);
        a = add_ok(t, "a");
        add_ok(t, "b");
        add_ok(t, "c");

        i = 12345;
        assert_int_equal(sessions_add(t, "d", 1, 0, &i), -ENOSPC);
        assert_int_equal(sessions_count(t), 3);
        assert_int_equal(sessions_find(t, "d", 1), SESSION_INDEX_NONE);

        /* A full table still tells a duplicate apart from a new id. */
        assert_int_equal(sessions_add(t, "a", 1, 0, &i), -EEXIST);
        assert_int_equal(i, a);

        /* Removing makes room again. */
        sessions_remove(t, a);
        assert_int_equal(sessions_count(t), 2);
        assert_int_equal(sessions_find(t, "a", 1), SESSION_INDEX_NONE);
        i = add_ok(t, "d");
        assert_int_equal(sessions_find(t, "d", 1), i);
        assert_int_equal(sessions_add(t, "e", 1, 0, NULL), -ENOSPC);
        assert_int_equal(sessions_count(t), 3);

        sessions_free(t);
}

/* Many ids in, a random half out: every survivor is still found at its index
 * and no removed one is. Any hole that backward-shift deletion fails to fill
 * (or fills wrongly) breaks a probe chain and makes a survivor disappear. */
static void test_many_random(void **state)
{
        const size_t n = 200000;
        uint64_t rng = 42;
        SessionTable *t = NULL;
        char(*ids)[SESSION_ID_MAX + 1];
        uint32_t *idx, *order;
        bool *removed;
        size_t cap;

        ids = calloc(n, sizeof(*ids));
        idx = calloc(n, sizeof(*idx));
        order = calloc(n, sizeof(*order));
        removed = calloc(n, sizeof(*removed));
        assert_non_null(ids);
        assert_non_null(idx);
        assert_non_null(order);
        assert_non_null(removed);

        assert_int_equal(sessions_new(0, &t), 0);
        for (size_t k = 0; k < n; k++) {
                size_t len = make_id(ids[k], rnd_next(&rng) % 1000000000ULL);

                if (sessions_add(t, ids[k], len, 0, &idx[k]) == -EEXIST) {
                        /* A repeated random number: use a fresh, certainly distinct id. */
                        len = make_id(ids[k], 1000000000ULL + k);
                        assert_int_equal(sessions_add(t, ids[k], len, 0, &idx[k]), 0);
                }
                order[k] = (uint32_t)k;
        }
        assert_int_equal(sessions_count(t), n);
        cap = sessions_capacity(t);
        assert_int_equal(cap, n);

        shuffle(order, n, &rng);
        for (size_t k = 0; k < n / 2; k++) {
                sessions_remove(t, idx[order[k]]);
                removed[order[k]] = true;
        }
        assert_int_equal(sessions_count(t), n - n / 2);

        for (size_t k = 0; k < n; k++) {
                SessionIndex i = sessions_find(t, ids[k], strlen(ids[k]));

                if (removed[k]) {
                        if (i != SESSION_INDEX_NONE)
                                fail_msg("removed id '%s' is still found at %" PRIu32, ids[k], i);
                        assert_true(sessions_get(t, idx[k])->flags & SESSION_REMOVED);
                } else {
                        if (i != idx[k])
                                fail_msg("id '%s' found at %" PRIu32 ", expected %" PRIu32, ids[k], i,
                                         idx[k]);
                        assert_string_equal(sessions_id(t, i), ids[k]);
                }
        }

        /* Re-adding the removed ids reuses their records: no new index appears
         * and every index is in use exactly once again. */
        for (size_t k = 0; k < n / 2; k++) {
                size_t j = order[k];
                SessionIndex i;

                assert_int_equal(sessions_add(t, ids[j], strlen(ids[j]), 0, &i), 0);
                assert_true(i < cap);
                idx[j] = i;
        }
        assert_int_equal(sessions_count(t), n);
        assert_int_equal(sessions_capacity(t), cap);

        memset(removed, 0, n * sizeof(*removed)); /* now: index seen */
        for (size_t k = 0; k < n; k++) {
                SessionIndex i = sessions_find(t, ids[k], strlen(ids[k]));

                if (i != idx[k])
                        fail_msg("id '%s' found at %" PRIu32 ", expected %" PRIu32, ids[k], i, idx[k]);
                assert_false(removed[i]);
                removed[i] = true;
                assert_false(sessions_get(t, i)->flags & SESSION_REMOVED);
        }

        sessions_free(t);
        free(removed);
        free(order);
        free(idx);
        free(ids);
}

/* Small live sets under heavy churn, checked against a plain model after
 * every step. The table stays small and dense, and each run takes another set
 * of ids, so that across runs deletion meets clusters that wrap around the end
 * of the slot array. */
static void churn_model(size_t universe, size_t steps, uint64_t seed)
{
        uint64_t rng = seed;
        SessionTable *t = NULL;
        SessionIndex *at = calloc(universe, sizeof(*at));
        char(*ids)[SESSION_ID_MAX + 1] = calloc(universe, sizeof(*ids));
        size_t live = 0;

        assert_non_null(at);
        assert_non_null(ids);
        for (size_t k = 0; k < universe; k++) {
                make_id(ids[k], seed * 1000 + k);
                at[k] = SESSION_INDEX_NONE;
        }

        assert_int_equal(sessions_new(0, &t), 0);
        for (size_t step = 0; step < steps; step++) {
                size_t k = rnd_next(&rng) % universe;
                size_t len = strlen(ids[k]);

                if (at[k] == SESSION_INDEX_NONE) {
                        assert_int_equal(sessions_add(t, ids[k], len, 0, &at[k]), 0);
                        live++;
                } else if (rnd_next(&rng) % 3 != 0) {
                        sessions_remove(t, at[k]);
                        at[k] = SESSION_INDEX_NONE;
                        live--;
                } else {
                        SessionIndex i;

                        assert_int_equal(sessions_add(t, ids[k], len, 0, &i), -EEXIST);
                        assert_int_equal(i, at[k]);
                }

                assert_int_equal(sessions_count(t), live);
                for (size_t m = 0; m < universe; m++) {
                        SessionIndex i = sessions_find(t, ids[m], strlen(ids[m]));

                        if (i != at[m])
                                fail_msg("universe %zu, step %zu: '%s' found at %" PRIu32
                                         ", expected %" PRIu32,
                                         universe, step, ids[m], i, at[m]);
                }
        }
        /* Records are reused: never more than the universe of ids. */
        assert_true(sessions_capacity(t) <= universe);
        sessions_free(t);
        free(ids);
        free(at);
}

static void test_churn_model(void **state)
{
        static const size_t universes[] = {3, 8, 12, 16, 24, 40, 96};
        uint64_t seed = 1;

        for (size_t k = 0; k < sizeof(universes) / sizeof(universes[0]); k++)
                for (size_t run = 0; run < 40; run++)
                        churn_model(universes[k], 40000 / universes[k] + 200, seed++);
}

static void test_remove_readd_fresh(void **state)
{
        SessionTable *t = NULL;
        SessionIndex a, b;
        Observation o;

        assert_int_equal(sessions_new(0, &t), 0);
        a = add_ok(t, "ses-a");
        assert_int_equal(sessions_observe(t, a, "Failed", 6, 100, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);

        sessions_remove(t, a);
        assert_int_equal(sessions_count(t), 0);
        assert_int_equal(sessions_find(t, "ses-a", 5), SESSION_INDEX_NONE);

        /* The freed record comes back for the next id, with nothing of the old one. */
        b = add_ok(t, "ses-b");
        assert_int_equal(b, a);
        assert_int_equal(sessions_capacity(t), 1);
        assert_string_equal(sessions_id(t, b), "ses-b");
        assert_false(sessions_get(t, b)->flags & (SESSION_SEEN | SESSION_REMOVED));
        assert_int_equal(sessions_get(t, b)->updated_at_us, 0);
        assert_int_equal(sessions_get(t, b)->heap_pos, SESSION_INDEX_NONE);

        /* Its first observation is a first observation, even an older one. */
        assert_int_equal(sessions_observe(t, b, "Active", 6, 50, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_true(o.first);
        assert_null(o.previous_raw);

        sessions_free(t);
}

/* Removed sessions leave memory (retain = 24h): a table whose live set stays
 * the same size while sessions come and go must not keep growing. */
static void test_churn_memory_bounded(void **state)
{
        enum { LIVE = 1000, ROUNDS = 50 };
        SessionTable *t = NULL;
        SessionIndex idx[LIVE];
        char id[SESSION_ID_MAX + 1];
        size_t after_first = 0;
        uint64_t n = 0;

        assert_int_equal(sessions_new(0, &t), 0);
        for (size_t round = 0; round < ROUNDS; round++) {
                for (size_t k = 0; k < LIVE; k++) {
                        size_t len = make_id(id, n++);

                        assert_int_equal(sessions_add(t, id, len, 0, &idx[k]), 0);
                }
                if (round == 0)
                        after_first = sessions_memory_usage(t);
                for (size_t k = 0; k < LIVE; k++)
                        sessions_remove(t, idx[k]);
        }
        assert_int_equal(sessions_count(t), 0);
        assert_int_equal(sessions_capacity(t), LIVE);
        if (sessions_memory_usage(t) > 2 * after_first)
                fail_msg("memory grew from %zu to %zu bytes with %d live sessions after %d rounds of churn",
                         after_first, sessions_memory_usage(t), LIVE, ROUNDS);
        sessions_free(t);
}

/* One step of an observation sequence. */
typedef enum StepOp {
        STEP_OBSERVE,
        STEP_RESTORE,
} StepOp;

typedef struct Step {
        StepOp op;
        const char *status; /* as the API spelled it */
        size_t len;         /* 0: strlen(status) */
        int64_t updated_at_us;
        /* Expected for STEP_OBSERVE: */
        ObserveResult result;
        bool first, replayed;
        SessionStatus previous;   /* checked for transitions that are not first */
        const char *previous_raw; /* likewise */
        /* Expected after every step: */
        const char *current_raw;
        int64_t current_updated_at_us;
} Step;

typedef struct Sequence {
        const char *name;
        Step steps[8];
} Sequence;

/* clang-format off */
#define OBS(st, at, res, cur, cur_at) \
        { .op = STEP_OBSERVE, .status = (st), .updated_at_us = (at), .result = (res), .current_raw = (cur), \
          .current_updated_at_us = (cur_at) }
#define FIRST(st, at)                                                                                   \
        { .op = STEP_OBSERVE, .status = (st), .updated_at_us = (at), .result = OBSERVE_TRANSITION,       \
          .first = true, .current_raw = (st), .current_updated_at_us = (at) }
#define CHANGE(st, at, prev, prev_raw, repl)                                                            \
        { .op = STEP_OBSERVE, .status = (st), .updated_at_us = (at), .result = OBSERVE_TRANSITION,       \
          .replayed = (repl), .previous = (prev), .previous_raw = (prev_raw), .current_raw = (st),       \
          .current_updated_at_us = (at) }
#define RESTORE(st, at) \
        { .op = STEP_RESTORE, .status = (st), .updated_at_us = (at), .current_raw = (st), .current_updated_at_us = (at) }

static const Sequence sequences[] = {
        { "first observation", {
                FIRST("Pending", 100),
        } },
        { "first observation of a terminal status", {
                FIRST("Succeeded", 100),
                OBS("Succeeded", 100, OBSERVE_UNCHANGED, "Succeeded", 100),
        } },
        { "same status, newer updatedAt is taken in", {
                FIRST("Pending", 100),
                OBS("Pending", 200, OBSERVE_UNCHANGED, "Pending", 200),
                /* 150 is now older than what the table holds. */
                OBS("Active", 150, OBSERVE_STALE, "Pending", 200),
                CHANGE("Active", 250, SESSION_STATUS_PENDING, "Pending", false),
        } },
        { "same status, same updatedAt", {
                FIRST("Active", 100),
                OBS("Active", 100, OBSERVE_UNCHANGED, "Active", 100),
        } },
        { "older observations never move the status backwards", {
                FIRST("Active", 200),
                OBS("Pending", 100, OBSERVE_STALE, "Active", 200),
                OBS("Active", 100, OBSERVE_STALE, "Active", 200),
                OBS("Failed", 199, OBSERVE_STALE, "Active", 200),
                CHANGE("Failed", 201, SESSION_STATUS_ACTIVE, "Active", false),
                OBS("Active", 200, OBSERVE_STALE, "Failed", 201),
        } },
        { "a changed status at the same updatedAt is a transition", {
                FIRST("Active", 100),
                CHANGE("Waiting", 100, SESSION_STATUS_ACTIVE, "Active", false),
        } },
        { "a full life", {
                FIRST("Pending", 1),
                CHANGE("Active", 2, SESSION_STATUS_PENDING, "Pending", false),
                CHANGE("Waiting", 3, SESSION_STATUS_ACTIVE, "Active", false),
                OBS("Waiting", 4, OBSERVE_UNCHANGED, "Waiting", 4),
                CHANGE("Active", 5, SESSION_STATUS_WAITING, "Waiting", false),
                CHANGE("Cancelling", 6, SESSION_STATUS_ACTIVE, "Active", false),
                CHANGE("Cancelled", 7, SESSION_STATUS_CANCELLING, "Cancelling", false),
                OBS("Cancelled", 8, OBSERVE_UNCHANGED, "Cancelled", 8),
        } },
        { "unknown statuses are carried verbatim", {
                FIRST("Exploded", 1),
                OBS("Exploded", 2, OBSERVE_UNCHANGED, "Exploded", 2),
                CHANGE("Imploded", 3, SESSION_STATUS_UNKNOWN, "Exploded", false),
                OBS("Imploded", 4, OBSERVE_UNCHANGED, "Imploded", 4),
                CHANGE("Active", 5, SESSION_STATUS_UNKNOWN, "Imploded", false),
                CHANGE("Exploded", 6, SESSION_STATUS_ACTIVE, "Active", false),
        } },
        { "our word 'unknown' from the API is just another unknown string", {
                FIRST("Active", 1),
                CHANGE("unknown", 2, SESSION_STATUS_ACTIVE, "Active", false),
                OBS("unknown", 3, OBSERVE_UNCHANGED, "unknown", 3),
                CHANGE("Unknown", 4, SESSION_STATUS_UNKNOWN, "unknown", false),
        } },
        { "case matters", {
                FIRST("failed", 1),
                CHANGE("Failed", 2, SESSION_STATUS_UNKNOWN, "failed", false),
                CHANGE("FAILED", 3, SESSION_STATUS_FAILED, "Failed", false),
        } },
        { "the length counts, not a terminator", {
                { .op = STEP_OBSERVE, .status = "ActiveXYZ", .len = 6, .updated_at_us = 1,
                  .result = OBSERVE_TRANSITION, .first = true, .current_raw = "Active", .current_updated_at_us = 1 },
                OBS("Active", 2, OBSERVE_UNCHANGED, "Active", 2),
                { .op = STEP_OBSERVE, .status = "ExplodedXYZ", .len = 8, .updated_at_us = 3,
                  .result = OBSERVE_TRANSITION, .previous = SESSION_STATUS_ACTIVE, .previous_raw = "Active",
                  .current_raw = "Exploded", .current_updated_at_us = 3 },
                OBS("Exploded", 4, OBSERVE_UNCHANGED, "Exploded", 4),
                CHANGE("Explode", 5, SESSION_STATUS_UNKNOWN, "Exploded", false),
        } },
        { "restored, then the same status: no transition, no replay", {
                RESTORE("Active", 100),
                OBS("Active", 200, OBSERVE_UNCHANGED, "Active", 200),
                CHANGE("Failed", 300, SESSION_STATUS_ACTIVE, "Active", false),
        } },
        { "restored, then a different status: one replayed transition", {
                RESTORE("Active", 100),
                CHANGE("Failed", 200, SESSION_STATUS_ACTIVE, "Active", true),
                OBS("Failed", 300, OBSERVE_UNCHANGED, "Failed", 300),
                CHANGE("Active", 400, SESSION_STATUS_FAILED, "Failed", false),
        } },
        { "the replay goes to the first change only", {
                RESTORE("Pending", 100),
                CHANGE("Active", 200, SESSION_STATUS_PENDING, "Pending", true),
                CHANGE("Succeeded", 300, SESSION_STATUS_ACTIVE, "Active", false),
        } },
        { "restored, then something older: stale, the replay still pending", {
                RESTORE("Active", 100),
                OBS("Pending", 50, OBSERVE_STALE, "Active", 100),
                CHANGE("Failed", 150, SESSION_STATUS_ACTIVE, "Active", true),
        } },
        { "restored unknown status", {
                RESTORE("Exploded", 10),
                OBS("Exploded", 20, OBSERVE_UNCHANGED, "Exploded", 20),
                CHANGE("Imploded", 30, SESSION_STATUS_UNKNOWN, "Exploded", false),
        } },
        { "restored unknown status, then a change", {
                RESTORE("Exploded", 10),
                CHANGE("Imploded", 20, SESSION_STATUS_UNKNOWN, "Exploded", true),
        } },
        { "a restore over an observed session", {
                FIRST("Active", 100),
                RESTORE("Waiting", 150),
                CHANGE("Active", 200, SESSION_STATUS_WAITING, "Waiting", true),
        } },
};
/* clang-format on */

#define step_fail(seq, k, fmt, ...) fail_msg("'%s', step %zu: " fmt, (seq)->name, (k), __VA_ARGS__)

static void run_sequence(const Sequence *seq)
{
        SessionTable *t = NULL;
        SessionIndex i;
        Observation o;

        assert_int_equal(sessions_new(0, &t), 0);
        /* Some neighbours that must not be disturbed. */
        add_ok(t, "ses-before");
        i = add_ok(t, "ses-under-test");
        add_ok(t, "ses-after");

        for (size_t k = 0; k < sizeof(seq->steps) / sizeof(seq->steps[0]) && seq->steps[k].status; k++) {
                const Step *st = &seq->steps[k];
                size_t len = st->len ? st->len : strlen(st->status);
                const Session *s;

                if (st->op == STEP_RESTORE) {
                        assert_int_equal(sessions_restore(t, i, st->status, len, st->updated_at_us), 0);
                } else {
                        ObserveResult peeked = sessions_peek(t, i, st->status, len, st->updated_at_us);

                        memset(&o, 0xaa, sizeof(o));
                        assert_int_equal(sessions_observe(t, i, st->status, len, st->updated_at_us, &o), 0);
                        if (o.result != st->result)
                                step_fail(seq, k, "result %d, expected %d", o.result, st->result);
                        if (peeked != st->result)
                                step_fail(seq, k, "peek said %d, expected %d", peeked, st->result);
                        if (o.first != st->first)
                                step_fail(seq, k, "first=%d, expected %d", o.first, st->first);
                        /* A stale answer changes nothing, so what it is
                         * compared with is what the step expects after it. */
                        if (o.result == OBSERVE_STALE) {
                                bool conflict = strcmp(st->status, st->current_raw) != 0;

                                if (o.conflict != conflict)
                                        step_fail(seq, k, "conflict=%d, expected %d", o.conflict, conflict);
                                if (o.previous_updated_at_us != st->current_updated_at_us)
                                        step_fail(seq, k,
                                                  "previous updatedAt %" PRId64 ", expected %" PRId64,
                                                  o.previous_updated_at_us, st->current_updated_at_us);
                        }
                        if (o.result == OBSERVE_TRANSITION && !o.first) {
                                if (o.replayed != st->replayed)
                                        step_fail(seq, k, "replayed=%d, expected %d", o.replayed,
                                                  st->replayed);
                                if (o.previous != st->previous)
                                        step_fail(seq, k, "previous %d, expected %d", o.previous,
                                                  st->previous);
                                if (!o.previous_raw || strcmp(o.previous_raw, st->previous_raw) != 0)
                                        step_fail(seq, k, "previous_raw '%s', expected '%s'",
                                                  o.previous_raw ? o.previous_raw : "(null)",
                                                  st->previous_raw);
                        } else {
                                if (o.replayed)
                                        step_fail(seq, k, "replayed=%d without a transition", o.replayed);
                                if (o.first && o.previous_raw)
                                        step_fail(seq, k, "previous_raw '%s' on a first observation",
                                                  o.previous_raw);
                        }
                }

                s = sessions_get(t, i);
                if (!(s->flags & SESSION_SEEN))
                        step_fail(seq, k, "flags %#x lack SESSION_SEEN", s->flags);
                if (strcmp(sessions_status_raw(t, i), st->current_raw) != 0)
                        step_fail(seq, k, "current status '%s', expected '%s'", sessions_status_raw(t, i),
                                  st->current_raw);
                if (s->status != session_status_from_string(st->current_raw, strlen(st->current_raw)))
                        step_fail(seq, k, "current status enum %d for '%s'", s->status, st->current_raw);
                if (s->updated_at_us != st->current_updated_at_us)
                        step_fail(seq, k, "updated_at_us %" PRId64 ", expected %" PRId64, s->updated_at_us,
                                  st->current_updated_at_us);
        }

        assert_int_equal(sessions_count(t), 3);
        assert_int_equal(sessions_find(t, "ses-under-test", 14), i);
        sessions_free(t);
}

static void test_observe_sequences(void **state)
{
        for (size_t k = 0; k < sizeof(sequences) / sizeof(sequences[0]); k++)
                run_sequence(&sequences[k]);
}

/* Observations of one session do not leak into another. */
static void test_observe_independent(void **state)
{
        SessionTable *t = NULL;
        SessionIndex a, b;
        Observation o;

        assert_int_equal(sessions_new(0, &t), 0);
        a = add_ok(t, "ses-a");
        b = add_ok(t, "ses-b");

        assert_int_equal(sessions_observe(t, a, "Exploded", 8, 1000, &o), 0);
        assert_true(o.first);
        assert_int_equal(sessions_observe(t, b, "Active", 6, 10, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_true(o.first);
        assert_int_equal(sessions_observe(t, b, "Exploded", 8, 11, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_string_equal(o.previous_raw, "Active");
        assert_int_equal(sessions_observe(t, a, "Imploded", 8, 1001, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_string_equal(o.previous_raw, "Exploded");
        assert_string_equal(sessions_status_raw(t, a), "Imploded");
        assert_string_equal(sessions_status_raw(t, b), "Exploded");

        sessions_free(t);
}

/* sessions_peek() changes nothing: peeking a transition many times leaves
 * the next observation a transition. */
static void test_peek_pure(void **state)
{
        SessionTable *t = NULL;
        SessionIndex i;
        Observation o;

        assert_int_equal(sessions_new(0, &t), 0);
        i = add_ok(t, "ses-a");
        for (int k = 0; k < 3; k++)
                assert_int_equal(sessions_peek(t, i, "Active", 6, 10), OBSERVE_TRANSITION);
        assert_false(sessions_get(t, i)->flags & SESSION_SEEN);
        assert_int_equal(sessions_observe(t, i, "Active", 6, 10, &o), 0);
        assert_true(o.first);

        sessions_restore(t, i, "Active", 6, 20);
        for (int k = 0; k < 3; k++) {
                assert_int_equal(sessions_peek(t, i, "Active", 6, 30), OBSERVE_UNCHANGED);
                assert_int_equal(sessions_peek(t, i, "Active", 6, 19), OBSERVE_STALE);
                assert_int_equal(sessions_peek(t, i, "Failed", 6, 30), OBSERVE_TRANSITION);
        }
        assert_int_equal(sessions_get(t, i)->updated_at_us, 20);
        assert_true(sessions_get(t, i)->flags & SESSION_REPLAY);
        assert_int_equal(sessions_observe(t, i, "Failed", 6, 30, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_true(o.replayed);

        sessions_free(t);
}

/* A server sending endless new status strings cannot grow the table without
 * bound: past the intern limit a new string is remembered only as "unknown".
 * The strings interned before the limit stay verbatim, and known statuses
 * are still told apart from the rest. */
static void test_unknown_intern_bounded(void **state)
{
        SessionTable *t = NULL;
        SessionIndex i, j;
        Observation o;
        char raw[32];
        int interned = 0;

        assert_int_equal(sessions_new(0, &t), 0);
        i = add_ok(t, "ses-a");
        j = add_ok(t, "ses-b");
        assert_int_equal(sessions_observe(t, j, "Exploded", 8, 1, &o), 0);

        for (int k = 0; k < 5000; k++) {
                int len = snprintf(raw, sizeof(raw), "Weird%d", k);

                assert_int_equal(sessions_observe(t, i, raw, (size_t)len, k + 1, &o), 0);
                assert_int_equal(sessions_get(t, i)->status, SESSION_STATUS_UNKNOWN);
                if (strcmp(sessions_status_raw(t, i), raw) != 0) {
                        assert_string_equal(sessions_status_raw(t, i), "unknown");
                        break;
                }
                assert_int_equal(o.result, OBSERVE_TRANSITION);
                interned++;
        }
        /* The limit is there, and it is not tiny. */
        assert_in_range(interned, 256, 4999);

        assert_string_equal(sessions_status_raw(t, j), "Exploded");
        assert_int_equal(sessions_observe(t, j, "Exploded", 8, 2, &o), 0);
        assert_int_equal(o.result, OBSERVE_UNCHANGED);

        assert_int_equal(sessions_observe(t, i, "Active", 6, 6000, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_int_equal(o.previous, SESSION_STATUS_UNKNOWN);
        assert_string_equal(o.previous_raw, "unknown");
        assert_int_equal(sessions_observe(t, j, "Active", 6, 3, &o), 0);
        assert_int_equal(o.result, OBSERVE_TRANSITION);
        assert_string_equal(o.previous_raw, "Exploded");

        sessions_free(t);
}

/* A status is a counted string: JSON can carry "\u0000" inside it. Two equal
 * such strings are the same status, not a transition each time they are seen. */
static void test_unknown_with_nul(void **state)
{
        static const char raw[] = "Bad\0Status";
        SessionTable *t = NULL;
        SessionIndex i;
        Observation o;

        assert_int_equal(sessions_new(0, &t), 0);
        i = add_ok(t, "ses-a");
        assert_int_equal(sessions_observe(t, i, raw, sizeof(raw) - 1, 1, &o), 0);
        assert_true(o.first);
        assert_int_equal(sessions_peek(t, i, raw, sizeof(raw) - 1, 2), OBSERVE_UNCHANGED);
        assert_int_equal(sessions_observe(t, i, raw, sizeof(raw) - 1, 2, &o), 0);
        assert_int_equal(o.result, OBSERVE_UNCHANGED);
        sessions_free(t);
}

static void test_memory_budget(void **state)
{
        size_t n = 1000000;
        SessionTable *t = NULL;
        char id[SESSION_ID_MAX + 1];
        size_t bytes;
        double per;

        assert_int_equal(sessions_new(n, &t), 0);
        for (size_t k = 0; k < n; k++) {
                size_t len = make_id(id, k);

                assert_int_equal(len, 18);
                assert_int_equal(sessions_add(t, id, len, SESSION_CONFIGURED, NULL), 0);
        }
        assert_int_equal(sessions_count(t), n);
        assert_int_equal(sessions_add(t, "ses-one-too-many", 16, 0, NULL), -ENOSPC);

        /* Spot checks that the table is a working one, not just a small one. */
        for (size_t k = 0; k < n; k += 9973) {
                size_t len = make_id(id, k);

                assert_int_equal(sessions_find(t, id, len), (SessionIndex)k);
        }

        bytes = sessions_memory_usage(t);
        per = (double)bytes / (double)n;
        print_message(
            "sessions: %zu sessions use %zu bytes, %.1f bytes per session (sizeof(Session) = %zu)\n", n,
            bytes, per, sizeof(Session));
        if (per > BYTES_PER_SESSION_MAX)
                fail_msg("%.1f bytes per session, budget %d", per, BYTES_PER_SESSION_MAX);
        /* The figure is not a trivial one: the records and ids alone take this much. */
        assert_true(bytes >= n * (sizeof(Session) + 19));
        sessions_free(t);
}

/* Which pairs of statuses must have missed one in between: the whole table,
 * so that a pair added or lost by mistake shows. */
static void test_step_missed(void **state)
{
        static const char *const missed[] = {"Pending>Waiting",   "Pending>Succeeded", "Waiting>Succeeded",
                                             "Pending>Cancelled", "Active>Cancelled",  "Waiting>Cancelled"};
        (void)state;

        for (int from = 0; from < _SESSION_STATUS_MAX; from++)
                for (int to = 0; to < _SESSION_STATUS_MAX; to++) {
                        char pair[64];
                        bool want = false;

                        snprintf(pair, sizeof(pair), "%s>%s", session_status_to_string(from),
                                 session_status_to_string(to));
                        for (size_t k = 0; k < sizeof(missed) / sizeof(missed[0]); k++)
                                want = want || strcmp(pair, missed[k]) == 0;
                        if (session_status_step_missed(from, to) != want)
                                fail_msg("%s: expected %d", pair, want);
                }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_add_find),
            cmocka_unit_test(test_add_flags),
            cmocka_unit_test(test_enospc),
            cmocka_unit_test(test_many_random),
            cmocka_unit_test(test_churn_model),
            cmocka_unit_test(test_remove_readd_fresh),
            cmocka_unit_test(test_churn_memory_bounded),
            cmocka_unit_test(test_observe_sequences),
            cmocka_unit_test(test_step_missed),
            cmocka_unit_test(test_observe_independent),
            cmocka_unit_test(test_peek_pure),
            cmocka_unit_test(test_unknown_intern_bounded),
            cmocka_unit_test(test_unknown_with_nul),
            cmocka_unit_test(test_memory_budget),
        };

        return cmocka_run_group_tests_name("sessions", tests, NULL, NULL);
}
