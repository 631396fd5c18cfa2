#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sessions.h"

/* A watched session costs one record: keep it at half a cache line. */
_Static_assert(sizeof(Session) == 32, "Session grew");

/* Statuses outside the enum are interned so that a record stays small; a
 * server sending endless new strings cannot grow the table without bound. */
#define UNKNOWN_MAX 1024

#define SLOT_EMPTY UINT32_MAX

struct SessionTable {
        Session *recs;
        size_t n_recs, cap_recs; /* n_recs: one past the highest index ever used */
        size_t count;            /* records in use */
        uint32_t free_head;      /* removed records, chained through heap_pos */
        size_t max_sessions;

        char *arena; /* ids, each NUL-terminated */
        size_t arena_len, arena_cap;
        size_t arena_waste; /* bytes of removed ids, reclaimed by compaction */

        uint32_t *slots; /* open addressing with linear probing, power-of-two size */
        size_t n_slots;

        /* Counted strings: JSON can carry "\u0000" inside a status. */
        char *unknown[UNKNOWN_MAX];
        size_t unknown_len[UNKNOWN_MAX];
        size_t n_unknown;
};

/* A small, fast, well-mixing string hash: 8 bytes at a time through a
 * multiply and xor-shift. Ids are short ASCII strings. */
static uint64_t hash_id(const char *s, size_t len)
{
        uint64_t h = 0x9e3779b97f4a7c15ULL ^ (len * 0xff51afd7ed558ccdULL);

        while (len >= 8) {
                uint64_t v;

                memcpy(&v, s, 8);
                h = (h ^ v) * 0xbf58476d1ce4e5b9ULL;
                h ^= h >> 31;
                s += 8;
                len -= 8;
        }
        if (len > 0) {
                uint64_t v = 0;

                memcpy(&v, s, len);
                h = (h ^ v) * 0x94d049bb133111ebULL;
        }
        h ^= h >> 29;
        h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 32;
        return h;
}

static const char *rec_id(const SessionTable *t, const Session *s)
{
        return t->arena + s->id_off;
}

int sessions_new(size_t max_sessions, SessionTable **ret)
{
        SessionTable *t = calloc(1, sizeof(*t));

        if (!t)
                return -ENOMEM;
        t->max_sessions = max_sessions ? max_sessions : SIZE_MAX;
        t->free_head = SESSION_INDEX_NONE;
        t->n_slots = 16;
        t->slots = malloc(t->n_slots * sizeof(*t->slots));
        if (!t->slots) {
                free(t);
                return -ENOMEM;
        }
        memset(t->slots, 0xff, t->n_slots * sizeof(*t->slots));
        *ret = t;
        return 0;
}

void sessions_free(SessionTable *t)
{
        if (!t)
                return;
        for (size_t i = 0; i < t->n_unknown; i++)
                free(t->unknown[i]);
        free(t->recs);
        free(t->arena);
        free(t->slots);
        free(t);
}

static size_t slot_find(const SessionTable *t, const char *id, size_t len, uint64_t h)
{
        size_t mask = t->n_slots - 1;

        for (size_t p = h & mask;; p = (p + 1) & mask) {
                uint32_t i = t->slots[p];

                if (i == SLOT_EMPTY)
                        return p;
                const Session *s = &t->recs[i];
                if (s->id_len == len && memcmp(rec_id(t, s), id, len) == 0)
                        return p;
        }
}

static int slots_grow(SessionTable *t)
{
        size_t n = t->n_slots * 2;
        uint32_t *slots = malloc(n * sizeof(*slots));

        if (!slots)
                return -ENOMEM;
        memset(slots, 0xff, n * sizeof(*slots));
        for (size_t p = 0; p < t->n_slots; p++) {
                uint32_t i = t->slots[p];

                if (i == SLOT_EMPTY)
                        continue;
                const Session *s = &t->recs[i];
                size_t q = hash_id(rec_id(t, s), s->id_len) & (n - 1);
                while (slots[q] != SLOT_EMPTY)
                        q = (q + 1) & (n - 1);
                slots[q] = i;
        }
        free(t->slots);
        t->slots = slots;
        t->n_slots = n;
        return 0;
}

SessionIndex sessions_find(const SessionTable *t, const char *id, size_t len)
{
        size_t p = slot_find(t, id, len, hash_id(id, len));
        return t->slots[p];
}

static int grow(void **p, size_t *cap, size_t need, size_t size, size_t initial)
{
        size_t n;
        void *q;

        if (need <= *cap)
                return 0;
        n = *cap ? *cap : initial;
        while (n < need)
                n = n + n / 2 + 1;
        q = realloc(*p, n * size);
        if (!q)
                return -ENOMEM;
        *p = q;
        *cap = n;
        return 0;
}

/* Rewrites the arena with only the ids in use, once removed ids make up
 * half of it, so that churn (watch/unwatch, retention) cannot grow it without
 * bound. Amortised O(1) per removal. */
static int arena_compact(SessionTable *t)
{
        size_t live = t->arena_len - t->arena_waste, j = 0;
        char *a = malloc(live ? live : 1);

        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < t->n_recs; i++) {
                Session *s = &t->recs[i];

                if (s->flags & SESSION_REMOVED)
                        continue;
                memcpy(a + j, t->arena + s->id_off, s->id_len + 1u);
                s->id_off = (uint32_t)j;
                j += s->id_len + 1u;
        }
        assert(j == live);
        free(t->arena);
        t->arena = a;
        t->arena_len = t->arena_cap = live;
        t->arena_waste = 0;
        return 0;
}

int sessions_reserve(SessionTable *t, size_t n, size_t id_bytes)
{
        size_t want_slots = t->n_slots, need;
        void *p;

        need = t->n_recs + n;
        if (need > t->cap_recs) {
                p = realloc(t->recs, need * sizeof(Session));
                if (!p)
                        return -ENOMEM;
                t->recs = p;
                t->cap_recs = need;
        }
        need = t->arena_len + id_bytes + n; /* each id has its NUL */
        if (need > t->arena_cap) {
                p = realloc(t->arena, need);
                if (!p)
                        return -ENOMEM;
                t->arena = p;
                t->arena_cap = need;
        }
        while ((t->count + n) * 2 > want_slots)
                want_slots *= 2;
        while (t->n_slots < want_slots) {
                int r = slots_grow(t);
                if (r < 0)
                        return r;
        }
        return 0;
}

int sessions_add(SessionTable *t, const char *id, size_t len, uint8_t flags, SessionIndex *ret)
{
        uint64_t h;
        size_t p;
        uint32_t i;
        int r;

        assert(len > 0 && len <= SESSION_ID_MAX);

        h = hash_id(id, len);
        p = slot_find(t, id, len, h);
        if (t->slots[p] != SLOT_EMPTY) {
                if (ret)
                        *ret = t->slots[p];
                return -EEXIST;
        }
        if (t->count >= t->max_sessions)
                return -ENOSPC;
        if (t->n_recs >= SESSION_INDEX_NONE - 1 || t->arena_len + len + 1 > UINT32_MAX)
                return -ENOSPC;

        /* Keep the load factor at or below one half so probes stay short. */
        if ((t->count + 1) * 2 > t->n_slots) {
                r = slots_grow(t);
                if (r < 0)
                        return r;
                p = slot_find(t, id, len, h);
        }
        if (t->arena_waste > 4096 && t->arena_waste * 2 > t->arena_len) {
                r = arena_compact(t);
                if (r < 0)
                        return r;
        }
        r = grow((void **)&t->arena, &t->arena_cap, t->arena_len + len + 1, 1, 4096);
        if (r < 0)
                return r;

        if (t->free_head != SESSION_INDEX_NONE) {
                i = t->free_head;
                t->free_head = t->recs[i].heap_pos;
        } else {
                r = grow((void **)&t->recs, &t->cap_recs, t->n_recs + 1, sizeof(Session), 64);
                if (r < 0)
                        return r;
                i = (uint32_t)t->n_recs++;
        }

        memcpy(t->arena + t->arena_len, id, len);
        t->arena[t->arena_len + len] = '\0';
        t->recs[i] = (Session){
            .heap_pos = SESSION_INDEX_NONE,
            .id_off = (uint32_t)t->arena_len,
            .id_len = (uint8_t)len,
            .flags = flags & ~(SESSION_SEEN | SESSION_IN_FLIGHT | SESSION_REMOVED),
        };
        t->arena_len += len + 1;
        t->slots[p] = i;
        t->count++;
        if (ret)
                *ret = i;
        return 0;
}

void sessions_remove(SessionTable *t, SessionIndex i)
{
        Session *s = &t->recs[i];
        size_t mask = t->n_slots - 1;
        size_t p, q;

        assert(i < t->n_recs && !(s->flags & SESSION_REMOVED));
        assert(s->heap_pos == SESSION_INDEX_NONE);

        p = slot_find(t, rec_id(t, s), s->id_len, hash_id(rec_id(t, s), s->id_len));
        assert(t->slots[p] == i);

        /* Backward-shift deletion keeps every probe chain intact without
         * tombstones: move later members of the cluster into the hole when
         * their home slot does not lie cyclically between the hole and them. */
        t->slots[p] = SLOT_EMPTY;
        for (q = (p + 1) & mask; t->slots[q] != SLOT_EMPTY; q = (q + 1) & mask) {
                const Session *o = &t->recs[t->slots[q]];
                size_t home = hash_id(rec_id(t, o), o->id_len) & mask;

                if (((q - home) & mask) >= ((q - p) & mask)) {
                        t->slots[p] = t->slots[q];
                        t->slots[q] = SLOT_EMPTY;
                        p = q;
                }
        }

        /* The id bytes stay in the arena until the next compaction. */
        t->arena_waste += s->id_len + 1u;
        s->flags = SESSION_REMOVED;
        s->heap_pos = t->free_head;
        t->free_head = i;
        t->count--;
}

Session *sessions_get(SessionTable *t, SessionIndex i)
{
        assert(i < t->n_recs);
        return &t->recs[i];
}

const char *sessions_id(const SessionTable *t, SessionIndex i)
{
        assert(i < t->n_recs);
        return rec_id(t, &t->recs[i]);
}

size_t sessions_count(const SessionTable *t)
{
        return t->count;
}

size_t sessions_capacity(const SessionTable *t)
{
        return t->n_recs;
}

static const char *status_raw(const SessionTable *t, const Session *s)
{
        if (s->status == SESSION_STATUS_UNKNOWN && s->unknown > 0)
                return t->unknown[s->unknown - 1];
        return session_status_to_string(s->status);
}

const char *sessions_status_raw(const SessionTable *t, SessionIndex i)
{
        return status_raw(t, &t->recs[i]);
}

/* Returns 1 + the index of the interned string, or 0 when the intern table
 * is full (the status is then remembered only as "unknown"). */
static uint16_t intern_unknown(SessionTable *t, const char *raw, size_t len)
{
        char *copy;

        for (size_t i = 0; i < t->n_unknown; i++)
                if (t->unknown_len[i] == len && memcmp(t->unknown[i], raw, len) == 0)
                        return (uint16_t)(i + 1);
        if (t->n_unknown >= UNKNOWN_MAX)
                return 0;
        copy = malloc(len + 1);
        if (!copy)
                return 0;
        memcpy(copy, raw, len);
        copy[len] = '\0';
        t->unknown[t->n_unknown] = copy;
        t->unknown_len[t->n_unknown] = len;
        return (uint16_t)++t->n_unknown;
}

static void set_status(SessionTable *t, Session *s, SessionStatus st, const char *raw, size_t len)
{
        s->status = (uint8_t)st;
        s->unknown = st == SESSION_STATUS_UNKNOWN ? intern_unknown(t, raw, len) : 0;
}

static bool same_status(const SessionTable *t, const Session *s, SessionStatus st, const char *raw,
                        size_t len)
{
        const char *old;

        if (s->status != st)
                return false;
        if (st != SESSION_STATUS_UNKNOWN || s->unknown == 0)
                return true;
        old = t->unknown[s->unknown - 1];
        return t->unknown_len[s->unknown - 1] == len && memcmp(old, raw, len) == 0;
}

int sessions_observe(SessionTable *t, SessionIndex i, const char *status_raw_in, size_t status_len,
                     int64_t updated_at_us, Observation *ret)
{
        Session *s = sessions_get(t, i);
        SessionStatus st = session_status_from_string(status_raw_in, status_len);

        *ret = (Observation){.result = OBSERVE_UNCHANGED};

        if (!(s->flags & SESSION_SEEN)) {
                set_status(t, s, st, status_raw_in, status_len);
                s->updated_at_us = updated_at_us;
                s->flags |= SESSION_SEEN;
                ret->result = OBSERVE_TRANSITION;
                ret->first = true;
                return 0;
        }

        /* An observation older than what we hold (a slow response overtaken
         * by a newer one, or a list page from before the last poll) says
         * nothing new and must never move the status backwards. */
        ret->previous = s->status;
        ret->previous_raw = status_raw(t, s);
        ret->previous_updated_at_us = s->updated_at_us;
        if (updated_at_us < s->updated_at_us) {
                /* Said apart, since an older answer with another status may
                 * mean the API's clock went backwards: the caller decides. */
                ret->result = OBSERVE_STALE;
                ret->conflict = !same_status(t, s, st, status_raw_in, status_len);
                return 0;
        }

        if (same_status(t, s, st, status_raw_in, status_len)) {
                s->updated_at_us = updated_at_us;
                s->flags &= ~SESSION_REPLAY;
                return 0;
        }

        ret->result = OBSERVE_TRANSITION;
        ret->replayed = s->flags & SESSION_REPLAY;
        ret->skipped = session_status_step_missed(s->status, st);
        set_status(t, s, st, status_raw_in, status_len);
        s->updated_at_us = updated_at_us;
        s->flags &= ~(SESSION_REPLAY | SESSION_STALLED);
        return 0;
}

ObserveResult sessions_peek(const SessionTable *t, SessionIndex i, const char *raw, size_t len,
                            int64_t updated_at_us)
{
        const Session *s = &t->recs[i];

        assert(i < t->n_recs);
        if (!(s->flags & SESSION_SEEN))
                return OBSERVE_TRANSITION;
        if (updated_at_us < s->updated_at_us)
                return OBSERVE_STALE;
        if (same_status(t, s, session_status_from_string(raw, len), raw, len))
                return OBSERVE_UNCHANGED;
        return OBSERVE_TRANSITION;
}

int sessions_restore(SessionTable *t, SessionIndex i, const char *raw, size_t len, int64_t updated_at_us)
{
        Session *s = sessions_get(t, i);

        set_status(t, s, session_status_from_string(raw, len), raw, len);
        s->updated_at_us = updated_at_us;
        s->flags |= SESSION_SEEN | SESSION_REPLAY;
        return 0;
}

size_t sessions_memory_usage(const SessionTable *t)
{
        return sizeof(*t) + t->cap_recs * sizeof(Session) + t->arena_cap + t->n_slots * sizeof(uint32_t);
}
