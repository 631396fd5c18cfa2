/* Unit tests for discovery's pure part: the list query of each page, the
 * paging decisions (including entries that move while a sweep pages
 * through), watermark arithmetic and the retain floor; and the scopes made
 * from the config, restored from state and closed on a real loop. */
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

#include "discovery.h"

#define T0 INT64_C(1795951404000000) /* 2026-11-29, µs */

static void test_query(void **unused)
{
        DiscoveryScope sc = {.runbook_id = "rbk20220120z15kl79"};
        DiscoveryScope all = {};
        char buf[DISCOVERY_QUERY_MAX];

        (void)unused;
        /* First sweep: no lower bound. */
        discovery_sweep_begin(&sc, DISCOVERY_OVERLAP_US);
        assert_true(sc.initial);
        {
                int n = discovery_format_query(&sc, buf, sizeof(buf));

                assert_int_equal(n, (int)strlen(buf));
                assert_string_equal(buf, "runbookID=rbk20220120z15kl79&limit=50&page=0");
        }
        discovery_sweep_begin(&all, DISCOVERY_OVERLAP_US);
        assert_true(discovery_format_query(&all, buf, sizeof(buf)) > 0);
        assert_string_equal(buf, "limit=50&page=0");

        /* With a watermark: from it minus the overlap, RFC 3339, escaped. */
        sc.swept = true;
        sc.newest_us = T0 + 654321;
        discovery_sweep_begin(&sc, DISCOVERY_OVERLAP_US);
        assert_false(sc.initial);
        assert_true(sc.cursor.has_after);
        assert_int_equal(sc.cursor.after_us, T0 + 654321 - DISCOVERY_OVERLAP_US);
        assert_true(discovery_format_query(&sc, buf, sizeof(buf)) > 0);
        assert_string_equal(buf, "runbookID=rbk20220120z15kl79&updatedAfter=2026-11-29T11%3A21%3A24.654321Z&"
                                 "limit=50&page=0");
        sc.cursor.page = 7;
        assert_true(discovery_format_query(&sc, buf, sizeof(buf)) > 0);
        assert_non_null(strstr(buf, "&page=7"));

        /* Ids with characters outside the unreserved set are escaped. */
        {
                DiscoveryScope odd = {.runbook_id = "rbk a&b"};

                discovery_sweep_begin(&odd, 0);
                assert_true(discovery_format_query(&odd, buf, sizeof(buf)) > 0);
                assert_string_equal(buf, "runbookID=rbk%20a%26b&limit=50&page=0");
        }
        assert_int_equal(discovery_format_query(&sc, buf, 20), -ENOBUFS);
        assert_int_equal(discovery_format_query(&sc, buf, 0), -ENOBUFS);
        assert_string_equal(discovery_scope_key(&sc), "rbk20220120z15kl79");
        assert_string_equal(discovery_scope_key(&all), "*");
}

static void test_paging_decisions(void **unused)
{
        DiscoveryScope sc = {.runbook_id = "rbk1"};

        (void)unused;
        discovery_sweep_begin(&sc, DISCOVERY_OVERLAP_US);
        /* A full page moves the lower bound just below its last instant. */
        assert_true(discovery_page_done(&sc, DISCOVERY_PAGE_LIMIT, true, T0 + 500));
        assert_true(sc.cursor.has_after);
        assert_int_equal(sc.cursor.after_us, T0 + 499);
        assert_int_equal(sc.cursor.page, 0);
        /* A full page that all shares that instant: only the index moves. */
        assert_true(discovery_page_done(&sc, DISCOVERY_PAGE_LIMIT, true, T0 + 500));
        assert_int_equal(sc.cursor.after_us, T0 + 499);
        assert_int_equal(sc.cursor.page, 1);
        /* A full page with nothing decodable: the index moves too. */
        assert_true(discovery_page_done(&sc, DISCOVERY_PAGE_LIMIT, false, 0));
        assert_int_equal(sc.cursor.page, 2);
        /* Past the shared instant, back to page 0 from a new bound. */
        assert_true(discovery_page_done(&sc, DISCOVERY_PAGE_LIMIT, true, T0 + 900));
        assert_int_equal(sc.cursor.after_us, T0 + 899);
        assert_int_equal(sc.cursor.page, 0);
        /* A short page (even an empty one) ends the sweep. */
        assert_false(discovery_page_done(&sc, DISCOVERY_PAGE_LIMIT - 1, true, T0 + 950));
        assert_int_equal(sc.sweep_newest_us, T0 + 950);
        assert_int_equal(sc.newest_us, 0);
        discovery_sweep_end(&sc);
        assert_true(sc.swept);
        assert_false(sc.sweeping);
        assert_int_equal(sc.newest_us, T0 + 950);

        /* The watermark never moves back, and an empty page keeps it. */
        discovery_sweep_begin(&sc, DISCOVERY_OVERLAP_US);
        assert_false(discovery_page_done(&sc, 0, false, 0));
        discovery_sweep_end(&sc);
        assert_int_equal(sc.newest_us, T0 + 950);
        discovery_sweep_begin(&sc, DISCOVERY_OVERLAP_US);
        assert_false(discovery_page_done(&sc, 3, true, T0 + 100));
        discovery_sweep_end(&sc);
        assert_int_equal(sc.newest_us, T0 + 950);

        /* A complete sweep that found nothing still ends the first sweep,
         * but leaves no bound: the next lists from the beginning. */
        {
                DiscoveryScope empty = {};

                discovery_sweep_begin(&empty, DISCOVERY_OVERLAP_US);
                assert_true(empty.initial);
                assert_false(discovery_page_done(&empty, 0, false, 0));
                discovery_sweep_end(&empty);
                discovery_sweep_begin(&empty, DISCOVERY_OVERLAP_US);
                assert_false(empty.initial);
                assert_false(empty.cursor.has_after);
        }
}

/* ---- A list server as the contract describes it, to page against ---- */

typedef struct Entry {
        int64_t updated;
        int id;
} Entry;

typedef struct Server {
        Entry e[400];
        size_t n;
} Server;

static int entry_cmp(const void *a, const void *b)
{
        const Entry *x = a, *y = b;

        if (x->updated != y->updated)
                return x->updated < y->updated ? -1 : 1;
        return (x->id > y->id) - (x->id < y->id);
}

/* One page: entries with updated > after (when has_after), ordered by
 * (updated, id), page `page` of DISCOVERY_PAGE_LIMIT. */
static size_t server_page(Server *s, const DiscoveryCursor *c, Entry *out)
{
        size_t skip = (size_t)c->page * DISCOVERY_PAGE_LIMIT, n = 0;

        qsort(s->e, s->n, sizeof(Entry), entry_cmp);
        for (size_t k = 0; k < s->n && n < DISCOVERY_PAGE_LIMIT; k++) {
                if (c->has_after && s->e[k].updated <= c->after_us)
                        continue;
                if (skip > 0) {
                        skip--;
                        continue;
                }
                out[n++] = s->e[k];
        }
        return n;
}

/* Sweeps `s`, calling `mutate` after each page; returns the number of
 * pages and marks every id seen. */
static unsigned sweep(Server *s, DiscoveryScope *sc, bool *seen, void (*mutate)(Server *, unsigned))
{
        Entry page[DISCOVERY_PAGE_LIMIT];
        unsigned pages = 0;
        bool more;

        discovery_sweep_begin(sc, DISCOVERY_OVERLAP_US);
        do {
                size_t n = server_page(s, &sc->cursor, page);

                for (size_t k = 0; k < n; k++)
                        seen[page[k].id] = true;
                pages++;
                assert_true(pages < 1000);
                if (mutate)
                        mutate(s, pages);
                more = discovery_page_done(sc, n, n > 0, n > 0 ? page[n - 1].updated : 0);
        } while (more);
        discovery_sweep_end(sc);
        return pages;
}

/* After the first page, the oldest entry changes: it moves to the end and
 * every later entry one place forward (what defeats plain page indices). */
static void move_oldest(Server *s, unsigned pages)
{
        if (pages != 1)
                return;
        qsort(s->e, s->n, sizeof(Entry), entry_cmp);
        s->e[0].updated = T0 + 1000000000;
}

static void test_paging_against_server(void **unused)
{
        Server s = {};
        bool seen[400];
        DiscoveryScope sc = {};

        (void)unused;
        /* 173 entries with many ties (up to 60 at one instant: more than a
         * page), every one is listed in one sweep. */
        for (int k = 0; k < 173; k++)
                s.e[s.n++] = (Entry){.updated = T0 + (k < 60 ? 5 : k / 3), .id = k};
        memset(seen, 0, sizeof(seen));
        assert_true(sweep(&s, &sc, seen, NULL) >= 4);
        for (int k = 0; k < 173; k++)
                assert_true(seen[k]);
        assert_int_equal(sc.newest_us, T0 + 172 / 3);

        /* A sweep during which an entry moves still sees every entry. */
        s.n = 0;
        for (int k = 0; k < 120; k++)
                s.e[s.n++] = (Entry){.updated = T0 + 10 * k, .id = k};
        sc = (DiscoveryScope){};
        memset(seen, 0, sizeof(seen));
        (void)sweep(&s, &sc, seen, move_oldest);
        for (int k = 0; k < 120; k++)
                assert_true(seen[k]);

        /* The next sweep starts below the watermark and finds what came
         * after, and what was updated inside the overlap window. */
        s.e[s.n++] = (Entry){.updated = sc.newest_us + 1, .id = 200};
        s.e[s.n++] = (Entry){.updated = sc.newest_us - DISCOVERY_OVERLAP_US + 1, .id = 201};
        memset(seen, 0, sizeof(seen));
        assert_int_equal(sweep(&s, &sc, seen, NULL), 1);
        assert_true(seen[200]);
        assert_true(seen[201]);
        assert_false(seen[1]);
}

static void test_floor(void **unused)
{
        DiscoveryScope s[3] = {
            {.swept = true, .newest_us = T0 + 500},
            {.swept = true, .newest_us = T0 + 200},
            {.swept = false},
        };

        (void)unused;
        assert_int_equal(discovery_floor(s, 0, DISCOVERY_OVERLAP_US), INT64_MAX);
        assert_int_equal(discovery_floor(s, 2, DISCOVERY_OVERLAP_US), T0 + 200 - DISCOVERY_OVERLAP_US);
        assert_int_equal(discovery_floor(s, 1, 0), T0 + 500);
        /* A scope that never completed a sweep may still return anything. */
        assert_int_equal(discovery_floor(s, 3, DISCOVERY_OVERLAP_US), INT64_MIN);
        /* So may one whose sweeps were empty (it lists from the beginning). */
        s[2] = (DiscoveryScope){.swept = true, .newest_us = 0};
        assert_int_equal(discovery_floor(s, 3, DISCOVERY_OVERLAP_US), INT64_MIN);
}

static void on_session_unused(void *userdata, const SessionSnapshot *s, bool initial, uint64_t done_usec)
{
        (void)userdata, (void)s, (void)initial, (void)done_usec;
        fail();
}

static void on_page_unused(void *userdata, const DiscoveryScope *sc, bool complete, bool moved)
{
        (void)userdata, (void)sc, (void)complete, (void)moved;
        fail();
}

static void test_scopes(void **unused)
{
        static const DiscoveryCallbacks cb = {.session = on_session_unused, .page = on_page_unused};
        char *runbooks[] = {"rbk1", "rbk2", "rbk1", NULL};
        DiscoveryCounters counters = {};
        Discovery *disc = NULL;
        const DiscoveryScope *sc;
        uv_loop_t loop;

        (void)unused;
        assert_int_equal(uv_loop_init(&loop), 0);
        assert_int_equal(discovery_new(&loop, runbooks, 3, true, 30000, &cb, NULL, &counters, &disc), 0);
        /* Duplicates fold; `all` is the last scope. */
        assert_int_equal(discovery_n_scopes(disc), 3);
        sc = discovery_scopes(disc);
        assert_string_equal(sc[0].runbook_id, "rbk1");
        assert_string_equal(sc[1].runbook_id, "rbk2");
        assert_null(sc[2].runbook_id);
        assert_int_equal(discovery_restore(disc, "rbk2", 4, T0), 1);
        assert_int_equal(discovery_restore(disc, "*", 1, T0 + 1), 1);
        assert_int_equal(discovery_restore(disc, "rbk3", 4, T0), 0);
        assert_int_equal(discovery_restore(disc, "rbk", 3, T0), 0);
        assert_false(sc[0].swept);
        assert_true(sc[1].swept);
        assert_int_equal(sc[1].newest_us, T0);
        assert_int_equal(sc[2].newest_us, T0 + 1);
        discovery_close(disc);
        assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
        discovery_free(disc);
        assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_query),
            cmocka_unit_test(test_paging_decisions),
            cmocka_unit_test(test_paging_against_server),
            cmocka_unit_test(test_floor),
            cmocka_unit_test(test_scopes),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
