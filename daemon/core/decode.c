#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json_object.h>
#include <json-c/json_tokener.h>
#include <json-c/linkhash.h>

#include "decode.h"

/* ------------------------------------------------------------------------
 * A strict JSON grammar scanner (RFC 8259), allocation-free.
 *
 * It has two jobs. decode_session() runs it before json-c, because json-c's
 * tokenizer, even in strict mode, accepts NaN, Infinity, single-quoted
 * strings and raw control characters inside strings; the first two would
 * otherwise come back out of json-c's serializer when the session object is
 * embedded in an event, and the event must be valid JSON. And
 * decode_session_quick() runs it alone, capturing the three top-level values
 * it needs on the way, so a poll whose status did not change costs one pass
 * over the bytes and no allocation.
 * ------------------------------------------------------------------------ */

typedef struct ScanValue {
        const char *s; /* the string's contents, between the quotes */
        size_t len;
        bool seen;
        bool is_string;
        bool escaped; /* contains a backslash escape: the raw bytes are not the value */
} ScanValue;

enum {
        SCAN_KEY_ID,
        SCAN_KEY_STATUS,
        SCAN_KEY_UPDATED_AT,
        _SCAN_KEY_MAX,
};

typedef struct Scanner {
        const char *p;
        const char *end;
        const char *reason;
        /* When not NULL, the values of the top-level keys above are recorded;
         * a duplicate of one of them, or an escaped top-level key (which
         * might spell one of them), sets `unusual`. */
        ScanValue *capture;
        bool unusual;
} Scanner;

static int scan_fail(Scanner *s, const char *reason)
{
        /* Running out of input is the signature of a truncated body: say so,
         * since that is what an operator wants to know about a cut-off
         * response. */
        s->reason = s->p >= s->end ? "truncated JSON" : reason;
        return -EBADMSG;
}

static inline bool is_ws(char c)
{
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline void scan_ws(Scanner *s)
{
        while (s->p < s->end && is_ws(*s->p))
                s->p++;
}

static inline bool is_hex(char c)
{
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Checks one multi-byte UTF-8 sequence at s->p (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF) and steps over it. Only
 * strings can hold such bytes, so this is the whole of the body's UTF-8
 * check, and ASCII-only bodies never get here. */
static int scan_utf8(Scanner *s)
{
        const unsigned char *p = (const unsigned char *)s->p;
        unsigned n, lo = 0x80, hi = 0xbf;

        if (p[0] >= 0xc2 && p[0] <= 0xdf)
                n = 1;
        else if (p[0] >= 0xe0 && p[0] <= 0xef) {
                n = 2;
                if (p[0] == 0xe0)
                        lo = 0xa0; /* overlong */
                else if (p[0] == 0xed)
                        hi = 0x9f; /* surrogates */
        } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
                n = 3;
                if (p[0] == 0xf0)
                        lo = 0x90; /* overlong */
                else if (p[0] == 0xf4)
                        hi = 0x8f; /* past U+10FFFF */
        } else
                return scan_fail(s, "invalid UTF-8 in a JSON string");

        for (unsigned i = 1; i <= n; i++) {
                if ((size_t)(s->end - s->p) <= i) {
                        s->p = s->end;
                        return scan_fail(s, "truncated JSON");
                }
                if (p[i] < (i == 1 ? lo : 0x80) || p[i] > (i == 1 ? hi : 0xbf))
                        return scan_fail(s, "invalid UTF-8 in a JSON string");
        }
        s->p += n + 1;
        return 0;
}

/* Expects s->p at the opening quote. On success s->p is past the closing
 * quote and *ret (if not NULL) describes the contents. */
static int scan_string(Scanner *s, ScanValue *ret)
{
        const char *start;
        bool escaped = false;
        int r;

        assert(s->p < s->end && *s->p == '"');
        start = ++s->p;

        while (s->p < s->end) {
                unsigned char c = (unsigned char)*s->p;

                if (c == '"') {
                        if (ret) {
                                ret->s = start;
                                ret->len = (size_t)(s->p - start);
                                ret->escaped = escaped;
                                ret->is_string = true;
                        }
                        s->p++;
                        return 0;
                }
                if (c < 0x20)
                        return scan_fail(s, "control character in a JSON string");
                if (c >= 0x80) {
                        r = scan_utf8(s);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (c == '\\') {
                        escaped = true;
                        s->p++;
                        if (s->p >= s->end)
                                return scan_fail(s, "truncated JSON");
                        switch (*s->p) {
                        case '"':
                        case '\\':
                        case '/':
                        case 'b':
                        case 'f':
                        case 'n':
                        case 'r':
                        case 't':
                                break;
                        case 'u':
                                for (unsigned i = 0; i < 4; i++) {
                                        s->p++;
                                        if (s->p >= s->end)
                                                return scan_fail(s, "truncated JSON");
                                        if (!is_hex(*s->p))
                                                return scan_fail(s, "invalid \\u escape in a JSON string");
                                }
                                break;
                        default:
                                return scan_fail(s, "invalid escape in a JSON string");
                        }
                }
                s->p++;
        }

        return scan_fail(s, "truncated JSON");
}

static int scan_digits(Scanner *s)
{
        const char *start = s->p;

        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
                s->p++;
        return s->p > start ? 0 : scan_fail(s, "invalid JSON number");
}

static int scan_number(Scanner *s)
{
        int r;

        if (*s->p == '-')
                s->p++;
        if (s->p >= s->end)
                return scan_fail(s, "truncated JSON");
        if (*s->p == '0')
                s->p++;
        else {
                r = scan_digits(s);
                if (r < 0)
                        return r;
        }
        if (s->p < s->end && *s->p == '.') {
                s->p++;
                r = scan_digits(s);
                if (r < 0)
                        return r;
        }
        if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
                s->p++;
                if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
                        s->p++;
                r = scan_digits(s);
                if (r < 0)
                        return r;
        }
        /* A number that ends the input cannot be the end of a valid body
         * (which is an object), so the caller's next expectation reports it. */
        return 0;
}

static int scan_literal(Scanner *s, const char *word)
{
        size_t n = strlen(word);

        if ((size_t)(s->end - s->p) < n)
                return memcmp(s->p, word, (size_t)(s->end - s->p)) == 0
                           ? scan_fail(s, "truncated JSON")
                           : scan_fail(s, "invalid JSON literal");
        if (memcmp(s->p, word, n) != 0)
                return scan_fail(s, "invalid JSON literal");
        s->p += n;
        return 0;
}

static int scan_value(Scanner *s, unsigned depth, ScanValue *ret);

static int scan_top_key(Scanner *s, const ScanValue *key, ScanValue **ret_slot)
{
        static const struct {
                const char *name;
                size_t len;
        } keys[_SCAN_KEY_MAX] = {
            [SCAN_KEY_ID] = {"id", 2},
            [SCAN_KEY_STATUS] = {"status", 6},
            [SCAN_KEY_UPDATED_AT] = {"updatedAt", 9},
        };

        *ret_slot = NULL;

        /* An escaped key might decode to one of ours ("st\u0061tus"): leave
         * such bodies to json-c. */
        if (key->escaped) {
                s->unusual = true;
                return 0;
        }

        for (unsigned i = 0; i < _SCAN_KEY_MAX; i++)
                if (key->len == keys[i].len && memcmp(key->s, keys[i].name, key->len) == 0) {
                        if (s->capture[i].seen)
                                s->unusual = true; /* json-c keeps the last one; do not guess */
                        s->capture[i] = (ScanValue){.seen = true};
                        *ret_slot = &s->capture[i];
                        break;
                }
        return 0;
}

static int scan_object(Scanner *s, unsigned depth)
{
        int r;

        assert(*s->p == '{');
        s->p++;
        scan_ws(s);
        if (s->p >= s->end)
                return scan_fail(s, "truncated JSON");
        if (*s->p == '}') {
                s->p++;
                return 0;
        }

        for (;;) {
                ScanValue key = {}, *slot = NULL;

                if (s->p >= s->end)
                        return scan_fail(s, "truncated JSON");
                if (*s->p != '"')
                        return scan_fail(s, "expected a string key in a JSON object");
                r = scan_string(s, &key);
                if (r < 0)
                        return r;
                if (depth == 1 && s->capture) {
                        r = scan_top_key(s, &key, &slot);
                        if (r < 0)
                                return r;
                }
                scan_ws(s);
                if (s->p >= s->end)
                        return scan_fail(s, "truncated JSON");
                if (*s->p != ':')
                        return scan_fail(s, "expected ':' in a JSON object");
                s->p++;
                scan_ws(s);
                r = scan_value(s, depth, slot);
                if (r < 0)
                        return r;
                scan_ws(s);
                if (s->p >= s->end)
                        return scan_fail(s, "truncated JSON");
                if (*s->p == '}') {
                        s->p++;
                        return 0;
                }
                if (*s->p != ',')
                        return scan_fail(s, "expected ',' or '}' in a JSON object");
                s->p++;
                scan_ws(s);
        }
}

static int scan_array(Scanner *s, unsigned depth)
{
        int r;

        assert(*s->p == '[');
        s->p++;
        scan_ws(s);
        if (s->p >= s->end)
                return scan_fail(s, "truncated JSON");
        if (*s->p == ']') {
                s->p++;
                return 0;
        }

        for (;;) {
                r = scan_value(s, depth, NULL);
                if (r < 0)
                        return r;
                scan_ws(s);
                if (s->p >= s->end)
                        return scan_fail(s, "truncated JSON");
                if (*s->p == ']') {
                        s->p++;
                        return 0;
                }
                if (*s->p != ',')
                        return scan_fail(s, "expected ',' or ']' in a JSON array");
                s->p++;
                scan_ws(s);
        }
}

/* `depth` is the number of containers around the value. The recursion is
 * bounded by DECODE_MAX_DEPTH, so the stack stays small whatever the input. */
static int scan_value(Scanner *s, unsigned depth, ScanValue *ret)
{
        if (s->p >= s->end)
                return scan_fail(s, "truncated JSON");

        switch (*s->p) {
        case '{':
        case '[':
                if (depth >= DECODE_MAX_DEPTH)
                        return scan_fail(s, "JSON nested too deeply");
                return *s->p == '{' ? scan_object(s, depth + 1) : scan_array(s, depth + 1);
        case '"':
                return scan_string(s, ret);
        case 't':
                return scan_literal(s, "true");
        case 'f':
                return scan_literal(s, "false");
        case 'n':
                return scan_literal(s, "null");
        case '-':
        case '0' ... '9':
                return scan_number(s);
        default:
                return scan_fail(s, "invalid JSON");
        }
}

/* Checks the whole body: one JSON value (an object is not required here;
 * the callers check the type) and nothing but whitespace after it. */
static int scan_body(Scanner *s)
{
        int r;

        scan_ws(s);
        if (s->p >= s->end) {
                s->reason = "empty body";
                return -EBADMSG;
        }
        r = scan_value(s, 0, NULL);
        if (r < 0)
                return r;
        scan_ws(s);
        if (s->p < s->end) {
                s->reason = "trailing data after the JSON value";
                return -EBADMSG;
        }
        return 0;
}

/* ------------------------------------------------------------------------
 * Timestamps
 * ------------------------------------------------------------------------ */

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil): exact integer arithmetic, no tables, no TZ, no locale. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
        int64_t era, yoe, doy, doe;

        y -= m <= 2;
        era = (y >= 0 ? y : y - 399) / 400;
        yoe = y - era * 400;
        doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
        doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
}

/* The inverse of days_from_civil(). */
static void civil_from_days(int64_t z, int64_t *ret_y, unsigned *ret_m, unsigned *ret_d)
{
        int64_t era, doe, yoe, y, doy, mp;

        z += 719468;
        era = (z >= 0 ? z : z - 146096) / 146097;
        doe = z - era * 146097;
        yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        y = yoe + era * 400;
        doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        mp = (5 * doy + 2) / 153;
        *ret_d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
        *ret_m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
        *ret_y = y + (*ret_m <= 2);
}

static bool is_leap(int64_t y)
{
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
        static const unsigned days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

        return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Reads exactly n decimal digits. */
static bool read_digits(const char **p, const char *end, unsigned n, unsigned *ret)
{
        unsigned v = 0;

        if ((size_t)(end - *p) < n)
                return false;
        for (unsigned i = 0; i < n; i++) {
                char c = (*p)[i];
                if (c < '0' || c > '9')
                        return false;
                v = v * 10 + (unsigned)(c - '0');
        }
        *p += n;
        *ret = v;
        return true;
}

static bool read_char(const char **p, const char *end, char c)
{
        if (*p >= end || **p != c)
                return false;
        (*p)++;
        return true;
}

int decode_timestamp_n(const char *s, size_t len, int64_t *ret_usec)
{
        const char *p = s, *end = s + len;
        unsigned year, month, day, hour, minute, second, usec = 0, oh = 0, om = 0;
        int64_t days, t;
        int sign;

        assert(s || len == 0);
        assert(ret_usec);

        if (!read_digits(&p, end, 4, &year) || !read_char(&p, end, '-') ||
            !read_digits(&p, end, 2, &month) || !read_char(&p, end, '-') || !read_digits(&p, end, 2, &day))
                return -EINVAL;
        if (p >= end || (*p != 'T' && *p != 't' && *p != ' '))
                return -EINVAL;
        p++;
        if (!read_digits(&p, end, 2, &hour) || !read_char(&p, end, ':') ||
            !read_digits(&p, end, 2, &minute) || !read_char(&p, end, ':') ||
            !read_digits(&p, end, 2, &second))
                return -EINVAL;

        if (p < end && *p == '.') {
                unsigned n = 0;

                p++;
                /* Up to nine digits (nanoseconds, as Go and PostgreSQL may
                 * print); the ones past microseconds are dropped, not rounded,
                 * so a value never moves into the next second. */
                while (p < end && *p >= '0' && *p <= '9') {
                        if (n >= 9)
                                return -EINVAL;
                        if (n < 6)
                                usec = usec * 10 + (unsigned)(*p - '0');
                        n++;
                        p++;
                }
                if (n == 0)
                        return -EINVAL;
                for (; n < 6; n++)
                        usec *= 10;
        }

        if (p >= end)
                return -EINVAL; /* a zone is required: without it the instant is a guess */
        if (*p == 'Z' || *p == 'z') {
                sign = 0;
                p++;
        } else if (*p == '+' || *p == '-') {
                sign = *p == '-' ? -1 : 1;
                p++;
                if (!read_digits(&p, end, 2, &oh))
                        return -EINVAL;
                if (p < end) {
                        read_char(&p, end, ':');
                        if (!read_digits(&p, end, 2, &om))
                                return -EINVAL;
                }
        } else
                return -EINVAL;
        if (p != end)
                return -EINVAL;

        if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
            minute > 59 || second > 60 || oh > 23 || om > 59)
                return -EINVAL;

        days = days_from_civil(year, month, day);
        t = ((days * 24 + hour) * 60 + minute) * 60 + second;
        /* Local time = UTC + offset, so UTC = local − offset. */
        t -= (int64_t)sign * (int64_t)(oh * 3600 + om * 60);
        *ret_usec = t * 1000000 + usec;
        return 0;
}

int decode_timestamp(const char *s, int64_t *ret_usec)
{
        if (!s)
                return -EINVAL;
        return decode_timestamp_n(s, strlen(s), ret_usec);
}

int format_timestamp_rfc3339(int64_t usec, char buf[static TIMESTAMP_RFC3339_MAX])
{
        /* Bounds of 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in µs:
         * outside them the text would not be RFC 3339. */
        static const int64_t min_us = -62167219200LL * 1000000, max_us = 253402300800LL * 1000000;
        int64_t secs, days, y, rem;
        unsigned m, d, us;
        int n;

        if (usec < min_us || usec >= max_us)
                return -ERANGE;

        /* Floor division, so that times before 1970 still split correctly. */
        secs = usec / 1000000;
        rem = usec % 1000000;
        if (rem < 0) {
                rem += 1000000;
                secs--;
        }
        us = (unsigned)rem;
        days = secs / 86400;
        rem = secs % 86400;
        if (rem < 0) {
                rem += 86400;
                days--;
        }
        civil_from_days(days, &y, &m, &d);

        n = snprintf(buf, TIMESTAMP_RFC3339_MAX, "%04" PRIi64 "-%02u-%02uT%02u:%02u:%02u.%06uZ", y, m, d,
                     (unsigned)(rem / 3600), (unsigned)(rem / 60 % 60), (unsigned)(rem % 60), us);
        assert(n > 0 && n < TIMESTAMP_RFC3339_MAX);
        return n;
}

/* ------------------------------------------------------------------------
 * Sessions
 * ------------------------------------------------------------------------ */

typedef enum FieldType {
        FIELD_STRING,
        FIELD_BOOL,
        FIELD_STRING_MAP,
        FIELD_ARRAY,
} FieldType;

typedef struct FieldSpec {
        const char *key;
        FieldType type;
        bool required;
        size_t offset; /* of the const char * view in SessionSnapshot, for strings */
        const char *wrong_type;
        const char *missing;
        const char *has_nul;
} FieldSpec;

/* The reasons are literals so that they stay static and name the field. */
#define STRING_FIELD(k, member, req)                                                                        \
        {                                                                                                   \
                .key = k, .type = FIELD_STRING, .required = req,                                            \
                .offset = offsetof(SessionSnapshot, member), .wrong_type = "field '" k "' is not a string", \
                .missing = "field '" k "' is missing", .has_nul = "field '" k "' contains a NUL character", \
        }

static const FieldSpec session_fields[] = {
    STRING_FIELD("id", id, true),
    STRING_FIELD("status", status_raw, true),
    STRING_FIELD("updatedAt", updated_at_raw, true),
    STRING_FIELD("name", name, false),
    STRING_FIELD("runbookID", runbook_id, false),
    STRING_FIELD("teamID", team_id, false),
    STRING_FIELD("createdAt", created_at_raw, false),
    STRING_FIELD("createdBy", created_by, false),
    STRING_FIELD("updatedBy", updated_by, false),
    {.key = "isPrivate", .type = FIELD_BOOL, .wrong_type = "field 'isPrivate' is not a boolean"},
    {.key = "paramValues",
     .type = FIELD_STRING_MAP,
     .wrong_type = "field 'paramValues' is not an object of strings"},
    {.key = "params", .type = FIELD_ARRAY, .wrong_type = "field 'params' is not an array"},
    {.key = "permissions", .type = FIELD_ARRAY, .wrong_type = "field 'permissions' is not an array"},
};

static int fail(const char **ret_reason, const char *reason, int r)
{
        if (ret_reason)
                *ret_reason = reason;
        return r;
}

static bool is_string_map(json_object *o)
{
        if (!json_object_is_type(o, json_type_object))
                return false;
        json_object_object_foreach(o, k, v)
        {
                (void)k;
                /* Go encodes a nil *string as null; take it like an absent value. */
                if (v && !json_object_is_type(v, json_type_string))
                        return false;
        }
        return true;
}

int decode_session_object(json_object *o, SessionSnapshot *ret, const char **ret_reason)
{
        SessionSnapshot s = {.root = o};
        json_object *v;

        assert(ret);

        *ret = SESSION_SNAPSHOT_NULL;

        if (!json_object_is_type(o, json_type_object))
                return fail(ret_reason, "session is not a JSON object", -EPROTO);

        for (size_t i = 0; i < sizeof(session_fields) / sizeof(session_fields[0]); i++) {
                const FieldSpec *f = session_fields + i;

                /* json-c returns NULL for both an absent key and a JSON null:
                 * the API's Go encoder writes null for unset optional fields. */
                if (!json_object_object_get_ex(o, f->key, &v) || !v) {
                        if (f->required)
                                return fail(ret_reason, f->missing, -EPROTO);
                        continue;
                }

                switch (f->type) {
                case FIELD_STRING: {
                        const char *str;

                        if (!json_object_is_type(v, json_type_string))
                                return fail(ret_reason, f->wrong_type, -EPROTO);
                        str = json_object_get_string(v);
                        /* The views are C strings; "\u0000" would silently cut
                         * an id or a status short, so such a body is refused. */
                        if (strlen(str) != (size_t)json_object_get_string_len(v))
                                return fail(ret_reason, f->has_nul, -EPROTO);
                        *(const char **)((char *)&s + f->offset) = str;
                        break;
                }
                case FIELD_BOOL:
                        if (!json_object_is_type(v, json_type_boolean))
                                return fail(ret_reason, f->wrong_type, -EPROTO);
                        s.is_private = json_object_get_boolean(v);
                        break;
                case FIELD_STRING_MAP:
                        if (!is_string_map(v))
                                return fail(ret_reason, f->wrong_type, -EPROTO);
                        break;
                case FIELD_ARRAY:
                        if (!json_object_is_type(v, json_type_array))
                                return fail(ret_reason, f->wrong_type, -EPROTO);
                        break;
                }
        }

        s.id_len = strlen(s.id);
        if (s.id_len == 0)
                return fail(ret_reason, "field 'id' is empty", -EPROTO);

        s.status_raw_len = strlen(s.status_raw);
        s.status = session_status_from_string(s.status_raw, s.status_raw_len);

        if (decode_timestamp(s.updated_at_raw, &s.updated_at_us) < 0)
                return fail(ret_reason, "field 'updatedAt' is not a valid timestamp", -EPROTO);

        /* createdAt is informational only: a value we cannot read must not
         * cost the transition, so it just stays unknown (0). */
        if (s.created_at_raw && decode_timestamp(s.created_at_raw, &s.created_at_us) < 0)
                s.created_at_us = 0;

        s.root = json_object_get(o);
        *ret = s;
        return 0;
}

void session_snapshot_done(SessionSnapshot *s)
{
        if (!s)
                return;
        json_object_put(s->root);
        *s = SESSION_SNAPSHOT_NULL;
}

/* Parses a whole body into a json-c tree: strict grammar first, then json-c
 * with a depth bound and UTF-8 validation. */
static int parse_body(const char *buf, size_t len, json_object **ret, const char **ret_reason)
{
        Scanner sc = {.p = buf, .end = buf + len};
        json_tokener *tok;
        json_object *o;
        enum json_tokener_error e;
        int r;

        assert(buf || len == 0);

        if (len == 0)
                return fail(ret_reason, "empty body", -EBADMSG);
        if (len > DECODE_MAX_BODY)
                return fail(ret_reason, "body too large", -EBADMSG);
        if (memchr(buf, 0, len))
                return fail(ret_reason, "body contains a NUL byte", -EBADMSG);

        r = scan_body(&sc);
        if (r < 0)
                return fail(ret_reason, sc.reason, r);

        /* Valid JSON, but a bare string, number or array is not an answer
         * we can use; saying so beats json-c's view of a lone number. */
        sc.p = buf;
        scan_ws(&sc);
        if (*sc.p != '{')
                return fail(ret_reason, "top level is not a JSON object", -EPROTO);

        tok = json_tokener_new_ex(DECODE_MAX_DEPTH + 1);
        if (!tok)
                return fail(ret_reason, "out of memory", -ENOMEM);
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

        o = json_tokener_parse_ex(tok, buf, (int)len);
        e = json_tokener_get_error(tok);
        if (!o || e != json_tokener_success) {
                json_object_put(o);
                json_tokener_free(tok);
                switch (e) {
                case json_tokener_continue:
                        return fail(ret_reason, "truncated JSON", -EBADMSG);
                case json_tokener_error_depth:
                        return fail(ret_reason, "JSON nested too deeply", -EBADMSG);
                case json_tokener_error_parse_utf8_string:
                        return fail(ret_reason, "invalid UTF-8 in JSON", -EBADMSG);
                default:
                        return fail(ret_reason, "invalid JSON", -EBADMSG);
                }
        }
        /* The scanner has already proved that only whitespace follows; this
         * is a second opinion that costs nothing. */
        for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
                if (!is_ws(buf[i])) {
                        json_object_put(o);
                        json_tokener_free(tok);
                        return fail(ret_reason, "trailing data after the JSON value", -EBADMSG);
                }
        json_tokener_free(tok);

        if (!json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return fail(ret_reason, "top level is not a JSON object", -EPROTO);
        }

        *ret = o;
        return 0;
}

int decode_session(const char *buf, size_t len, SessionSnapshot *ret, const char **ret_reason)
{
        json_object *o;
        int r;

        assert(ret);

        *ret = SESSION_SNAPSHOT_NULL;

        r = parse_body(buf, len, &o, ret_reason);
        if (r < 0)
                return r;

        r = decode_session_object(o, ret, ret_reason);
        /* On success the snapshot holds its own reference. */
        json_object_put(o);
        return r;
}

int decode_session_list(const char *buf, size_t len, json_object **ret_root, json_object **ret_array,
                        const char **ret_reason)
{
        json_object *o, *a = NULL;
        size_t n = 0;
        int r;

        assert(ret_root);
        assert(ret_array);

        *ret_root = NULL;
        *ret_array = NULL;

        r = parse_body(buf, len, &o, ret_reason);
        if (r < 0)
                return r;

        /* Absent or null both mean an empty page: Go encodes a nil slice as
         * null, and an omitempty field not at all. */
        if (json_object_object_get_ex(o, "sessions", &a) && a) {
                if (!json_object_is_type(a, json_type_array)) {
                        json_object_put(o);
                        return fail(ret_reason, "field 'sessions' is not an array", -EPROTO);
                }
                n = json_object_array_length(a);
        } else
                a = NULL;

        /* The body length bounds n far below INT_MAX (DECODE_MAX_BODY), but
         * the return value is an int, so be explicit. */
        if (n > INT32_MAX) {
                json_object_put(o);
                return fail(ret_reason, "too many sessions", -EBADMSG);
        }

        *ret_root = o;
        *ret_array = a;
        return (int)n;
}

/* ------------------------------------------------------------------------
 * The quick path
 * ------------------------------------------------------------------------ */

static bool is_plain_ascii(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
                        return false;
        return true;
}

int decode_session_quick(const char *buf, size_t len, SessionQuick *ret)
{
        ScanValue capture[_SCAN_KEY_MAX] = {};
        Scanner sc = {.p = buf, .end = buf + len, .capture = capture};
        const ScanValue *id = capture + SCAN_KEY_ID, *st = capture + SCAN_KEY_STATUS,
                        *up = capture + SCAN_KEY_UPDATED_AT;
        int64_t t;

        assert(buf || len == 0);
        assert(ret);

        *ret = (SessionQuick){};

        if (len == 0 || len > DECODE_MAX_BODY)
                return -EINVAL;

        scan_ws(&sc);
        if (sc.p >= sc.end || *sc.p != '{')
                return -EINVAL;
        if (scan_body(&sc) < 0 || sc.unusual)
                return -EINVAL;

        /* Each must be present, a string, and plain: escapes, control
         * characters and non-ASCII bytes are the full decoder's business
         * (it decodes escapes and validates UTF-8). An empty id too, so that
         * the error comes with the full decoder's reason. */
        for (unsigned i = 0; i < _SCAN_KEY_MAX; i++)
                if (!capture[i].seen || !capture[i].is_string || capture[i].escaped ||
                    !is_plain_ascii(capture[i].s, capture[i].len))
                        return -EINVAL;
        if (id->len == 0)
                return -EINVAL;

        if (decode_timestamp_n(up->s, up->len, &t) < 0)
                return -EINVAL;

        *ret = (SessionQuick){
            .id = id->s,
            .id_len = id->len,
            .status_raw = st->s,
            .status_raw_len = st->len,
            .updated_at_raw = up->s,
            .updated_at_raw_len = up->len,
            .status = session_status_from_string(st->s, st->len),
            .updated_at_us = t,
        };
        return 0;
}
