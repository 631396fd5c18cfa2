/* SPDX-License-Identifier: MIT */
/*
 * The session store: every session apisim knows, its timeline of statuses,
 * the runbooks they belong to, and the per-session request log.
 *
 * One rwlock guards the tables. API reads (get, list) take it shared, so
 * they run in parallel on all server threads; only additions, status
 * overrides and counter resets take it exclusively. The per-session request
 * log is the one thing a reader writes, and it has its own striped mutexes.
 *
 * Generated sessions cost one small struct each: their timeline is not
 * stored but recomputed from (seed, lifecycle number, start) whenever it is
 * needed, which is cheaper than a cache miss on a stored one. Only sessions
 * from a scenario, and sessions whose status was overridden, carry an
 * explicit timeline.
 *
 * Each runbook keeps the numbers of its sessions, so that a list filtered
 * by runbook looks only at that runbook's sessions.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#define STORE_MAX_STEPS 16
#define STORE_ID_MAX 256
#define STORE_MAX_RUNBOOKS 100000
#define STORE_MAX_STATUSES 10000
#define STORE_LOG_STRIPES 64
#define STORE_NO_GEN UINT32_MAX

struct step {
        int64_t at;
        uint32_t status;
};

struct timeline {
        uint32_t n;
        uint32_t cap;
        struct step steps[];
};

/* Fields a scenario or an execute request chose; NULL or -1 means "generate". */
struct meta {
        char *name;
        char *team_id;
        char *created_by;
        char *param_values; /* a rendered JSON object */
        int is_private;
};

struct reqlog {
        uint64_t count;
        uint32_t head;
        uint32_t n;
        uint32_t cap;
        int64_t *times;
};

struct session {
        const char *id;
        int64_t start; /* lifecycle start of a generated timeline */
        uint32_t gen;  /* lifecycle number, STORE_NO_GEN when tl is set */
        uint32_t runbook;
        struct timeline *tl;
        struct meta *meta;
        struct reqlog *log;
};

struct param_tpl {
        const char *slug;
        const char *name;
        const char *type;
        const char *component;
        const char *desc;
        const char *values[4];
};

struct runbook_tpl {
        const char *name;
        const char *slug;
        struct param_tpl params[3];
};

struct runbook {
        char *id;
        char *slug;
        char *name;
        char *params_json;
        const struct runbook_tpl *tpl;
        /* The numbers of its sessions, ascending (sessions are only ever appended). */
        uint32_t *members;
        size_t n_members;
        size_t cap_members;
};

struct arena_chunk {
        struct arena_chunk *next;
        size_t used;
        size_t size;
        char data[];
};

static const char *const store_builtin_status[STATUS_BUILTIN_MAX] = {
    [STATUS_PENDING] = "Pending",     [STATUS_ACTIVE] = "Active", [STATUS_WAITING] = "Waiting",
    [STATUS_SUCCEEDED] = "Succeeded", [STATUS_FAILED] = "Failed", [STATUS_CANCELLING] = "Cancelling",
    [STATUS_CANCELLED] = "Cancelled",
};

static const struct runbook_tpl store_templates[] = {
    {"Deploy service",
     "deploy_service",
     {{"service",
       "Service",
       "string",
       "",
       "Service to deploy.",
       {"billing-api", "checkout", "search-indexer", "notifications"}},
      {"environment", "Environment", "string", "", "Where to deploy.", {"production", "staging"}},
      {"version",
       "Version",
       "string",
       "",
       "Release tag to roll out.",
       {"v1.42.0", "v1.42.1", "v1.43.0-rc1"}}}},
    {"Rotate credentials",
     "rotate_credentials",
     {{"secret",
       "Secret name",
       "string",
       "",
       "Path of the secret in the vault.",
       {"db/primary", "stripe/api", "smtp/relay"}},
      {"dry_run", "Dry run", "boolean", "", "Only print what would change.", {"true", "false"}},
      {"ticket",
       "Ticket",
       "string",
       "",
       "Change ticket for the audit log.",
       {"OPS-1207", "OPS-1311", "SEC-88"}}}},
    {"Restart workers",
     "restart_workers",
     {{"cluster", "Cluster", "string", "", "Kubernetes cluster.", {"eu-west-1", "us-east-1", "ap-south-1"}},
      {"batch_size", "Batch size", "integer", "", "Pods restarted at a time.", {"1", "5", "10"}},
      {"reason",
       "Reason",
       "string",
       "textarea",
       "Why the restart is needed.",
       {"memory leak", "config change", "stuck queue"}}}},
    {"Database failover",
     "db_failover",
     {{"cluster", "Database cluster", "string", "", "Cluster to fail over.", {"pg-main", "pg-analytics"}},
      {"target", "Target replica", "string", "", "Replica to promote.", {"replica-a", "replica-b"}},
      {"reason",
       "Reason",
       "string",
       "textarea",
       "Why the failover is needed.",
       {"primary unhealthy", "maintenance", "drill"}}}},
    {"Onboard user",
     "onboard_user",
     {{"email",
       "User email",
       "string",
       "",
       "Email of the new user.",
       {"ada@example.com", "grace@example.com", "linus@example.com"}},
      {"team", "Team", "string", "", "Team to add the user to.", {"payments", "platform", "growth"}},
      {"admin", "Admin", "boolean", "", "Grant admin rights.", {"false", "true"}}}},
};

#define STORE_N_TEMPLATES (sizeof(store_templates) / sizeof(store_templates[0]))

static struct {
        pthread_rwlock_t lock;
        struct store_config cfg;
        int64_t step_min_us;
        int64_t step_span_us;

        struct session *sessions;
        size_t n;
        size_t cap;
        uint32_t *index; /* open addressing; a slot holds a session number + 1 */
        size_t index_cap;

        struct runbook *runbooks;
        size_t n_runbooks;
        size_t cap_runbooks;

        char **statuses;
        size_t n_statuses;
        size_t cap_statuses;

        uint32_t next_gen;
        struct arena_chunk *arena;
        char team_id[32];
        char users[3][32];

        pthread_mutex_t log_locks[STORE_LOG_STRIPES];
} store;

static char *store_arena_strdup(const char *s)
{
        size_t n = strlen(s) + 1;
        struct arena_chunk *c = store.arena;
        char *p;

        if (!c || c->size - c->used < n) {
                size_t size = n > 65536 ? n : 65536;

                c = xmalloc(sizeof(*c) + size);
                c->next = store.arena;
                c->used = 0;
                c->size = size;
                store.arena = c;
        }
        p = c->data + c->used;
        memcpy(p, s, n);
        c->used += n;
        return p;
}

static uint64_t store_hash(const char *s)
{
        return util_hash_string(s);
}

/*
 * A bijection on 41-bit numbers, so that lifecycle numbers map to distinct,
 * random-looking ID suffixes without a collision check against a set.
 */
static uint64_t store_permute41(uint64_t x, uint64_t key)
{
        const uint64_t mask = (1ULL << 41) - 1;

        x = (x ^ key) & mask;
        for (int i = 0; i < 3; i++) {
                x = (x * 0x2545f4914f6cdd1dULL) & mask;
                x ^= x >> 19;
                x = (x + (key >> 23)) & mask;
        }
        return x;
}

/* An Airplane-style ID: prefix, yyyymmdd, 'z', then 8 lowercase base36 characters. */
static void store_make_id(char *buf, size_t size, const char *prefix, int64_t date_us, uint64_t value)
{
        static const char b36[] = "0123456789abcdefghijklmnopqrstuvwxyz";
        char date[9], tail[9];

        for (int i = 7; i >= 0; i--) {
                tail[i] = b36[value % 36];
                value /= 36;
        }
        tail[8] = '\0';
        simtime_format_date(date_us, date);
        snprintf(buf, size, "%s%sz%s", prefix, date, tail);
}

static struct session *store_find(const char *id)
{
        size_t mask = store.index_cap - 1;

        for (size_t i = store_hash(id) & mask;; i = (i + 1) & mask) {
                uint32_t slot = store.index[i];

                if (slot == 0)
                        return NULL;
                if (strcmp(store.sessions[slot - 1].id, id) == 0)
                        return &store.sessions[slot - 1];
        }
}

static void store_index_put(uint32_t num)
{
        size_t mask = store.index_cap - 1;

        for (size_t i = store_hash(store.sessions[num].id) & mask;; i = (i + 1) & mask) {
                if (store.index[i] == 0) {
                        store.index[i] = num + 1;
                        return;
                }
        }
}

static void store_index_rebuild(size_t want)
{
        size_t cap = 1024;

        while (cap < want * 2)
                cap *= 2;
        free(store.index);
        store.index = xcalloc(cap, sizeof(*store.index));
        store.index_cap = cap;
        for (size_t i = 0; i < store.n; i++)
                store_index_put((uint32_t)i);
}

/* Appends a session; the caller holds the write lock and checked the id is new. */
static struct session *store_append(const char *id)
{
        struct session *s;

        if (store.n == store.cap) {
                store.cap = store.cap ? store.cap * 2 : 1024;
                store.sessions = xrealloc(store.sessions, store.cap * sizeof(*store.sessions));
        }
        if ((store.n + 1) * 2 > store.index_cap)
                store_index_rebuild(store.n + 1);
        s = &store.sessions[store.n];
        memset(s, 0, sizeof(*s));
        s->id = store_arena_strdup(id);
        s->gen = STORE_NO_GEN;
        store_index_put((uint32_t)store.n);
        store.n++;
        return s;
}

/* Puts a session in a runbook; the caller holds the write lock. */
static void store_attach(struct session *s, uint32_t rb)
{
        struct runbook *r = &store.runbooks[rb];

        s->runbook = rb;
        if (r->n_members == r->cap_members) {
                r->cap_members = r->cap_members ? r->cap_members * 2 : 64;
                r->members = xrealloc(r->members, r->cap_members * sizeof(*r->members));
        }
        r->members[r->n_members++] = (uint32_t)(s - store.sessions);
}

static uint32_t store_status_intern(const char *raw)
{
        for (size_t i = 0; i < store.n_statuses; i++)
                if (strcmp(store.statuses[i], raw) == 0)
                        return (uint32_t)i;
        if (store.n_statuses == store.cap_statuses) {
                store.cap_statuses = store.cap_statuses ? store.cap_statuses * 2 : 16;
                store.statuses = xrealloc(store.statuses, store.cap_statuses * sizeof(*store.statuses));
        }
        store.statuses[store.n_statuses] = xstrdup(raw);
        return (uint32_t)store.n_statuses++;
}

static void store_render_params(struct sbuf *b, const struct runbook_tpl *tpl)
{
        sbuf_putc(b, '[');
        for (size_t i = 0; tpl && i < 3 && tpl->params[i].slug; i++) {
                const struct param_tpl *p = &tpl->params[i];

                if (i > 0)
                        sbuf_putc(b, ',');
                sbuf_puts(b, "{\"name\":");
                sbuf_put_json_string(b, p->name);
                sbuf_puts(b, ",\"slug\":");
                sbuf_put_json_string(b, p->slug);
                sbuf_puts(b, ",\"type\":");
                sbuf_put_json_string(b, p->type);
                sbuf_puts(b, ",\"desc\":");
                sbuf_put_json_string(b, p->desc);
                sbuf_puts(b, ",\"component\":");
                sbuf_put_json_string(b, p->component);
                sbuf_puts(b, ",\"constraints\":{\"optional\":false}}");
        }
        sbuf_putc(b, ']');
}

static uint32_t store_runbook_add(const char *id, const char *slug, const char *name,
                                  const struct runbook_tpl *tpl)
{
        struct runbook *rb;
        struct sbuf b;

        if (store.n_runbooks == store.cap_runbooks) {
                store.cap_runbooks = store.cap_runbooks ? store.cap_runbooks * 2 : 8;
                store.runbooks = xrealloc(store.runbooks, store.cap_runbooks * sizeof(*store.runbooks));
        }
        rb = &store.runbooks[store.n_runbooks];
        rb->id = xstrdup(id);
        rb->slug = xstrdup(slug);
        rb->name = xstrdup(name);
        rb->tpl = tpl;
        rb->members = NULL;
        rb->n_members = rb->cap_members = 0;
        sbuf_init(&b, 512);
        store_render_params(&b, tpl);
        rb->params_json = sbuf_steal(&b, NULL);
        return (uint32_t)store.n_runbooks++;
}

static int store_runbook_find(const char *id)
{
        for (size_t i = 0; i < store.n_runbooks; i++)
                if (strcmp(store.runbooks[i].id, id) == 0)
                        return (int)i;
        return -ENOENT;
}

static int store_runbook_find_slug(const char *slug)
{
        for (size_t i = 0; i < store.n_runbooks; i++)
                if (strcmp(store.runbooks[i].slug, slug) == 0)
                        return (int)i;
        return -ENOENT;
}

/* A runbook named only by an ID (from a scenario or an execute request) has no parameters. */
static int store_runbook_intern(const char *id)
{
        int r = store_runbook_find(id);

        if (r >= 0)
                return r;
        if (store.n_runbooks >= STORE_MAX_RUNBOOKS)
                return -E2BIG;
        return (int)store_runbook_add(id, id, "Runbook", NULL);
}

/*
 * The generated lifecycle: Pending, Active, sometimes one or two rounds of
 * Waiting (for a human) and Active again, then Succeeded, Failed, or
 * Cancelling followed by Cancelled. Each step lasts a uniform draw from
 * [step-min, step-max].
 */
static unsigned store_lifecycle(uint32_t gen, int64_t start, struct step *out)
{
        uint64_t st = rng_mix(store.cfg.seed ^ rng_mix((uint64_t)gen + 0x51ed270b27d3f1a5ULL));
        int64_t t = start;
        unsigned n = 0, waits = 0;
        double r;

#define STORE_STEP(status_)                                                                                 \
        do {                                                                                                \
                out[n].at = t;                                                                              \
                out[n++].status = (status_);                                                                \
                t += store.step_min_us + (int64_t)(rng_unit(&st) * (double)store.step_span_us);             \
        } while (0)

        STORE_STEP(STATUS_PENDING);
        STORE_STEP(STATUS_ACTIVE);
        r = rng_unit(&st);
        if (r < 0.25)
                waits = 1;
        else if (r < 0.32)
                waits = 2;
        for (unsigned i = 0; i < waits; i++) {
                STORE_STEP(STATUS_WAITING);
                STORE_STEP(STATUS_ACTIVE);
        }
        r = rng_unit(&st);
        if (r < 0.6) {
                STORE_STEP(STATUS_SUCCEEDED);
        } else if (r < 0.85) {
                STORE_STEP(STATUS_FAILED);
        } else {
                STORE_STEP(STATUS_CANCELLING);
                STORE_STEP(STATUS_CANCELLED);
        }
#undef STORE_STEP
        return n;
}

static unsigned store_steps(const struct session *s, struct step *buf, const struct step **ret)
{
        if (s->tl) {
                *ret = s->tl->steps;
                return s->tl->n;
        }
        *ret = buf;
        return store_lifecycle(s->gen, s->start, buf);
}

struct view {
        int64_t created;
        int64_t updated;
        uint32_t status;
        bool visible;
};

static void store_view(const struct session *s, int64_t now, struct view *v)
{
        struct step buf[STORE_MAX_STEPS];
        const struct step *steps;
        unsigned n = store_steps(s, buf, &steps);

        v->visible = false;
        if (n == 0 || steps[0].at > now)
                return;
        v->visible = true;
        v->created = steps[0].at;
        for (unsigned i = 0; i < n && steps[i].at <= now; i++) {
                v->updated = steps[i].at;
                v->status = steps[i].status;
        }
}

static const char *store_created_by(const struct session *s)
{
        if (s->meta && s->meta->created_by)
                return s->meta->created_by;
        return store.users[(s->gen == STORE_NO_GEN ? 0 : s->gen) % 3];
}

static bool store_is_private(const struct session *s)
{
        if (s->meta && s->meta->is_private >= 0)
                return s->meta->is_private;
        return s->gen != STORE_NO_GEN && s->gen % 10 == 3;
}

static void store_put_time(struct sbuf *b, int64_t us)
{
        char t[SIMTIME_AIRPLANE_MAX];
        size_t n = simtime_format_airplane(us, t);

        sbuf_putc(b, '"');
        sbuf_put(b, t, n);
        sbuf_putc(b, '"');
}

/* Renders one GetSessionResponse. The caller holds the lock and checked visibility. */
static void store_render(const struct session *s, const struct view *v, const struct store_render *render,
                         struct sbuf *b)
{
        const struct runbook *rb = &store.runbooks[s->runbook];
        const char *created_by = store_created_by(s);

        sbuf_reserve(b, 1024);
        sbuf_puts(b, "{\"id\":");
        sbuf_put_json_string(b, s->id);
        sbuf_puts(b, ",\"name\":");
        if (s->meta && s->meta->name) {
                sbuf_put_json_string(b, s->meta->name);
        } else {
                char name[256];

                snprintf(name, sizeof(name), "%s #%u", rb->name, (s->gen == STORE_NO_GEN ? 0 : s->gen) + 1);
                sbuf_put_json_string(b, name);
        }
        sbuf_puts(b, ",\"runbookID\":");
        sbuf_put_json_string(b, rb->id);
        sbuf_puts(b, ",\"teamID\":");
        sbuf_put_json_string(b, s->meta && s->meta->team_id ? s->meta->team_id : store.team_id);
        sbuf_puts(b, ",\"status\":");
        if (render && render->wrong_type)
                sbuf_puts(b, "3");
        else
                sbuf_put_json_string(b,
                                     render && render->status ? render->status : store.statuses[v->status]);
        sbuf_puts(b, ",\"createdAt\":");
        store_put_time(b, v->created);
        sbuf_puts(b, ",\"createdBy\":");
        sbuf_put_json_string(b, created_by);
        sbuf_puts(b, ",\"updatedAt\":");
        if (render && render->wrong_type)
                sbuf_puts(b, "true");
        else
                store_put_time(b, v->updated);
        sbuf_puts(b, ",\"updatedBy\":");
        /*
         * People create and cancel sessions; every other step is the session
         * itself moving on, which the API reports with the session's own ID.
         */
        if (v->status == STATUS_PENDING || v->status == STATUS_CANCELLING)
                sbuf_put_json_string(b, created_by);
        else
                sbuf_put_json_string(b, s->id);
        sbuf_puts(b, store_is_private(s) ? ",\"isPrivate\":true" : ",\"isPrivate\":false");
        sbuf_puts(b, ",\"paramValues\":");
        if (s->meta && s->meta->param_values) {
                sbuf_puts(b, s->meta->param_values);
        } else if (rb->tpl) {
                uint64_t st = rng_mix(store.cfg.seed + s->gen * 0x9e3779b97f4a7c15ULL + 17);

                sbuf_putc(b, '{');
                for (size_t i = 0; i < 3 && rb->tpl->params[i].slug; i++) {
                        const struct param_tpl *p = &rb->tpl->params[i];
                        size_t nv = 0;

                        while (nv < 4 && p->values[nv])
                                nv++;
                        if (i > 0)
                                sbuf_putc(b, ',');
                        sbuf_put_json_string(b, p->slug);
                        sbuf_putc(b, ':');
                        sbuf_put_json_string(b, p->values[rng_next(&st) % nv]);
                }
                sbuf_putc(b, '}');
        } else {
                sbuf_puts(b, "{}");
        }
        sbuf_puts(b, ",\"params\":");
        sbuf_puts(b, rb->params_json);
        sbuf_puts(b, ",\"permissions\":");
        if (store_is_private(s)) {
                sbuf_puts(b, "[{\"action\":\"sessions.get\",\"roleID\":\"session_viewer\",\"subUserID\":");
                sbuf_put_json_string(b, created_by);
                sbuf_puts(b, "}]}");
        } else {
                sbuf_puts(b, "[]}");
        }
}

static void store_log_push(struct session *s, int64_t now)
{
        pthread_mutex_t *m = &store.log_locks[(size_t)(s - store.sessions) % STORE_LOG_STRIPES];
        struct reqlog *log;

        pthread_mutex_lock(m);
        log = s->log;
        if (!log) {
                log = xcalloc(1, sizeof(*log));
                s->log = log;
        }
        log->count++;
        if (store.cfg.request_log > 0) {
                /* The log grows on demand: most sessions are asked about only a few times. */
                if (log->n == log->cap && log->cap < store.cfg.request_log) {
                        uint32_t cap = log->cap ? log->cap * 2 : 4;
                        int64_t *t;

                        if (cap > store.cfg.request_log)
                                cap = store.cfg.request_log;
                        t = xmalloc(cap * sizeof(*t));
                        for (uint32_t i = 0; i < log->n; i++)
                                t[i] = log->times[(log->head + i) % log->cap];
                        free(log->times);
                        log->times = t;
                        log->head = 0;
                        log->cap = cap;
                }
                if (log->n < log->cap) {
                        log->times[(log->head + log->n) % log->cap] = now;
                        log->n++;
                } else {
                        log->times[log->head] = now;
                        log->head = (log->head + 1) % log->cap;
                }
        }
        pthread_mutex_unlock(m);
}

void store_init(const struct store_config *cfg)
{
        uint64_t st;
        char id[64];
        int64_t now = simtime_start_us();

        memset(&store, 0, sizeof(store));
        store.cfg = *cfg;
        store.step_min_us = (int64_t)llround(cfg->step_min * 1e6);
        store.step_span_us = (int64_t)llround((cfg->step_max - cfg->step_min) * 1e6);
        pthread_rwlockattr_t attr;
        pthread_rwlockattr_init(&attr);
        /* Admin writes must not starve behind a benchmark's stream of reads. */
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&store.lock, &attr);
        pthread_rwlockattr_destroy(&attr);
        for (size_t i = 0; i < STORE_LOG_STRIPES; i++)
                pthread_mutex_init(&store.log_locks[i], NULL);

        for (size_t i = 0; i < STATUS_BUILTIN_MAX; i++)
                store_status_intern(store_builtin_status[i]);

        st = rng_mix(cfg->seed ^ 0x7ea77ea77ea7ULL);
        store_make_id(store.team_id, sizeof(store.team_id), "tea", now, rng_next(&st) & ((1ULL << 41) - 1));
        for (size_t i = 0; i < 3; i++)
                store_make_id(store.users[i], sizeof(store.users[i]), "usr", now,
                              rng_next(&st) & ((1ULL << 41) - 1));
        for (unsigned i = 0; i < cfg->runbooks; i++) {
                const struct runbook_tpl *tpl = &store_templates[i % STORE_N_TEMPLATES];
                char slug[96], name[96];

                store_make_id(id, sizeof(id), "rbk", now, store_permute41(i, rng_mix(cfg->seed ^ 0x72626b)));
                if (i < STORE_N_TEMPLATES) {
                        snprintf(slug, sizeof(slug), "%s", tpl->slug);
                        snprintf(name, sizeof(name), "%s", tpl->name);
                } else {
                        snprintf(slug, sizeof(slug), "%s_%u", tpl->slug,
                                 i / (unsigned)STORE_N_TEMPLATES + 1);
                        snprintf(name, sizeof(name), "%s %u", tpl->name,
                                 i / (unsigned)STORE_N_TEMPLATES + 1);
                }
                store_runbook_add(id, slug, name, tpl);
        }

        store.cap = cfg->sessions > 1024 ? cfg->sessions : 1024;
        store.sessions = xmalloc(store.cap * sizeof(*store.sessions));
        store_index_rebuild(store.cap);
        for (size_t i = 0; i < cfg->sessions; i++) {
                struct session *s;

                store_make_id(id, sizeof(id), "ses", now, store_permute41(i, rng_mix(cfg->seed)));
                s = store_append(id);
                s->gen = (uint32_t)i;
                s->start = now;
                if (cfg->stagger > 0) {
                        /* Spread over the stagger window before the start, the same for a seed. */
                        uint64_t sg = rng_mix(cfg->seed ^ rng_mix((uint64_t)i + 0x57a66e57a66eULL));

                        s->start -= (int64_t)llround(rng_unit(&sg) * cfg->stagger * 1e6);
                }
                store_attach(s, (uint32_t)(i % cfg->runbooks));
        }
        store.next_gen = (uint32_t)cfg->sessions;
}

static void store_timeline_free(struct timeline *tl)
{
        free(tl);
}

static void store_meta_free(struct meta *m)
{
        if (!m)
                return;
        free(m->name);
        free(m->team_id);
        free(m->created_by);
        free(m->param_values);
        free(m);
}

static void store_log_free(struct reqlog *log)
{
        if (!log)
                return;
        free(log->times);
        free(log);
}

void store_free(void)
{
        for (size_t i = 0; i < store.n; i++) {
                store_timeline_free(store.sessions[i].tl);
                store_meta_free(store.sessions[i].meta);
                store_log_free(store.sessions[i].log);
        }
        free(store.sessions);
        free(store.index);
        for (size_t i = 0; i < store.n_runbooks; i++) {
                free(store.runbooks[i].id);
                free(store.runbooks[i].slug);
                free(store.runbooks[i].name);
                free(store.runbooks[i].params_json);
                free(store.runbooks[i].members);
        }
        free(store.runbooks);
        for (size_t i = 0; i < store.n_statuses; i++)
                free(store.statuses[i]);
        free(store.statuses);
        while (store.arena) {
                struct arena_chunk *c = store.arena;

                store.arena = c->next;
                free(c);
        }
        for (size_t i = 0; i < STORE_LOG_STRIPES; i++)
                pthread_mutex_destroy(&store.log_locks[i]);
        pthread_rwlock_destroy(&store.lock);
}

size_t store_count(void)
{
        size_t n;

        pthread_rwlock_rdlock(&store.lock);
        n = store.n;
        pthread_rwlock_unlock(&store.lock);
        return n;
}

static char *store_render_string_map(json_object *obj)
{
        struct sbuf b;
        bool first = true;

        sbuf_init(&b, 256);
        sbuf_putc(&b, '{');
        json_object_object_foreach(obj, key, val)
        {
                if (!first)
                        sbuf_putc(&b, ',');
                first = false;
                sbuf_put_json_string(&b, key);
                sbuf_putc(&b, ':');
                sbuf_put_json_string(&b, json_object_get_string(val));
        }
        sbuf_putc(&b, '}');
        return sbuf_steal(&b, NULL);
}

static bool store_is_string_map(json_object *obj)
{
        if (!json_object_is_type(obj, json_type_object))
                return false;
        json_object_object_foreach(obj, key, val)
        {
                (void)key;
                if (!json_object_is_type(val, json_type_string))
                        return false;
        }
        return true;
}

static int store_string_field(json_object *obj, const char *key, bool required, const char **ret, char *err,
                              size_t errlen, const char *where)
{
        json_object *v;

        *ret = NULL;
        if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null)) {
                if (required) {
                        snprintf(err, errlen, "%s: missing \"%s\"", where, key);
                        return -EINVAL;
                }
                return 0;
        }
        if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0 ||
            json_object_get_string_len(v) > STORE_ID_MAX) {
                snprintf(err, errlen, "%s: \"%s\" must be a non-empty string of at most %d bytes", where,
                         key, STORE_ID_MAX);
                return -EINVAL;
        }
        *ret = json_object_get_string(v);
        return 0;
}

/* Drops sessions appended after a failed scenario load, so a bad request changes nothing. */
static void store_truncate(size_t n)
{
        for (size_t i = n; i < store.n; i++) {
                store_timeline_free(store.sessions[i].tl);
                store_meta_free(store.sessions[i].meta);
                store_log_free(store.sessions[i].log);
        }
        for (size_t i = 0; i < store.n_runbooks; i++) {
                struct runbook *r = &store.runbooks[i];

                while (r->n_members > 0 && r->members[r->n_members - 1] >= n)
                        r->n_members--;
        }
        store.n = n;
        store_index_rebuild(store.n);
}

static int store_load_one(json_object *js, int64_t base_us, const char *where, char *err, size_t errlen)
{
        static const char *const known[] = {"id",        "name",      "runbookID",   "teamID",
                                            "createdBy", "isPrivate", "paramValues", "timeline"};
        const char *id, *name, *runbook_id, *team_id, *created_by;
        json_object *tl_js, *v;
        struct timeline *tl;
        struct session *s;
        struct meta *m;
        size_t n;
        int rb, is_private = -1;

        if (!json_object_is_type(js, json_type_object)) {
                snprintf(err, errlen, "%s: must be an object", where);
                return -EINVAL;
        }
        json_object_object_foreach(js, key, val)
        {
                size_t i;

                (void)val;
                for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
                        if (strcmp(key, known[i]) == 0)
                                break;
                if (i == sizeof(known) / sizeof(known[0])) {
                        snprintf(err, errlen, "%s: unknown key \"%s\"", where, key);
                        return -EINVAL;
                }
        }
        if (store_string_field(js, "id", true, &id, err, errlen, where) < 0 ||
            store_string_field(js, "name", false, &name, err, errlen, where) < 0 ||
            store_string_field(js, "runbookID", true, &runbook_id, err, errlen, where) < 0 ||
            store_string_field(js, "teamID", false, &team_id, err, errlen, where) < 0 ||
            store_string_field(js, "createdBy", false, &created_by, err, errlen, where) < 0)
                return -EINVAL;
        if (json_object_object_get_ex(js, "isPrivate", &v)) {
                if (!json_object_is_type(v, json_type_boolean)) {
                        snprintf(err, errlen, "%s: \"isPrivate\" must be a boolean", where);
                        return -EINVAL;
                }
                is_private = json_object_get_boolean(v);
        }
        if (json_object_object_get_ex(js, "paramValues", &v) && !store_is_string_map(v)) {
                snprintf(err, errlen, "%s: \"paramValues\" must be an object of strings", where);
                return -EINVAL;
        }
        if (!json_object_object_get_ex(js, "timeline", &tl_js) ||
            !json_object_is_type(tl_js, json_type_array) || json_object_array_length(tl_js) == 0) {
                snprintf(err, errlen, "%s: \"timeline\" must be a non-empty array of [seconds, \"status\"]",
                         where);
                return -EINVAL;
        }
        if (store_find(id)) {
                snprintf(err, errlen, "%s: duplicate session id '%s'", where, id);
                return -EEXIST;
        }
        rb = store_runbook_intern(runbook_id);
        if (rb < 0) {
                snprintf(err, errlen, "%s: too many runbooks", where);
                return rb;
        }

        n = json_object_array_length(tl_js);
        if (n > UINT32_MAX / 2) {
                snprintf(err, errlen, "%s: timeline too long", where);
                return -E2BIG;
        }
        tl = xmalloc(sizeof(*tl) + n * sizeof(tl->steps[0]));
        tl->n = tl->cap = (uint32_t)n;
        for (size_t i = 0; i < n; i++) {
                json_object *step = json_object_array_get_idx(tl_js, i), *t, *st;
                double secs;

                if (!json_object_is_type(step, json_type_array) || json_object_array_length(step) != 2 ||
                    !(t = json_object_array_get_idx(step, 0)) ||
                    !(st = json_object_array_get_idx(step, 1)) ||
                    !(json_object_is_type(t, json_type_int) || json_object_is_type(t, json_type_double)) ||
                    !json_object_is_type(st, json_type_string) || json_object_get_string_len(st) == 0) {
                        snprintf(err, errlen, "%s.timeline[%zu]: must be [seconds, \"status\"]", where, i);
                        free(tl);
                        return -EINVAL;
                }
                secs = json_object_get_double(t);
                if (!isfinite(secs) || fabs(secs) > 1e9) {
                        snprintf(err, errlen, "%s.timeline[%zu]: time out of range", where, i);
                        free(tl);
                        return -EINVAL;
                }
                tl->steps[i].at = base_us + (int64_t)llround(secs * 1e6);
                if (i > 0 && tl->steps[i].at < tl->steps[i - 1].at) {
                        snprintf(err, errlen, "%s.timeline[%zu]: times must not decrease", where, i);
                        free(tl);
                        return -EINVAL;
                }
                if (store.n_statuses >= STORE_MAX_STATUSES) {
                        snprintf(err, errlen, "%s.timeline[%zu]: too many distinct statuses", where, i);
                        free(tl);
                        return -E2BIG;
                }
                tl->steps[i].status = store_status_intern(json_object_get_string(st));
        }

        m = xcalloc(1, sizeof(*m));
        m->name = name ? xstrdup(name) : NULL;
        m->team_id = team_id ? xstrdup(team_id) : NULL;
        m->created_by = created_by ? xstrdup(created_by) : NULL;
        m->param_values =
            json_object_object_get_ex(js, "paramValues", &v) ? store_render_string_map(v) : xstrdup("{}");
        m->is_private = is_private;
        if (!m->name)
                m->name = xstrdup(store.runbooks[rb].name);

        s = store_append(id);
        store_attach(s, (uint32_t)rb);
        s->tl = tl;
        s->meta = m;
        return 0;
}

int store_load_scenario(json_object *root, int64_t base_us, const char *what, struct sbuf *ids_out,
                        char *err, size_t errlen)
{
        json_object *arr;
        size_t old_n, n;
        int r = 0;

        if (!json_object_is_type(root, json_type_object)) {
                snprintf(err, errlen, "%s: top level must be an object with \"sessions\"", what);
                return -EINVAL;
        }
        json_object_object_foreach(root, key, val)
        {
                (void)val;
                if (strcmp(key, "sessions") != 0) {
                        snprintf(err, errlen, "%s: unknown key \"%s\"", what, key);
                        return -EINVAL;
                }
        }
        if (!json_object_object_get_ex(root, "sessions", &arr) ||
            !json_object_is_type(arr, json_type_array)) {
                snprintf(err, errlen, "%s: \"sessions\" must be an array", what);
                return -EINVAL;
        }

        pthread_rwlock_wrlock(&store.lock);
        old_n = store.n;
        n = json_object_array_length(arr);
        for (size_t i = 0; i < n; i++) {
                char where[512];

                snprintf(where, sizeof(where), "%s: sessions[%zu]", what, i);
                r = store_load_one(json_object_array_get_idx(arr, i), base_us, where, err, errlen);
                if (r < 0)
                        break;
        }
        if (r < 0) {
                store_truncate(old_n);
        } else if (ids_out) {
                for (size_t i = old_n; i < store.n; i++) {
                        if (i > old_n)
                                sbuf_putc(ids_out, ',');
                        sbuf_put_json_string(ids_out, store.sessions[i].id);
                }
        }
        pthread_rwlock_unlock(&store.lock);
        return r;
}

int store_write_ids(const char *path)
{
        struct sbuf b;
        int r;

        sbuf_init(&b, 65536);
        pthread_rwlock_rdlock(&store.lock);
        for (size_t i = 0; i < store.n; i++) {
                sbuf_puts(&b, store.sessions[i].id);
                sbuf_putc(&b, '\n');
        }
        pthread_rwlock_unlock(&store.lock);
        r = util_write_file_atomic(path, b.buf, b.len);
        sbuf_done(&b);
        return r;
}

int store_get(const char *id, int64_t now, bool record, const struct store_render *render, struct sbuf *out)
{
        struct session *s;
        struct view v;
        int r = -ENOENT;

        pthread_rwlock_rdlock(&store.lock);
        s = store_find(id);
        if (s) {
                store_view(s, now, &v);
                if (v.visible) {
                        if (record)
                                store_log_push(s, now);
                        store_render(s, &v, render, out);
                        r = 0;
                }
        }
        pthread_rwlock_unlock(&store.lock);
        return r;
}

void store_record_request(const char *id, int64_t now)
{
        struct session *s;
        struct view v;

        pthread_rwlock_rdlock(&store.lock);
        s = store_find(id);
        if (s) {
                store_view(s, now, &v);
                if (v.visible)
                        store_log_push(s, now);
        }
        pthread_rwlock_unlock(&store.lock);
}

static const char *const store_list_order_names[LIST_ORDER_MAX] = {
    [LIST_ORDER_UPDATED_ASC] = "updated-asc",
    [LIST_ORDER_UPDATED_DESC] = "updated-desc",
    [LIST_ORDER_ID] = "id",
    [LIST_ORDER_SHUFFLED] = "shuffled",
};

const char *list_order_name(enum list_order o)
{
        return o < LIST_ORDER_MAX ? store_list_order_names[o] : "?";
}

int list_order_from_name(const char *s)
{
        for (int i = 0; i < LIST_ORDER_MAX; i++)
                if (strcmp(s, store_list_order_names[i]) == 0)
                        return i;
        return -EINVAL;
}

struct list_item {
        int64_t updated;
        uint64_t key; /* the shuffled order's seeded hash of the ID */
        uint32_t num;
};

static int store_item_cmp_id(const struct list_item *a, const struct list_item *b)
{
        return strcmp(store.sessions[a->num].id, store.sessions[b->num].id);
}

/* Whether a comes before b in the list's order; IDs are unique, so the order is total. */
static bool store_item_before(enum list_order order, const struct list_item *a, const struct list_item *b)
{
        switch (order) {
        case LIST_ORDER_UPDATED_DESC:
                if (a->updated != b->updated)
                        return a->updated > b->updated;
                return store_item_cmp_id(a, b) > 0;
        case LIST_ORDER_ID:
                return store_item_cmp_id(a, b) < 0;
        case LIST_ORDER_SHUFFLED:
                if (a->key != b->key)
                        return a->key < b->key;
                return store_item_cmp_id(a, b) < 0;
        case LIST_ORDER_UPDATED_ASC:
        default:
                if (a->updated != b->updated)
                        return a->updated < b->updated;
                return store_item_cmp_id(a, b) < 0;
        }
}

static void store_heap_sift_down(enum list_order order, struct list_item *h, size_t n, size_t i)
{
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, m = i;
                struct list_item t;

                if (l < n && store_item_before(order, &h[m], &h[l]))
                        m = l;
                if (r < n && store_item_before(order, &h[m], &h[r]))
                        m = r;
                if (m == i)
                        return;
                t = h[i];
                h[i] = h[m];
                h[m] = t;
                i = m;
        }
}

static void store_heap_sift_up(enum list_order order, struct list_item *h, size_t i)
{
        while (i > 0) {
                size_t p = (i - 1) / 2;
                struct list_item t;

                if (!store_item_before(order, &h[p], &h[i]))
                        return;
                t = h[i];
                h[i] = h[p];
                h[p] = t;
                i = p;
        }
}

/*
 * Lists sessions in the query's order, each as it was lag_us ago. Only the
 * first (page + 1) * limit items in that order are ever needed, so a
 * bounded max-heap (its top is the last item kept) holds them while
 * scanning instead of sorting every session. With a runbook, only that
 * runbook's sessions are scanned.
 */
int store_list(const struct store_list_query *q, int64_t now, const struct store_render *render,
               struct sbuf *out)
{
        const uint64_t shuffle_key = rng_mix(store.cfg.seed ^ 0x5eed5a1ad5eedULL);
        const int64_t at = now - q->lag_us;
        const uint32_t *members = NULL;
        struct list_item *heap = NULL;
        const char **ids = NULL;
        bool *omit = NULL, first = true;
        size_t n_scan, want, skip, count = 0;

        sbuf_puts(out, "{\"sessions\":[");
        pthread_rwlock_rdlock(&store.lock);
        n_scan = store.n;
        if (q->runbook_id) {
                int rb = store_runbook_find(q->runbook_id);

                if (rb < 0)
                        goto done;
                members = store.runbooks[rb].members;
                n_scan = store.runbooks[rb].n_members;
        }
        skip = (size_t)q->page * q->limit;
        if (q->limit == 0 || skip >= n_scan)
                goto done;
        want = skip + q->limit;
        if (want > n_scan)
                want = n_scan;
        heap = xmalloc(want * sizeof(*heap));
        for (size_t i = 0; i < n_scan; i++) {
                uint32_t num = members ? members[i] : (uint32_t)i;
                const struct session *s = &store.sessions[num];
                struct list_item it;
                struct view v;

                store_view(s, at, &v);
                if (!v.visible || (q->has_after && v.updated <= q->after_us) ||
                    (q->has_before && v.updated >= q->before_us))
                        continue;
                it.updated = v.updated;
                it.key = q->order == LIST_ORDER_SHUFFLED ? rng_mix(store_hash(s->id) ^ shuffle_key) : 0;
                it.num = num;
                if (count < want) {
                        heap[count++] = it;
                        store_heap_sift_up(q->order, heap, count - 1);
                } else if (store_item_before(q->order, &it, &heap[0])) {
                        heap[0] = it;
                        store_heap_sift_down(q->order, heap, count, 0);
                }
        }
        /* Heap sort in place: repeatedly move the last in order to the end. */
        for (size_t n = count; n > 1; n--) {
                struct list_item t = heap[0];

                heap[0] = heap[n - 1];
                heap[n - 1] = t;
                store_heap_sift_down(q->order, heap, n - 1, 0);
        }
        if (skip >= count)
                goto done;
        if (q->miss) {
                ids = xmalloc((count - skip) * sizeof(*ids));
                omit = xcalloc(count - skip, sizeof(*omit));
                for (size_t i = skip; i < count; i++)
                        ids[i - skip] = store.sessions[heap[i].num].id;
                q->miss(ids, count - skip, omit);
        }
        for (size_t i = skip; i < count; i++) {
                const struct session *s = &store.sessions[heap[i].num];
                struct view v;

                if (omit && omit[i - skip])
                        continue;
                store_view(s, at, &v);
                if (!first)
                        sbuf_putc(out, ',');
                first = false;
                store_render(s, &v, render, out);
        }
done:
        pthread_rwlock_unlock(&store.lock);
        free(heap);
        free(ids);
        free(omit);
        sbuf_puts(out, "]}");
        return 0;
}

int store_execute(const char *runbook_id, const char *slug, json_object *param_values, int64_t now,
                  struct sbuf *ret_id)
{
        struct session *s;
        char id[64];
        int rb;

        pthread_rwlock_wrlock(&store.lock);
        if (runbook_id)
                rb = store_runbook_intern(runbook_id);
        else
                rb = store_runbook_find_slug(slug);
        if (rb < 0) {
                pthread_rwlock_unlock(&store.lock);
                return rb;
        }
        /* Executed sessions continue the generator's numbering, so their IDs never collide with it. */
        do {
                store_make_id(id, sizeof(id), "ses", now,
                              store_permute41(store.next_gen, rng_mix(store.cfg.seed)));
                store.next_gen++;
        } while (store_find(id));
        s = store_append(id);
        s->gen = store.next_gen - 1;
        s->start = now;
        store_attach(s, (uint32_t)rb);
        if (param_values) {
                s->meta = xcalloc(1, sizeof(*s->meta));
                s->meta->is_private = -1;
                s->meta->param_values = store_render_string_map(param_values);
        }
        sbuf_puts(ret_id, s->id);
        pthread_rwlock_unlock(&store.lock);
        return 0;
}

/*
 * Overrides a session's status now: the steps that already happened stay (they
 * are its history), the rest of its timeline is dropped, and the new status
 * becomes the last step.
 */
/* The status becomes `status` at `now` (Unix µs), which may be in the past:
 * the steps after it are dropped, and the session is rendered as of the
 * real time. */
int store_set_status(const char *id, const char *status, int64_t now, struct sbuf *out)
{
        struct step buf[STORE_MAX_STEPS];
        const struct step *steps;
        struct timeline *tl;
        struct session *s;
        unsigned n, keep = 0;
        struct view v;

        pthread_rwlock_wrlock(&store.lock);
        s = store_find(id);
        if (!s) {
                pthread_rwlock_unlock(&store.lock);
                return -ENOENT;
        }
        if (store.n_statuses >= STORE_MAX_STATUSES) {
                pthread_rwlock_unlock(&store.lock);
                return -E2BIG;
        }
        n = store_steps(s, buf, &steps);
        while (keep < n && steps[keep].at <= now)
                keep++;
        tl = xmalloc(sizeof(*tl) + (keep + 1) * sizeof(tl->steps[0]));
        memcpy(tl->steps, steps, keep * sizeof(tl->steps[0]));
        tl->steps[keep].at = now;
        tl->steps[keep].status = store_status_intern(status);
        tl->n = tl->cap = keep + 1;
        store_timeline_free(s->tl);
        s->tl = tl;

        store_view(s, now > simtime_now_us() ? now : simtime_now_us(), &v);
        store_render(s, &v, NULL, out);
        pthread_rwlock_unlock(&store.lock);
        return 0;
}

void store_dump_sessions(int64_t now, struct sbuf *out)
{
        pthread_rwlock_rdlock(&store.lock);
        sbuf_reserve(out, store.n * 160);
        sbuf_puts(out, "{\"sessions\":[");
        for (size_t i = 0; i < store.n; i++) {
                const struct session *s = &store.sessions[i];
                struct view v;

                store_view(s, now, &v);
                if (i > 0)
                        sbuf_putc(out, ',');
                sbuf_puts(out, "{\"id\":");
                sbuf_put_json_string(out, s->id);
                sbuf_puts(out, ",\"runbookID\":");
                sbuf_put_json_string(out, store.runbooks[s->runbook].id);
                if (v.visible) {
                        char t[SIMTIME_AIRPLANE_MAX];

                        sbuf_puts(out, ",\"visible\":true,\"status\":");
                        sbuf_put_json_string(out, store.statuses[v.status]);
                        simtime_format_airplane(v.updated, t);
                        sbuf_puts(out, ",\"updatedAt\":");
                        sbuf_put_json_string(out, t);
                        sbuf_puts(out, ",\"updatedAtUnix\":");
                        sbuf_put_usec(out, v.updated);
                        sbuf_puts(out, "}");
                } else {
                        sbuf_puts(out, ",\"visible\":false,\"status\":null,\"updatedAt\":null,"
                                       "\"updatedAtUnix\":null}");
                }
        }
        pthread_rwlock_unlock(&store.lock);
        sbuf_puts(out, "]}");
}

/* A session's history: steps that happened by now, repeats of the same status folded. */
static void store_history_one(const struct session *s, int64_t now, struct sbuf *out)
{
        struct step buf[STORE_MAX_STEPS];
        const struct step *steps;
        unsigned n = store_steps(s, buf, &steps);
        bool first = true;

        sbuf_put_json_string(out, s->id);
        sbuf_puts(out, ":[");
        for (unsigned i = 0; i < n && steps[i].at <= now; i++) {
                if (i > 0 && steps[i].status == steps[i - 1].status)
                        continue;
                if (!first)
                        sbuf_putc(out, ',');
                first = false;
                sbuf_putc(out, '[');
                sbuf_put_usec(out, steps[i].at);
                sbuf_putc(out, ',');
                sbuf_put_json_string(out, store.statuses[steps[i].status]);
                sbuf_putc(out, ']');
        }
        sbuf_putc(out, ']');
}

void store_dump_history(const char *only_id, int64_t now, struct sbuf *out)
{
        bool first = true;

        sbuf_putc(out, '{');
        pthread_rwlock_rdlock(&store.lock);
        if (only_id) {
                const struct session *s = store_find(only_id);

                if (s)
                        store_history_one(s, now, out);
        } else {
                for (size_t i = 0; i < store.n; i++) {
                        if (!first)
                                sbuf_putc(out, ',');
                        first = false;
                        store_history_one(&store.sessions[i], now, out);
                }
        }
        pthread_rwlock_unlock(&store.lock);
        sbuf_putc(out, '}');
}

static void store_counters_one(struct session *s, bool times, struct sbuf *out)
{
        pthread_mutex_t *m = &store.log_locks[(size_t)(s - store.sessions) % STORE_LOG_STRIPES];
        struct reqlog *log;

        pthread_mutex_lock(m);
        log = s->log;
        sbuf_put_json_string(out, s->id);
        sbuf_printf(out, ":{\"count\":%llu", (unsigned long long)(log ? log->count : 0));
        if (times) {
                sbuf_puts(out, ",\"times\":[");
                for (uint32_t i = 0; log && i < log->n; i++) {
                        if (i > 0)
                                sbuf_putc(out, ',');
                        sbuf_put_usec(out, log->times[(log->head + i) % log->cap]);
                }
                sbuf_putc(out, ']');
        }
        sbuf_putc(out, '}');
        pthread_mutex_unlock(m);
}

/* Per-session request counters; sessions never asked about are left out unless named. */
void store_dump_counters(const char *only_id, bool times, struct sbuf *out)
{
        bool first = true;

        sbuf_putc(out, '{');
        pthread_rwlock_rdlock(&store.lock);
        if (only_id) {
                struct session *s = store_find(only_id);

                if (s)
                        store_counters_one(s, times, out);
        } else {
                for (size_t i = 0; i < store.n; i++) {
                        struct session *s = &store.sessions[i];
                        bool has;

                        pthread_mutex_lock(&store.log_locks[i % STORE_LOG_STRIPES]);
                        has = s->log && s->log->count > 0;
                        pthread_mutex_unlock(&store.log_locks[i % STORE_LOG_STRIPES]);
                        if (!has)
                                continue;
                        if (!first)
                                sbuf_putc(out, ',');
                        first = false;
                        store_counters_one(s, times, out);
                }
        }
        pthread_rwlock_unlock(&store.lock);
        sbuf_putc(out, '}');
}

void store_reset_counters(void)
{
        pthread_rwlock_wrlock(&store.lock);
        for (size_t i = 0; i < store.n; i++) {
                store_log_free(store.sessions[i].log);
                store.sessions[i].log = NULL;
        }
        pthread_rwlock_unlock(&store.lock);
}
