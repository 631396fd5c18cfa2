/* Unit tests for discovery's pure part: the list query of each window, the
 * paging decisions (splits, keyset paging once the order shows, index
 * paging of a crowded instant), a property test of whole sweeps against a
 * model list in every order with entries changing mid-sweep, the retain
 * floor; and the scopes made from the config, added for coverage,
 * restored from state and closed on a real loop. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#include "discovery.h"

#define T0 INT64_C(1795951404000000) /* 2026-11-29, µs */
#define OVERLAP DISCOVERY_OVERLAP_DEFAULT_US

static void test_query(void **unused)
{
        DiscoveryPager p = {};
        char buf[DISCOVERY_QUERY_MAX];
        int n;

        (void)unused;
        assert_int_equal(discovery_pager_begin(&p, T0, T0 + 654321), 0);
        n = discovery_pager_query(&p, "rbk20220120z15kl79", buf, sizeof(buf));
        assert_int_equal(n, (int)strlen(buf));
        assert_string_equal(buf, "runbookID=rbk20220120z15kl79&updatedAfter=2026-11-29T11%3A23%3A24.000000Z&"
                                 "updatedBefore=2026-11-29T11%3A23%3A24.654321Z&limit=50&page=0");
        /* No lower bound on a first sweep; no runbook for `all`. */
        assert_int_equal(discovery_pager_begin(&p, DISCOVERY_UNBOUNDED_LO, T0), 0);
        assert_true(discovery_pager_query(&p, NULL, buf, sizeof(buf)) > 0);
        assert_string_equal(buf, "updatedBefore=2026-11-29T11%3A23%3A24.000000Z&limit=50&page=0");
        assert_int_equal(discovery_pager_query(&p, "rbk1", buf, 20), -ENOBUFS);
        assert_int_equal(discovery_pager_query(&p, "rbk1", buf, 0), -ENOBUFS);
        discovery_pager_done(&p);
        {
                DiscoveryScope sc = {.runbook_id = "rbk1"}, all = {};

                assert_string_equal(discovery_scope_key(&sc), "rbk1");
                assert_string_equal(discovery_scope_key(&all), "*");
        }
}

/* Fills u[0..n) with n distinct instants from `first`, `step` apart, in
 * the order given by `desc`. */
static void fill(int64_t *u, size_t n, int64_t first, int64_t step, bool desc)
{
        for (size_t k = 0; k < n; k++)
                u[k] = desc ? first + (int64_t)(n - 1 - k) * step : first + (int64_t)k * step;
}

static void test_paging_decisions(void **unused)
{
        DiscoveryPager p = {};
        int64_t u[DISCOVERY_PAGE_LIMIT];
        bool split;

        (void)unused;
        /* A short page reads the window whole. */
        assert_int_equal(discovery_pager_begin(&p, T0, T0 + 1000000), 0);
        fill(u, 3, T0 + 10, 1, false);
        assert_int_equal(discovery_pager_page(&p, u, 3, 3, &split), DISCOVERY_TAKE);
        assert_false(split);
        assert_true(discovery_pager_complete(&p));

        /* A full page in no time order is split at its median, older first,
         * and its entries are read again. */
        assert_int_equal(discovery_pager_begin(&p, T0, T0 + 1000000), 0);
        fill(u, DISCOVERY_PAGE_LIMIT, T0 + 100, 1000, true);
        assert_int_equal(discovery_pager_page(&p, u, DISCOVERY_PAGE_LIMIT, DISCOVERY_PAGE_LIMIT, &split),
                         DISCOVERY_SKIP);
        assert_true(split);
        assert_int_equal(p.n, 2);
        assert_int_equal(p.w[1].lo, T0);
        assert_int_equal(p.w[1].hi, T0 + 100 + 25 * 1000);
        assert_int_equal(p.w[0].lo, T0 + 100 + 25 * 1000 - 1);
        assert_int_equal(p.w[0].hi, T0 + 1000000);
        assert_false(p.ascending);

        /* Two full pages in ascending order turn keyset paging on. */
        assert_int_equal(discovery_pager_begin(&p, T0, T0 + 1000000), 0);
        fill(u, DISCOVERY_PAGE_LIMIT, T0 + 1, 1000, false);
        assert_int_equal(discovery_pager_page(&p, u, DISCOVERY_PAGE_LIMIT, DISCOVERY_PAGE_LIMIT, &split),
                         DISCOVERY_SKIP);
        assert_int_equal(p.asc_votes, 1);
        assert_int_equal(p.w[p.n - 1].hi, T0 + 1 + 25 * 1000);
        fill(u, DISCOVERY_PAGE_LIMIT, T0 + 1, 100, false);
        assert_int_equal(discovery_pager_page(&p, u, DISCOVERY_PAGE_LIMIT, DISCOVERY_PAGE_LIMIT, &split),
                         DISCOVERY_TAKE);
        assert_true(p.ascending);
        assert_false(split);
        assert_int_equal(p.w[p.n - 1].lo, T0 + 1 + 49 * 100 - 1);
        /* A page out of order turns it off again. */
        fill(u, DISCOVERY_PAGE_LIMIT, T0 + 5000, 100, true);
        assert_int_equal(discovery_pager_page(&p, u, DISCOVERY_PAGE_LIMIT, DISCOVERY_PAGE_LIMIT, &split),
                         DISCOVERY_SKIP);
        assert_false(p.ascending);
        assert_int_equal(p.asc_votes, 0);

        /* A whole page at one instant: the instant is paged by index. */
        assert_int_equal(discovery_pager_begin(&p, T0, T0 + 1000), 0);
        for (size_t k = 0; k < DISCOVERY_PAGE_LIMIT; k++)
                u[k] = T0 + 500;
        assert_int_equal(discovery_pager_page(&p, u, DISCOVERY_PAGE_LIMIT, DISCOVERY_PAGE_LIMIT, &split),
                         DISCOVERY_SKIP);
        assert_int_equal(p.n, 3);
        assert_int_equal(p.w[2].lo, T0);
        assert_int_equal(p.w[2].hi, T0 + 500);
        assert_int_equal(p.w[1].lo, T0 + 499);
        assert_int_equal(p.w[1].hi, T0 + 501);
        assert_int_equal(p.w[0].lo, T0 + 500);
        p.n--; /* (lo, t) read: empty */
        for (size_t k = 0; k < DISCOVERY_PAGE_LIMIT; k++)
                u[k] = T0 + 500;
        assert_int_equal(discovery_pager_page(&p, u, DISCOVERY_PAGE_LIMIT, DISCOVERY_PAGE_LIMIT, &split),
                         DISCOVERY_TAKE);
        assert_int_equal(p.w[p.n - 1].page, 1);

        /* An undecodable full page can only move the index. */
        assert_int_equal(discovery_pager_begin(&p, T0, T0 + 1000), 0);
        assert_int_equal(discovery_pager_page(&p, u, 0, DISCOVERY_PAGE_LIMIT, &split), DISCOVERY_TAKE);
        assert_int_equal(p.w[0].page, 1);
        assert_int_equal(discovery_pager_page(&p, u, 0, 7, &split), DISCOVERY_TAKE);
        assert_true(discovery_pager_complete(&p));
        discovery_pager_done(&p);
}

/* ---- A model of the API's list ---- */

typedef enum Order { ORDER_ASC, ORDER_DESC, ORDER_ID, ORDER_SHUFFLED, _ORDER_MAX } Order;
static const char *const order_names[] = {"updated-asc", "updated-desc", "id", "shuffled"};

typedef struct Entry {
        int64_t updated;
        uint32_t id;
        bool taken;   /* seen on a page whose entries were taken in */
        bool changed; /* changed during the sweep (left the window) */
} Entry;

typedef struct Model {
        Entry *e;
        size_t n;
        Order order;
        uint64_t rng;
} Model;

static uint64_t rnd(uint64_t *s)
{
        uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static uint64_t hash_id(uint32_t id)
{
        uint64_t s = id * 0x2545f4914f6cdd1dULL;

        return rnd(&s);
}

static Order g_order;

static int cmp_model(const void *a, const void *b)
{
        const Entry *x = *(const Entry *const *)a, *y = *(const Entry *const *)b;
        uint64_t hx, hy;

        switch (g_order) {
        case ORDER_ASC:
                if (x->updated != y->updated)
                        return x->updated < y->updated ? -1 : 1;
                break;
        case ORDER_DESC:
                if (x->updated != y->updated)
                        return x->updated > y->updated ? -1 : 1;
                break;
        case ORDER_SHUFFLED:
                hx = hash_id(x->id);
                hy = hash_id(y->id);
                if (hx != hy)
                        return hx < hy ? -1 : 1;
                break;
        default:
                break;
        }
        return (x->id > y->id) - (x->id < y->id);
}

/* The page the model API answers for window w: returns the entries in it. */
static size_t model_page(Model *m, const DiscoveryWindow *w, Entry **out)
{
        Entry **all = malloc((m->n + 1) * sizeof(*all));
        size_t n = 0, skip = (size_t)w->page * DISCOVERY_PAGE_LIMIT, k = 0;

        assert_non_null(all);
        for (size_t i = 0; i < m->n; i++)
                if ((w->lo == DISCOVERY_UNBOUNDED_LO || m->e[i].updated > w->lo) && m->e[i].updated < w->hi)
                        all[n++] = &m->e[i];
        g_order = m->order;
        qsort(all, n, sizeof(*all), cmp_model);
        for (size_t i = skip; i < n && k < DISCOVERY_PAGE_LIMIT; i++)
                out[k++] = all[i];
        free(all);
        return k;
}

/* Runs one sweep of (lo, hi) against the model. With `churn`, before each
 * page some entries change: their updatedAt moves past hi, out of the
 * window, as a change during the sweep does. Returns the pages read. */
static unsigned sweep(Model *m, int64_t lo, int64_t hi, unsigned churn)
{
        DiscoveryPager p = {};
        unsigned pages = 0;

        assert_int_equal(discovery_pager_begin(&p, lo, hi), 0);
        while (!discovery_pager_complete(&p)) {
                Entry *page[DISCOVERY_PAGE_LIMIT];
                int64_t u[DISCOVERY_PAGE_LIMIT];
                size_t n;
                bool split;
                int v;

                for (unsigned c = 0; c < churn && m->n > 0; c++) {
                        Entry *e = &m->e[rnd(&m->rng) % m->n];

                        e->updated = hi + 1 + (int64_t)(rnd(&m->rng) % 1000);
                        e->changed = true;
                }
                n = model_page(m, &p.w[p.n - 1], page);
                for (size_t k = 0; k < n; k++)
                        u[k] = page[k]->updated;
                v = discovery_pager_page(&p, u, n, n, &split);
                assert_true(v >= 0);
                if (v == DISCOVERY_TAKE)
                        for (size_t k = 0; k < n; k++)
                                page[k]->taken = true;
                pages++;
                if (pages > 100000)
                        fail_msg("the sweep does not end");
        }
        discovery_pager_done(&p);
        return pages;
}

/* Property: under every order, with entries changing while the sweep
 * pages, every entry of the window that did not change is taken in, and
 * the sweep costs a bounded multiple of the pages the window fills. */
static void test_sweeps_lose_nothing(void **unused)
{
        (void)unused;
        for (int order = 0; order < _ORDER_MAX; order++)
                for (uint64_t seed = 1; seed <= 40; seed++) {
                        Model m = {.order = (Order)order, .rng = seed * 7919};
                        int64_t lo = T0, hi = T0 + 60 * INT64_C(1000000);
                        size_t in_window = 0, lost = 0;
                        unsigned pages, churn = (unsigned)(seed % 4);

                        m.n = 1 + rnd(&m.rng) % 3000;
                        m.e = calloc(m.n, sizeof(*m.e));
                        assert_non_null(m.e);
                        for (size_t k = 0; k < m.n; k++) {
                                /* Some before the window, a few after it, and
                                 * (every third seed) clusters sharing an
                                 * instant, fewer than a page each. */
                                int64_t span = hi - lo + 20 * INT64_C(1000000);
                                int64_t t =
                                    lo - 10 * INT64_C(1000000) + (int64_t)(rnd(&m.rng) % (uint64_t)span);

                                if (seed % 3 == 0)
                                        t -= t % 20000;
                                m.e[k] = (Entry){.updated = t, .id = (uint32_t)(rnd(&m.rng) >> 8)};
                        }
                        for (size_t k = 0; k < m.n; k++)
                                in_window += m.e[k].updated > lo && m.e[k].updated < hi;
                        pages = sweep(&m, lo, hi, churn);
                        for (size_t k = 0; k < m.n; k++)
                                if (m.e[k].updated > lo && m.e[k].updated < hi && !m.e[k].taken &&
                                    !m.e[k].changed)
                                        lost++;
                        if (lost > 0)
                                fail_msg("order %s, seed %" PRIu64 ": %zu of %zu entries lost",
                                         order_names[order], seed, lost, in_window);
                        /* About twice the pages a perfect cursor would read,
                         * plus the churn's own share. */
                        if (pages > 4 * (in_window / DISCOVERY_PAGE_LIMIT + 1) + 8 + pages / 50 * churn)
                                fail_msg("order %s, seed %" PRIu64 ": %u pages for %zu entries",
                                         order_names[order], seed, pages, in_window);
                        free(m.e);
                }
}

/* More than a page at one instant, nothing changing: read by index, whole. */
static void test_crowded_instant(void **unused)
{
        (void)unused;
        for (int order = 0; order < _ORDER_MAX; order++) {
                Model m = {.order = (Order)order, .rng = 99};

                m.n = 420;
                m.e = calloc(m.n, sizeof(*m.e));
                assert_non_null(m.e);
                for (size_t k = 0; k < m.n; k++)
                        m.e[k] =
                            (Entry){.updated = k < 300 ? T0 + 5 : T0 + 7 + (int64_t)k, .id = (uint32_t)k};
                (void)sweep(&m, DISCOVERY_UNBOUNDED_LO, T0 + 100000, 0);
                for (size_t k = 0; k < m.n; k++)
                        if (!m.e[k].taken)
                                fail_msg("order %s: entry %zu lost", order_names[order], k);
                free(m.e);
        }
}

/* In ascending order, keyset paging reads little more than the entries. */
static void test_keyset_is_cheap(void **unused)
{
        Model m = {.order = ORDER_ASC, .rng = 5};
        unsigned pages;

        (void)unused;
        m.n = 5000;
        m.e = calloc(m.n, sizeof(*m.e));
        assert_non_null(m.e);
        for (size_t k = 0; k < m.n; k++)
                m.e[k] = (Entry){.updated = T0 + 1 + (int64_t)(rnd(&m.rng) % 1000000000), .id = (uint32_t)k};
        pages = sweep(&m, T0, T0 + 1000000001, 0);
        /* 100 pages of entries, a few more for the first splits. */
        assert_true(pages <= 100 + 10);
        free(m.e);
}

static void test_floor(void **unused)
{
        DiscoveryScope s[] = {
            {.enabled = true, .swept = true, .newest_us = T0 + 500},
            {.enabled = true, .swept = true, .newest_us = T0 + 200},
            {.enabled = true, .swept = false},
        };

        (void)unused;
        assert_int_equal(discovery_floor(s, 0, OVERLAP), INT64_MAX);
        assert_int_equal(discovery_floor(s, 2, OVERLAP), T0 + 200 - OVERLAP);
        assert_int_equal(discovery_floor(s, 1, 0), T0 + 500);
        /* A scope that never completed a sweep may still return anything. */
        assert_int_equal(discovery_floor(s, 3, OVERLAP), INT64_MIN);
        /* Unless it is not swept at all. */
        s[2].enabled = false;
        assert_int_equal(discovery_floor(s, 3, OVERLAP), T0 + 200 - OVERLAP);
        /* One whose sweeps were empty lists from the beginning. */
        s[2] = (DiscoveryScope){.enabled = true, .swept = true, .newest_us = 0};
        assert_int_equal(discovery_floor(s, 3, OVERLAP), INT64_MIN);
}

static void on_session_unused(void *userdata, const DiscoveryScope *sc, const SessionSnapshot *s,
                              bool initial, uint64_t done_usec)
{
        (void)userdata, (void)sc, (void)s, (void)initial, (void)done_usec;
        fail();
}

static void on_page_unused(void *userdata, const DiscoveryScope *sc, bool complete, bool moved)
{
        (void)userdata, (void)sc, (void)complete, (void)moved;
        fail();
}

static void on_done_unused(void *userdata)
{
        (void)userdata;
        fail();
}

static void test_scopes(void **unused)
{
        static const DiscoveryCallbacks cb = {
            .session = on_session_unused, .page = on_page_unused, .done = on_done_unused};
        char *runbooks[] = {"rbk1", "rbk2", "rbk1", NULL};
        DiscoveryCounters counters = {};
        Discovery *disc = NULL;
        const DiscoveryScope *sc;
        uv_loop_t loop;
        int k;

        (void)unused;
        assert_int_equal(uv_loop_init(&loop), 0);
        assert_int_equal(
            discovery_new(&loop, runbooks, 3, true, 30000, OVERLAP, &cb, NULL, &counters, &disc), 0);
        assert_int_equal(discovery_n_scopes(disc), 3);
        sc = discovery_scopes(disc);
        assert_string_equal(sc[0].runbook_id, "rbk1");
        assert_string_equal(sc[1].runbook_id, "rbk2");
        assert_null(sc[2].runbook_id);
        assert_true(sc[0].enabled && !sc[0].coverage);
        assert_int_equal(discovery_find(disc, "rbk2"), 1);
        assert_int_equal(discovery_find(disc, NULL), 2);
        assert_int_equal(discovery_find(disc, "rbk9"), -ENOENT);
        assert_int_equal(discovery_restore(disc, "rbk2", 4, T0), 1);
        assert_int_equal(discovery_restore(disc, "*", 1, T0 + 1), 1);
        assert_int_equal(discovery_restore(disc, "rbk3", 4, T0), 0);
        assert_int_equal(discovery_restore(disc, "rbk", 3, T0), 0);
        assert_false(sc[0].swept);
        assert_true(sc[1].swept);
        assert_int_equal(sc[1].newest_us, T0);
        assert_int_equal(sc[2].newest_us, T0 + 1);

        /* A coverage scope starts off, already swept up to about now. */
        k = discovery_add_coverage(disc, "rbk9");
        assert_int_equal(k, 3);
        sc = discovery_scopes(disc);
        assert_true(sc[3].coverage && !sc[3].enabled && sc[3].swept && sc[3].newest_us > T0);
        /* Nothing is due before start; afterwards every enabled scope is. */
        assert_int_equal(discovery_due_ms(disc), UINT64_MAX);
        discovery_start(disc, NULL, NULL);
        assert_int_equal(discovery_due_ms(disc), uv_now(&loop));
        discovery_enable(disc, 3, true);
        assert_true(discovery_scopes(disc)[3].enabled);
        discovery_set_interval(disc, 3, 5000);
        assert_int_equal(discovery_scopes(disc)[3].interval_ms, 5000);

        discovery_close(disc);
        assert_int_equal(discovery_due_ms(disc), UINT64_MAX);
        assert_int_equal(discovery_start_due(disc, uv_now(&loop)), -ECANCELED);
        assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
        discovery_free(disc);
        assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_query),
            cmocka_unit_test(test_paging_decisions),
            cmocka_unit_test(test_sweeps_lose_nothing),
            cmocka_unit_test(test_crowded_instant),
            cmocka_unit_test(test_keyset_is_cheap),
            cmocka_unit_test(test_floor),
            cmocka_unit_test(test_scopes),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
