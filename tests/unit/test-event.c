/* Unit tests for event: stable ids, the exact CloudEvents JSON of fixed
 * events, journal fields and priorities for every status, and the text
 * line. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <json-c/json_object.h>
#include <json-c/json_tokener.h>

#include "decode.h"
#include "event.h"

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

#define SOURCE "sessionwatchd://host1"
#define T_EVENT INT64_C(1795948355123456) /* 2026-11-29T10:32:35.123456Z */
#define T_UPDATED INT64_C(1641940545238512)

static const char body[] =
    "{\"id\":\"ses20220120za1pskd\",\"name\":\"MySession\",\"runbookID\":\"rbk20220120z15kl79\","
    "\"teamID\":\"tea20220103zvy4auu\",\"status\":\"Failed\",\"createdAt\":\"2022-01-11 "
    "22:32:45.601486+00\","
    "\"isPrivate\":false,\"paramValues\":{\"path\":\"a/b\",\"q\":\"say \\\"hi\\\"\\n\"},\"params\":[],"
    "\"updatedAt\":\"2022-01-11 22:35:45.238512+00\",\"extra\":1.50}";

/* What json-c prints for `body`: the same object, keys in the order sent. */
#define SESSION_JSON                                                                                        \
        "{\"id\":\"ses20220120za1pskd\",\"name\":\"MySession\",\"runbookID\":\"rbk20220120z15kl79\","       \
        "\"teamID\":\"tea20220103zvy4auu\",\"status\":\"Failed\",\"createdAt\":\"2022-01-11 "               \
        "22:32:45.601486+00\","                                                                             \
        "\"isPrivate\":false,\"paramValues\":{\"path\":\"a/b\",\"q\":\"say \\\"hi\\\"\\n\"},\"params\":[]," \
        "\"updatedAt\":\"2022-01-11 22:35:45.238512+00\",\"extra\":1.50}"

#define ID_FAILED "evt_5e7735343c4ec2aea9ab8a4a4fe526de"
#define ID_GONE "evt_21296d710468a712c03634cb3b4f8439"

static int setup(void **state)
{
        SessionSnapshot *s = malloc(sizeof(*s));
        const char *reason = NULL;

        /* The text line shows local time; pin it. */
        setenv("TZ", "UTC", 1);
        tzset();

        assert_non_null(s);
        assert_int_equal(decode_session(body, strlen(body), s, &reason), 0);
        *state = s;
        return 0;
}

static int teardown(void **state)
{
        session_snapshot_done(*state);
        free(*state);
        return 0;
}

static void make_transition(Event *e, const SessionSnapshot *s, const char *previous)
{
        assert_int_equal(event_init_transition(e, s, previous, SOURCE), 0);
        e->time_us = T_EVENT;
}

static bool is_event_id(const char *id)
{
        if (strlen(id) != EVENT_ID_SIZE - 1 || strncmp(id, "evt_", 4) != 0)
                return false;
        for (const char *p = id + 4; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
                        return false;
        return true;
}

/* ------------------------------------------------------------------------ */

static void test_id_vectors(void **state)
{
        /* Known answers, computed independently: SHA-256 over
         * "sessionwatch-event-id-v1\0", be64 len, id, be64 len, what, be64
         * time; the first 16 bytes in hex. Pinned, because receivers dedupe
         * on ids across daemon versions. */
        static const struct {
                const char *session_id, *what;
                int64_t t;
                const char *id;
        } cases[] = {
            {"ses20220120za1pskd", "Failed", T_UPDATED, ID_FAILED},
            {"ses20220120za1pskd", EVENT_WHAT_GONE, T_UPDATED, ID_GONE},
            {"ses1", "Active", 0, "evt_519e45c5d4af96feca2dd2113957beca"},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char id[EVENT_ID_SIZE];

                memset(id, 'x', sizeof(id));
                assert_int_equal(event_make_id(id, cases[i].session_id, cases[i].what, cases[i].t), 0);
                assert_string_equal(id, cases[i].id);
        }
}

static int cmp_ids(const void *a, const void *b)
{
        return memcmp(a, b, EVENT_ID_SIZE);
}

static void test_id_stable_and_distinct(void **state)
{
        static const char *const session_ids[] = {"ses1", "ses2", "ses20220120za1pskd", "a", "ab", ""};
        static const char *const whats[] = {"Pending",    "Active",    "Waiting",  "Succeeded", "Failed",
                                            "Cancelling", "Cancelled", "Exploded", "gone",      "stalled",
                                            "",           "b",         "bc",       "c"};
        static const int64_t times[] = {0, 1, -1, T_UPDATED, T_UPDATED + 1, INT64_MIN, INT64_MAX, 1000000};
        const size_t n = ELEMENTSOF(session_ids) * ELEMENTSOF(whats) * ELEMENTSOF(times);
        char(*ids)[EVENT_ID_SIZE] = calloc(n, EVENT_ID_SIZE);
        size_t k = 0;
        char again[EVENT_ID_SIZE];

        assert_non_null(ids);
        for (size_t a = 0; a < ELEMENTSOF(session_ids); a++)
                for (size_t b = 0; b < ELEMENTSOF(whats); b++)
                        for (size_t c = 0; c < ELEMENTSOF(times); c++) {
                                assert_int_equal(event_make_id(ids[k], session_ids[a], whats[b], times[c]),
                                                 0);
                                assert_true(is_event_id(ids[k]));
                                /* Same inputs, same id. */
                                assert_int_equal(event_make_id(again, session_ids[a], whats[b], times[c]),
                                                 0);
                                assert_string_equal(again, ids[k]);
                                k++;
                        }

        /* Every differing triple gives a different id; in particular the
         * boundary between the strings cannot move ("a"+"bc" vs "ab"+"c"). */
        qsort(ids, n, EVENT_ID_SIZE, cmp_ids);
        for (size_t i = 1; i < n; i++)
                assert_string_not_equal(ids[i - 1], ids[i]);
        free(ids);
}

static void test_init(void **state)
{
        const SessionSnapshot *s = *state;
        struct timespec ts;
        int64_t now;
        Event e;

        clock_gettime(CLOCK_REALTIME, &ts);
        now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;

        assert_int_equal(event_init_transition(&e, s, "Active", SOURCE), 0);
        assert_int_equal(e.kind, EVENT_TRANSITION);
        assert_string_equal(e.id, ID_FAILED);
        assert_string_equal(e.session_id, "ses20220120za1pskd");
        assert_string_equal(e.status_raw, "Failed");
        assert_int_equal(e.status, SESSION_STATUS_FAILED);
        assert_string_equal(e.previous_status_raw, "Active");
        assert_int_equal(e.updated_at_us, T_UPDATED);
        assert_string_equal(e.updated_at_raw, "2022-01-11 22:35:45.238512+00");
        assert_ptr_equal(e.session, s->root);
        assert_string_equal(e.name, "MySession");
        assert_string_equal(e.runbook_id, "rbk20220120z15kl79");
        assert_string_equal(e.team_id, "tea20220103zvy4auu");
        assert_false(e.replayed);
        assert_string_equal(e.source, SOURCE);
        assert_true(e.time_us >= now && e.time_us < now + 60 * INT64_C(1000000));

        /* A snapshot restates the transition, with the same id. */
        assert_int_equal(event_init_snapshot(&e, s, "Active", SOURCE), 0);
        assert_int_equal(e.kind, EVENT_SNAPSHOT);
        assert_string_equal(e.id, ID_FAILED);

        assert_int_equal(event_init_gone(&e, "ses20220120za1pskd", "Failed", T_UPDATED, SOURCE), 0);
        assert_int_equal(e.kind, EVENT_GONE);
        assert_string_equal(e.id, ID_GONE);
        assert_int_equal(e.status, SESSION_STATUS_FAILED);
        assert_null(e.session);

        assert_int_equal(event_init_stalled(&e, "ses20220120za1pskd", "Waiting", T_UPDATED,
                                            7200 * INT64_C(1000000), SOURCE),
                         0);
        assert_int_equal(e.kind, EVENT_STALLED);
        assert_int_equal(e.status, SESSION_STATUS_WAITING);
        assert_string_not_equal(e.id, ID_GONE);
}

/* ------------------------------------------------------------------------ */

static void assert_json(const Event *e, long sequence, const char *expected)
{
        EventBuffer b = EVENT_BUFFER_NULL;
        json_object *o;
        char *s = NULL;
        size_t len = 0;

        assert_int_equal(event_to_json_string(e, sequence, &s, &len), 0);
        assert_string_equal(s, expected);
        assert_int_equal(len, strlen(expected));

        /* Valid JSON, whatever the content. */
        o = json_tokener_parse(s);
        assert_non_null(o);
        json_object_put(o);
        free(s);

        /* The buffer form appends to what is there, and stays NUL-terminated. */
        assert_int_equal(event_buffer_append_json_string(&b, "x", 1), 0);
        assert_int_equal(event_append_json(e, sequence, &b), 0);
        assert_int_equal(b.len, strlen(expected) + 3);
        assert_memory_equal(b.data, "\"x\"", 3);
        assert_string_equal(b.data + 3, expected);
        event_buffer_done(&b);
}

static void test_json_transition(void **state)
{
        const SessionSnapshot *s = *state;
        Event e;

        make_transition(&e, s, "Active");
        assert_json(&e, -1,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_FAILED "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.failed\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":\"Active\",\"status\":\"Failed\",\"session\":" SESSION_JSON
                    "}}");

        /* The socket stream's form, and a replay. */
        e.replayed = true;
        assert_json(&e, 42,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_FAILED "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.failed\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":\"Active\",\"status\":\"Failed\",\"replayed\":true,"
                    "\"session\":" SESSION_JSON "},\"sequence\":42}");

        /* A transition that missed a step in between. */
        e.replayed = false;
        e.skipped = true;
        assert_json(&e, -1,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_FAILED "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.failed\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":\"Active\",\"status\":\"Failed\",\"skipped\":true,"
                    "\"session\":" SESSION_JSON "}}");

        /* First observation. */
        make_transition(&e, s, NULL);
        assert_json(&e, 0,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_FAILED "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.failed\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":null,\"status\":\"Failed\",\"session\":" SESSION_JSON "},"
                    "\"sequence\":0}");
}

static void test_json_unknown_status(void **state)
{
        static const char b[] =
            "{\"id\":\"ses1\",\"status\":\"Exploded \\\"badly\\\"\",\"updatedAt\":\"1970-01-01T00:00:00Z\"}";
        SessionSnapshot s;
        const char *reason;
        char id[EVENT_ID_SIZE];
        Event e;

        assert_int_equal(decode_session(b, strlen(b), &s, &reason), 0);
        make_transition(&e, &s, "Waiting");
        assert_int_equal(event_make_id(id, "ses1", "Exploded \"badly\"", 0), 0);
        assert_string_equal(e.id, id);

        char expected[1024];
        snprintf(expected, sizeof(expected),
                 "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"" SOURCE "\","
                 "\"type\":\"sessionwatch.session.unknown\",\"subject\":\"ses1\","
                 "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                 "\"data\":{\"previousStatus\":\"Waiting\",\"status\":\"Exploded "
                 "\\\"badly\\\"\",\"session\":%s}}",
                 id, b);
        assert_json(&e, -1, expected);
        session_snapshot_done(&s);
}

static void test_json_gone_stalled_snapshot(void **state)
{
        const SessionSnapshot *s = *state;
        Event e;

        assert_int_equal(event_init_gone(&e, "ses20220120za1pskd", "Active", T_UPDATED, SOURCE), 0);
        e.time_us = T_EVENT;
        assert_json(&e, -1,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_GONE "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.gone\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":\"Active\",\"status\":null,"
                    "\"session\":{\"id\":\"ses20220120za1pskd\"}}}");

        assert_int_equal(
            event_init_stalled(&e, "ses1", "Waiting", 0, 7325 * INT64_C(1000000) + 999999, SOURCE), 0);
        e.time_us = T_EVENT;
        char expected[1024];
        snprintf(
            expected, sizeof(expected),
            "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"" SOURCE "\","
            "\"type\":\"sessionwatch.session.stalled\",\"subject\":\"ses1\","
            "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
            "\"data\":{\"previousStatus\":\"Waiting\",\"status\":\"Waiting\",\"stalledForSeconds\":7325,"
            "\"session\":{\"id\":\"ses1\"}}}",
            e.id);
        assert_json(&e, -1, expected);

        /* Duration unknown: the key is left out. */
        e.stalled_for_us = 0;
        snprintf(expected, sizeof(expected),
                 "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"" SOURCE "\","
                 "\"type\":\"sessionwatch.session.stalled\",\"subject\":\"ses1\","
                 "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                 "\"data\":{\"previousStatus\":\"Waiting\",\"status\":\"Waiting\",\"session\":{\"id\":"
                 "\"ses1\"}}}",
                 e.id);
        assert_json(&e, -1, expected);

        assert_int_equal(event_init_snapshot(&e, s, "Active", SOURCE), 0);
        e.time_us = T_EVENT;
        assert_json(&e, 7,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_FAILED "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.snapshot\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":\"Active\",\"status\":\"Failed\",\"session\":" SESSION_JSON
                    "},"
                    "\"sequence\":7}");

        /* A snapshot restored from state has no session object. */
        e.session = NULL;
        e.previous_status_raw = NULL;
        assert_json(&e, 8,
                    "{\"specversion\":\"1.0\",\"id\":\"" ID_FAILED "\",\"source\":\"" SOURCE "\","
                    "\"type\":\"sessionwatch.session.snapshot\",\"subject\":\"ses20220120za1pskd\","
                    "\"time\":\"2026-11-29T10:32:35.123456Z\",\"datacontenttype\":\"application/json\","
                    "\"data\":{\"previousStatus\":null,\"status\":\"Failed\","
                    "\"session\":{\"id\":\"ses20220120za1pskd\"}},\"sequence\":8}");
}

/* Strings that need escaping come back intact through a JSON parser. */
static void test_json_escaping(void **state)
{
        static const char nasty[] = "a\"b\\c/d\n\r\t\b\f\x01\x1f\x7f \xc3\xa9 \xe2\x86\x92 </script>";
        EventBuffer b = EVENT_BUFFER_NULL;
        json_object *o, *v, *data;
        Event e;

        assert_int_equal(event_init_gone(&e, nasty, nasty, 1, nasty), 0);
        e.time_us = T_EVENT;
        assert_int_equal(event_append_json(&e, -1, &b), 0);
        assert_null(strchr(b.data, '\n'));

        o = json_tokener_parse(b.data);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "subject", &v));
        assert_string_equal(json_object_get_string(v), nasty);
        assert_true(json_object_object_get_ex(o, "source", &v));
        assert_string_equal(json_object_get_string(v), nasty);
        assert_true(json_object_object_get_ex(o, "data", &data));
        assert_true(json_object_object_get_ex(data, "previousStatus", &v));
        assert_string_equal(json_object_get_string(v), nasty);
        json_object_put(o);

        /* The escaper alone, byte for byte. */
        b.len = 0;
        assert_int_equal(event_buffer_append_json_string(&b, nasty, sizeof(nasty) - 1), 0);
        assert_string_equal(
            b.data, "\"a\\\"b\\\\c/d\\n\\r\\t\\b\\f\\u0001\\u001f\x7f \xc3\xa9 \xe2\x86\x92 </script>\"");
        b.len = 0;
        assert_int_equal(event_buffer_append_json_string(&b, "x\0y", 3), 0);
        assert_string_equal(b.data, "\"x\\u0000y\"");
        b.len = 0;
        assert_int_equal(event_buffer_append_json_string(&b, "", 0), 0);
        assert_string_equal(b.data, "\"\"");
        event_buffer_done(&b);
        event_buffer_done(&b);
}

static void test_json_big_session(void **state)
{
        const size_t n = 1u << 20;
        EventBuffer b = EVENT_BUFFER_NULL;
        SessionSnapshot s;
        const char *reason;
        char *body_buf = malloc(n + 128);
        size_t len;
        Event e;

        assert_non_null(body_buf);
        len = (size_t)sprintf(
            body_buf,
            "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11T00:00:00Z\",\"name\":\"");
        memset(body_buf + len, 'n', n);
        len += n;
        len += (size_t)sprintf(body_buf + len, "\"}");
        assert_int_equal(decode_session(body_buf, len, &s, &reason), 0);
        make_transition(&e, &s, NULL);

        /* Reuse of one buffer across events. */
        for (unsigned i = 0; i < 3; i++) {
                b.len = 0;
                assert_int_equal(event_append_json(&e, i, &b), 0);
                assert_true(b.len > n);
                assert_int_equal(strlen(b.data), b.len);
        }
        event_buffer_done(&b);
        session_snapshot_done(&s);
        free(body_buf);
}

static void test_json_bad_time(void **state)
{
        EventBuffer b = EVENT_BUFFER_NULL;
        Event e;

        assert_int_equal(event_init_gone(&e, "ses1", "Active", 0, SOURCE), 0);
        assert_int_equal(event_buffer_append_json_string(&b, "keep", 4), 0);
        e.time_us = INT64_MAX;
        assert_int_equal(event_append_json(&e, -1, &b), -ERANGE);
        /* Nothing half-written is left behind. */
        assert_string_equal(b.data, "\"keep\"");
        event_buffer_done(&b);
}

/* ------------------------------------------------------------------------ */

static void test_priorities_and_ids(void **state)
{
        static const struct {
                const char *status;
                SessionStatus s;
                unsigned priority;
                const char *message_id;
                const char *type;
        } cases[] = {
            {"Pending", SESSION_STATUS_PENDING, 6, "8534bbf283814c69a2c48fa4a012073f",
             "sessionwatch.session.pending"},
            {"Active", SESSION_STATUS_ACTIVE, 6, "d71fbb2ee25746318d837ff155d94411",
             "sessionwatch.session.active"},
            {"Waiting", SESSION_STATUS_WAITING, 4, "23108cf0a7044d57b2eb818549d09ca9",
             "sessionwatch.session.waiting"},
            {"Succeeded", SESSION_STATUS_SUCCEEDED, 6, "6170eb8b4c78491f829a05b770a78d5b",
             "sessionwatch.session.succeeded"},
            {"Failed", SESSION_STATUS_FAILED, 3, "c6535f30cb814da8b4e707838829121c",
             "sessionwatch.session.failed"},
            {"Cancelling", SESSION_STATUS_CANCELLING, 5, "96e4ccb1c8d44c33bea1f765a5173c1c",
             "sessionwatch.session.cancelling"},
            {"Cancelled", SESSION_STATUS_CANCELLED, 4, "851d377030f1454b86cc8f443528ff4a",
             "sessionwatch.session.cancelled"},
            {"Exploded", SESSION_STATUS_UNKNOWN, 5, "d8d14eecabed4ff4bdc7a95570514e95",
             "sessionwatch.session.unknown"},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Event e = {.kind = EVENT_TRANSITION,
                           .session_id = "ses1",
                           .status_raw = cases[i].status,
                           .status = cases[i].s};

                assert_int_equal(event_priority(&e), cases[i].priority);
                assert_string_equal(event_message_id(&e), cases[i].message_id);
                assert_string_equal(event_type(&e), cases[i].type);

                e.kind = EVENT_SNAPSHOT;
                assert_int_equal(event_priority(&e), cases[i].priority);
                assert_string_equal(event_message_id(&e), cases[i].message_id);
                assert_string_equal(event_type(&e), "sessionwatch.session.snapshot");

                e.kind = EVENT_GONE;
                assert_int_equal(event_priority(&e), 4);
                assert_string_equal(event_message_id(&e), "6f198cb3aa0b499eabdebc30fcefb0ed");
                assert_string_equal(event_type(&e), "sessionwatch.session.gone");

                e.kind = EVENT_STALLED;
                assert_int_equal(event_priority(&e), 4);
                assert_string_equal(event_message_id(&e), "ffcaa2342a0f4de08ac8182ca18516d0");
                assert_string_equal(event_type(&e), "sessionwatch.session.stalled");
        }

        /* An out-of-range enum value is treated as unknown, not read past a table. */
        Event e = {.kind = EVENT_TRANSITION, .session_id = "ses1", .status = (SessionStatus)200};
        assert_int_equal(event_priority(&e), 5);
        assert_string_equal(event_type(&e), "sessionwatch.session.unknown");
}

/* Renders the iovecs as "KEY=value" strings, NULL-terminated. */
static void assert_fields(const struct iovec *iov, int n, const char *const *expected)
{
        int i;

        for (i = 0; expected[i]; i++) {
                if (i >= n)
                        fail_msg("missing field '%s'", expected[i]);
                if (iov[i].iov_len != strlen(expected[i]) ||
                    memcmp(iov[i].iov_base, expected[i], iov[i].iov_len) != 0)
                        fail_msg("field %d is '%.*s', expected '%s'", i, (int)iov[i].iov_len,
                                 (const char *)iov[i].iov_base, expected[i]);
        }
        assert_int_equal(n, i);
}

static void test_journal(void **state)
{
        const SessionSnapshot *s = *state;
        struct iovec iov[EVENT_JOURNAL_FIELDS_MAX];
        EventBuffer storage = EVENT_BUFFER_NULL;
        Event e;
        int n;

        make_transition(&e, s, "Active");
        n = event_journal_fields(&e, iov, &storage);
        assert_fields(iov, n,
                      (const char *const[]){
                          "MESSAGE=Session 'MySession' (ses20220120za1pskd) Active \xe2\x86\x92 Failed",
                          "PRIORITY=3",
                          "MESSAGE_ID=c6535f30cb814da8b4e707838829121c",
                          "SESSION_ID=ses20220120za1pskd",
                          "SESSION_NAME=MySession",
                          "SESSION_STATUS=Failed",
                          "SESSION_PREVIOUS_STATUS=Active",
                          "RUNBOOK_ID=rbk20220120z15kl79",
                          "TEAM_ID=tea20220103zvy4auu",
                          "SESSION_UPDATED_AT=2022-01-11T22:35:45.238512Z",
                          "EVENT_ID=" ID_FAILED,
                          "SYSLOG_IDENTIFIER=sessionwatchd",
                          NULL,
                      });

        /* First observation, no name, no runbook, no team; the storage is
         * reused. */
        make_transition(&e, s, NULL);
        e.name = NULL;
        e.runbook_id = NULL;
        e.team_id = NULL;
        n = event_journal_fields(&e, iov, &storage);
        assert_fields(iov, n,
                      (const char *const[]){
                          "MESSAGE=Session ses20220120za1pskd is Failed",
                          "PRIORITY=3",
                          "MESSAGE_ID=c6535f30cb814da8b4e707838829121c",
                          "SESSION_ID=ses20220120za1pskd",
                          "SESSION_STATUS=Failed",
                          "SESSION_UPDATED_AT=2022-01-11T22:35:45.238512Z",
                          "EVENT_ID=" ID_FAILED,
                          "SYSLOG_IDENTIFIER=sessionwatchd",
                          NULL,
                      });

        assert_int_equal(event_init_gone(&e, "ses20220120za1pskd", "Active", T_UPDATED, SOURCE), 0);
        e.name = "MySession";
        n = event_journal_fields(&e, iov, &storage);
        assert_fields(iov, n,
                      (const char *const[]){
                          "MESSAGE=Session 'MySession' (ses20220120za1pskd) is gone (last status Active)",
                          "PRIORITY=4",
                          "MESSAGE_ID=6f198cb3aa0b499eabdebc30fcefb0ed",
                          "SESSION_ID=ses20220120za1pskd",
                          "SESSION_NAME=MySession",
                          "SESSION_PREVIOUS_STATUS=Active",
                          "SESSION_UPDATED_AT=2022-01-11T22:35:45.238512Z",
                          "EVENT_ID=" ID_GONE,
                          "SYSLOG_IDENTIFIER=sessionwatchd",
                          NULL,
                      });

        assert_int_equal(
            event_init_stalled(&e, "ses1", "Waiting", 0, (2 * 3600 + 5 * 60 + 7) * INT64_C(1000000), SOURCE),
            0);
        n = event_journal_fields(&e, iov, &storage);
        assert_true(n > 0);
        assert_int_equal(iov[0].iov_len,
                         strlen("MESSAGE=Session ses1 has been Waiting for 2h 5min without a change"));
        assert_memory_equal(iov[0].iov_base,
                            "MESSAGE=Session ses1 has been Waiting for 2h 5min without a change",
                            iov[0].iov_len);
        assert_memory_equal(iov[1].iov_base, "PRIORITY=4", 10);
        assert_memory_equal(iov[2].iov_base, "MESSAGE_ID=ffcaa2342a0f4de08ac8182ca18516d0", iov[2].iov_len);
        assert_memory_equal(iov[4].iov_base, "SESSION_STATUS=Waiting", iov[4].iov_len);
        assert_memory_equal(iov[5].iov_base, "SESSION_UPDATED_AT=1970-01-01T00:00:00.000000Z",
                            iov[5].iov_len);

        /* A name with a newline stays one field (sd_journal_sendv sends it
         * in its binary form). */
        make_transition(&e, s, "Active");
        e.name = "two\nlines";
        n = event_journal_fields(&e, iov, &storage);
        assert_memory_equal(iov[4].iov_base, "SESSION_NAME=two\nlines", iov[4].iov_len);

        /* An updatedAt that RFC 3339 cannot spell falls back to the raw text. */
        make_transition(&e, s, "Active");
        e.updated_at_us = INT64_MIN;
        n = event_journal_fields(&e, iov, &storage);
        assert_int_equal(n, 12);
        assert_memory_equal(iov[9].iov_base, "SESSION_UPDATED_AT=2022-01-11 22:35:45.238512+00",
                            iov[9].iov_len);
        e.updated_at_raw = NULL;
        n = event_journal_fields(&e, iov, &storage);
        assert_int_equal(n, 11);
        assert_memory_equal(iov[9].iov_base, "EVENT_ID=" ID_FAILED, iov[9].iov_len);

        event_buffer_done(&storage);
}

static void test_journal_every_status(void **state)
{
        static const char *const statuses[] = {"Pending", "Active",     "Waiting",   "Succeeded",
                                               "Failed",  "Cancelling", "Cancelled", "Exploded"};
        struct iovec iov[EVENT_JOURNAL_FIELDS_MAX];
        EventBuffer storage = EVENT_BUFFER_NULL;

        for (size_t i = 0; i < ELEMENTSOF(statuses); i++) {
                Event e = {
                    .kind = EVENT_TRANSITION,
                    .session_id = "ses1",
                    .status_raw = statuses[i],
                    .status = session_status_from_string(statuses[i], strlen(statuses[i])),
                    .previous_status_raw = "Pending",
                };
                char prio[32], mid[64], st[64];
                int n;

                assert_int_equal(event_make_id(e.id, e.session_id, e.status_raw, 0), 0);
                n = event_journal_fields(&e, iov, &storage);
                assert_int_equal(n, 9);
                snprintf(prio, sizeof(prio), "PRIORITY=%u", event_priority(&e));
                snprintf(mid, sizeof(mid), "MESSAGE_ID=%s", event_message_id(&e));
                snprintf(st, sizeof(st), "SESSION_STATUS=%s", statuses[i]);
                assert_int_equal(iov[1].iov_len, strlen(prio));
                assert_memory_equal(iov[1].iov_base, prio, iov[1].iov_len);
                assert_memory_equal(iov[2].iov_base, mid, iov[2].iov_len);
                assert_memory_equal(iov[4].iov_base, st, iov[4].iov_len);
        }
        event_buffer_done(&storage);
}

/* ------------------------------------------------------------------------ */

static void test_text(void **state)
{
        const SessionSnapshot *s = *state;
        char buf[256];
        Event e;
        int r;

        make_transition(&e, s, "Active");
        r = event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf, "10:32:35 ses20220120za1pskd 'MySession' Active \xe2\x86\x92 Failed");
        assert_int_equal(r, strlen(buf));

        make_transition(&e, s, NULL);
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf, "10:32:35 ses20220120za1pskd 'MySession' \xe2\x86\x92 Failed (new)");

        make_transition(&e, s, "Active");
        e.replayed = true;
        e.name = NULL;
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf, "10:32:35 ses20220120za1pskd Active \xe2\x86\x92 Failed (replayed)");

        e.replayed = false;
        e.skipped = true;
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(
            buf, "10:32:35 ses20220120za1pskd Active \xe2\x86\x92 Failed (a step in between was missed)");

        assert_int_equal(event_init_gone(&e, "ses1", "Waiting", 0, SOURCE), 0);
        e.time_us = T_EVENT;
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf, "10:32:35 ses1 Waiting \xe2\x86\x92 gone");

        assert_int_equal(event_init_stalled(&e, "ses1", "Waiting", 0, 3 * 86400 * INT64_C(1000000), SOURCE),
                         0);
        e.time_us = T_EVENT;
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf, "10:32:35 ses1 Waiting (stalled 3d 0h)");

        assert_int_equal(event_init_snapshot(&e, s, "Active", SOURCE), 0);
        e.time_us = T_EVENT;
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf, "10:32:35 ses20220120za1pskd 'MySession' Failed (snapshot)");

        /* Control characters from the API never break the line. */
        make_transition(&e, s, "Act\nive");
        e.name = "evil\r\n\x1b[31mname";
        event_format_text(&e, buf, sizeof(buf));
        assert_string_equal(buf,
                            "10:32:35 ses20220120za1pskd 'evil???[31mname' Act?ive \xe2\x86\x92 Failed");

        /* Too small: cut, terminated, and said so. */
        make_transition(&e, s, "Active");
        assert_int_equal(event_format_text(&e, buf, 12), -ENOBUFS);
        assert_string_equal(buf, "10:32:35 se");
        assert_int_equal(event_format_text(&e, buf, 1), -ENOBUFS);
        assert_string_equal(buf, "");
        assert_int_equal(event_format_text(&e, NULL, 0), -ENOBUFS);
        r = event_format_text(&e, buf, sizeof(buf));
        assert_int_equal(event_format_text(&e, buf, (size_t)r + 1), r);
        assert_int_equal(event_format_text(&e, buf, (size_t)r), -ENOBUFS);

        /* The time of day is local. */
        setenv("TZ", "Asia/Kolkata", 1);
        tzset();
        event_format_text(&e, buf, sizeof(buf));
        setenv("TZ", "UTC", 1);
        tzset();
        if (strncmp(buf, "10:32:35", 8) != 0) /* without tzdata, glibc falls back to UTC */
                assert_string_equal(buf,
                                    "16:02:35 ses20220120za1pskd 'MySession' Active \xe2\x86\x92 Failed");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_id_vectors),
            cmocka_unit_test(test_id_stable_and_distinct),
            cmocka_unit_test_setup_teardown(test_init, setup, teardown),
            cmocka_unit_test_setup_teardown(test_json_transition, setup, teardown),
            cmocka_unit_test(test_json_unknown_status),
            cmocka_unit_test_setup_teardown(test_json_gone_stalled_snapshot, setup, teardown),
            cmocka_unit_test(test_json_escaping),
            cmocka_unit_test(test_json_big_session),
            cmocka_unit_test(test_json_bad_time),
            cmocka_unit_test(test_priorities_and_ids),
            cmocka_unit_test_setup_teardown(test_journal, setup, teardown),
            cmocka_unit_test(test_journal_every_status),
            cmocka_unit_test_setup_teardown(test_text, setup, teardown),
        };

        setenv("TZ", "UTC", 1);
        tzset();
        return cmocka_run_group_tests(tests, NULL, NULL);
}
