/* Unit tests of config: value parsers, whole files, every error message. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define KEYHDR "[api]\nkey-file = @KEY@\n" /* lines 1 and 2 of many test files */
#define API_KEY "test-key-123"

static char tmpdir[PATH_MAX];
static char keypath[PATH_MAX];
static unsigned file_counter;

/* Replaces @DIR@ (the temp dir), @KEY@ (a good key file) and @FILE@ (the
 * config file's path) in a template. */
static char *subst(const char *tmpl, const char *file)
{
        size_t cap = strlen(tmpl) * 2 + 4 * PATH_MAX, n = 0;
        char *out = malloc(cap);

        assert_non_null(out);
        for (const char *s = tmpl; *s;) {
                const char *with = NULL;

                if (strncmp(s, "@DIR@", 5) == 0)
                        with = tmpdir;
                else if (strncmp(s, "@KEY@", 5) == 0)
                        with = keypath;
                else if (strncmp(s, "@FILE@", 6) == 0)
                        with = file;
                if (with) {
                        size_t l = strlen(with);

                        assert_true(n + l < cap);
                        memcpy(out + n, with, l);
                        n += l;
                        s += s[5] == '@' ? 6 : 5;
                } else {
                        assert_true(n + 1 < cap);
                        out[n++] = *s++;
                }
        }
        out[n] = '\0';
        return out;
}

static void write_file(const char *path, const char *data, size_t len)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, len), (ssize_t)len);
        assert_int_equal(close(fd), 0);
}

/* Writes `text` (after subst) to a new file in the temp dir; returns its path. */
static char *write_config(const char *text)
{
        char *path, *body;

        assert_true(asprintf(&path, "%s/test-%u.conf", tmpdir, ++file_counter) > 0);
        body = subst(text, path);
        write_file(path, body, strlen(body));
        free(body);
        return path;
}

static char *write_secret(const char *name, const char *content)
{
        char *path;

        assert_true(asprintf(&path, "%s/%s", tmpdir, name) > 0);
        write_file(path, content, strlen(content));
        return path;
}

/* Loads a config given as text; returns config_load()'s result. */
static int load_text(const char *text, const ConfigEnv *env, Config **ret, char *err, size_t errlen,
                     char **ret_path)
{
        char *path = write_config(text);
        int r;

        r = config_load(path, env, ret, err, errlen);
        if (ret_path)
                *ret_path = path;
        else
                free(path);
        return r;
}

static Config *load_ok(const char *text, const ConfigEnv *env)
{
        char err[4096];
        Config *c = NULL;
        int r;

        r = load_text(text, env, &c, err, sizeof(err), NULL);
        if (r != 0)
                fail_msg("config_load() = %d: %s", r, err);
        assert_non_null(c);
        return c;
}

static int remove_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        return remove(path);
}

static int group_setup(void **state)
{
        snprintf(tmpdir, sizeof(tmpdir), "%s/test-config-XXXXXX", getenv("TMPDIR") ?: "/tmp");
        if (!mkdtemp(tmpdir))
                return -1;
        if ((size_t)snprintf(keypath, sizeof(keypath), "%.4000s/api-key", tmpdir) >= sizeof(keypath))
                return -1;
        write_file(keypath, "  " API_KEY " \n\n", strlen(API_KEY) + 5);
        return 0;
}

static int group_teardown(void **state)
{
        return nftw(tmpdir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- Value parsers ---- */

static void test_parse_duration(void **state)
{
        static const struct {
                const char *s;
                int r;
                uint64_t ms;
        } cases[] = {
            {"1ms", 0, 1},
            {"5s", 0, 5000},
            {"30m", 0, 30 * 60000},
            {"1h", 0, 3600000},
            {"24h", 0, 86400000},
            {"2d", 0, 2 * 86400000},
            {"0", 0, 0},
            {"0s", 0, 0},
            {"10 s", 0, 10000},
            {"1500ms", 0, 1500},
            {"5", -EINVAL, 0}, /* missing unit */
            {"", -EINVAL, 0},
            {"s", -EINVAL, 0},
            {"5x", -EINVAL, 0},
            {"5S", -EINVAL, 0},
            {"5sec", -EINVAL, 0},
            {"1.5h", -EINVAL, 0},
            {"-1s", -EINVAL, 0},
            {"+1s", -EINVAL, 0},
            {" 1s", -EINVAL, 0},
            {"1h30m", -EINVAL, 0},
            {"99999999999999999999s", -ERANGE, 0},
            {"18446744073709551615d", -ERANGE, 0},
        };

        for (size_t i = 0; i < N(cases); i++) {
                uint64_t ms = 12345;
                int r = config_parse_duration(cases[i].s, &ms);

                if (r != cases[i].r)
                        fail_msg("'%s': got %d, expected %d", cases[i].s, r, cases[i].r);
                if (r == 0)
                        assert_int_equal(ms, cases[i].ms);
                else
                        assert_int_equal(ms, 12345); /* untouched on failure */
        }
}

static void test_parse_size(void **state)
{
        static const struct {
                const char *s;
                int r;
                uint64_t bytes;
        } cases[] = {
            {"0", 0, 0},         {"512", 0, 512},      {"64k", 0, 65536},
            {"64K", 0, 65536},   {"1M", 0, 1048576},   {"2G", 0, 2147483648ULL},
            {"1 M", 0, 1048576}, {"1m", -EINVAL, 0},   {"1MB", -EINVAL, 0},
            {"1T", -EINVAL, 0},  {"", -EINVAL, 0},     {"M", -EINVAL, 0},
            {"-1", -EINVAL, 0},  {"1.5M", -EINVAL, 0}, {"17179869184G", -ERANGE, 0},
        };

        for (size_t i = 0; i < N(cases); i++) {
                uint64_t b = 777;
                int r = config_parse_size(cases[i].s, &b);

                if (r != cases[i].r)
                        fail_msg("'%s': got %d, expected %d", cases[i].s, r, cases[i].r);
                assert_int_equal(b, r == 0 ? cases[i].bytes : 777);
        }
}

static void test_parse_bool(void **state)
{
        static const struct {
                const char *s;
                int r;
                bool b;
        } cases[] = {
            {"yes", 0, true},     {"YES", 0, true},        {"true", 0, true},   {"on", 0, true},
            {"1", 0, true},       {"no", 0, false},        {"False", 0, false}, {"off", 0, false},
            {"0", 0, false},      {"", -EINVAL, 0},        {"y", -EINVAL, 0},   {"2", -EINVAL, 0},
            {"yess", -EINVAL, 0}, {"enabled", -EINVAL, 0},
        };

        for (size_t i = 0; i < N(cases); i++) {
                bool b = !cases[i].b;
                int r = config_parse_bool(cases[i].s, &b);

                if (r != cases[i].r)
                        fail_msg("'%s': got %d, expected %d", cases[i].s, r, cases[i].r);
                if (r == 0)
                        assert_int_equal(b, cases[i].b);
        }
}

#define BIT(s) (1u << SESSION_STATUS_##s)

static void test_status_mask(void **state)
{
        static const struct {
                const char *s;
                int r;
                ConfigStatusMask mask;
        } cases[] = {
            {"all", 0, SESSION_STATUS_MASK_ALL},
            {"Failed", 0, BIT(FAILED)},
            {"Failed Waiting", 0, BIT(FAILED) | BIT(WAITING)},
            {"  Cancelled\tCancelling  ", 0, BIT(CANCELLED) | BIT(CANCELLING)},
            {"Pending Active Waiting Succeeded Failed Cancelling Cancelled unknown", 0,
             SESSION_STATUS_MASK_ALL},
            {"unknown", 0, BIT(UNKNOWN)},
            {"Failed all", 0, SESSION_STATUS_MASK_ALL},
            {"Failed Failed", 0, BIT(FAILED)},
            {"failed", -EINVAL, 0},
            {"FAILED", -EINVAL, 0},
            {"Unknown", -EINVAL, 0},
            {"Failed,Waiting", -EINVAL, 0},
            {"", -EINVAL, 0},
            {"   ", -EINVAL, 0},
            {"Gone", -EINVAL, 0},
        };

        /* The bit order is that of the API's enum, then unknown. */
        assert_int_equal(BIT(PENDING), 1u << 0);
        assert_int_equal(BIT(CANCELLED), 1u << 6);
        assert_int_equal(BIT(UNKNOWN), 1u << 7);
        assert_int_equal(SESSION_STATUS_MASK_ALL, 0xffu);

        for (size_t i = 0; i < N(cases); i++) {
                ConfigStatusMask m = 0xdead;
                int r = config_status_mask_from_list(cases[i].s, &m);

                if (r != cases[i].r)
                        fail_msg("'%s': got %d, expected %d", cases[i].s, r, cases[i].r);
                assert_int_equal(m, r == 0 ? cases[i].mask : 0xdead);
        }
}

static void test_session_id_valid(void **state)
{
        static const struct {
                const char *id;
                bool valid;
        } cases[] = {
            {"ses20220120za1pskd", true},
            {"a", true},
            {"A-b_9", true},
            {"0123456789012345678901234567890123456789012345678901234567890123", true},   /* 64 */
            {"01234567890123456789012345678901234567890123456789012345678901234", false}, /* 65 */
            {"", false},
            {"ses 1", false},
            {"ses/1", false},
            {"ses.1", false},
            {"sés", false},
            {"ses\n", false},
        };

        for (size_t i = 0; i < N(cases); i++)
                if (config_session_id_valid(cases[i].id) != cases[i].valid)
                        fail_msg("'%s': expected %s", cases[i].id, cases[i].valid ? "valid" : "invalid");
        assert_false(config_session_id_valid(NULL));
}

/* ---- Whole files ---- */

/* Checks every key that has a default value (not those that default to
 * unset, nor the key file). */
static void assert_defaults(const Config *c)
{
        assert_string_equal(c->api.url, CONFIG_DEFAULT_API_URL);
        assert_string_equal(c->api.app_url, CONFIG_DEFAULT_APP_URL);
        assert_int_equal(c->api.timeout_ms, 10000);
        assert_int_equal(c->api.max_connections, 16);
        assert_true(c->api.rate_per_sec == 50.0);
        assert_int_equal(c->api.max_body, 1024 * 1024);

        assert_int_equal(c->poll.interval_ms, 5000);
        assert_int_equal(c->poll.waiting_interval_ms, 30000);
        assert_int_equal(c->poll.jitter_percent, 10);
        assert_int_equal(c->poll.max_sessions, 1000000);
        assert_int_equal(c->poll.retain_ms, 24 * 3600 * 1000);
        assert_int_equal(c->poll.backoff_max_ms, 5 * 60 * 1000);

        assert_int_equal(c->watch.discover_interval_ms, 30000);
        assert_false(c->watch.all);
        assert_false(c->watch.backfill);

        assert_true(c->journal.enable);
        assert_int_equal(c->journal.statuses, SESSION_STATUS_MASK_ALL);

        assert_int_equal(c->events.mode, 0660);
        assert_int_equal(c->events.client_buffer, 1024 * 1024);
        assert_int_equal(c->http.max_connections, 64);
        assert_int_equal(c->http.max_event_streams, 32);
        assert_int_equal(c->http.heartbeat_ms, 15000);
        assert_int_equal(c->http.client_buffer, 1024 * 1024);
        assert_int_equal(c->control.mode, 0600);
}

static void test_defaults(void **state)
{
        Config *c = load_ok(KEYHDR, NULL);
        char *key = subst("@KEY@", "");

        assert_string_equal(c->api.key_file, key);
        assert_string_equal(c->api.api_key, API_KEY);
        assert_defaults(c);
        assert_null(c->api.team_id);
        assert_null(c->api.env_slug);
        assert_null(c->api.ca_file);
        assert_int_equal(c->poll.stalled_after_ms, 0);
        assert_int_equal(c->poll.stalled_after_waiting_ms, 0);
        assert_int_equal(c->watch.n_sessions, 0);
        assert_null(c->watch.sessions);
        assert_int_equal(c->watch.n_runbooks, 0);
        assert_int_equal(c->n_webhooks, 0);
        assert_null(c->events.path);
        assert_null(c->events.group);
        assert_null(c->control.path);
        assert_null(c->control.group);
        assert_null(c->metrics.listen);
        assert_null(c->metrics.host);
        assert_int_equal(c->metrics.port, 0);
        assert_null(c->http.listen.listen);
        assert_null(c->http.token_file);
        assert_null(c->http.token);
        assert_int_equal(c->http.max_connections, 64);
        assert_int_equal(c->http.max_event_streams, 32);
        assert_int_equal(c->http.heartbeat_ms, 15000);
        assert_int_equal(c->http.client_buffer, 1 << 20);
        assert_int_equal(c->http_listen_deprecated_line, 0);
        assert_null(c->state.path);
        assert_non_null(strstr(c->path, "/test-"));
        free(key);
        config_free(c);
}

static void test_every_key(void **state)
{
        static const char text[] = "[api]\n"
                                   "url = http://127.0.0.1:8080/v0/\n"
                                   "key-file = @KEY@\n"
                                   "team-id = tea123\n"
                                   "env-slug = prod\n"
                                   "app-url = https://app.example.com/\n"
                                   "timeout = 2500ms\n"
                                   "max-connections = 1024\n"
                                   "rate-limit = 600/m\n"
                                   "ca-file = @DIR@/ca.pem\n"
                                   "max-body = 64k\n"
                                   "[poll]\n"
                                   "interval = 1ms\n"
                                   "waiting-interval = 1m\n"
                                   "jitter = 0%\n"
                                   "max-sessions = 42\n"
                                   "retain = 2d\n"
                                   "stalled-after = 2h\n"
                                   "stalled-after-waiting = 8h\n"
                                   "backoff-max = 90s\n"
                                   "[watch]\n"
                                   "session = ses1\n"
                                   "runbook = rbk1\n"
                                   "discover-interval = 1h\n"
                                   "all = yes\n"
                                   "backfill = on\n"
                                   "[journal]\n"
                                   "enable = no\n"
                                   "statuses = Failed Waiting\n"
                                   "[events]\n"
                                   "path = @DIR@/events.sock\n"
                                   "mode = 0666\n"
                                   "group = adm\n"
                                   "client-buffer = 4k\n"
                                   "[control]\n"
                                   "path = @DIR@/control.sock\n"
                                   "mode = 600\n"
                                   "group = 4\n"
                                   "[http]\n"
                                   "listen = [::1]:9464\n"
                                   "max-connections = 8\n"
                                   "max-event-streams = 2\n"
                                   "heartbeat = 500ms\n"
                                   "client-buffer = 64k\n"
                                   "[state]\n"
                                   "path = @DIR@/state\n";
        Config *c = load_ok(text, NULL);
        char *dir = subst("@DIR@", "");
        char buf[PATH_MAX + 32];

        assert_string_equal(c->api.url, "http://127.0.0.1:8080/v0");
        assert_string_equal(c->api.team_id, "tea123");
        assert_string_equal(c->api.env_slug, "prod");
        assert_string_equal(c->api.app_url, "https://app.example.com");
        assert_int_equal(c->api.timeout_ms, 2500);
        assert_int_equal(c->api.max_connections, 1024);
        assert_true(c->api.rate_per_sec == 10.0);
        snprintf(buf, sizeof(buf), "%s/ca.pem", dir);
        assert_string_equal(c->api.ca_file, buf);
        assert_int_equal(c->api.max_body, 65536);

        assert_int_equal(c->poll.interval_ms, 1);
        assert_int_equal(c->poll.waiting_interval_ms, 60000);
        assert_int_equal(c->poll.jitter_percent, 0);
        assert_int_equal(c->poll.max_sessions, 42);
        assert_int_equal(c->poll.retain_ms, 2 * 86400000);
        assert_int_equal(c->poll.stalled_after_ms, 2 * 3600000);
        assert_int_equal(c->poll.stalled_after_waiting_ms, 8 * 3600000);
        assert_int_equal(c->poll.backoff_max_ms, 90000);

        assert_int_equal(c->watch.n_sessions, 1);
        assert_string_equal(c->watch.sessions[0], "ses1");
        assert_null(c->watch.sessions[1]);
        assert_int_equal(c->watch.n_runbooks, 1);
        assert_string_equal(c->watch.runbooks[0], "rbk1");
        assert_int_equal(c->watch.discover_interval_ms, 3600000);
        assert_true(c->watch.all);
        assert_true(c->watch.backfill);

        assert_false(c->journal.enable);
        assert_int_equal(c->journal.statuses, BIT(FAILED) | BIT(WAITING));

        snprintf(buf, sizeof(buf), "%s/events.sock", dir);
        assert_string_equal(c->events.path, buf);
        assert_int_equal(c->events.mode, 0666);
        assert_string_equal(c->events.group, "adm");
        assert_int_equal(c->events.client_buffer, 4096);
        snprintf(buf, sizeof(buf), "%s/control.sock", dir);
        assert_string_equal(c->control.path, buf);
        assert_int_equal(c->control.mode, 0600);
        assert_string_equal(c->control.group, "4");

        assert_string_equal(c->http.listen.listen, "[::1]:9464");
        assert_string_equal(c->http.listen.host, "::1");
        assert_int_equal(c->http.listen.port, 9464);
        assert_int_equal(c->http.max_connections, 8);
        assert_int_equal(c->http.max_event_streams, 2);
        assert_int_equal(c->http.heartbeat_ms, 500);
        assert_int_equal(c->http.client_buffer, 65536);
        assert_null(c->metrics.listen);
        snprintf(buf, sizeof(buf), "%s/state", dir);
        assert_string_equal(c->state.path, buf);
        free(dir);
        config_free(c);
}

static void test_rate_limit(void **state)
{
        static const struct {
                const char *value;
                double rate;
        } cases[] = {
            {"50/s", 50}, {"3600/h", 1}, {"30/m", 0.5}, {"1 / s", 1}, {"0", 0}, {"off", 0},
        };

        for (size_t i = 0; i < N(cases); i++) {
                char *text;
                Config *c;

                assert_true(asprintf(&text, KEYHDR "rate-limit = %s\n", cases[i].value) > 0);
                c = load_ok(text, NULL);
                if (c->api.rate_per_sec != cases[i].rate)
                        fail_msg("'%s': got %g", cases[i].value, c->api.rate_per_sec);
                config_free(c);
                free(text);
        }
}

static void test_listen(void **state)
{
        static const struct {
                const char *value;
                const char *host;
                uint16_t port;
        } cases[] = {
            {"127.0.0.1:9464", "127.0.0.1", 9464},
            {"localhost:1", "localhost", 1},
            {"[::]:65535", "::", 65535},
            {"[fe80::1]:80", "fe80::1", 80},
            {"*:9464", NULL, 9464},
            {":9464", NULL, 9464},
        };

        char *token = write_secret("http-token", "tok_example\n");

        for (size_t i = 0; i < N(cases); i++) {
                char *text;
                Config *c;

                /* Off the loopback, a token file is needed (see test_http_token). */
                assert_true(asprintf(&text, KEYHDR "[http]\nlisten = %s\ntoken-file = %s\n", cases[i].value,
                                     token) > 0);
                c = load_ok(text, NULL);
                assert_string_equal(c->http.listen.listen, cases[i].value);
                if (cases[i].host)
                        assert_string_equal(c->http.listen.host, cases[i].host);
                else
                        assert_null(c->http.listen.host);
                assert_int_equal(c->http.listen.port, cases[i].port);
                assert_string_equal(c->http.token, "tok_example");
                config_free(c);
                free(text);
        }
        free(token);
}

/* [metrics] listen is the old spelling of [http] listen. */
static void test_metrics_listen_moves_to_http(void **state)
{
        Config *c = load_ok(KEYHDR "[metrics]\nlisten = 127.0.0.1:9464\n", NULL);

        assert_null(c->metrics.listen);
        assert_string_equal(c->http.listen.listen, "127.0.0.1:9464");
        assert_string_equal(c->http.listen.host, "127.0.0.1");
        assert_int_equal(c->http.listen.port, 9464);
        assert_int_equal(c->http_listen_deprecated_line, 4);
        assert_true(config_listen_is_loopback(&c->http.listen));
        config_free(c);
}

static void test_loopback(void **state)
{
        static const struct {
                const char *host;
                bool loopback;
        } cases[] = {
            {"127.0.0.1", true}, {"127.8.9.10", true}, {"::1", true},   {"localhost", true},
            {"LocalHost", true}, {"::ffff:127.0.0.1", true}, {"10.0.0.1", false},
            {"0.0.0.0", false}, {"::", false}, {"example.com", false}, {NULL, false},
        };

        for (size_t i = 0; i < N(cases); i++) {
                ConfigListen l = {.listen = (char *)"x:1", .host = (char *)cases[i].host, .port = 1};

                assert_int_equal(config_listen_is_loopback(&l), cases[i].loopback);
        }
}

static void test_syntax(void **state)
{
        /* A BOM, CRLF line ends, indentation, "key: value", inline comments
         * (';' after a blank) and '#' or ';' inside values. */
        static const char text[] = "\xef\xbb\xbf"
                                   "# comment\r\n"
                                   "; another\r\n"
                                   "  [api]   ; inline after a header\r\n"
                                   "\tkey-file = @KEY@\r\n"
                                   "  team-id: t#1;x ; a comment\r\n"
                                   "url=https://h/v0#frag\r\n"
                                   "[ poll ]\n"
                                   "interval   =   250ms   \n"
                                   "    jitter = 50\n"
                                   "[webhook \"Team.on-call_2\"] # comment\n"
                                   "url = https://h/hook?a=1;b=2\n";
        Config *c = load_ok(text, NULL);

        assert_string_equal(c->api.api_key, API_KEY);
        assert_string_equal(c->api.team_id, "t#1;x");
        assert_string_equal(c->api.url, "https://h/v0#frag");
        assert_int_equal(c->poll.interval_ms, 250);
        assert_int_equal(c->poll.jitter_percent, 50);
        assert_int_equal(c->n_webhooks, 1);
        assert_string_equal(c->webhooks[0].name, "Team.on-call_2");
        assert_string_equal(c->webhooks[0].url, "https://h/hook?a=1;b=2");
        config_free(c);
}

static void test_url_slashes(void **state)
{
        Config *c = load_ok(KEYHDR "url = https://h.example/v0///\napp-url = http://a.example/\n", NULL);

        assert_string_equal(c->api.url, "https://h.example/v0");
        assert_string_equal(c->api.app_url, "http://a.example");
        config_free(c);
}

static void test_empty_resets(void **state)
{
        static const char text[] = KEYHDR "[poll]\n"
                                          "interval =\n"
                                          "stalled-after =\n"
                                          "[watch]\n"
                                          "session = ses1 ses2\n"
                                          "session =\n"
                                          "session = ses3\n"
                                          "[journal]\n"
                                          "statuses =\n"
                                          "[metrics]\n"
                                          "listen =\n";
        Config *c = load_ok(text, NULL);

        assert_int_equal(c->poll.interval_ms, 5000);
        assert_int_equal(c->poll.stalled_after_ms, 0);
        assert_int_equal(c->watch.n_sessions, 1);
        assert_string_equal(c->watch.sessions[0], "ses3");
        assert_int_equal(c->journal.statuses, SESSION_STATUS_MASK_ALL);
        assert_null(c->metrics.listen);
        config_free(c);
}

static void test_repeatable(void **state)
{
        static const char text[] = KEYHDR "[watch]\n"
                                          "session = ses1\n"
                                          "runbook = rbk1 rbk2\n"
                                          "session = ses2 ses3\tses4\n"
                                          "session = ses1\n"
                                          "[poll]\n"
                                          "interval = 1s\n"
                                          "[watch]\n"
                                          "session = ses5\n"
                                          "runbook = rbk3\n";
        static const char *const sessions[] = {"ses1", "ses2", "ses3", "ses4", "ses1", "ses5"};
        static const char *const runbooks[] = {"rbk1", "rbk2", "rbk3"};
        Config *c = load_ok(text, NULL);

        /* Order is kept and duplicates are not removed here. */
        assert_int_equal(c->watch.n_sessions, N(sessions));
        for (size_t i = 0; i < N(sessions); i++)
                assert_string_equal(c->watch.sessions[i], sessions[i]);
        assert_null(c->watch.sessions[N(sessions)]);
        assert_int_equal(c->watch.n_runbooks, N(runbooks));
        for (size_t i = 0; i < N(runbooks); i++)
                assert_string_equal(c->watch.runbooks[i], runbooks[i]);
        assert_null(c->watch.runbooks[N(runbooks)]);
        config_free(c);
}

static void test_many_sessions(void **state)
{
        const size_t n = 100000;
        size_t len = strlen(KEYHDR "[watch]\n") + n * 32 + 1, pos;
        char *text = malloc(len);
        Config *c;

        assert_non_null(text);
        pos = (size_t)snprintf(text, len, KEYHDR "[watch]\n");
        for (size_t i = 0; i < n; i++)
                pos += (size_t)snprintf(text + pos, len - pos, "session = ses%08zu\n", i);
        c = load_ok(text, NULL);
        assert_int_equal(c->watch.n_sessions, n);
        assert_string_equal(c->watch.sessions[0], "ses00000000");
        assert_string_equal(c->watch.sessions[n - 1], "ses00099999");
        assert_null(c->watch.sessions[n]);
        config_free(c);
        free(text);
}

static void test_webhooks(void **state)
{
        char *s1 = write_secret("wh1.secret", "\n  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw  \n");
        char *s2 = write_secret("wh2.secret", "whsec_c2Vjb25k");
        static const char text[] = KEYHDR "[webhook \"oncall\"]\n"
                                          "url = https://hooks.example.com/sessions\n"
                                          "secret-file = @DIR@/wh1.secret\n"
                                          "secret-file = @DIR@/wh2.secret\n"
                                          "statuses = Failed Waiting\n"
                                          "format = slack\n"
                                          "timeout = 3s\n"
                                          "retry-min = 1s\n"
                                          "retry-max = 2m\n"
                                          "max-age = 1h\n"
                                          "max-in-flight = 1\n"
                                          "[webhook \"audit\"]\n"
                                          "url = http://127.0.0.1:9000/\n";
        Config *c = load_ok(text, NULL);
        ConfigWebhook *w;

        assert_int_equal(c->n_webhooks, 2);
        w = &c->webhooks[0];
        assert_string_equal(w->name, "oncall");
        assert_int_equal(w->line, 3);
        assert_string_equal(w->url, "https://hooks.example.com/sessions");
        assert_int_equal(w->n_secret_files, 2);
        assert_string_equal(w->secret_files[0], s1);
        assert_string_equal(w->secret_files[1], s2);
        assert_null(w->secret_files[2]);
        assert_string_equal(w->secrets[0], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_string_equal(w->secrets[1], "whsec_c2Vjb25k");
        assert_null(w->secrets[2]);
        assert_int_equal(w->statuses, BIT(FAILED) | BIT(WAITING));
        assert_int_equal(w->format, CONFIG_WEBHOOK_FORMAT_SLACK);
        assert_int_equal(w->timeout_ms, 3000);
        assert_int_equal(w->retry_min_ms, 1000);
        assert_int_equal(w->retry_max_ms, 120000);
        assert_int_equal(w->max_age_ms, 3600000);
        assert_int_equal(w->max_in_flight, 1);

        /* Defaults of a webhook; its URL is used as given. */
        w = &c->webhooks[1];
        assert_string_equal(w->name, "audit");
        assert_int_equal(w->line, 14);
        assert_string_equal(w->url, "http://127.0.0.1:9000/");
        assert_int_equal(w->n_secret_files, 0);
        assert_int_equal(w->statuses, SESSION_STATUS_MASK_ALL);
        assert_int_equal(w->format, CONFIG_WEBHOOK_FORMAT_CLOUDEVENTS);
        assert_int_equal(w->timeout_ms, 10000);
        assert_int_equal(w->retry_min_ms, 5000);
        assert_int_equal(w->retry_max_ms, 3600000);
        assert_int_equal(w->max_age_ms, 86400000);
        assert_int_equal(w->max_in_flight, 4);

        assert_string_equal(config_webhook_format_to_string(CONFIG_WEBHOOK_FORMAT_CLOUDEVENTS),
                            "cloudevents");
        assert_string_equal(config_webhook_format_to_string(CONFIG_WEBHOOK_FORMAT_SLACK), "slack");
        config_free(c);
        free(s1);
        free(s2);
}

static void test_env_defaults(void **state)
{
        char *creds, *sub, *expect;
        ConfigEnv env;
        Config *c;

        /* $CREDENTIALS_DIRECTORY/api-key stands in for a missing key-file. */
        assert_true(asprintf(&creds, "%s/creds", tmpdir) > 0);
        assert_int_equal(mkdir(creds, 0700), 0);
        assert_true(asprintf(&sub, "%s/api-key", creds) > 0);
        write_file(sub, "cred-key\n", 9);
        env = (ConfigEnv){
            .credentials_directory = creds,
            .runtime_directory = "/run/sw:/run/other",
            .state_directory = "/var/lib/sw",
        };
        c = load_ok("[poll]\n", &env);
        assert_string_equal(c->api.key_file, sub);
        assert_string_equal(c->api.api_key, "cred-key");
        assert_string_equal(c->events.path, "/run/sw/events.sock");
        assert_string_equal(c->control.path, "/run/sw/control.sock");
        assert_string_equal(c->state.path, "/var/lib/sw");
        config_free(c);

        /* The file wins over the environment. */
        c = load_ok(KEYHDR "[events]\npath = /run/x.sock\n[state]\npath = /srv/state\n", &env);
        expect = subst("@KEY@", "");
        assert_string_equal(c->api.key_file, expect);
        assert_string_equal(c->api.api_key, API_KEY);
        assert_string_equal(c->events.path, "/run/x.sock");
        assert_string_equal(c->control.path, "/run/sw/control.sock");
        assert_string_equal(c->state.path, "/srv/state");
        config_free(c);

        /* Empty variables count as unset. */
        env = (ConfigEnv){.credentials_directory = "", .runtime_directory = "", .state_directory = ""};
        c = load_ok(KEYHDR, &env);
        assert_null(c->events.path);
        assert_null(c->control.path);
        assert_null(c->state.path);
        config_free(c);

        free(expect);
        free(sub);
        free(creds);
}

static void test_read_secret(void **state)
{
        static const struct {
                const char *name, *content, *value, *error;
                int r;
        } cases[] = {
            {"s-plain", "abc", "abc", NULL, 0},
            {"s-trim", " \t\n abc def \r\n\n", "abc def", NULL, 0},
            {"s-empty", "", NULL, "'@DIR@/s-empty': File is empty", -ENODATA},
            {"s-blank", " \n\t\r\n", NULL, "'@DIR@/s-blank': File is empty", -ENODATA},
            {"s-ctl", "hunter2\nhunter3", NULL, "'@DIR@/s-ctl': Contains control characters", -EINVAL},
            {"s-esc", "hunter2\x1b", NULL, "'@DIR@/s-esc': Contains control characters", -EINVAL},
        };
        char err[PATH_MAX + 256], *path, *expect, *s;
        int r;

        for (size_t i = 0; i < N(cases); i++) {
                path = write_secret(cases[i].name, cases[i].content);
                s = NULL;
                err[0] = '\0';
                r = config_read_secret(path, &s, err, sizeof(err));
                if (r != cases[i].r)
                        fail_msg("%s: got %d (%s)", cases[i].name, r, err);
                if (r == 0) {
                        assert_string_equal(s, cases[i].value);
                        free(s);
                } else {
                        assert_null(s);
                        expect = subst(cases[i].error, "");
                        assert_string_equal(err, expect);
                        free(expect);
                        assert_null(strstr(err, "hunter"));
                }
                free(path);
        }

        r = config_read_secret("/nonexistent/secret", &s, err, sizeof(err));
        assert_int_equal(r, -ENOENT);
        assert_string_equal(err, "'/nonexistent/secret': No such file or directory");
        r = config_read_secret(tmpdir, &s, err, sizeof(err));
        assert_int_equal(r, -EISDIR);

        /* A NUL byte in the middle is refused too, silently about the rest. */
        assert_true(asprintf(&path, "%s/s-nul", tmpdir) > 0);
        write_file(path, "hunter2\0x", 9);
        r = config_read_secret(path, &s, err, sizeof(err));
        assert_int_equal(r, -EINVAL);
        assert_null(strstr(err, "hunter"));
        free(path);

        /* Larger than 64 KiB. */
        assert_true(asprintf(&path, "%s/s-big", tmpdir) > 0);
        s = malloc(65537);
        assert_non_null(s);
        memset(s, 'k', 65537);
        write_file(path, s, 65537);
        free(s);
        r = config_read_secret(path, &s, err, sizeof(err));
        assert_int_equal(r, -EFBIG);
        assert_null(strstr(err, "kkkk"));
        free(path);
}

/* No message ever quotes a secret file's contents, even with other errors in
 * the same file and a key file that is broken. */
static void test_secret_never_in_errors(void **state)
{
        char *k = write_secret("leaky-key", "hunter2-api\nhunter2-more\n");
        char *w = write_secret("leaky-wh", "whsec_hunter2\x01");
        char err[8192];
        Config *c = NULL;
        int r;

        r = load_text("[api]\n"
                      "key-file = @DIR@/leaky-key\n"
                      "timeout = 5\n"
                      "[webhook \"w\"]\n"
                      "url = https://h\n"
                      "secret-file = @DIR@/leaky-wh\n",
                      NULL, &c, err, sizeof(err), NULL);
        assert_int_equal(r, -EINVAL);
        assert_null(c);
        assert_non_null(strstr(err, "key-file '"));
        assert_non_null(strstr(err, "secret-file '"));
        assert_null(strstr(err, "hunter2"));
        free(k);
        free(w);
}

/* A secret must be "whsec_" + base64, so that a mangled one stops the start
 * (and --check-config) instead of making every signature wrong. The message
 * names the file, never the contents. */
static void test_webhook_secret_not_base64(void **state)
{
        static const char *const bad[] = {"whsec_hunter2!", "hunter2AAAAA", "whsec_",
                                          "whsec_abc",      "whsec_a===",   "whsec_YWJj ZGVm"};
        char err[8192];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char *w = write_secret("bad-wh", bad[i]);
                Config *c = NULL;
                int r;

                r = load_text(KEYHDR "[webhook \"w\"]\n"
                                     "url = https://h\n"
                                     "secret-file = @DIR@/bad-wh\n",
                              NULL, &c, err, sizeof(err), NULL);
                assert_int_equal(r, -EINVAL);
                assert_null(c);
                assert_non_null(strstr(err, ":5: secret-file '"));
                assert_non_null(
                    strstr(err, "bad-wh': not a Standard Webhooks secret ('whsec_' followed by base64)"));
                assert_null(strstr(err, "hunter2"));
                free(w);
        }
}

/* One broken file per message kind; the whole message is checked. */
static void test_errors(void **state)
{
        static char long_url[10000], long_sock[200], long_id[80];
        static const char rbk_err[] =
            "@FILE@:4: Invalid runbook id 'rbk#1': expected 1-64 characters from A-Z, a-z, "
            "0-9, '_' and '-'";
        struct {
                const char *text, *error;
        } cases[] = {
            {KEYHDR "[bogus]\nx = 1\n", "@FILE@:3: Unknown section '[bogus]'"},
            /* Bytes a terminal would act on, or that are not UTF-8, are shown escaped. */
            {KEYHDR "[bo\x1b[31mgus\xff]\n", "@FILE@:3: Unknown section '[bo\\x1b[31mgus\\xff]'"},
            {KEYHDR "col\x1b]0;t\x07our = 1\n",
             "@FILE@:3: Unknown key 'col\\x1b]0;t\\x07our' in section '[api]'"},
            {KEYHDR "timeout = 1\xfe\xc3s\n", "@FILE@:3: Invalid value '1\\xfe\\xc3s' for 'timeout': "
                                              "unknown unit (expected ms, s, m, h or d)"},
            {KEYHDR "timeout = 1caf\xc3\xa9\\\n", "@FILE@:3: Invalid value '1caf\xc3\xa9\\\\' for "
                                                  "'timeout': unknown unit (expected ms, s, m, h or d)"},
            /* Integers past what a setting takes are too large, with the limit. */
            {KEYHDR "max-connections = 99999999999999999999999\n",
             "@FILE@:3: Invalid value '99999999999999999999999' for 'max-connections': number too large (at "
             "most "
             "1024)"},
            {KEYHDR "max-connections = 99999999999999999999999x\n",
             "@FILE@:3: Invalid value '99999999999999999999999x' for 'max-connections': not a number"},
            {KEYHDR "[poll]\nmax-sessions = 18446744073709551616\n",
             "@FILE@:4: Invalid value '18446744073709551616' for 'max-sessions': number too large (at most "
             "100000000)"},
            {KEYHDR "[poll]\njitter = 99999999999999999999999%\n",
             "@FILE@:4: Invalid value '99999999999999999999999%' for 'jitter': number too large (at most "
             "100%)"},
            {KEYHDR "[poll]\njitter = 99999999999999999999999%%\n",
             "@FILE@:4: Invalid value '99999999999999999999999%%' for 'jitter': not a percentage (e.g. "
             "10%)"},
            {KEYHDR "rate-limit = 99999999999999999999999/m\n",
             "@FILE@:3: Invalid value '99999999999999999999999/m' for 'rate-limit': the count is too large "
             "(at "
             "most 1000000)"},
            {KEYHDR "timeout = 99999999999999999999999s\n",
             "@FILE@:3: Invalid value '99999999999999999999999s' for 'timeout': number too large (at most "
             "1h)"},
            {KEYHDR "max-body = 99999999999999999999999M\n",
             "@FILE@:3: Invalid value '99999999999999999999999M' for 'max-body': number too large (at most "
             "1G)"},
            {KEYHDR "[metrics]\nlisten = 127.0.0.1:65536\n",
             "@FILE@:4: Invalid value '127.0.0.1:65536' for 'listen': the port is too large (at most "
             "65535)"},
            {KEYHDR "[metrics]\nlisten = 127.0.0.1:99999999999999999999999\n",
             "@FILE@:4: Invalid value '127.0.0.1:99999999999999999999999' for 'listen': the port is too "
             "large "
             "(at most 65535)"},
            {KEYHDR "[control]\nmode = 006600\n", "@FILE@:4: Invalid value '006600' for 'mode': too large: "
                                                  "only permission bits (at most 0777) are "
                                                  "allowed"},
            {KEYHDR "[Api]\n", "@FILE@:3: Unknown section '[Api]'"},
            {KEYHDR "colour = red\n", "@FILE@:3: Unknown key 'colour' in section '[api]'"},
            {KEYHDR "Timeout = 1s\n", "@FILE@:3: Unknown key 'Timeout' in section '[api]'"},
            {KEYHDR "[webhook \"w\"]\nurl = https://h\nmethod = PUT\n",
             "@FILE@:5: Unknown key 'method' in section '[webhook \"w\"]'"},
            {"x = 1\n" KEYHDR, "@FILE@:1: Key 'x' is outside of any section"},
            {KEYHDR "[poll]\ninterval = 5\n",
             "@FILE@:4: Invalid value '5' for 'interval': missing unit (ms, s, m, h or d)"},
            {KEYHDR "[poll]\ninterval = 5x\n",
             "@FILE@:4: Invalid value '5x' for 'interval': unknown unit (expected ms, s, m, h or d)"},
            {KEYHDR "[poll]\ninterval = 0\n",
             "@FILE@:4: Invalid value '0' for 'interval': must be between 1ms and 365d"},
            {KEYHDR "[poll]\nstalled-after = 10\n",
             "@FILE@:4: Invalid value '10' for 'stalled-after': missing unit (ms, s, m, h or d)"},
            {KEYHDR "[poll]\nretain = 366d\n",
             "@FILE@:4: Invalid value '366d' for 'retain': must be at most 365d"},
            {KEYHDR "timeout = 2h\n",
             "@FILE@:3: Invalid value '2h' for 'timeout': must be between 1ms and 1h"},
            {KEYHDR "[poll]\ninterval = 1s\n\ninterval = 2s\n",
             "@FILE@:6: Duplicate key 'interval' in section '[poll]' (first set on line 4)"},
            {KEYHDR "[poll]\ninterval = 1s\n[api]\nurl = http://a\n[poll]\ninterval = 1s\n",
             "@FILE@:8: Duplicate key 'interval' in section '[poll]' (first set on line 4)"},
            {KEYHDR "key-file = @KEY@\n",
             "@FILE@:3: Duplicate key 'key-file' in section '[api]' (first set on line 2)"},
            {KEYHDR "[webhook \"a\"]\nurl = http://x\n[webhook \"a\"]\nurl = http://y\n",
             "@FILE@:5: Duplicate webhook 'a' (first defined on line 3)"},
            {KEYHDR "[webhook \"a\"]\nurl = http://x\nurl = http://y\n",
             "@FILE@:5: Duplicate key 'url' in section '[webhook \"a\"]' (first set on line 4)"},
            {KEYHDR "\n[webhook \"b\"]\nformat = slack\n", "@FILE@:4: Webhook 'b' has no 'url'"},
            {KEYHDR "[webhook \"b\"]\nurl = https://h\nurl =\n",
             "@FILE@:5: Duplicate key 'url' in section '[webhook \"b\"]' (first set on line 4)"},
            {KEYHDR "[webhook \"r\"]\nurl = https://h\nretry-min = 2h\n",
             "@FILE@:5: Webhook 'r': 'retry-min' (2h) is larger than 'retry-max' (1h)"},
            {KEYHDR "[webhook \"r\"]\nretry-max = 1s\nurl = https://h\n",
             "@FILE@:4: Webhook 'r': 'retry-min' (5s) is larger than 'retry-max' (1s)"},
            {KEYHDR "[webhook oncall]\n",
             "@FILE@:3: Invalid section '[webhook oncall]': expected [webhook \"NAME\"], NAME being 1-64 "
             "characters from A-Z, a-z, 0-9, '_', '.' and '-'"},
            {KEYHDR "[webhook \"a b\"]\n",
             "@FILE@:3: Invalid section '[webhook \"a b\"]': expected [webhook \"NAME\"], NAME being 1-64 "
             "characters from A-Z, a-z, 0-9, '_', '.' and '-'"},
            {KEYHDR "[webhook]\nurl = https://h\n",
             "@FILE@:3: Invalid section '[webhook]': expected [webhook \"NAME\"], NAME being 1-64 "
             "characters from A-Z, a-z, 0-9, '_', '.' and '-'"},
            {KEYHDR "[watch]\nsession = ses1 bad!id\n", "@FILE@:4: Invalid session id 'bad!id': expected "
                                                        "1-64 characters from A-Z, a-z, 0-9, '_' and '-'"},
            {NULL, NULL}, /* the 65-character session id, filled in below */
            {KEYHDR "[watch]\nrunbook = rbk#1\n", rbk_err},
            {"[api]\nkey-file = @DIR@/nokey\n",
             "@FILE@:2: key-file '@DIR@/nokey': No such file or directory"},
            {"[api]\nkey-file = @DIR@\n", "@FILE@:2: key-file '@DIR@': Is a directory"},
            {"[api]\nkey-file = @DIR@/empty-key\n", "@FILE@:2: key-file '@DIR@/empty-key': File is empty"},
            {"[api]\nkey-file = api-key\n",
             "@FILE@:2: Invalid value 'api-key' for 'key-file': not an absolute path"},
            {"[poll]\n", "@FILE@: No API key: set 'key-file' in section '[api]', or start with "
                         "LoadCredential=api-key:PATH so that $CREDENTIALS_DIRECTORY is set"},
            {KEYHDR "[webhook \"s\"]\nurl = https://h\nsecret-file = @DIR@/nosecret\n",
             "@FILE@:5: secret-file '@DIR@/nosecret': No such file or directory"},
            {KEYHDR "just words\n", "@FILE@:3: Syntax error: expected '[section]' or 'key = value'"},
            {KEYHDR "words ; = 1\n", "@FILE@:3: Syntax error: expected '[section]' or 'key = value'"},
            {KEYHDR "= 1\n", "@FILE@:3: Syntax error: expected '[section]' or 'key = value'"},
            {KEYHDR "[poll\n", "@FILE@:3: Syntax error: missing ']'"},
            {KEYHDR "[poll] x\n", "@FILE@:3: Syntax error: unexpected text after ']'"},
            {KEYHDR "url = ftp://x\n",
             "@FILE@:3: Invalid value 'ftp://x' for 'url': must start with http:// or https://"},
            {KEYHDR "url = https:///v0\n", "@FILE@:3: Invalid value 'https:///v0' for 'url': no host"},
            {KEYHDR "app-url = https://a b\n",
             "@FILE@:3: Invalid value 'https://a b' for 'app-url': contains blanks or control characters"},
            {KEYHDR "team-id = a b\n",
             "@FILE@:3: Invalid value 'a b' for 'team-id': only printable ASCII without blanks is allowed"},
            {KEYHDR "max-connections = 0\n",
             "@FILE@:3: Invalid value '0' for 'max-connections': must be between 1 and 1024"},
            {KEYHDR "max-connections = 1025\n",
             "@FILE@:3: Invalid value '1025' for 'max-connections': must be between 1 and 1024"},
            {KEYHDR "max-connections = 16k\n",
             "@FILE@:3: Invalid value '16k' for 'max-connections': not a number"},
            {KEYHDR "rate-limit = 50/x\n", "@FILE@:3: Invalid value '50/x' for 'rate-limit': not a rate "
                                           "(e.g. 50/s, 600/m, 1000/h, or off)"},
            {KEYHDR "rate-limit = 50\n",
             "@FILE@:3: Invalid value '50' for 'rate-limit': not a rate (e.g. 50/s, 600/m, 1000/h, or off)"},
            {KEYHDR "max-body = 1T\n",
             "@FILE@:3: Invalid value '1T' for 'max-body': unknown unit (expected k, M or G)"},
            {KEYHDR "max-body = 10\n",
             "@FILE@:3: Invalid value '10' for 'max-body': must be between 1k and 1G"},
            {KEYHDR "[poll]\njitter = 101%\n",
             "@FILE@:4: Invalid value '101%' for 'jitter': must be between 0% and 100%"},
            {KEYHDR "[poll]\njitter = 10 %\n",
             "@FILE@:4: Invalid value '10 %' for 'jitter': not a percentage (e.g. 10%)"},
            {KEYHDR "[watch]\nall = maybe\n",
             "@FILE@:4: Invalid value 'maybe' for 'all': not a boolean (yes/no, true/false, on/off, 1/0)"},
            {KEYHDR "[journal]\nstatuses = Failed failed\n",
             "@FILE@:4: Invalid value 'Failed failed' for 'statuses': unknown status 'failed' (expected "
             "all, "
             "or some of Pending Active Waiting Succeeded Failed Cancelling Cancelled unknown)"},
            {KEYHDR "[webhook \"f\"]\nurl = https://h\nformat = json\n",
             "@FILE@:5: Invalid value 'json' for 'format': expected cloudevents or slack"},
            {KEYHDR "[events]\nmode = 0999\n",
             "@FILE@:4: Invalid value '0999' for 'mode': not an octal mode (e.g. 0660)"},
            {KEYHDR "[control]\nmode = 4777\n",
             "@FILE@:4: Invalid value '4777' for 'mode': only permission bits (at most 0777) are allowed"},
            {KEYHDR "[events]\ngroup = a:b\n",
             "@FILE@:4: Invalid value 'a:b' for 'group': not a group name or id"},
            {KEYHDR "[events]\nclient-buffer = 1k\n",
             "@FILE@:4: Invalid value '1k' for 'client-buffer': must be between 4k and 1G"},
            {KEYHDR "[state]\npath = var/lib\n",
             "@FILE@:4: Invalid value 'var/lib' for 'path': not an absolute path"},
            {NULL, NULL}, /* the socket path that is too long, filled in below */
            {KEYHDR "[metrics]\nlisten = ::1:9464\n", "@FILE@:4: Invalid value '::1:9464' for 'listen': an "
                                                      "IPv6 address needs brackets: [ADDRESS]:PORT"},
            {KEYHDR "[metrics]\nlisten = localhost\n",
             "@FILE@:4: Invalid value 'localhost' for 'listen': expected HOST:PORT or [IPV6]:PORT"},
            {KEYHDR "[metrics]\nlisten = [nope]:1\n",
             "@FILE@:4: Invalid value '[nope]:1' for 'listen': not an IPv6 address in brackets"},
            {KEYHDR "[metrics]\nlisten = host:0\n",
             "@FILE@:4: Invalid value 'host:0' for 'listen': the port must be a number between 1 and 65535"},
            {KEYHDR "[metrics]\nlisten = ho_st:80\n",
             "@FILE@:4: Invalid value 'ho_st:80' for 'listen': not a host name or address"},
            /* Off the loopback without a token; both spellings at once. */
            {KEYHDR "[http]\nlisten = 0.0.0.0:9464\n",
             "@FILE@:4: 'listen' '0.0.0.0:9464' is not a loopback address: set 'token-file' in section "
             "'[http]' (a bearer token that every request but the page itself must then carry)"},
            {KEYHDR "[http]\nlisten = *:9464\n",
             "@FILE@:4: 'listen' '*:9464' is not a loopback address: set 'token-file' in section "
             "'[http]' (a bearer token that every request but the page itself must then carry)"},
            {KEYHDR "[metrics]\nlisten = example.com:80\n",
             "@FILE@:4: 'listen' 'example.com:80' is not a loopback address: set 'token-file' in section "
             "'[http]' (a bearer token that every request but the page itself must then carry)"},
            {KEYHDR "[http]\nlisten = 127.0.0.1:1\n[metrics]\nlisten = 127.0.0.1:2\n",
             "@FILE@:6: 'listen' in section '[metrics]' is the old spelling of 'listen' in section '[http]' "
             "(line 4): keep only the latter"},
            {KEYHDR "[http]\nlisten = 127.0.0.1:1\ntoken-file = /nonexistent/token\n",
             "@FILE@:5: token-file '/nonexistent/token': No such file or directory"},
            /* Every error is reported, one per line, in file order;
             * the keys of an unknown section are not. */
            {KEYHDR "[poll]\ninterval = 5\njitter = 200%\n[nope]\nfoo = bar\n[watch]\nall = 2\n",
             "@FILE@:4: Invalid value '5' for 'interval': missing unit (ms, s, m, h or d)\n"
             "@FILE@:5: Invalid value '200%' for 'jitter': must be between 0% and 100%\n"
             "@FILE@:6: Unknown section '[nope]'\n"
             "@FILE@:9: Invalid value '2' for 'all': not a boolean (yes/no, true/false, on/off, 1/0)"},
            {NULL, NULL}, /* the over-long line, filled in below */
        };
        size_t n_cases = N(cases);
        char *empty_key = write_secret("empty-key", "\n \n");
        char *text_id, *err_id, *text_sock, *err_sock, *text_long;
        char err[8192];

        /* The cases that need long strings. */
        memset(long_id, 'a', 65);
        assert_true(asprintf(&text_id, KEYHDR "[watch]\nsession = %s\n", long_id) > 0);
        assert_true(
            asprintf(&err_id,
                     "@FILE@:4: Invalid session id '%s': expected 1-64 characters from A-Z, a-z, 0-9, "
                     "'_' and '-'",
                     long_id) > 0);

        long_sock[0] = '/';
        memset(long_sock + 1, 's', 108);
        assert_true(asprintf(&text_sock, KEYHDR "[control]\npath = %s\n", long_sock) > 0);
        assert_true(
            asprintf(&err_sock,
                     "@FILE@:4: Invalid value '%s' for 'path': too long for a Unix socket (at most 107 "
                     "bytes)",
                     long_sock) > 0);

        memset(long_url, 'u', sizeof(long_url) - 1);
        assert_true(asprintf(&text_long, KEYHDR "[webhook \"l\"]\nurl = https://h/%s\n", long_url) > 0);
        /* Into the NULL slots, in order; the long line gets a prefix
         * check only, as the limit is inih's. */
        for (size_t i = 0, slot = 0; i < n_cases; i++) {
                if (cases[i].text)
                        continue;
                cases[i].text = slot == 0 ? text_id : slot == 1 ? text_sock : text_long;
                cases[i].error = slot == 0 ? err_id : slot == 1 ? err_sock : NULL;
                slot++;
        }

        for (size_t i = 0; i < n_cases; i++) {
                char *path, *expect;
                Config *c = NULL;
                int r;

                assert_non_null(cases[i].text);
                err[0] = '\0';
                r = load_text(cases[i].text, NULL, &c, err, sizeof(err), &path);
                if (r != -EINVAL)
                        fail_msg("case %zu: config_load() = %d, expected -EINVAL (%s)", i, r, err);
                assert_null(c);
                if (cases[i].error) {
                        expect = subst(cases[i].error, path);
                        if (strcmp(err, expect) != 0)
                                fail_msg("case %zu:\n got      \"%s\"\n expected \"%s\"", i, err, expect);
                        free(expect);
                } else {
                        expect = subst("@FILE@:4: Line too long (at most ", path);
                        assert_memory_equal(err, expect, strlen(expect));
                        free(expect);
                }
                assert_null(strstr(err, API_KEY));
                free(path);
        }
        free(text_id);
        free(err_id);
        free(text_sock);
        free(err_sock);
        free(text_long);
        free(empty_key);
}

static void test_cleartext_url(void **state)
{
        static const struct {
                const char *url;
                bool cleartext;
        } table[] = {
            {"http://api.example.com/v0", true},
            {"HTTP://api.example.com", true},
            {"http://10.0.0.1:8080/v0", true},
            {"http://128.0.0.1/v0", true},
            {"http://[2001:db8::1]:80/v0", true},
            {"http://127.0.0.1.example.com/v0", true},
            {"http://localhost.example.com/v0", true},
            {"http://127.0.0.1@evil.example.com/v0", true}, /* userinfo, then the real host */
            {"http://127.0.0.1:9/v0", false},
            {"http://127.255.0.9/v0", false},
            {"http://[::1]:9/v0", false},
            {"http://[::ffff:127.0.0.1]/v0", false},
            {"http://localhost/v0", false},
            {"http://LocalHost.:9", false},
            {"http://api.localhost/v0", false},
            {"http://user:pw@localhost/v0", false},
            {"https://api.example.com/v0", false},
            {"https://10.0.0.1/v0", false},
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
                if (config_url_is_cleartext(table[i].url) != table[i].cleartext)
                        fail_msg("'%s': expected %s", table[i].url,
                                 table[i].cleartext ? "clear text" : "fine");
}

/* Warnings: an http:// URL elsewhere; a missing key only for --check-config. */
static void test_warnings(void **state)
{
        char err[4096], warn[4096], *path, *expect;
        Config *c = NULL;
        int r;

        path = write_config(KEYHDR "url = http://api.example.com/v0\n");
        r = config_load_full(path, NULL, 0, &c, err, sizeof(err), warn, sizeof(warn));
        assert_int_equal(r, 0);
        expect =
            subst("@FILE@:3: warning: 'url' 'http://api.example.com/v0' is plain http:// to a host that "
                  "is not the loopback: the API key would be sent in clear text",
                  path);
        assert_string_equal(warn, expect);
        free(expect);
        config_free(c);
        free(path);

        path = write_config(KEYHDR "url = http://127.0.0.1:9/v0\n");
        r = config_load_full(path, NULL, 0, &c, err, sizeof(err), warn, sizeof(warn));
        assert_int_equal(r, 0);
        assert_string_equal(warn, "");
        config_free(c);
        free(path);

        /* A key file that does not exist. */
        path = write_config("[api]\nkey-file = @DIR@/no-such-key\n");
        r = config_load_full(path, NULL, 0, &c, err, sizeof(err), warn, sizeof(warn));
        assert_int_equal(r, -EINVAL);
        assert_non_null(strstr(err, ":2: key-file '"));
        assert_string_equal(warn, "");
        c = NULL;
        r = config_load_full(path, NULL, CONFIG_LOAD_KEY_OPTIONAL, &c, err, sizeof(err), warn, sizeof(warn));
        assert_int_equal(r, 0);
        assert_non_null(c);
        assert_null(c->api.api_key);
        assert_string_equal(err, "");
        expect =
            subst("@FILE@:2: warning: key-file '@DIR@/no-such-key': No such file or directory; the daemon "
                  "will not start without it",
                  path);
        assert_string_equal(warn, expect);
        free(expect);
        config_free(c);
        free(path);

        /* No key-file and no $CREDENTIALS_DIRECTORY. */
        path = write_config("[poll]\ninterval = 1s\n");
        c = NULL;
        r = config_load_full(path, NULL, CONFIG_LOAD_KEY_OPTIONAL, &c, err, sizeof(err), warn, sizeof(warn));
        assert_int_equal(r, 0);
        assert_non_null(strstr(warn, ": warning: No API key: set 'key-file'"));
        config_free(c);
        c = NULL;
        assert_int_equal(config_load(path, NULL, &c, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, ": No API key"));
        free(path);

        /* An empty key file stays an error. */
        free(write_secret("empty-key", "\n"));
        path = write_config("[api]\nkey-file = @DIR@/empty-key\n");
        r = config_load_full(path, NULL, CONFIG_LOAD_KEY_OPTIONAL, &c, err, sizeof(err), warn, sizeof(warn));
        assert_int_equal(r, -EINVAL);
        free(path);
}

/* A file wrong on every line reports the first 20 errors and a count. */
static void test_error_limit(void **state)
{
        char text[64 + 30 * 40], err[16384], *path, *expect, *last;
        unsigned n_lines = 1;
        size_t pos;
        Config *c = NULL;

        pos = (size_t)snprintf(text, sizeof(text), KEYHDR "[watch]\n");
        for (unsigned i = 0; i < 30; i++)
                pos += (size_t)snprintf(text + pos, sizeof(text) - pos, "session = bad!%u\n", i);
        assert_int_equal(load_text(text, NULL, &c, err, sizeof(err), &path), -EINVAL);
        assert_null(c);

        /* 20 lines of errors, then the summary. */
        for (const char *e = err; (e = strchr(e, '\n')); e++)
                n_lines++;
        assert_int_equal(n_lines, 21);
        last = strrchr(err, '\n');
        assert_non_null(last);
        expect = subst("@FILE@: 10 more errors not shown", path);
        assert_string_equal(last + 1, expect);
        free(expect);
        expect = subst("@FILE@:23: Invalid session id 'bad!19'", path);
        assert_non_null(strstr(err, expect));
        free(expect);
        expect = subst("@FILE@:24:", path);
        assert_null(strstr(err, expect));
        free(expect);
        free(path);
}

/* A URL far longer than inih's default 200-byte line still loads. */
static void test_long_line(void **state)
{
        char url[1500], *text;
        Config *c;

        memcpy(url, "https://h/", 10);
        memset(url + 10, 'x', sizeof(url) - 11);
        url[sizeof(url) - 1] = '\0';
        assert_true(asprintf(&text, KEYHDR "[webhook \"t\"]\nurl = %s\n", url) > 0);
        c = load_ok(text, NULL);
        assert_string_equal(c->webhooks[0].url, url);
        config_free(c);
        free(text);
}

static void test_unreadable(void **state)
{
        char err[1024], *path, *expect;
        Config *c = NULL;
        int r;

        assert_true(asprintf(&path, "%s/does-not-exist.conf", tmpdir) > 0);
        r = config_load(path, NULL, &c, err, sizeof(err));
        assert_int_equal(r, -ENOENT);
        assert_null(c);
        expect = subst("@FILE@: Cannot read: No such file or directory", path);
        assert_string_equal(err, expect);
        free(expect);
        free(path);

        r = config_load(tmpdir, NULL, &c, err, sizeof(err));
        assert_int_equal(r, -EISDIR);
        expect = subst("@DIR@: Cannot read: Is a directory", "");
        assert_string_equal(err, expect);
        free(expect);

        /* A small or missing buffer truncates the message, nothing worse. */
        r = config_load("/nonexistent.conf", NULL, &c, err, 12);
        assert_int_equal(r, -ENOENT);
        assert_string_equal(err, "/nonexisten");
        r = config_load("/nonexistent.conf", NULL, &c, NULL, 0);
        assert_int_equal(r, -ENOENT);
}

/* Loads config/sessionwatchd.conf, as shipped and with every setting
 * uncommented, and checks that its documented defaults are the real ones. */
static void test_example(void **state)
{
        char *creds, *key, *example, *data, *un, *line, err[4096], *expect;
        size_t len = 0;
        FILE *f, *out;
        ConfigEnv env;
        Config *c;
        int r;

        assert_true(asprintf(&creds, "%s/example-creds", tmpdir) > 0);
        assert_int_equal(mkdir(creds, 0700), 0);
        assert_true(asprintf(&key, "%s/api-key", creds) > 0);
        write_file(key, "example-key\n", 12);
        env = (ConfigEnv){.credentials_directory = creds};

        assert_true(asprintf(&example, "%s/config/sessionwatchd.conf", SW_SOURCE_DIR) > 0);
        r = config_load(example, &env, &c, err, sizeof(err));
        if (r < 0)
                fail_msg("%s", err);
        assert_string_equal(c->api.key_file, key);
        assert_string_equal(c->api.api_key, "example-key");
        assert_defaults(c);
        assert_int_equal(c->n_webhooks, 0);
        assert_int_equal(c->watch.n_sessions, 0);
        config_free(c);

        /* Uncomment every "#key" and "#[section]" line (explanations start
         * with "# "), and point /etc/sessionwatchd/ at the temp dir. */
        f = fopen(example, "re");
        assert_non_null(f);
        assert_true(asprintf(&un, "%s/example-uncommented.conf", tmpdir) > 0);
        out = fopen(un, "we");
        assert_non_null(out);
        data = NULL;
        while (getline(&data, &len, f) > 0) {
                line = data;
                if (line[0] == '#' && ((line[1] >= 'a' && line[1] <= 'z') || line[1] == '['))
                        line++;
                for (char *at; (at = strstr(line, "/etc/sessionwatchd/"));) {
                        *at = '\0';
                        fprintf(out, "%s%s/", line, tmpdir);
                        line = at + strlen("/etc/sessionwatchd/");
                }
                fputs(line, out);
        }
        free(data);
        fclose(f);
        assert_int_equal(fclose(out), 0);
        free(write_secret("oncall.secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"));
        free(write_secret("oncall-next.secret", "whsec_bmV4dA==\n"));
        free(write_secret("http-token", "tok_example\n"));

        r = config_load(un, &env, &c, err, sizeof(err));
        if (r < 0)
                fail_msg("%s", err);
        expect = subst("@KEY@", "");
        assert_string_equal(c->api.key_file, expect);
        free(expect);
        assert_string_equal(c->api.api_key, API_KEY);
        /* Every value shown for a key with a default is that default. */
        assert_defaults(c);
        /* And the keys without one took their example values. */
        assert_non_null(c->api.team_id);
        assert_non_null(c->api.env_slug);
        assert_non_null(c->api.ca_file);
        assert_true(c->poll.stalled_after_ms > 0);
        assert_true(c->poll.stalled_after_waiting_ms > 0);
        assert_int_equal(c->watch.n_sessions, 1);
        assert_int_equal(c->watch.n_runbooks, 1);
        assert_int_equal(c->n_webhooks, 1);
        assert_int_equal(c->webhooks[0].n_secret_files, 2);
        assert_int_equal(c->webhooks[0].statuses, SESSION_STATUS_MASK_ALL);
        assert_int_equal(c->webhooks[0].format, CONFIG_WEBHOOK_FORMAT_CLOUDEVENTS);
        assert_int_equal(c->webhooks[0].timeout_ms, 10000);
        assert_int_equal(c->webhooks[0].retry_min_ms, 5000);
        assert_int_equal(c->webhooks[0].retry_max_ms, 3600000);
        assert_int_equal(c->webhooks[0].max_age_ms, 86400000);
        assert_int_equal(c->webhooks[0].max_in_flight, 4);
        assert_non_null(c->events.path);
        assert_non_null(c->events.group);
        assert_non_null(c->control.path);
        assert_non_null(c->http.listen.listen);
        assert_non_null(c->http.token);
        assert_non_null(c->state.path);
        config_free(c);

        free(un);
        free(example);
        free(key);
        free(creds);
}

int main(void)
{
        /* clang-format off */
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_duration),
                cmocka_unit_test(test_parse_size),
                cmocka_unit_test(test_parse_bool),
                cmocka_unit_test(test_status_mask),
                cmocka_unit_test(test_session_id_valid),
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_every_key),
                cmocka_unit_test(test_rate_limit),
                cmocka_unit_test(test_listen),
                cmocka_unit_test(test_metrics_listen_moves_to_http),
                cmocka_unit_test(test_loopback),
                cmocka_unit_test(test_syntax),
                cmocka_unit_test(test_url_slashes),
                cmocka_unit_test(test_empty_resets),
                cmocka_unit_test(test_repeatable),
                cmocka_unit_test(test_many_sessions),
                cmocka_unit_test(test_webhooks),
                cmocka_unit_test(test_env_defaults),
                cmocka_unit_test(test_read_secret),
                cmocka_unit_test(test_secret_never_in_errors),
                cmocka_unit_test(test_errors),
        cmocka_unit_test(test_webhook_secret_not_base64),
                cmocka_unit_test(test_error_limit),
                cmocka_unit_test(test_cleartext_url),
                cmocka_unit_test(test_warnings),
                cmocka_unit_test(test_long_line),
                cmocka_unit_test(test_unreadable),
                cmocka_unit_test(test_example),
        };
        /* clang-format on */

        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
