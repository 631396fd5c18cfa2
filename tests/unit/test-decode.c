/* Unit tests for decode: session bodies (good, malformed, wrong-typed,
 * truncated at every byte, huge, deeply nested), list pages, the quick
 * scanner against the full decoder, and lenient timestamps. */
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

#include <json-c/json_object.h>

#include "decode.h"

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* A body shaped like the API's answer, with every field of
 * GetSessionResponse and nested "status" keys in the places a careless
 * scanner would trip over. */
static const char full_body[] =
    "{\"id\":\"ses20220120za1pskd\",\"name\":\"MySession\",\"runbookID\":\"rbk20220120z15kl79\","
    "\"teamID\":\"tea20220103zvy4auu\",\"createdAt\":\"2022-01-11 22:32:45.601486+00\","
    "\"createdBy\":\"usr20220103zlufhym\",\"isPrivate\":true,"
    "\"paramValues\":{\"status\":\"Failed\",\"limit\":\"20\",\"user\":\"eric \\\"the\\\" status\"},"
    "\"params\":[{\"slug\":\"status\",\"name\":\"Status\",\"type\":\"string\","
    "\"constraints\":{\"options\":[{\"label\":\"x\",\"value\":\"status\"}]},\"default\":null}],"
    "\"permissions\":[{\"action\":\"sessions.get\",\"status\":\"Cancelled\",\"userID\":null}],"
    "\"updatedBy\":\"ses20220120za1pskd\","
    "\"status\":\"Active\","
    "\"updatedAt\":\"2022-01-11 22:35:45.238512+00\"}";

#define MINIMAL "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}"
#define T_2022 INT64_C(1641940365601486)

/* Decodes `s` from an exactly sized heap copy, so that any read past the
 * end is caught by valgrind and ASan rather than landing in a literal's NUL. */
static int decode_copy(const char *s, size_t len, SessionSnapshot *ret, const char **ret_reason)
{
        char *copy = malloc(len ?: 1);
        int r;

        assert_non_null(copy);
        memcpy(copy, s, len);
        r = decode_session(copy, len, ret, ret_reason);
        /* The snapshot's views point into json-c's tree, never into the body. */
        free(copy);
        return r;
}

static int quick_copy(const char *s, size_t len, SessionQuick *ret, char **ret_copy)
{
        char *copy = malloc(len ?: 1);
        int r;

        assert_non_null(copy);
        memcpy(copy, s, len);
        r = decode_session_quick(copy, len, ret);
        *ret_copy = copy; /* the views point into it */
        return r;
}

/* ------------------------------------------------------------------------ */

typedef struct GoodCase {
        const char *name;
        const char *body;
        const char *id;
        const char *status_raw;
        SessionStatus status;
        int64_t updated_at_us;
        const char *session_name; /* NULL: expect absent */
        bool is_private;
} GoodCase;

static const GoodCase good_cases[] = {
    {"minimal", MINIMAL, "ses1", "Active", SESSION_STATUS_ACTIVE, T_2022, NULL, false},
    {"full", full_body, "ses20220120za1pskd", "Active", SESSION_STATUS_ACTIVE, INT64_C(1641940545238512),
     "MySession", true},
    {"nulls",
     "{\"id\":\"ses1\",\"name\":null,\"runbookID\":null,\"teamID\":null,\"createdAt\":null,"
     "\"createdBy\":null,\"isPrivate\":null,\"paramValues\":null,\"params\":null,\"permissions\":null,"
     "\"updatedBy\":null,\"status\":\"Failed\",\"updatedAt\":\"2022-01-11T22:32:45.601486Z\"}",
     "ses1", "Failed", SESSION_STATUS_FAILED, T_2022, NULL, false},
    {"unknown status",
     "{\"id\":\"ses1\",\"status\":\"Exploded\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", "ses1",
     "Exploded", SESSION_STATUS_UNKNOWN, T_2022, NULL, false},
    {"our own word 'unknown' is just another string",
     "{\"id\":\"ses1\",\"status\":\"unknown\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", "ses1",
     "unknown", SESSION_STATUS_UNKNOWN, T_2022, NULL, false},
    {"empty status is carried",
     "{\"id\":\"ses1\",\"status\":\"\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", "ses1", "",
     SESSION_STATUS_UNKNOWN, T_2022, NULL, false},
    {"case matters",
     "{\"id\":\"ses1\",\"status\":\"failed\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", "ses1",
     "failed", SESSION_STATUS_UNKNOWN, T_2022, NULL, false},
    {"unknown keys ignored",
     "{\"extra\":{\"status\":[1,2,{\"x\":null}]},\"id\":\"ses1\",\"future\":3.5e10,\"status\":\"Waiting\","
     "\"updatedAt\":\"2022-01-11 22:32:45.601486+00\",\"more\":[true,false,null,-0.5,\"\\u00e9\"]}",
     "ses1", "Waiting", SESSION_STATUS_WAITING, T_2022, NULL, false},
    {"whitespace everywhere",
     " \r\n\t{ \"id\" : \"ses1\" ,\n \"status\"\t:\"Pending\" , \"updatedAt\" : "
     "\"2022-01-11 22:32:45.601486+00\" , \"isPrivate\" : false }\n\n",
     "ses1", "Pending", SESSION_STATUS_PENDING, T_2022, NULL, false},
    {"escapes in name",
     "{\"id\":\"ses1\",\"name\":\"My \\\"quoted\\\" \\u00e9 \\/ session\\n\",\"status\":\"Cancelling\","
     "\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}",
     "ses1", "Cancelling", SESSION_STATUS_CANCELLING, T_2022, "My \"quoted\" \xc3\xa9 / session\n", false},
    {"escaped status",
     "{\"id\":\"ses1\",\"status\":\"Succ\\u0065eded\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}",
     "ses1", "Succeeded", SESSION_STATUS_SUCCEEDED, T_2022, NULL, false},
    {"null in paramValues",
     "{\"id\":\"ses1\",\"status\":\"Cancelled\",\"paramValues\":{\"a\":null,\"b\":\"x\"},"
     "\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}",
     "ses1", "Cancelled", SESSION_STATUS_CANCELLED, T_2022, NULL, false},
    {"duplicate key: json-c keeps the last",
     "{\"id\":\"ses1\",\"status\":\"Active\",\"status\":\"Failed\",\"updatedAt\":\"2022-01-11 "
     "22:32:45.601486+00\"}",
     "ses1", "Failed", SESSION_STATUS_FAILED, T_2022, NULL, false},
    {"unparsable createdAt is tolerated",
     "{\"id\":\"ses1\",\"status\":\"Active\",\"createdAt\":\"yesterday\",\"updatedAt\":\"2022-01-11 "
     "22:32:45.601486+00\"}",
     "ses1", "Active", SESSION_STATUS_ACTIVE, T_2022, NULL, false},
};

static void test_good(void **state)
{
        for (size_t i = 0; i < ELEMENTSOF(good_cases); i++) {
                const GoodCase *c = good_cases + i;
                SessionSnapshot s = SESSION_SNAPSHOT_NULL;
                const char *reason = NULL;
                int r;

                r = decode_copy(c->body, strlen(c->body), &s, &reason);
                if (r != 0)
                        fail_msg("case '%s': decode failed: %d %s", c->name, r, reason ?: "");
                assert_non_null(s.root);
                assert_string_equal(s.id, c->id);
                assert_int_equal(s.id_len, strlen(c->id));
                assert_string_equal(s.status_raw, c->status_raw);
                assert_int_equal(s.status_raw_len, strlen(c->status_raw));
                assert_int_equal(s.status, c->status);
                assert_int_equal(s.updated_at_us, c->updated_at_us);
                if (c->session_name)
                        assert_string_equal(s.name, c->session_name);
                else
                        assert_null(s.name);
                assert_int_equal(s.is_private, c->is_private);
                session_snapshot_done(&s);
                assert_null(s.root);
                session_snapshot_done(&s); /* twice is harmless */
        }
}

static void test_full_fields(void **state)
{
        SessionSnapshot s;
        const char *reason = NULL;

        assert_int_equal(decode_session(full_body, strlen(full_body), &s, &reason), 0);
        assert_string_equal(s.runbook_id, "rbk20220120z15kl79");
        assert_string_equal(s.team_id, "tea20220103zvy4auu");
        assert_string_equal(s.created_by, "usr20220103zlufhym");
        assert_string_equal(s.updated_by, "ses20220120za1pskd");
        assert_string_equal(s.created_at_raw, "2022-01-11 22:32:45.601486+00");
        assert_string_equal(s.updated_at_raw, "2022-01-11 22:35:45.238512+00");
        assert_int_equal(s.created_at_us, T_2022);
        assert_true(json_object_is_type(s.root, json_type_object));
        /* The root is the session as received: the extra structure is there. */
        assert_int_equal(json_object_object_length(s.root), 13);
        session_snapshot_done(&s);
}

/* ------------------------------------------------------------------------ */

typedef struct BadCase {
        const char *name;
        const char *body;
        size_t len; /* 0: strlen(body) */
        int error;
        const char *reason; /* a substring of the reason, or NULL */
} BadCase;

static const BadCase bad_cases[] = {
    {"empty", "", 0, -EBADMSG, "empty"},
    {"only whitespace", " \n\t ", 0, -EBADMSG, "empty"},
    {"not json", "Service Unavailable", 0, -EBADMSG, NULL},
    {"html", "<html><body>502 Bad Gateway</body></html>", 0, -EBADMSG, NULL},
    {"open brace", "{", 0, -EBADMSG, "truncated"},
    {"cut in key", "{\"id", 0, -EBADMSG, "truncated"},
    {"cut after colon", "{\"id\":", 0, -EBADMSG, "truncated"},
    {"cut in escape", "{\"id\":\"a\\", 0, -EBADMSG, "truncated"},
    {"cut in unicode escape", "{\"id\":\"a\\u00", 0, -EBADMSG, "truncated"},
    {"cut in literal", "{\"isPrivate\":tr", 0, -EBADMSG, "truncated"},
    {"trailing garbage", MINIMAL " x", 0, -EBADMSG, "trailing"},
    {"two objects", MINIMAL MINIMAL, 0, -EBADMSG, "trailing"},
    {"trailing comma", "{\"id\":\"ses1\",}", 0, -EBADMSG, NULL},
    {"trailing comma in array", "{\"params\":[1,]}", 0, -EBADMSG, NULL},
    {"NaN", "{\"id\":\"ses1\",\"x\":NaN}", 0, -EBADMSG, NULL},
    {"Infinity", "{\"id\":\"ses1\",\"x\":-Infinity}", 0, -EBADMSG, NULL},
    {"single quotes", "{'id':'ses1'}", 0, -EBADMSG, NULL},
    {"comment", "{\"id\":\"ses1\" /* hi */}", 0, -EBADMSG, NULL},
    {"leading zero", "{\"x\":01}", 0, -EBADMSG, NULL},
    {"bare dot", "{\"x\":1.}", 0, -EBADMSG, NULL},
    {"upper-case literal", "{\"x\":TRUE}", 0, -EBADMSG, NULL},
    {"raw newline in string", "{\"id\":\"ses\n1\"}", 0, -EBADMSG, "control"},
    {"bad escape", "{\"id\":\"\\x41\"}", 0, -EBADMSG, "escape"},
    {"bad unicode escape", "{\"id\":\"\\u12G4\"}", 0, -EBADMSG, "escape"},
    {"invalid UTF-8",
     "{\"id\":\"ses1\",\"name\":\"\xff\xfe\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11T00:00:00Z\"}",
     0, -EBADMSG, "UTF-8"},
    {"overlong UTF-8", "{\"id\":\"\xc0\xaf\"}", 0, -EBADMSG, "UTF-8"},
    {"UTF-8 surrogate", "{\"id\":\"\xed\xa0\x80\"}", 0, -EBADMSG, "UTF-8"},
    {"UTF-8 past U+10FFFF", "{\"id\":\"\xf4\x90\x80\x80\"}", 0, -EBADMSG, "UTF-8"},
    {"UTF-8 stray continuation", "{\"id\":\"a\x80\"}", 0, -EBADMSG, "UTF-8"},
    {"UTF-8 cut short", "{\"id\":\"\xe2\x86\"}", 0, -EBADMSG, "UTF-8"},
    {"embedded NUL byte", MINIMAL "\0", sizeof(MINIMAL), -EBADMSG, "NUL"},
    {"NUL byte inside", "{\"id\":\"se\0s1\"}", 14, -EBADMSG, "NUL"},
    {"unquoted key", "{id:\"ses1\"}", 0, -EBADMSG, NULL},
    {"missing colon", "{\"id\" \"ses1\"}", 0, -EBADMSG, NULL},
    {"array top level", "[" MINIMAL "]", 0, -EPROTO, "top level"},
    {"string top level", "\"ses1\"", 0, -EPROTO, "top level"},
    {"number top level", "123", 0, -EPROTO, "top level"},
    {"null top level", "null", 0, -EPROTO, "top level"},
    {"empty object", "{}", 0, -EPROTO, "missing"},
    {"missing id", "{\"status\":\"Active\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", 0, -EPROTO,
     "field 'id' is missing"},
    {"missing status", "{\"id\":\"ses1\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", 0, -EPROTO,
     "field 'status' is missing"},
    {"missing updatedAt", "{\"id\":\"ses1\",\"status\":\"Active\"}", 0, -EPROTO,
     "field 'updatedAt' is missing"},
    {"null status", "{\"id\":\"ses1\",\"status\":null,\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", 0,
     -EPROTO, "field 'status' is missing"},
    {"empty id", "{\"id\":\"\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", 0,
     -EPROTO, "field 'id' is empty"},
    {"bad updatedAt", "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"soon\"}", 0, -EPROTO,
     "field 'updatedAt' is not a valid timestamp"},
    {"NUL escape in status",
     "{\"id\":\"ses1\",\"status\":\"Fail\\u0000ed\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", 0,
     -EPROTO, "field 'status' contains a NUL"},
    {"NUL escape in id",
     "{\"id\":\"ses\\u00001\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11 22:32:45.601486+00\"}", 0,
     -EPROTO, "field 'id' contains a NUL"},
};

static void test_bad(void **state)
{
        for (size_t i = 0; i < ELEMENTSOF(bad_cases); i++) {
                const BadCase *c = bad_cases + i;
                size_t len = c->len ?: strlen(c->body);
                SessionSnapshot s = SESSION_SNAPSHOT_NULL;
                SessionQuick q;
                const char *reason = NULL;
                char *copy;
                int r;

                r = decode_copy(c->body, len, &s, &reason);
                if (r != c->error)
                        fail_msg("case '%s': got %d (%s), expected %d", c->name, r, reason ?: "", c->error);
                assert_null(s.root);
                assert_non_null(reason);
                if (c->reason && !strstr(reason, c->reason))
                        fail_msg("case '%s': reason '%s' does not mention '%s'", c->name, reason, c->reason);

                /* Whatever the full decoder refuses, the quick scanner must
                 * not vouch for. */
                assert_int_equal(quick_copy(c->body, len, &q, &copy), -EINVAL);
                free(copy);
        }
}

/* Each field of GetSessionResponse with a value of the wrong type. */
typedef struct TypeCase {
        const char *field;
        const char *value;
} TypeCase;

static const TypeCase type_cases[] = {
    {"id", "1"},
    {"id", "true"},
    {"id", "[\"ses1\"]"},
    {"id", "{\"id\":\"ses1\"}"},
    {"status", "4"},
    {"status", "false"},
    {"status", "[]"},
    {"status", "{}"},
    {"updatedAt", "1641940365"},
    {"updatedAt", "{}"},
    {"name", "7"},
    {"name", "[]"},
    {"runbookID", "1"},
    {"teamID", "true"},
    {"createdAt", "1641940365.5"},
    {"createdBy", "{}"},
    {"updatedBy", "[]"},
    {"isPrivate", "\"true\""},
    {"isPrivate", "1"},
    {"isPrivate", "{}"},
    {"paramValues", "[]"},
    {"paramValues", "\"a=b\""},
    {"paramValues", "{\"limit\":20}"},
    {"paramValues", "{\"a\":\"x\",\"b\":{}}"},
    {"paramValues", "{\"a\":[\"x\"]}"},
    {"params", "{}"},
    {"params", "\"x\""},
    {"permissions", "{}"},
    {"permissions", "false"},
};

static void test_wrong_types(void **state)
{
        for (size_t i = 0; i < ELEMENTSOF(type_cases); i++) {
                const TypeCase *c = type_cases + i;
                SessionSnapshot s = SESSION_SNAPSHOT_NULL;
                const char *reason = NULL;
                char body[512], needle[64];
                int r;

                /* The wrong value replaces the good one: a required field
                 * keeps its key, so the error must be about the type. */
                snprintf(
                    body, sizeof(body), "{%s\"%s\":%s}",
                    !strcmp(c->field, "id") ? "\"status\":\"Active\",\"updatedAt\":\"2022-01-11T00:00:00Z\","
                    : !strcmp(c->field, "status") ? "\"id\":\"ses1\",\"updatedAt\":\"2022-01-11T00:00:00Z\","
                    : !strcmp(c->field, "updatedAt")
                        ? "\"id\":\"ses1\",\"status\":\"Active\","
                        : "\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11T00:00:00Z\",",
                    c->field, c->value);

                r = decode_copy(body, strlen(body), &s, &reason);
                if (r != -EPROTO)
                        fail_msg("field '%s' = %s: got %d (%s)", c->field, c->value, r, reason ?: "");
                snprintf(needle, sizeof(needle), "field '%s' is not", c->field);
                if (!strstr(reason, needle))
                        fail_msg("field '%s' = %s: reason '%s'", c->field, c->value, reason);
                assert_null(s.root);
        }
}

/* A cut-off body must never decode, at whatever byte it was cut, and must
 * never crash; only the complete body succeeds. */
static void test_truncated_everywhere(void **state)
{
        size_t len = strlen(full_body);

        for (size_t k = 0; k <= len; k++) {
                SessionSnapshot s = SESSION_SNAPSHOT_NULL;
                SessionQuick q;
                const char *reason = NULL;
                char *copy;
                int r;

                r = decode_copy(full_body, k, &s, &reason);
                if (k < len) {
                        if (r != -EBADMSG)
                                fail_msg("cut at %zu of %zu: got %d", k, len, r);
                        assert_non_null(reason);
                        assert_null(s.root);
                } else
                        assert_int_equal(r, 0);
                session_snapshot_done(&s);

                r = quick_copy(full_body, k, &q, &copy);
                assert_int_equal(r, k < len ? -EINVAL : 0);
                free(copy);
        }
}

/* Deterministic byte mutations of a real body: nothing crashes, and
 * whenever both decoders accept a body they agree. */
static void test_mutations(void **state)
{
        size_t len = strlen(full_body);
        uint64_t rnd = 0x5eed;
        char *buf = malloc(len);

        assert_non_null(buf);
        for (unsigned iter = 0; iter < 20000; iter++) {
                static const char alphabet[] = "{}[]\":,\\ u0aZ\x01\xff.-e";
                SessionSnapshot s = SESSION_SNAPSHOT_NULL;
                SessionQuick q;
                const char *reason;
                int r, rq;

                memcpy(buf, full_body, len);
                for (unsigned m = 0; m < 1 + iter % 3; m++) {
                        rnd = rnd * 6364136223846793005ULL + 1442695040888963407ULL;
                        buf[(rnd >> 33) % len] = alphabet[(rnd >> 20) % (sizeof(alphabet) - 1)];
                }
                r = decode_session(buf, len, &s, &reason);
                rq = decode_session_quick(buf, len, &q);
                assert_true(r == 0 || r == -EBADMSG || r == -EPROTO);
                assert_true(rq == 0 || rq == -EINVAL);
                if (r == 0 && rq == 0) {
                        assert_int_equal(q.id_len, s.id_len);
                        assert_memory_equal(q.id, s.id, s.id_len);
                        assert_int_equal(q.status_raw_len, s.status_raw_len);
                        assert_memory_equal(q.status_raw, s.status_raw, s.status_raw_len);
                        assert_int_equal(q.status, s.status);
                        assert_int_equal(q.updated_at_us, s.updated_at_us);
                }
                session_snapshot_done(&s);
        }
        free(buf);
}

static char *make_body_with_name_of(size_t n, char fill)
{
        static const char head[] =
            "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11T00:00:00Z\",\"name\":\"";
        static const char tail[] = "\"}";
        char *b = malloc(sizeof(head) + n + sizeof(tail));

        assert_non_null(b);
        memcpy(b, head, sizeof(head) - 1);
        memset(b + sizeof(head) - 1, fill, n);
        memcpy(b + sizeof(head) - 1 + n, tail, sizeof(tail));
        return b;
}

static void test_huge(void **state)
{
        const size_t n = 2u << 20;
        SessionSnapshot s = SESSION_SNAPSHOT_NULL;
        SessionQuick q;
        const char *reason = NULL;
        char *b;
        int r;

        /* A 2 MiB name decodes like any other. */
        b = make_body_with_name_of(n, 'x');
        r = decode_session(b, strlen(b), &s, &reason);
        assert_int_equal(r, 0);
        assert_int_equal(strlen(s.name), n);
        session_snapshot_done(&s);
        assert_int_equal(decode_session_quick(b, strlen(b), &q), 0);
        assert_int_equal(q.status, SESSION_STATUS_ACTIVE);
        free(b);

        /* 2 MiB of a raw control byte in a string is refused cleanly. */
        b = make_body_with_name_of(n, '\x01');
        assert_int_equal(decode_session(b, strlen(b), &s, &reason), -EBADMSG);
        assert_int_equal(decode_session_quick(b, strlen(b), &q), -EINVAL);
        free(b);

        /* A long array of params. */
        {
                const size_t count = 100000;
                size_t cap = count * 16 + 256, len = 0;

                b = malloc(cap);
                assert_non_null(b);
                len += (size_t)snprintf(b + len, cap - len,
                                        "{\"id\":\"ses1\",\"status\":\"Failed\",\"updatedAt\":\"2022-01-"
                                        "11T00:00:00Z\",\"params\":[");
                for (size_t i = 0; i < count; i++)
                        len += (size_t)snprintf(b + len, cap - len, "%s{\"status\":1}", i ? "," : "");
                len += (size_t)snprintf(b + len, cap - len, "]}");
                assert_int_equal(decode_session(b, len, &s, &reason), 0);
                assert_int_equal(s.status, SESSION_STATUS_FAILED);
                session_snapshot_done(&s);
                assert_int_equal(decode_session_quick(b, len, &q), 0);
                assert_int_equal(q.status, SESSION_STATUS_FAILED);
                free(b);
        }
}

/* A body whose "params" value nests `depth` arrays; the whole body is then
 * depth + 1 containers deep. */
static char *make_nested(size_t depth, size_t *ret_len)
{
        static const char head[] =
            "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"2022-01-11T00:00:00Z\",\"params\":";
        size_t len = sizeof(head) - 1 + 2 * depth + 1;
        char *b = malloc(len);

        assert_non_null(b);
        memcpy(b, head, sizeof(head) - 1);
        memset(b + sizeof(head) - 1, '[', depth);
        memset(b + sizeof(head) - 1 + depth, ']', depth);
        b[len - 1] = '}';
        *ret_len = len;
        return b;
}

static void test_deep(void **state)
{
        static const struct {
                size_t depth;
                int error;
        } cases[] = {
            {1, 0},           {DECODE_MAX_DEPTH - 1, 0}, {DECODE_MAX_DEPTH, -EBADMSG},
            {1000, -EBADMSG}, {1000000, -EBADMSG},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                SessionSnapshot s = SESSION_SNAPSHOT_NULL;
                SessionQuick q;
                const char *reason = NULL;
                size_t len;
                char *b = make_nested(cases[i].depth, &len);
                int r;

                r = decode_session(b, len, &s, &reason);
                if (r != cases[i].error)
                        fail_msg("depth %zu: got %d (%s)", cases[i].depth, r, reason ?: "");
                if (r < 0)
                        assert_non_null(strstr(reason, "deep"));
                session_snapshot_done(&s);
                assert_int_equal(decode_session_quick(b, len, &q), cases[i].error == 0 ? 0 : -EINVAL);
                free(b);
        }
}

/* ------------------------------------------------------------------------ */

static void test_list(void **state)
{
        static const char page[] =
            "{\"sessions\":[" MINIMAL
            ",{\"id\":\"ses2\",\"status\":\"Boom\",\"updatedAt\":\"2022-01-11T22:32:45.601486Z\"},"
            "{\"id\":\"ses3\"},7]}";
        json_object *root, *array;
        SessionSnapshot s;
        const char *reason = NULL;
        int n;

        n = decode_session_list(page, strlen(page), &root, &array, &reason);
        assert_int_equal(n, 4);
        assert_non_null(root);
        assert_non_null(array);

        assert_int_equal(decode_session_object(json_object_array_get_idx(array, 0), &s, &reason), 0);
        assert_string_equal(s.id, "ses1");
        /* The snapshot holds its own reference: the page can go first. */
        json_object_put(root);
        assert_string_equal(s.status_raw, "Active");
        assert_int_equal(s.updated_at_us, T_2022);
        session_snapshot_done(&s);

        n = decode_session_list(page, strlen(page), &root, &array, &reason);
        assert_int_equal(n, 4);
        assert_int_equal(decode_session_object(json_object_array_get_idx(array, 1), &s, &reason), 0);
        assert_int_equal(s.status, SESSION_STATUS_UNKNOWN);
        assert_string_equal(s.status_raw, "Boom");
        session_snapshot_done(&s);
        assert_int_equal(decode_session_object(json_object_array_get_idx(array, 2), &s, &reason), -EPROTO);
        assert_string_equal(reason, "field 'status' is missing");
        assert_int_equal(decode_session_object(json_object_array_get_idx(array, 3), &s, &reason), -EPROTO);
        assert_non_null(strstr(reason, "not a JSON object"));
        assert_int_equal(decode_session_object(NULL, &s, &reason), -EPROTO);
        json_object_put(root);

        /* Empty pages in the shapes a Go server produces. */
        static const char *const empty[] = {"{\"sessions\":[]}", "{\"sessions\":null}", "{}"};
        for (size_t i = 0; i < ELEMENTSOF(empty); i++) {
                n = decode_session_list(empty[i], strlen(empty[i]), &root, &array, &reason);
                assert_int_equal(n, 0);
                assert_non_null(root);
                json_object_put(root);
        }

        static const struct {
                const char *body;
                int error;
        } bad[] = {
            {"{\"sessions\":{}}", -EPROTO},
            {"{\"sessions\":\"x\"}", -EPROTO},
            {"[]", -EPROTO},
            {"{\"sessions\":[", -EBADMSG},
            {"", -EBADMSG},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                root = array = (json_object *)1;
                n = decode_session_list(bad[i].body, strlen(bad[i].body), &root, &array, &reason);
                assert_int_equal(n, bad[i].error);
                assert_null(root);
                assert_null(array);
        }
}

/* ------------------------------------------------------------------------ */

typedef struct QuickCase {
        const char *name;
        const char *body;
        int error;
        const char *status; /* expected when error == 0 */
        const char *updated_at;
} QuickCase;

#define UPD "2022-01-11 22:32:45.601486+00"

static const QuickCase quick_cases[] = {
    {"minimal", MINIMAL, 0, "Active", UPD},
    {"full, with nested status keys first", full_body, 0, "Active", "2022-01-11 22:35:45.238512+00"},
    {"any order", "{\"updatedAt\":\"" UPD "\",\"status\":\"Failed\",\"id\":\"ses1\"}", 0, "Failed", UPD},
    {"status key inside paramValues first",
     "{\"paramValues\":{\"status\":\"Failed\",\"updatedAt\":\"2000-01-01T00:00:00Z\"},\"id\":\"ses1\","
     "\"status\":\"Waiting\",\"updatedAt\":\"" UPD "\"}",
     0, "Waiting", UPD},
    {"status key inside params and permissions",
     "{\"id\":\"ses1\",\"params\":[{\"status\":\"Failed\"},[{\"status\":\"x\"}]],"
     "\"permissions\":[{\"a\":{\"status\":\"Cancelled\"}}],\"status\":\"Pending\",\"updatedAt\":\"" UPD
     "\"}",
     0, "Pending", UPD},
    {"status text inside a string value",
     "{\"id\":\"ses1\",\"name\":\"\\\",\\\"status\\\":\\\"Failed\",\"status\":\"Active\",\"updatedAt\":"
     "\"" UPD "\"}",
     0, "Active", UPD},
    {"escaped quotes and backslashes before",
     "{\"id\":\"ses1\",\"name\":\"a\\\\\",\"x\":\"\\\\\\\"status\\\"\",\"status\":\"Active\",\"updatedAt\":"
     "\"" UPD "\"}",
     0, "Active", UPD},
    {"a key named like a value",
     "{\"Failed\":\"status\",\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"" UPD "\"}", 0, "Active",
     UPD},
    {"whitespace",
     "\n{ \"id\" :\t\"ses1\" , \"status\"\r\n:\n\"Cancelled\" ,\"updatedAt\" : \"" UPD "\" }\n", 0,
     "Cancelled", UPD},
    {"unknown status", "{\"id\":\"ses1\",\"status\":\"Exploded\",\"updatedAt\":\"" UPD "\"}", 0, "Exploded",
     UPD},
    {"numbers and literals around",
     "{\"a\":-1.5e+3,\"b\":0,\"c\":[true,false,null],\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":"
     "\"" UPD "\",\"d\":{}}",
     0, "Active", UPD},
    {"duplicate status",
     "{\"id\":\"ses1\",\"status\":\"Active\",\"status\":\"Failed\",\"updatedAt\":\"" UPD "\"}", -EINVAL,
     NULL, NULL},
    {"escaped key",
     "{\"id\":\"ses1\",\"st\\u0061tus\":\"Failed\",\"status\":\"Active\",\"updatedAt\":\"" UPD "\"}",
     -EINVAL, NULL, NULL},
    {"escape in status", "{\"id\":\"ses1\",\"status\":\"Act\\u0069ve\",\"updatedAt\":\"" UPD "\"}", -EINVAL,
     NULL, NULL},
    {"non-ASCII status", "{\"id\":\"ses1\",\"status\":\"Act\xc3\xa9\",\"updatedAt\":\"" UPD "\"}", -EINVAL,
     NULL, NULL},
    {"status not a string", "{\"id\":\"ses1\",\"status\":3,\"updatedAt\":\"" UPD "\"}", -EINVAL, NULL, NULL},
    {"status null", "{\"id\":\"ses1\",\"status\":null,\"updatedAt\":\"" UPD "\"}", -EINVAL, NULL, NULL},
    {"status an object", "{\"id\":\"ses1\",\"status\":{\"status\":\"Active\"},\"updatedAt\":\"" UPD "\"}",
     -EINVAL, NULL, NULL},
    {"missing status", "{\"id\":\"ses1\",\"paramValues\":{\"status\":\"Active\"},\"updatedAt\":\"" UPD "\"}",
     -EINVAL, NULL, NULL},
    {"missing id", "{\"status\":\"Active\",\"updatedAt\":\"" UPD "\"}", -EINVAL, NULL, NULL},
    {"empty id", "{\"id\":\"\",\"status\":\"Active\",\"updatedAt\":\"" UPD "\"}", -EINVAL, NULL, NULL},
    {"bad updatedAt", "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"2022-13-01T00:00:00Z\"}",
     -EINVAL, NULL, NULL},
    {"top-level array", "[{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"" UPD "\"}]", -EINVAL, NULL,
     NULL},
    {"trailing data", MINIMAL ",", -EINVAL, NULL, NULL},
    {"unbalanced", "{\"id\":\"ses1\",\"status\":\"Active\",\"updatedAt\":\"" UPD "\",\"p\":[}", -EINVAL,
     NULL, NULL},
    {"unterminated nested string",
     "{\"id\":\"ses1\",\"x\":\"\\\"}\",\"status\":\"Active\",\"updatedAt\":\"" UPD "\"", -EINVAL, NULL,
     NULL},
};

static void test_quick(void **state)
{
        for (size_t i = 0; i < ELEMENTSOF(quick_cases); i++) {
                const QuickCase *c = quick_cases + i;
                SessionQuick q;
                SessionSnapshot s;
                const char *reason;
                char *copy;
                int r;

                r = quick_copy(c->body, strlen(c->body), &q, &copy);
                if (r != c->error)
                        fail_msg("case '%s': got %d, expected %d", c->name, r, c->error);
                if (r == 0) {
                        assert_int_equal(q.status_raw_len, strlen(c->status));
                        assert_memory_equal(q.status_raw, c->status, q.status_raw_len);
                        assert_int_equal(q.updated_at_raw_len, strlen(c->updated_at));
                        assert_memory_equal(q.updated_at_raw, c->updated_at, q.updated_at_raw_len);

                        /* The quick answer is the full decoder's answer. */
                        assert_int_equal(decode_session(c->body, strlen(c->body), &s, &reason), 0);
                        assert_int_equal(q.id_len, s.id_len);
                        assert_memory_equal(q.id, s.id, s.id_len);
                        assert_int_equal(q.status, s.status);
                        assert_int_equal(q.updated_at_us, s.updated_at_us);
                        session_snapshot_done(&s);
                } else
                        assert_null(q.status_raw);
                free(copy);
        }
}

/* ------------------------------------------------------------------------ */

static void test_timestamps_good(void **state)
{
        static const struct {
                const char *s;
                int64_t us;
        } cases[] = {
            {"2022-01-11 22:32:45.601486+00", T_2022},
            {"2022-01-11T22:32:45.601486Z", T_2022},
            {"2022-01-11t22:32:45.601486z", T_2022},
            {"2022-01-11T22:32:45.601486+00:00", T_2022},
            {"2022-01-11T22:32:45.601486-00:00", T_2022},
            {"2022-01-11T22:32:45.601486+0000", T_2022},
            {"2022-01-11T22:32:45.6014869Z", T_2022},   /* truncated, not rounded */
            {"2022-01-11T22:32:45.601486999Z", T_2022}, /* nine digits */
            {"2022-01-11T22:32:45.6Z", INT64_C(1641940365600000)},
            {"2022-01-11T22:32:45Z", INT64_C(1641940365000000)},
            {"2022-01-11 22:32:45+05:30", INT64_C(1641920565000000)},
            {"2022-01-11 22:32:45+0530", INT64_C(1641920565000000)},
            {"2022-01-11 22:32:45-07", INT64_C(1641965565000000)},
            {"2024-02-29T23:59:59.999999Z", INT64_C(1709251199999999)},
            {"2000-02-29T00:00:00Z", INT64_C(951782400000000)},
            {"1970-01-01T00:00:00Z", 0},
            {"1969-12-31T23:59:59.5Z", -500000},
            {"0001-01-01T00:00:00Z", INT64_C(-62135596800000000)},
            {"9999-12-31T23:59:59.999999Z", INT64_C(253402300799999999)},
            {"2016-12-31T23:59:60Z", INT64_C(1483228800000000)}, /* a leap second lands on the next minute */
            {"2026-11-29T10:32:35.123456Z", INT64_C(1795948355123456)},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int64_t us = -1;
                int r = decode_timestamp(cases[i].s, &us);

                if (r != 0 || us != cases[i].us)
                        fail_msg("'%s': r=%d us=%" PRIi64 ", expected %" PRIi64, cases[i].s, r, us,
                                 cases[i].us);
        }
}

static void test_timestamps_bad(void **state)
{
        static const char *const cases[] = {
            "",
            "2022",
            "2022-01-11",
            "2022-01-11 22:32",
            "2022-01-11 22:32:45",        /* no zone */
            "2022-01-11 22:32:45.601486", /* no zone */
            "2022-01-11_22:32:45Z",
            "2022-01-11 22:32:45.Z",
            "2022-01-11 22:32:45.1234567890Z",
            "2022-1-11 22:32:45Z",
            "22-01-11 22:32:45Z",
            "2022-00-11 22:32:45Z",
            "2022-13-11 22:32:45Z",
            "2022-01-00 22:32:45Z",
            "2022-01-32 22:32:45Z",
            "2022-02-29 00:00:00Z",
            "1900-02-29 00:00:00Z",
            "2022-04-31 00:00:00Z",
            "2022-01-11 24:00:00Z",
            "2022-01-11 23:60:00Z",
            "2022-01-11 23:59:61Z",
            "2022-01-11 22:32:45+5",
            "2022-01-11 22:32:45+05:3",
            "2022-01-11 22:32:45+053",
            "2022-01-11 22:32:45+24",
            "2022-01-11 22:32:45+05:60",
            "2022-01-11 22:32:45+05:",
            "2022-01-11 22:32:45ZZ",
            "2022-01-11 22:32:45Z ",
            " 2022-01-11 22:32:45Z",
            "2022-01-11 22:32:45 UTC",
            "2022-01-11 -2:32:45Z",
            "+022-01-11 22:32:45Z",
            "2022-01-11 22:32:45.+00",
            "2022-01-11 22:32:45.60a+00",
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int64_t us = 42;

                if (decode_timestamp(cases[i], &us) != -EINVAL)
                        fail_msg("'%s' was accepted", cases[i]);
                assert_int_equal(us, 42);
        }
        assert_int_equal(decode_timestamp(NULL, &(int64_t){0}), -EINVAL);

        /* Not NUL-terminated: the length is the bound. */
        int64_t us;
        assert_int_equal(decode_timestamp_n("2022-01-11T22:32:45.601486Zjunk", 27, &us), 0);
        assert_int_equal(us, T_2022);
        assert_int_equal(decode_timestamp_n("2022-01-11T22:32:45.601486Z", 26, &us), -EINVAL);
}

static void test_timestamps_format(void **state)
{
        static const struct {
                int64_t us;
                const char *s;
        } cases[] = {
            {INT64_C(1795948355123456), "2026-11-29T10:32:35.123456Z"},
            {T_2022, "2022-01-11T22:32:45.601486Z"},
            {0, "1970-01-01T00:00:00.000000Z"},
            {-1, "1969-12-31T23:59:59.999999Z"},
            {-500000, "1969-12-31T23:59:59.500000Z"},
            {INT64_C(951782400000000), "2000-02-29T00:00:00.000000Z"},
            {INT64_C(-62167219200000000), "0000-01-01T00:00:00.000000Z"},
            {INT64_C(253402300799999999), "9999-12-31T23:59:59.999999Z"},
        };
        char buf[TIMESTAMP_RFC3339_MAX];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int64_t back;

                assert_int_equal(format_timestamp_rfc3339(cases[i].us, buf), 27);
                assert_string_equal(buf, cases[i].s);
                assert_int_equal(decode_timestamp(buf, &back), 0);
                assert_int_equal(back, cases[i].us);
        }
        assert_int_equal(format_timestamp_rfc3339(INT64_C(-62167219200000001), buf), -ERANGE);
        assert_int_equal(format_timestamp_rfc3339(INT64_C(253402300800000000), buf), -ERANGE);
        assert_int_equal(format_timestamp_rfc3339(INT64_MIN, buf), -ERANGE);
        assert_int_equal(format_timestamp_rfc3339(INT64_MAX, buf), -ERANGE);

        /* Round trip over a spread of days, both ways across the epoch. */
        for (int64_t d = -719000; d <= 2900000; d += 997) {
                int64_t us = d * INT64_C(86400000000) + (d & 0xffff) * INT64_C(1000003), back;

                assert_int_equal(format_timestamp_rfc3339(us, buf), 27);
                assert_int_equal(decode_timestamp(buf, &back), 0);
                assert_int_equal(back, us);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_good),
            cmocka_unit_test(test_full_fields),
            cmocka_unit_test(test_bad),
            cmocka_unit_test(test_wrong_types),
            cmocka_unit_test(test_truncated_everywhere),
            cmocka_unit_test(test_mutations),
            cmocka_unit_test(test_huge),
            cmocka_unit_test(test_deep),
            cmocka_unit_test(test_list),
            cmocka_unit_test(test_quick),
            cmocka_unit_test(test_timestamps_good),
            cmocka_unit_test(test_timestamps_bad),
            cmocka_unit_test(test_timestamps_format),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
