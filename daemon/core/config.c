/* config: INI file -> validated Config. See config.h for the syntax rules. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"
#include "textsafe.h"
#include "webhook-key.h"

/* Debian's inih turns the size of its line buffer into a run-time setting
 * (ini_max_line); upstream builds fix it at compile time at 200 bytes, which
 * is short for a webhook URL with a token in it. The weak reference lets us
 * raise it where it exists and still link where it does not; the reader
 * below reports any line that does not fit, whatever the size is. */
#pragma weak ini_max_line
extern int ini_max_line;

#define LINE_MAX_WANTED 8192
#define FILE_MAX ((size_t)1 << 30)
#define SECRET_MAX ((size_t)64 * 1024)
#define DURATION_MAX ((uint64_t)365 * 24 * 3600 * 1000)
#define QUOTE_MAX 200
/* A quote() of QUOTE_MAX bytes, each possibly shown as \xNN, and "...". */
#define QUOTE_SIZE (QUOTE_MAX * 4 + 4)
#define KEYS_MAX 16
#define ERRORS_MAX 20

#define MS_SECOND ((uint64_t)1000)
#define MS_MINUTE (60 * MS_SECOND)
#define MS_HOUR (60 * MS_MINUTE)
#define MS_DAY (24 * MS_HOUR)

typedef enum Section {
        SECTION_NONE, /* before the first section header */
        SECTION_API,
        SECTION_POLL,
        SECTION_WATCH,
        SECTION_JOURNAL,
        SECTION_WEBHOOK,
        SECTION_EVENTS,
        SECTION_CONTROL,
        SECTION_METRICS,
        SECTION_HTTP,
        SECTION_STATE,
        SECTION_SKIP, /* a bad header, already reported: its keys are ignored */
        _SECTION_MAX,
} Section;

typedef struct Parser Parser;
typedef struct Key Key;

/* A key's parser gets the value, or NULL to put the field back to "unset".
 * It returns 0; -EINVAL with p->reason filled in, for the caller to report
 * as an invalid value; -ECANCELED when it reported the problem itself; or
 * -ENOMEM. */
typedef int (*KeyParser)(Parser *p, const Key *k, const char *value, void *field);

enum {
        KEY_REPEATABLE = 1u << 0,
        KEY_STRIP_SLASH = 1u << 1, /* URLs that we append paths to */
        KEY_SOCKET = 1u << 2,      /* paths that must fit in sockaddr_un */
};

struct Key {
        const char *name;
        KeyParser parse;
        size_t offset;   /* of the field in Config, or in ConfigWebhook for [webhook] */
        const char *def; /* the default, also restored by an empty value; NULL: unset */
        uint64_t min, max;
        unsigned flags;
};

typedef struct SectionInfo {
        const char *name;
        const Key *keys;
        size_t n_keys;
} SectionInfo;

struct Parser {
        const char *path;
        Config *config;

        const char *data;
        size_t size, pos;
        unsigned line;

        Section section;
        size_t webhook; /* index of the current webhook with SECTION_WEBHOOK */

        /* The line on which each key was last set (0: never), for the
         * duplicate check and for messages about a key after the parse. */
        unsigned seen[_SECTION_MAX][KEYS_MAX];
        unsigned (*webhook_seen)[KEYS_MAX];

        char reason[256];

        char *errbuf;
        size_t errlen, errpos;
        unsigned n_errors;
        unsigned flags; /* CONFIG_LOAD_* */
        char *warnbuf;
        size_t warnlen, warnpos;
        int fatal;         /* -ENOMEM: stop reading */
        bool key_file_bad; /* key-file had a bad value, already reported */
};

static void add_error(Parser *p, unsigned line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_reason(Parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Messages quote user strings; a copy with control characters and bytes
 * that are not UTF-8 shown as \xNN, and the length capped, keeps a hostile
 * or broken file from garbling a terminal or a log line, and still says
 * which bytes are at fault. */
static const char *quote(const char *s, char buf[static QUOTE_SIZE])
{
        return text_escape(s, QUOTE_MAX, buf, QUOTE_SIZE);
}

static void append_message(Parser *p, unsigned line, const char *msg)
{
        char head[32];
        int n;

        if (!p->errbuf || p->errpos + 1 >= p->errlen)
                return;
        if (line > 0)
                snprintf(head, sizeof(head), ":%u: ", line);
        else
                snprintf(head, sizeof(head), ": ");
        n = snprintf(p->errbuf + p->errpos, p->errlen - p->errpos, "%s%s%s%s", p->errpos > 0 ? "\n" : "",
                     p->path, head, msg);
        if (n < 0)
                return;
        p->errpos += (size_t)n;
        if (p->errpos >= p->errlen)
                p->errpos = p->errlen - 1;
}

/* A warning: "FILE:LINE: warning: ..." in the warnings buffer, when there
 * is one; it does not make the file bad. */
static void add_warning(Parser *p, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_warning(Parser *p, unsigned line, const char *fmt, ...)
{
        char msg[1024], head[32];
        va_list ap;
        int n;

        if (!p->warnbuf || p->warnpos + 1 >= p->warnlen)
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (line > 0)
                snprintf(head, sizeof(head), ":%u: ", line);
        else
                snprintf(head, sizeof(head), ": ");
        n = snprintf(p->warnbuf + p->warnpos, p->warnlen - p->warnpos, "%s%s%swarning: %s",
                     p->warnpos > 0 ? "\n" : "", p->path, head, msg);
        if (n < 0)
                return;
        p->warnpos += (size_t)n;
        if (p->warnpos >= p->warnlen)
                p->warnpos = p->warnlen - 1;
}

/* Reports one problem. Past ERRORS_MAX they are only counted: a file that is
 * wrong on every one of a million lines needs a summary, not a novel. */
static void add_error(Parser *p, unsigned line, const char *fmt, ...)
{
        char msg[1024];
        va_list ap;

        if (++p->n_errors > ERRORS_MAX)
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        append_message(p, line, msg);
}

static void set_reason(Parser *p, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(p->reason, sizeof(p->reason), fmt, ap);
        va_end(ap);
}

static bool is_blank(char c)
{
        return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

static bool has_control(const char *s)
{
        for (; *s; s++)
                if ((unsigned char)*s < 0x20 || *s == 0x7f)
                        return true;
        return false;
}

static void wipe_free(char *s)
{
        if (!s)
                return;
        explicit_bzero(s, strlen(s));
        free(s);
}

/* Strings are NULL-terminated arrays with a count beside them. The capacity
 * is implied by the count (powers of two from 8 slots), so a million
 * `session =` lines cost some twenty reallocations and no bookkeeping. */
static int strv_push(char ***l, size_t *n, char *s)
{
        size_t slots = *n + 2; /* the new entry and the terminating NULL */

        if (!*l || (slots > 8 && ((slots - 1) & (slots - 2)) == 0)) {
                size_t cap = 8;
                char **m;

                while (cap < slots)
                        cap *= 2;
                m = realloc(*l, cap * sizeof(char *));
                if (!m)
                        return -ENOMEM;
                *l = m;
        }
        (*l)[(*n)++] = s;
        (*l)[*n] = NULL;
        return 0;
}

static void strv_clear(char ***l, size_t *n, bool wipe)
{
        for (size_t i = 0; i < *n; i++) {
                if (wipe)
                        wipe_free((*l)[i]);
                else
                        free((*l)[i]);
        }
        free(*l);
        *l = NULL;
        *n = 0;
}

static const char *format_duration(uint64_t ms, char buf[static 32])
{
        static const struct {
                const char *unit;
                uint64_t ms;
        } units[] = {{"d", MS_DAY}, {"h", MS_HOUR}, {"m", MS_MINUTE}, {"s", MS_SECOND}};

        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
                if (ms >= units[i].ms && ms % units[i].ms == 0) {
                        snprintf(buf, 32, "%" PRIu64 "%s", ms / units[i].ms, units[i].unit);
                        return buf;
                }
        snprintf(buf, 32, ms == 0 ? "0" : "%" PRIu64 "ms", ms);
        return buf;
}

static const char *format_size(uint64_t bytes, char buf[static 32])
{
        static const char units[] = "GMk";

        for (int i = 0; i < 3; i++) {
                uint64_t m = (uint64_t)1 << (10 * (3 - i));

                if (bytes >= m && bytes % m == 0) {
                        snprintf(buf, 32, "%" PRIu64 "%c", bytes / m, units[i]);
                        return buf;
                }
        }
        snprintf(buf, 32, "%" PRIu64, bytes);
        return buf;
}

/* Reads a decimal integer at *s, advancing *s. Returns -EINVAL without a
 * digit, -ERANGE on overflow. No sign: strtoull() would take "-1". */
/* Whether s is digits only, up to a character in `end` or the NUL: a number,
 * even when too large for parse_digits(). */
static bool only_digits(const char *s, const char *end)
{
        size_t n = strspn(s, "0123456789");

        return n > 0 && (s[n] == '\0' || (end && strchr(end, s[n])));
}

static int parse_digits(const char **s, uint64_t *ret)
{
        uint64_t v = 0;
        const char *c = *s;

        if (!is_digit(*c))
                return -EINVAL;
        for (; is_digit(*c); c++) {
                if (v > (UINT64_MAX - (uint64_t)(*c - '0')) / 10)
                        return -ERANGE;
                v = v * 10 + (uint64_t)(*c - '0');
        }
        *s = c;
        *ret = v;
        return 0;
}

static int duration_parse(const char *s, uint64_t *ret_ms, const char **ret_reason)
{
        static const struct {
                const char *unit;
                uint64_t ms;
        } units[] = {{"ms", 1}, {"s", MS_SECOND}, {"m", MS_MINUTE}, {"h", MS_HOUR}, {"d", MS_DAY}};
        uint64_t v;
        int r;

        r = parse_digits(&s, &v);
        if (r == -ERANGE) {
                *ret_reason = "number too large";
                return r;
        }
        if (r < 0) {
                *ret_reason = "not a duration (expected a number and a unit: ms, s, m, h or d)";
                return r;
        }
        while (is_blank(*s))
                s++;
        if (*s == '\0') {
                if (v == 0) {
                        *ret_ms = 0;
                        return 0;
                }
                *ret_reason = "missing unit (ms, s, m, h or d)";
                return -EINVAL;
        }
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
                if (strcmp(s, units[i].unit) != 0)
                        continue;
                if (v > UINT64_MAX / units[i].ms) {
                        *ret_reason = "number too large";
                        return -ERANGE;
                }
                *ret_ms = v * units[i].ms;
                return 0;
        }
        *ret_reason = "unknown unit (expected ms, s, m, h or d)";
        return -EINVAL;
}

int config_parse_duration(const char *s, uint64_t *ret_ms)
{
        const char *reason;

        assert(s);
        assert(ret_ms);
        return duration_parse(s, ret_ms, &reason);
}

static int size_parse(const char *s, uint64_t *ret_bytes, const char **ret_reason)
{
        uint64_t v;
        unsigned shift = 0;
        int r;

        r = parse_digits(&s, &v);
        if (r == -ERANGE) {
                *ret_reason = "number too large";
                return r;
        }
        if (r < 0) {
                *ret_reason = "not a size (expected a number with an optional k, M or G)";
                return r;
        }
        while (is_blank(*s))
                s++;
        if (*s != '\0') {
                switch (*s) {
                case 'k':
                case 'K':
                        shift = 10;
                        break;
                case 'M':
                        shift = 20;
                        break;
                case 'G':
                        shift = 30;
                        break;
                default:
                        *ret_reason = "unknown unit (expected k, M or G)";
                        return -EINVAL;
                }
                if (s[1] != '\0') {
                        *ret_reason = "unknown unit (expected k, M or G)";
                        return -EINVAL;
                }
        }
        if (v > (UINT64_MAX >> shift)) {
                *ret_reason = "number too large";
                return -ERANGE;
        }
        *ret_bytes = v << shift;
        return 0;
}

int config_parse_size(const char *s, uint64_t *ret_bytes)
{
        const char *reason;

        assert(s);
        assert(ret_bytes);
        return size_parse(s, ret_bytes, &reason);
}

int config_parse_bool(const char *s, bool *ret)
{
        static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false", "off",
                                                                                    "0"};

        assert(s);
        assert(ret);
        for (size_t i = 0; i < 4; i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* Like config_status_mask_from_list(), and says which word was wrong. */
static int status_mask_parse(const char *list, ConfigStatusMask *ret_mask, const char **ret_bad,
                             size_t *ret_bad_len)
{
        ConfigStatusMask mask = 0;
        const char *w = list;

        *ret_bad = NULL;
        *ret_bad_len = 0;
        for (;;) {
                size_t len;
                int s;

                while (is_blank(*w))
                        w++;
                if (*w == '\0')
                        break;
                for (len = 0; w[len] && !is_blank(w[len]); len++)
                        ;

                if (len == 3 && memcmp(w, "all", 3) == 0)
                        mask |= SESSION_STATUS_MASK_ALL;
                else {
                        for (s = 0; s < _SESSION_STATUS_MAX; s++) {
                                const char *name = session_status_to_string((SessionStatus)s);

                                if (strlen(name) == len && memcmp(name, w, len) == 0)
                                        break;
                        }
                        if (s == _SESSION_STATUS_MAX) {
                                *ret_bad = w;
                                *ret_bad_len = len;
                                return -EINVAL;
                        }
                        mask |= 1u << s;
                }
                w += len;
        }
        if (mask == 0)
                return -EINVAL;
        *ret_mask = mask;
        return 0;
}

int config_status_mask_from_list(const char *list, ConfigStatusMask *ret_mask)
{
        const char *bad;
        size_t bad_len;

        assert(list);
        assert(ret_mask);
        return status_mask_parse(list, ret_mask, &bad, &bad_len);
}

static bool id_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-';
}

static bool id_valid_n(const char *id, size_t len)
{
        if (len < 1 || len > 64)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!id_char(id[i]))
                        return false;
        return true;
}

bool config_session_id_valid(const char *id)
{
        return id && id_valid_n(id, strnlen(id, 65));
}

static bool webhook_name_valid(const char *name, size_t len)
{
        if (len < 1 || len > 64)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!id_char(name[i]) && name[i] != '.')
                        return false;
        return true;
}

const char *config_webhook_format_to_string(ConfigWebhookFormat f)
{
        static const char *const names[_CONFIG_WEBHOOK_FORMAT_MAX] = {
            [CONFIG_WEBHOOK_FORMAT_CLOUDEVENTS] = "cloudevents",
            [CONFIG_WEBHOOK_FORMAT_SLACK] = "slack",
        };

        return f < _CONFIG_WEBHOOK_FORMAT_MAX ? names[f] : NULL;
}

void config_env_from_environ(ConfigEnv *ret)
{
        assert(ret);
        *ret = (ConfigEnv){
            .credentials_directory = getenv("CREDENTIALS_DIRECTORY"),
            .runtime_directory = getenv("RUNTIME_DIRECTORY"),
            .state_directory = getenv("STATE_DIRECTORY"),
        };
}

int config_read_secret(const char *path, char **ret, char *errbuf, size_t errlen)
{
        char q[QUOTE_SIZE], *buf = NULL, *start, *end, *s;
        const char *why = NULL;
        size_t n = 0;
        struct stat st;
        int fd, r;

        assert(path);
        assert(ret);

        /* O_NONBLOCK: a FIFO in place of the file must not hang the loader;
         * it is refused below as not a regular file. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = -errno;
                goto fail;
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto fail;
        }
        if (S_ISDIR(st.st_mode)) {
                r = -EISDIR;
                goto fail;
        }
        if (!S_ISREG(st.st_mode)) {
                r = -EINVAL;
                why = "Not a regular file";
                goto fail;
        }

        buf = malloc(SECRET_MAX + 1);
        if (!buf) {
                r = -ENOMEM;
                goto fail;
        }
        for (;;) {
                ssize_t k = read(fd, buf + n, SECRET_MAX + 1 - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto fail;
                }
                if (k == 0)
                        break;
                n += (size_t)k;
                if (n > SECRET_MAX) {
                        r = -EFBIG;
                        goto fail;
                }
        }
        buf[n] = '\0';

        if (memchr(buf, '\0', n)) {
                r = -EINVAL;
                why = "Contains control characters";
                goto fail;
        }
        for (start = buf; *start && (is_blank(*start) || *start == '\n'); start++)
                ;
        for (end = buf + n; end > start && (is_blank(end[-1]) || end[-1] == '\n'); end--)
                ;
        if (start == end) {
                r = -ENODATA;
                why = "File is empty";
                goto fail;
        }
        *end = '\0';
        /* The secret goes into an HTTP header or an HMAC key; a newline or
         * other control character in the middle means a broken file. */
        if (has_control(start)) {
                r = -EINVAL;
                why = "Contains control characters";
                goto fail;
        }
        s = strdup(start);
        if (!s) {
                r = -ENOMEM;
                goto fail;
        }
        explicit_bzero(buf, n);
        free(buf);
        close(fd);
        *ret = s;
        return 0;

fail:
        if (buf) {
                explicit_bzero(buf, SECRET_MAX + 1);
                free(buf);
        }
        if (fd >= 0)
                close(fd);
        if (errbuf && errlen > 0)
                snprintf(errbuf, errlen, "'%s': %s", quote(path, q), why ?: strerror(-r));
        return r;
}

/* ---- Value parsers, one per kind of key ---- */

static int parse_string_field(Parser *p, char **field, const char *value)
{
        char *s = NULL;

        if (value) {
                s = strdup(value);
                if (!s)
                        return -ENOMEM;
        }
        free(*field);
        *field = s;
        return 0;
}

static int parse_url(Parser *p, const Key *k, const char *value, void *field)
{
        const char *host;
        size_t len;

        if (value) {
                if (strncasecmp(value, "http://", 7) == 0)
                        host = value + 7;
                else if (strncasecmp(value, "https://", 8) == 0)
                        host = value + 8;
                else {
                        set_reason(p, "must start with http:// or https://");
                        return -EINVAL;
                }
                if (*host == '\0' || *host == '/') {
                        set_reason(p, "no host");
                        return -EINVAL;
                }
                for (const char *c = value; *c; c++)
                        if ((unsigned char)*c <= 0x20 || *c == 0x7f) {
                                set_reason(p, "contains blanks or control characters");
                                return -EINVAL;
                        }
        }
        if (parse_string_field(p, field, value) < 0)
                return -ENOMEM;
        if (value && (k->flags & KEY_STRIP_SLASH)) {
                char *s = *(char **)field;
                size_t host_off = (size_t)(host - value);

                /* Paths are appended to these, so ".../v0/" must not become
                 * ".../v0//sessions/get". The host is never empty, so this
                 * stops after it. */
                len = strlen(s);
                while (len > host_off + 1 && s[len - 1] == '/')
                        s[--len] = '\0';
        }
        return 0;
}

static int check_path(Parser *p, const Key *k, const char *value)
{
        if (value[0] != '/') {
                set_reason(p, "not an absolute path");
                return -EINVAL;
        }
        if (has_control(value)) {
                set_reason(p, "contains control characters");
                return -EINVAL;
        }
        if (strlen(value) >= PATH_MAX) {
                set_reason(p, "path too long");
                return -EINVAL;
        }
        if ((k->flags & KEY_SOCKET) && strlen(value) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
                set_reason(p, "too long for a Unix socket (at most %zu bytes)",
                           sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
                return -EINVAL;
        }
        return 0;
}

static int parse_path(Parser *p, const Key *k, const char *value, void *field)
{
        if (value && check_path(p, k, value) < 0)
                return -EINVAL;
        return parse_string_field(p, field, value);
}

/* team-id and env-slug travel as HTTP header values. */
static int parse_header_value(Parser *p, const Key *k, const char *value, void *field)
{
        if (value) {
                if (strlen(value) > 256) {
                        set_reason(p, "longer than 256 characters");
                        return -EINVAL;
                }
                for (const char *c = value; *c; c++)
                        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) {
                                set_reason(p, "only printable ASCII without blanks is allowed");
                                return -EINVAL;
                        }
        }
        return parse_string_field(p, field, value);
}

static int check_duration_range(Parser *p, const Key *k, uint64_t v)
{
        char a[32], b[32];

        if (v < k->min || v > k->max) {
                if (k->min == 0)
                        set_reason(p, "must be at most %s", format_duration(k->max, b));
                else
                        set_reason(p, "must be between %s and %s", format_duration(k->min, a),
                                   format_duration(k->max, b));
                return -EINVAL;
        }
        return 0;
}

static int parse_duration_key(Parser *p, const Key *k, const char *value, void *field)
{
        const char *reason;
        char b[32];
        uint64_t v = 0;
        int r;

        r = value ? duration_parse(value, &v, &reason) : 0;
        if (r == -ERANGE) {
                set_reason(p, "%s (at most %s)", reason, format_duration(k->max, b));
                return -EINVAL;
        }
        if (r < 0) {
                set_reason(p, "%s", reason);
                return -EINVAL;
        }
        if (check_duration_range(p, k, v) < 0)
                return -EINVAL;
        *(uint64_t *)field = v;
        return 0;
}

/* A deadline that may be switched off: empty, "off" or "0". */
static int parse_duration_off(Parser *p, const Key *k, const char *value, void *field)
{
        if (value && strcmp(value, "off") == 0)
                value = NULL;
        return parse_duration_key(p, k, value, field);
}

static int parse_size_key(Parser *p, const Key *k, const char *value, void *field)
{
        const char *reason;
        char a[32], b[32];
        uint64_t v = 0;
        int r;

        r = value ? size_parse(value, &v, &reason) : 0;
        if (r == -ERANGE) {
                set_reason(p, "%s (at most %s)", reason, format_size(k->max, b));
                return -EINVAL;
        }
        if (r < 0) {
                set_reason(p, "%s", reason);
                return -EINVAL;
        }
        if (v < k->min || v > k->max) {
                set_reason(p, "must be between %s and %s", format_size(k->min, a), format_size(k->max, b));
                return -EINVAL;
        }
        *(uint64_t *)field = v;
        return 0;
}

static int parse_number(Parser *p, const Key *k, const char *value, uint64_t *ret)
{
        const char *s = value;
        uint64_t v = 0;

        if (value && (parse_digits(&s, &v) < 0 || *s != '\0')) {
                if (only_digits(value, NULL))
                        set_reason(p, "number too large (at most %" PRIu64 ")", k->max);
                else
                        set_reason(p, "not a number");
                return -EINVAL;
        }
        if (v < k->min || v > k->max) {
                set_reason(p, "must be between %" PRIu64 " and %" PRIu64, k->min, k->max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_unsigned(Parser *p, const Key *k, const char *value, void *field)
{
        uint64_t v;

        assert(k->max <= UINT_MAX);
        if (parse_number(p, k, value, &v) < 0)
                return -EINVAL;
        *(unsigned *)field = (unsigned)v;
        return 0;
}

static int parse_count(Parser *p, const Key *k, const char *value, void *field)
{
        uint64_t v;

        assert(k->max <= SIZE_MAX);
        if (parse_number(p, k, value, &v) < 0)
                return -EINVAL;
        *(size_t *)field = (size_t)v;
        return 0;
}

static int parse_bool_key(Parser *p, const Key *k, const char *value, void *field)
{
        bool b = false;

        if (value && config_parse_bool(value, &b) < 0) {
                set_reason(p, "not a boolean (yes/no, true/false, on/off, 1/0)");
                return -EINVAL;
        }
        *(bool *)field = b;
        return 0;
}

/* "10%" (or "10"): a whole percentage. */
static int parse_percent(Parser *p, const Key *k, const char *value, void *field)
{
        const char *s = value;
        uint64_t v = 0;

        if (value) {
                if (parse_digits(&s, &v) < 0 || (*s == '%' ? s[1] != '\0' : *s != '\0')) {
                        size_t d = strspn(value, "0123456789");

                        if (d > 0 && strcmp(value + d, value[d] ? "%" : "") == 0)
                                set_reason(p, "number too large (at most 100%%)");
                        else
                                set_reason(p, "not a percentage (e.g. 10%%)");
                        return -EINVAL;
                }
                if (v > 100) {
                        set_reason(p, "must be between 0%% and 100%%");
                        return -EINVAL;
                }
        }
        *(unsigned *)field = (unsigned)v;
        return 0;
}

/* "50/s", "600/m", "1000/h"; "0" or "off" for no limit. */
static int parse_rate(Parser *p, const Key *k, const char *value, void *field)
{
        const char *s = value;
        double per = 1;
        uint64_t n = 0;

        if (value && strcmp(value, "off") != 0 && strcmp(value, "0") != 0) {
                if (parse_digits(&s, &n) == -ERANGE && only_digits(value, " \t/")) {
                        set_reason(p, "the count is too large (at most 1000000)");
                        return -EINVAL;
                }
                if (s == value)
                        goto bad;
                while (is_blank(*s))
                        s++;
                if (*s++ != '/')
                        goto bad;
                while (is_blank(*s))
                        s++;
                if (strcmp(s, "s") == 0)
                        per = 1;
                else if (strcmp(s, "m") == 0)
                        per = 60;
                else if (strcmp(s, "h") == 0)
                        per = 3600;
                else
                        goto bad;
                if (n < 1 || n > 1000000) {
                        set_reason(p, "the count must be between 1 and 1000000");
                        return -EINVAL;
                }
        }
        *(double *)field = (double)n / per;
        return 0;
bad:
        set_reason(p, "not a rate (e.g. 50/s, 600/m, 1000/h, or off)");
        return -EINVAL;
}

static int parse_statuses(Parser *p, const Key *k, const char *value, void *field)
{
        const char *bad;
        size_t bad_len;

        if (!value) {
                *(ConfigStatusMask *)field = SESSION_STATUS_MASK_ALL;
                return 0;
        }
        if (status_mask_parse(value, field, &bad, &bad_len) < 0) {
                char q[QUOTE_SIZE], w[QUOTE_MAX + 1];

                snprintf(w, sizeof(w), "%.*s", (int)(bad_len < QUOTE_MAX ? bad_len : QUOTE_MAX), bad);
                set_reason(p,
                           "unknown status '%s' (expected all, or some of Pending Active Waiting "
                           "Succeeded Failed Cancelling Cancelled unknown)",
                           quote(w, q));
                return -EINVAL;
        }
        return 0;
}

static int parse_format(Parser *p, const Key *k, const char *value, void *field)
{
        for (int f = 0; f < _CONFIG_WEBHOOK_FORMAT_MAX; f++)
                if (value && strcmp(value, config_webhook_format_to_string((ConfigWebhookFormat)f)) == 0) {
                        *(ConfigWebhookFormat *)field = (ConfigWebhookFormat)f;
                        return 0;
                }
        if (!value) {
                *(ConfigWebhookFormat *)field = CONFIG_WEBHOOK_FORMAT_CLOUDEVENTS;
                return 0;
        }
        set_reason(p, "expected cloudevents or slack");
        return -EINVAL;
}

static const char *const poll_mode_names[_CONFIG_POLL_MODE_MAX] = {
    [CONFIG_POLL_AUTO] = "auto",
    [CONFIG_POLL_GET] = "get",
    [CONFIG_POLL_LIST] = "list",
};

const char *config_poll_mode_to_string(ConfigPollMode m)
{
        return m < _CONFIG_POLL_MODE_MAX ? poll_mode_names[m] : "?";
}

static int parse_poll_mode(Parser *p, const Key *k, const char *value, void *field)
{
        (void)k;
        assert(value); /* The key has a default. */
        for (int m = 0; m < _CONFIG_POLL_MODE_MAX; m++)
                if (strcmp(value, poll_mode_names[m]) == 0) {
                        *(ConfigPollMode *)field = (ConfigPollMode)m;
                        return 0;
                }
        set_reason(p, "expected auto, get or list");
        return -EINVAL;
}

/* An octal file mode for a socket: permission bits only. */
static int parse_mode(Parser *p, const Key *k, const char *value, void *field)
{
        unsigned v = 0;
        size_t i;

        assert(value); /* Both mode keys have a default. */

        for (i = 0; value[i]; i++) {
                if (value[i] < '0' || value[i] > '7') {
                        set_reason(p, "not an octal mode (e.g. 0660)");
                        return -EINVAL;
                }
                if (i >= 4) {
                        set_reason(p, "too large: only permission bits (at most 0777) are allowed");
                        return -EINVAL;
                }
                v = v * 8 + (unsigned)(value[i] - '0');
        }
        if (v > 0777) {
                set_reason(p, "only permission bits (at most 0777) are allowed");
                return -EINVAL;
        }
        *(mode_t *)field = (mode_t)v;
        return 0;
}

static int parse_group(Parser *p, const Key *k, const char *value, void *field)
{
        if (value) {
                if (strlen(value) > 256 || value[0] == '-') {
                        set_reason(p, "not a group name or id");
                        return -EINVAL;
                }
                for (const char *c = value; *c; c++)
                        if ((unsigned char)*c <= 0x20 || *c == 0x7f || *c == ':' || *c == '/') {
                                set_reason(p, "not a group name or id");
                                return -EINVAL;
                        }
        }
        return parse_string_field(p, field, value);
}

static bool hostname_valid(const char *h)
{
        if (strlen(h) > 253)
                return false;
        for (; *h; h++)
                if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') || is_digit(*h) || *h == '-' ||
                      *h == '.'))
                        return false;
        return true;
}

/* "HOST:PORT", "[IPV6]:PORT", "*:PORT" or ":PORT" (any address). */
static int parse_listen(Parser *p, const Key *k, const char *value, void *field)
{
        ConfigListen *m = field;
        char *listen = NULL, *host = NULL;
        const char *port_s;
        uint64_t port = 0;
        size_t host_len;
        bool digits;
        int r;

        if (value) {
                const char *colon;

                if (value[0] == '[') {
                        const char *close = strchr(value, ']');

                        if (!close || close[1] != ':')
                                goto bad;
                        host = strndup(value + 1, (size_t)(close - value - 1));
                        if (!host)
                                return -ENOMEM;
                        {
                                struct in6_addr a6;

                                if (inet_pton(AF_INET6, host, &a6) != 1) {
                                        free(host);
                                        set_reason(p, "not an IPv6 address in brackets");
                                        return -EINVAL;
                                }
                        }
                        port_s = close + 2;
                } else {
                        colon = strrchr(value, ':');
                        if (!colon)
                                goto bad;
                        host_len = (size_t)(colon - value);
                        if (memchr(value, ':', host_len)) {
                                set_reason(p, "an IPv6 address needs brackets: [ADDRESS]:PORT");
                                return -EINVAL;
                        }
                        if (host_len > 0 && !(host_len == 1 && value[0] == '*')) {
                                host = strndup(value, host_len);
                                if (!host)
                                        return -ENOMEM;
                                if (!hostname_valid(host)) {
                                        free(host);
                                        set_reason(p, "not a host name or address");
                                        return -EINVAL;
                                }
                        }
                        port_s = colon + 1;
                }
                digits = only_digits(port_s, NULL);
                r = parse_digits(&port_s, &port);
                if (digits && (r == -ERANGE || port > 65535)) {
                        free(host);
                        set_reason(p, "the port is too large (at most 65535)");
                        return -EINVAL;
                }
                if (r < 0 || *port_s != '\0' || port < 1 || port > 65535) {
                        free(host);
                        set_reason(p, "the port must be a number between 1 and 65535");
                        return -EINVAL;
                }
                listen = strdup(value);
                if (!listen) {
                        free(host);
                        return -ENOMEM;
                }
                m->port = (uint16_t)port;
        } else
                m->port = 0;

        free(m->listen);
        free(m->host);
        m->listen = listen;
        m->host = host;
        return 0;
bad:
        set_reason(p, "expected HOST:PORT or [IPV6]:PORT");
        return -EINVAL;
}

/* `session =` and `runbook =`: ids separated by blanks. This is the hot
 * path for a large watch list, so it does one pass and one allocation per
 * id, and leaves duplicates to the sessions table. */
static int parse_id_list(Parser *p, const char *what, const char *value, char ***l, size_t *n)
{
        const char *w = value;

        if (!value) {
                strv_clear(l, n, false);
                return 0;
        }
        for (;;) {
                size_t len;
                char *id;

                while (is_blank(*w))
                        w++;
                if (*w == '\0')
                        return 0;
                for (len = 0; w[len] && !is_blank(w[len]); len++)
                        ;
                if (!id_valid_n(w, len)) {
                        char q[QUOTE_SIZE], word[QUOTE_MAX + 1];

                        snprintf(word, sizeof(word), "%.*s", (int)(len < QUOTE_MAX ? len : QUOTE_MAX), w);
                        add_error(
                            p, p->line,
                            "Invalid %s id '%s': expected 1-64 characters from A-Z, a-z, 0-9, '_' and '-'",
                            what, quote(word, q));
                        return -ECANCELED;
                }
                id = strndup(w, len);
                if (!id || strv_push(l, n, id) < 0) {
                        free(id);
                        return -ENOMEM;
                }
                w += len;
        }
}

static int parse_sessions(Parser *p, const Key *k, const char *value, void *field)
{
        ConfigWatch *w = field;

        return parse_id_list(p, "session", value, &w->sessions, &w->n_sessions);
}

static int parse_runbooks(Parser *p, const Key *k, const char *value, void *field)
{
        ConfigWatch *w = field;

        return parse_id_list(p, "runbook", value, &w->runbooks, &w->n_runbooks);
}

/* secret-file is read at once, while the line it came from is at hand. */
static int parse_secret_file(Parser *p, const Key *k, const char *value, void *field)
{
        ConfigWebhook *w = field;
        char *path = NULL, *secret = NULL, err[PATH_MAX + 256];
        size_t n;
        int r;

        if (!value) {
                n = w->n_secret_files;
                strv_clear(&w->secrets, &n, true);
                strv_clear(&w->secret_files, &w->n_secret_files, false);
                return 0;
        }
        if (check_path(p, k, value) < 0)
                return -EINVAL;

        r = config_read_secret(value, &secret, err, sizeof(err));
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                add_error(p, p->line, "secret-file %s", err);
                return -ECANCELED;
        }
        {
                /* The key is decoded again when the sink starts; checking it
                 * here makes --check-config catch a mangled secret. */
                WebhookKey key;
                char q[QUOTE_SIZE];
                bool ok = webhook_key_from_secret(secret, &key) == 0;

                explicit_bzero(&key, sizeof(key));
                if (!ok) {
                        wipe_free(secret);
                        add_error(p, p->line,
                                  "secret-file '%s': not a Standard Webhooks secret ('whsec_' followed by "
                                  "base64)",
                                  quote(value, q));
                        return -ECANCELED;
                }
        }
        path = strdup(value);
        if (!path)
                goto oom;
        n = w->n_secret_files;
        if (strv_push(&w->secrets, &n, secret) < 0)
                goto oom;
        secret = NULL;
        if (strv_push(&w->secret_files, &w->n_secret_files, path) < 0) {
                /* Keep the two lists the same length. */
                n = w->n_secret_files;
                wipe_free(w->secrets[n]);
                w->secrets[n] = NULL;
                free(path);
                return -ENOMEM;
        }
        return 0;
oom:
        free(path);
        wipe_free(secret);
        return -ENOMEM;
}

/* ---- The key tables ---- */

#define CFG(member) offsetof(Config, member)
#define WH(member) offsetof(ConfigWebhook, member)

static const Key api_keys[] = {
    {"url", parse_url, CFG(api.url), CONFIG_DEFAULT_API_URL, 0, 0, KEY_STRIP_SLASH},
    {"key-file", parse_path, CFG(api.key_file), NULL, 0, 0, 0},
    {"team-id", parse_header_value, CFG(api.team_id), NULL, 0, 0, 0},
    {"env-slug", parse_header_value, CFG(api.env_slug), NULL, 0, 0, 0},
    {"app-url", parse_url, CFG(api.app_url), CONFIG_DEFAULT_APP_URL, 0, 0, KEY_STRIP_SLASH},
    {"timeout", parse_duration_key, CFG(api.timeout_ms), "10s", 1, MS_HOUR, 0},
    {"max-connections", parse_unsigned, CFG(api.max_connections), "16", 1, CONFIG_MAX_CONNECTIONS_MAX, 0},
    {"rate-limit", parse_rate, CFG(api.rate_per_sec), "50/s", 0, 0, 0},
    {"ca-file", parse_path, CFG(api.ca_file), NULL, 0, 0, 0},
    {"max-body", parse_size_key, CFG(api.max_body), "1M", 1024, (uint64_t)1 << 30, 0},
};

static const Key poll_keys[] = {
    {"interval", parse_duration_key, CFG(poll.interval_ms), "5s", 1, DURATION_MAX, 0},
    {"waiting-interval", parse_duration_key, CFG(poll.waiting_interval_ms), "30s", 1, DURATION_MAX, 0},
    {"jitter", parse_percent, CFG(poll.jitter_percent), "10%", 0, 100, 0},
    {"max-sessions", parse_count, CFG(poll.max_sessions), "1000000", 1, 100000000, 0},
    {"retain", parse_duration_key, CFG(poll.retain_ms), "24h", 0, DURATION_MAX, 0},
    {"stalled-after", parse_duration_off, CFG(poll.stalled_after_ms), NULL, 0, DURATION_MAX, 0},
    {"stalled-after-waiting", parse_duration_off, CFG(poll.stalled_after_waiting_ms), NULL, 0, DURATION_MAX,
     0},
    {"backoff-max", parse_duration_key, CFG(poll.backoff_max_ms), "5m", 1, DURATION_MAX, 0},
    {"mode", parse_poll_mode, CFG(poll.mode), "auto", 0, 0, 0},
    {"audit-interval", parse_duration_key, CFG(poll.audit_interval_ms), "10m", 1, DURATION_MAX, 0},
};

static const Key watch_keys[] = {
    {"session", parse_sessions, CFG(watch), NULL, 0, 0, KEY_REPEATABLE},
    {"runbook", parse_runbooks, CFG(watch), NULL, 0, 0, KEY_REPEATABLE},
    {"discover-interval", parse_duration_key, CFG(watch.discover_interval_ms), "30s", 1, DURATION_MAX, 0},
    {"all", parse_bool_key, CFG(watch.all), "no", 0, 0, 0},
    {"backfill", parse_bool_key, CFG(watch.backfill), "no", 0, 0, 0},
    {"list-overlap", parse_duration_key, CFG(watch.list_overlap_ms), "2s", 0, MS_HOUR, 0},
};

static const Key journal_keys[] = {
    {"enable", parse_bool_key, CFG(journal.enable), "yes", 0, 0, 0},
    {"statuses", parse_statuses, CFG(journal.statuses), "all", 0, 0, 0},
};

static const Key webhook_keys[] = {
    {"url", parse_url, WH(url), NULL, 0, 0, 0},
    {"secret-file", parse_secret_file, 0, NULL, 0, 0, KEY_REPEATABLE},
    {"statuses", parse_statuses, WH(statuses), "all", 0, 0, 0},
    {"format", parse_format, WH(format), "cloudevents", 0, 0, 0},
    {"timeout", parse_duration_key, WH(timeout_ms), "10s", 1, MS_HOUR, 0},
    {"retry-min", parse_duration_key, WH(retry_min_ms), "5s", 1, DURATION_MAX, 0},
    {"retry-max", parse_duration_key, WH(retry_max_ms), "1h", 1, DURATION_MAX, 0},
    {"max-age", parse_duration_key, WH(max_age_ms), "24h", 1, DURATION_MAX, 0},
    {"max-in-flight", parse_unsigned, WH(max_in_flight), "4", 1, 1024, 0},
};

static const Key events_keys[] = {
    {"path", parse_path, CFG(events.path), NULL, 0, 0, KEY_SOCKET},
    {"mode", parse_mode, CFG(events.mode), "0660", 0, 0, 0},
    {"group", parse_group, CFG(events.group), NULL, 0, 0, 0},
    {"client-buffer", parse_size_key, CFG(events.client_buffer), "1M", 4096, (uint64_t)1 << 30, 0},
};

static const Key control_keys[] = {
    {"path", parse_path, CFG(control.path), NULL, 0, 0, KEY_SOCKET},
    {"mode", parse_mode, CFG(control.mode), "0600", 0, 0, 0},
    {"group", parse_group, CFG(control.group), NULL, 0, 0, 0},
};

static const Key metrics_keys[] = {
    {"listen", parse_listen, CFG(metrics), NULL, 0, 0, 0},
};

static const Key http_keys[] = {
    {"listen", parse_listen, CFG(http.listen), NULL, 0, 0, 0},
    {"token-file", parse_path, CFG(http.token_file), NULL, 0, 0, 0},
    {"max-connections", parse_unsigned, CFG(http.max_connections), "64", 1, 4096, 0},
    {"max-event-streams", parse_unsigned, CFG(http.max_event_streams), "32", 1, 1024, 0},
    {"heartbeat", parse_duration_key, CFG(http.heartbeat_ms), "15s", 100, MS_HOUR, 0},
    {"client-buffer", parse_size_key, CFG(http.client_buffer), "1M", 4096, (uint64_t)1 << 30, 0},
};

static const Key state_keys[] = {
    {"path", parse_path, CFG(state.path), NULL, 0, 0, 0},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const SectionInfo sections[_SECTION_MAX] = {
    [SECTION_API] = {"api", api_keys, N(api_keys)},
    [SECTION_POLL] = {"poll", poll_keys, N(poll_keys)},
    [SECTION_WATCH] = {"watch", watch_keys, N(watch_keys)},
    [SECTION_JOURNAL] = {"journal", journal_keys, N(journal_keys)},
    [SECTION_WEBHOOK] = {"webhook", webhook_keys, N(webhook_keys)},
    [SECTION_EVENTS] = {"events", events_keys, N(events_keys)},
    [SECTION_CONTROL] = {"control", control_keys, N(control_keys)},
    [SECTION_METRICS] = {"metrics", metrics_keys, N(metrics_keys)},
    [SECTION_HTTP] = {"http", http_keys, N(http_keys)},
    [SECTION_STATE] = {"state", state_keys, N(state_keys)},
};

_Static_assert(N(api_keys) <= KEYS_MAX && N(poll_keys) <= KEYS_MAX && N(webhook_keys) <= KEYS_MAX,
               "KEYS_MAX is too small");

/* Sets every key of a section to its default. */
static int apply_defaults(Parser *p, Section s, void *base)
{
        for (size_t i = 0; i < sections[s].n_keys; i++) {
                const Key *k = &sections[s].keys[i];
                int r;

                r = k->parse(p, k, k->def, (char *)base + k->offset);
                if (r == -ENOMEM)
                        return r;
                /* The built-in defaults are valid by construction. */
                assert(r == 0);
        }
        return 0;
}

static const char *section_display(Parser *p, char *buf, size_t size)
{
        if (p->section == SECTION_WEBHOOK)
                snprintf(buf, size, "[webhook \"%s\"]", p->config->webhooks[p->webhook].name);
        else
                snprintf(buf, size, "[%s]", sections[p->section].name);
        return buf;
}

static unsigned *section_seen(Parser *p)
{
        return p->section == SECTION_WEBHOOK ? p->webhook_seen[p->webhook] : p->seen[p->section];
}

static int on_ini_key(void *userdata, const char *section, const char *name, const char *value)
{
        Parser *p = userdata;
        char q[QUOTE_SIZE], q2[QUOTE_SIZE], where[128];
        const SectionInfo *s;
        const Key *k = NULL;
        unsigned *seen;
        size_t i;
        void *base;
        int r;

        /* `section` is inih's copy of the header, which it truncates; the
         * reader tracks sections itself (see on_ini_read()). */
        if (p->fatal || p->section == SECTION_SKIP)
                return 1;
        if (name[0] == '\0') {
                add_error(p, p->line, "Syntax error: expected '[section]' or 'key = value'");
                return 1;
        }
        if (p->section == SECTION_NONE) {
                add_error(p, p->line, "Key '%s' is outside of any section", quote(name, q));
                return 1;
        }

        s = &sections[p->section];
        for (i = 0; i < s->n_keys; i++)
                if (strcmp(s->keys[i].name, name) == 0) {
                        k = &s->keys[i];
                        break;
                }
        if (!k) {
                add_error(p, p->line, "Unknown key '%s' in section '%s'", quote(name, q),
                          section_display(p, where, sizeof(where)));
                return 1;
        }

        seen = section_seen(p);
        if (seen[i] > 0 && !(k->flags & KEY_REPEATABLE)) {
                add_error(p, p->line, "Duplicate key '%s' in section '%s' (first set on line %u)", k->name,
                          section_display(p, where, sizeof(where)), seen[i]);
                return 1;
        }
        seen[i] = p->line;

        base = p->section == SECTION_WEBHOOK ? (void *)&p->config->webhooks[p->webhook] : (void *)p->config;
        p->reason[0] = '\0';
        r = k->parse(p, k, value[0] ? value : k->def, (char *)base + k->offset);
        if (r == -ENOMEM)
                p->fatal = r;
        else if (r == -EINVAL) {
                add_error(p, p->line, "Invalid value '%s' for '%s': %s", quote(value, q2), k->name,
                          p->reason);
                /* Saying "No API key" after this would only repeat it. */
                if (p->section == SECTION_API && strcmp(k->name, "key-file") == 0)
                        p->key_file_bad = true;
        }
        return 1;
}

/* Mirrors inih's scan for the characters a or b that stops at an inline
 * comment (a ';' after a blank), bounded by len. Returns the offset found,
 * or len. */
static size_t find_chars_or_comment(const char *s, size_t len, char a, char b)
{
        bool was_blank = false;
        size_t i;

        for (i = 0; i < len; i++) {
                if (s[i] == a || s[i] == b || (was_blank && s[i] == ';'))
                        break;
                was_blank = is_blank(s[i]);
        }
        return i;
}

static int open_webhook(Parser *p, const char *name, size_t len)
{
        ConfigWebhook *w;
        unsigned(*seen)[KEYS_MAX];
        Config *c = p->config;
        int r;

        for (size_t i = 0; i < c->n_webhooks; i++)
                if (strlen(c->webhooks[i].name) == len && memcmp(c->webhooks[i].name, name, len) == 0) {
                        add_error(p, p->line, "Duplicate webhook '%s' (first defined on line %u)",
                                  c->webhooks[i].name, c->webhooks[i].line);
                        p->section = SECTION_SKIP;
                        return 0;
                }

        w = realloc(c->webhooks, (c->n_webhooks + 1) * sizeof(ConfigWebhook));
        if (!w)
                return -ENOMEM;
        c->webhooks = w;
        seen = realloc(p->webhook_seen, (c->n_webhooks + 1) * sizeof(*seen));
        if (!seen)
                return -ENOMEM;
        p->webhook_seen = seen;

        w = &c->webhooks[c->n_webhooks];
        *w = (ConfigWebhook){.line = p->line};
        memset(p->webhook_seen[c->n_webhooks], 0, sizeof(*seen));
        w->name = strndup(name, len);
        if (!w->name)
                return -ENOMEM;
        /* Counted before the defaults so that config_free() sees it. */
        p->webhook = c->n_webhooks++;
        p->section = SECTION_WEBHOOK;
        r = apply_defaults(p, SECTION_WEBHOOK, w);
        if (r < 0)
                return r;
        return 0;
}

/* A "[...]" line: sets the section the following keys belong to. */
static int open_section(Parser *p, const char *line, size_t len)
{
        char q[QUOTE_SIZE], name[256];
        size_t end, rest, a, b;

        end = find_chars_or_comment(line + 1, len - 1, ']', ']') + 1;
        if (end >= len || line[end] != ']') {
                add_error(p, p->line, "Syntax error: missing ']'");
                p->section = SECTION_SKIP;
                return 0;
        }
        for (rest = end + 1; rest < len && is_blank(line[rest]); rest++)
                ;
        if (rest < len && line[rest] != ';' && line[rest] != '#') {
                add_error(p, p->line, "Syntax error: unexpected text after ']'");
                p->section = SECTION_SKIP;
                return 0;
        }

        /* The name between the brackets, without surrounding blanks. */
        for (a = 1; a < end && is_blank(line[a]); a++)
                ;
        for (b = end; b > a && is_blank(line[b - 1]); b--)
                ;
        snprintf(name, sizeof(name), "%.*s", (int)(b - a), line + a);

        for (Section s = SECTION_API; s < SECTION_SKIP; s++)
                if (s != SECTION_WEBHOOK && strcmp(name, sections[s].name) == 0) {
                        p->section = s;
                        return 0;
                }

        if (strncmp(name, "webhook", 7) == 0 && (name[7] == '\0' || is_blank(name[7]) || name[7] == '"')) {
                const char *n = name + 7;
                size_t nlen;

                while (is_blank(*n))
                        n++;
                nlen = strlen(n);
                if (nlen >= 2 && n[0] == '"' && n[nlen - 1] == '"' && webhook_name_valid(n + 1, nlen - 2))
                        return open_webhook(p, n + 1, nlen - 2);
                add_error(p, p->line,
                          "Invalid section '[%s]': expected [webhook \"NAME\"], NAME being 1-64 characters "
                          "from A-Z, a-z, 0-9, '_', '.' and '-'",
                          quote(name, q));
                p->section = SECTION_SKIP;
                return 0;
        }

        add_error(p, p->line, "Unknown section '[%s]'", quote(name, q));
        p->section = SECTION_SKIP;
        return 0;
}

/* inih's line reader. It hands inih only "key = value" lines, with leading
 * blanks removed so that inih never takes a line for the continuation of
 * the one before; it numbers lines itself, handles section headers (inih
 * neither reports them to us nor keeps long names), and reports lines inih
 * would reject or cut. Runs inside ini_parse_stream(). */
static char *on_ini_read(char *buf, int size, void *userdata)
{
        Parser *p = userdata;

        while (!p->fatal && p->pos < p->size) {
                const char *line = p->data + p->pos, *nl;
                size_t len, sep;
                int r;

                nl = memchr(line, '\n', p->size - p->pos);
                len = nl ? (size_t)(nl - line) : p->size - p->pos;
                p->pos += len + (nl ? 1 : 0);
                p->line++;

                if (p->line == 1 && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
                        line += 3;
                        len -= 3;
                }
                while (len > 0 && is_blank(*line)) {
                        line++;
                        len--;
                }
                while (len > 0 && is_blank(line[len - 1]))
                        len--;

                if (memchr(line, '\0', len)) {
                        add_error(p, p->line, "Syntax error: NUL byte in line");
                        continue;
                }
                if (len == 0 || line[0] == '#' || line[0] == ';')
                        continue;
                if (line[0] == '[') {
                        r = open_section(p, line, len);
                        if (r < 0)
                                p->fatal = r;
                        continue;
                }
                sep = find_chars_or_comment(line, len, '=', ':');
                if (sep == len || (line[sep] != '=' && line[sep] != ':')) {
                        add_error(p, p->line, "Syntax error: expected '[section]' or 'key = value'");
                        continue;
                }
                if (size < 3 || len > (size_t)size - 3) {
                        add_error(p, p->line, "Line too long (at most %d characters)", size - 3);
                        continue;
                }
                memcpy(buf, line, len);
                buf[len] = '\n';
                buf[len + 1] = '\0';
                return buf;
        }
        return NULL;
}

static int read_file(const char *path, char **ret, size_t *ret_size)
{
        size_t size = 0, cap = 0;
        char *data = NULL;
        struct stat st;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto fail;
        }
        if (S_ISDIR(st.st_mode)) {
                r = -EISDIR;
                goto fail;
        }
        /* A regular file's size saves the regrowing; a pipe just grows. */
        cap = S_ISREG(st.st_mode) && (uint64_t)st.st_size < FILE_MAX ? (size_t)st.st_size + 2 : 4096;

        for (;;) {
                ssize_t n;

                if (size + 1 >= cap || !data) {
                        char *d;

                        if (data)
                                cap *= 2;
                        if (cap > FILE_MAX + 1) {
                                r = -EFBIG;
                                goto fail;
                        }
                        d = realloc(data, cap);
                        if (!d) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        data = d;
                }
                n = read(fd, data + size, cap - size - 1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto fail;
                }
                if (n == 0)
                        break;
                size += (size_t)n;
        }
        close(fd);
        data[size] = '\0';
        *ret = data;
        *ret_size = size;
        return 0;
fail:
        free(data);
        close(fd);
        return r;
}

/* "$DIR" (the first entry of a colon-separated list) + suffix, or NULL. */
static int env_path(const char *dir, const char *suffix, char **ret)
{
        size_t len;

        *ret = NULL;
        if (!dir || !*dir)
                return 0;
        len = strcspn(dir, ":");
        if (len == 0)
                return 0;
        if (asprintf(ret, "%.*s%s", (int)len, dir, suffix) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

static size_t key_index(Section s, const char *name)
{
        for (size_t i = 0; i < sections[s].n_keys; i++)
                if (strcmp(sections[s].keys[i].name, name) == 0)
                        return i;
        assert(!"unknown key");
        return 0;
}

static int apply_env(Parser *p, const ConfigEnv *env)
{
        static const struct {
                size_t offset;
                const char *suffix;
                Section section;
                bool runtime;
        } defaults[] = {
            {CFG(events.path), "/events.sock", SECTION_EVENTS, true},
            {CFG(control.path), "/control.sock", SECTION_CONTROL, true},
            {CFG(state.path), "", SECTION_STATE, false},
        };
        Config *c = p->config;
        char q[QUOTE_SIZE];
        int r;

        if (!c->api.key_file) {
                r = env_path(env ? env->credentials_directory : NULL, "/api-key", &c->api.key_file);
                if (r < 0)
                        return r;
                if (!c->api.key_file && !p->key_file_bad && (p->flags & CONFIG_LOAD_KEY_OPTIONAL))
                        add_warning(p, 0,
                                    "No API key: set 'key-file' in section '[api]', or start with "
                                    "LoadCredential=api-key:PATH so that $CREDENTIALS_DIRECTORY is set; "
                                    "the daemon will not start without one");
                else if (!c->api.key_file && !p->key_file_bad)
                        add_error(p, 0,
                                  "No API key: set 'key-file' in section '[api]', or start with "
                                  "LoadCredential=api-key:PATH so that $CREDENTIALS_DIRECTORY is set");
        }

        for (size_t i = 0; i < N(defaults); i++) {
                char **field = (char **)((char *)c + defaults[i].offset);
                const char *dir =
                    env ? (defaults[i].runtime ? env->runtime_directory : env->state_directory) : NULL;

                if (*field)
                        continue;
                r = env_path(dir, defaults[i].suffix, field);
                if (r < 0)
                        return r;
                if (*field && defaults[i].runtime &&
                    strlen(*field) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
                        add_error(p, 0,
                                  "Default %s path '%s' is too long for a Unix socket; set 'path' in '[%s]'",
                                  sections[defaults[i].section].name, quote(*field, q),
                                  sections[defaults[i].section].name);
        }
        return 0;
}

static void check_webhooks(Parser *p)
{
        char a[32], b[32];

        for (size_t i = 0; i < p->config->n_webhooks; i++) {
                ConfigWebhook *w = &p->config->webhooks[i];
                unsigned *seen = p->webhook_seen[i];
                unsigned min_line = seen[key_index(SECTION_WEBHOOK, "retry-min")];
                unsigned max_line = seen[key_index(SECTION_WEBHOOK, "retry-max")];

                if (!w->url)
                        add_error(p, w->line, "Webhook '%s' has no 'url'", w->name);
                if (w->retry_min_ms > w->retry_max_ms) {
                        add_error(p, min_line > max_line ? min_line : max_line,
                                  "Webhook '%s': 'retry-min' (%s) is larger than 'retry-max' (%s)", w->name,
                                  format_duration(w->retry_min_ms, a), format_duration(w->retry_max_ms, b));
                }
        }
}

static void read_api_key(Parser *p)
{
        Config *c = p->config;
        char err[PATH_MAX + 256];
        int r;

        if (!c->api.key_file)
                return;
        r = config_read_secret(c->api.key_file, &c->api.api_key, err, sizeof(err));
        if (r == -ENOMEM)
                p->fatal = r;
        else if (r == -ENOENT && (p->flags & CONFIG_LOAD_KEY_OPTIONAL))
                add_warning(p, p->seen[SECTION_API][key_index(SECTION_API, "key-file")],
                            "key-file %s; the daemon will not start without it", err);
        else if (r < 0)
                add_error(p, p->seen[SECTION_API][key_index(SECTION_API, "key-file")], "key-file %s", err);
}

/* The host of an http:// or https:// URL, without brackets, userinfo or
 * port, into buf; false when there is none or it does not fit. */
static bool url_host(const char *url, char *buf, size_t size)
{
        const char *h = strstr(url, "://"), *end, *at;
        size_t n;

        if (!h)
                return false;
        h += 3;
        end = h + strcspn(h, "/?#");
        /* userinfo@host */
        for (at = h; at < end; at++)
                if (*at == '@')
                        h = at + 1;
        if (*h == '[') {
                const char *close = memchr(h, ']', (size_t)(end - h));

                if (!close)
                        return false;
                h++;
                n = (size_t)(close - h);
        } else {
                const char *colon = memchr(h, ':', (size_t)(end - h));

                n = (size_t)((colon ? colon : end) - h);
        }
        if (n == 0 || n >= size)
                return false;
        memcpy(buf, h, n);
        buf[n] = '\0';
        return true;
}

bool config_url_is_cleartext(const char *url)
{
        struct in6_addr a6;
        struct in_addr a4;
        char host[256];
        size_t n;

        assert(url);

        if (strncasecmp(url, "http://", 7) != 0)
                return false;
        if (!url_host(url, host, sizeof(host)))
                return true;
        n = strlen(host);
        if (n > 1 && host[n - 1] == '.')
                host[--n] = '\0';
        /* RFC 6761: localhost and the names below it are the loopback. */
        if (strcasecmp(host, "localhost") == 0 || (n > 10 && strcasecmp(host + n - 10, ".localhost") == 0))
                return false;
        if (inet_pton(AF_INET, host, &a4) == 1)
                return (ntohl(a4.s_addr) >> 24) != 127;
        if (inet_pton(AF_INET6, host, &a6) == 1)
                return !IN6_IS_ADDR_LOOPBACK(&a6) && !(IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
        return true;
}

static void check_cleartext(Parser *p)
{
        const char *url = p->config->api.url;
        char q[QUOTE_SIZE];

        if (url && config_url_is_cleartext(url))
                add_warning(p, p->seen[SECTION_API][key_index(SECTION_API, "url")],
                            "'url' '%s' is plain http:// to a host that is not the loopback: the API key "
                            "would be sent in clear text",
                            quote(url, q));
}

bool config_listen_is_loopback(const ConfigListen *l)
{
        struct in6_addr a6;
        struct in_addr a4;

        if (!l->listen || !l->host)
                return false;
        if (strcasecmp(l->host, "localhost") == 0)
                return true;
        if (inet_pton(AF_INET, l->host, &a4) == 1)
                return (ntohl(a4.s_addr) >> 24) == 127;
        if (inet_pton(AF_INET6, l->host, &a6) == 1)
                return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
        return false;
}

/* [metrics] listen is the old spelling of [http] listen; a listener on
 * anything but the loopback needs a token; the token file is read now. */
static void check_http(Parser *p)
{
        Config *c = p->config;
        unsigned metrics_line = p->seen[SECTION_METRICS][key_index(SECTION_METRICS, "listen")];
        unsigned http_line = p->seen[SECTION_HTTP][key_index(SECTION_HTTP, "listen")];
        unsigned token_line = p->seen[SECTION_HTTP][key_index(SECTION_HTTP, "token-file")];
        char q[QUOTE_SIZE], err[PATH_MAX + 256];
        int r;

        if (c->metrics.listen) {
                if (c->http.listen.listen) {
                        add_error(p, metrics_line,
                                  "'listen' in section '[metrics]' is the old spelling of 'listen' in "
                                  "section '[http]' (line %u): keep only the latter",
                                  http_line);
                        return;
                }
                add_warning(p, metrics_line,
                            "'listen' in section '[metrics]' is deprecated: write it as 'listen' in section "
                            "'[http]', which serves /metrics and the status page and API");
                c->http.listen = c->metrics;
                c->metrics = (ConfigListen){};
                c->http_listen_deprecated_line = metrics_line;
                http_line = metrics_line;
        }
        if (c->http.listen.listen && !c->http.token_file && !config_listen_is_loopback(&c->http.listen))
                add_error(p, http_line,
                          "'listen' '%s' is not a loopback address: set 'token-file' in section '[http]' "
                          "(a bearer token that every request but the page itself must then carry)",
                          quote(c->http.listen.listen, q));
        if (!c->http.token_file)
                return;
        r = config_read_secret(c->http.token_file, &c->http.token, err, sizeof(err));
        if (r == -ENOMEM)
                p->fatal = r;
        else if (r < 0)
                add_error(p, token_line, "token-file %s", err);
}

int config_load(const char *path, const ConfigEnv *env, Config **ret, char *errbuf, size_t errlen)
{
        return config_load_full(path, env, 0, ret, errbuf, errlen, NULL, 0);
}

int config_load_full(const char *path, const ConfigEnv *env, unsigned flags, Config **ret, char *errbuf,
                     size_t errlen, char *warnbuf, size_t warnlen)
{
        Parser p = {
            .path = path,
            .errbuf = errbuf,
            .errlen = errlen,
            .flags = flags,
            .warnbuf = warnbuf,
            .warnlen = warnlen,
        };
        char *data = NULL;
        int saved_max_line = 0, r;

        assert(path);
        assert(ret);
        if (errbuf && errlen > 0)
                errbuf[0] = '\0';
        if (warnbuf && warnlen > 0)
                warnbuf[0] = '\0';

        r = read_file(path, &data, &p.size);
        if (r == -ENOMEM)
                goto oom;
        if (r < 0) {
                add_error(&p, 0, "Cannot read: %s", strerror(-r));
                return r;
        }
        p.data = data;

        p.config = calloc(1, sizeof(Config));
        if (!p.config)
                goto oom;
        p.config->path = strdup(path);
        if (!p.config->path)
                goto oom;
        for (Section s = SECTION_API; s < SECTION_SKIP; s++)
                if (s != SECTION_WEBHOOK && apply_defaults(&p, s, p.config) < 0)
                        goto oom;

        if (&ini_max_line) {
                saved_max_line = ini_max_line;
                if (ini_max_line < LINE_MAX_WANTED)
                        ini_max_line = LINE_MAX_WANTED;
        }
        r = ini_parse_stream(on_ini_read, &p, on_ini_key, &p);
        if (&ini_max_line)
                ini_max_line = saved_max_line;
        if (r == -2)
                p.fatal = -ENOMEM;
        /* Every syntax error inih can find is found by the reader first; a
         * positive r without a message of ours would be a bug here, but is
         * still not allowed to pass as a good config. */
        if (r > 0 && p.n_errors == 0)
                add_error(&p, 0, "Syntax error");
        free(data);
        data = NULL;
        if (p.fatal)
                goto oom;

        check_webhooks(&p);
        if (apply_env(&p, env) < 0)
                goto oom;
        read_api_key(&p);
        if (p.fatal)
                goto oom;
        check_cleartext(&p);
        check_http(&p);
        if (p.fatal)
                goto oom;

        free(p.webhook_seen);
        if (p.n_errors > 0) {
                if (p.n_errors > ERRORS_MAX) {
                        char msg[64];

                        snprintf(msg, sizeof(msg), "%u more errors not shown", p.n_errors - ERRORS_MAX);
                        append_message(&p, 0, msg);
                }
                config_free(p.config);
                return -EINVAL;
        }
        *ret = p.config;
        return 0;

oom:
        free(data);
        free(p.webhook_seen);
        config_free(p.config);
        if (errbuf && errlen > 0)
                errbuf[0] = '\0';
        p.errpos = 0;
        append_message(&p, 0, "Out of memory");
        return -ENOMEM;
}

static void socket_done(ConfigSocket *s)
{
        free(s->path);
        free(s->group);
}

void config_release_sessions(Config *c)
{
        strv_clear(&c->watch.sessions, &c->watch.n_sessions, false);
}

void config_free(Config *c)
{
        if (!c)
                return;

        free(c->path);
        free(c->api.url);
        free(c->api.key_file);
        wipe_free(c->api.api_key);
        free(c->api.team_id);
        free(c->api.env_slug);
        free(c->api.app_url);
        free(c->api.ca_file);

        strv_clear(&c->watch.sessions, &c->watch.n_sessions, false);
        strv_clear(&c->watch.runbooks, &c->watch.n_runbooks, false);

        for (size_t i = 0; i < c->n_webhooks; i++) {
                ConfigWebhook *w = &c->webhooks[i];
                size_t n = w->n_secret_files;

                free(w->name);
                free(w->url);
                strv_clear(&w->secrets, &n, true);
                strv_clear(&w->secret_files, &w->n_secret_files, false);
        }
        free(c->webhooks);

        socket_done(&c->events);
        socket_done(&c->control);
        free(c->metrics.listen);
        free(c->metrics.host);
        free(c->http.listen.listen);
        free(c->http.listen.host);
        free(c->http.token_file);
        wipe_free(c->http.token);
        free(c->state.path);
        free(c);
}
