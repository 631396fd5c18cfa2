/* sessionwatchctl: the command-line client of sessionwatchd's control socket
 * and event stream. Plain blocking I/O: it does one thing at a time. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control-proto.h"
#include "fdio.h"
#include "textsafe.h"

/* The longest reply line taken (a big list page or metrics text). */
#define REPLY_MAX ((size_t)64 * 1024 * 1024)
#define RECONNECT_DELAY_S 1

/* Set by SIGINT/SIGTERM while `events` follows the stream. */
static volatile sig_atomic_t stop_requested;

static bool arg_json;
static const char *arg_socket;
static char default_socket[4096];

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: sessionwatchctl [--socket PATH] [--json] COMMAND [ARGS]\n"
                "\n"
                "Talks to sessionwatchd over its control socket.\n"
                "\n"
                "Commands:\n"
                "  status                          daemon health and counters\n"
                "  list [--status S] [--runbook R] watched sessions\n"
                "  watch ID...                     start watching sessions (persists)\n"
                "  unwatch ID...                   stop watching sessions (persists)\n"
                "  reload                          re-read the configuration file\n"
                "  metrics                         counters in the Prometheus text format\n"
                "  events [--events PATH]          follow the event stream\n"
                "\n"
                "Options:\n"
                "  -s, --socket PATH   control socket (default %s)\n"
                "  -j, --json          print the daemon's JSON replies (events: the raw lines)\n"
                "  -h, --help          show this help\n"
                "      --version       show the version\n"
                "\n"
                "Exit status: 0 ok, 1 the daemon answered an error, 2 usage, 69 no daemon.\n",
                default_socket);
}

static int connect_unix(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

/* A buffered line reader over a socket. */
typedef struct LineReader {
        int fd;
        char *buf;
        size_t len, allocated, start;
} LineReader;

/* Returns the next line (NUL-terminated, without the newline) or NULL at EOF
 * or on an error (*ret_error: 0 at a clean EOF). */
static char *read_line(LineReader *lr, size_t max, int *ret_error)
{
        *ret_error = 0;
        for (;;) {
                char *nl = lr->buf ? memchr(lr->buf + lr->start, '\n', lr->len - lr->start) : NULL;
                ssize_t k;

                if (nl) {
                        char *line = lr->buf + lr->start;
                        *nl = '\0';
                        lr->start = (size_t)(nl - lr->buf) + 1;
                        return line;
                }
                if (lr->start > 0) {
                        memmove(lr->buf, lr->buf + lr->start, lr->len - lr->start);
                        lr->len -= lr->start;
                        lr->start = 0;
                }
                if (lr->len + 4096 > lr->allocated) {
                        size_t want = lr->allocated ? lr->allocated * 2 : 65536;
                        char *p;

                        if (want > max + 4096) {
                                *ret_error = -E2BIG;
                                return NULL;
                        }
                        p = realloc(lr->buf, want);
                        if (!p) {
                                *ret_error = -ENOMEM;
                                return NULL;
                        }
                        lr->buf = p;
                        lr->allocated = want;
                }
                k = read(lr->fd, lr->buf + lr->len, lr->allocated - lr->len - 1);
                if (k < 0) {
                        if (errno == EINTR && !stop_requested)
                                continue;
                        *ret_error = -errno;
                        return NULL;
                }
                if (k == 0)
                        return NULL;
                lr->len += (size_t)k;
        }
}

static int fail_unavailable(const char *path, int r)
{
        fprintf(stderr, "sessionwatchctl: cannot reach sessionwatchd at '%s': %s\n", path, strerror(-r));
        return CTL_EXIT_UNAVAILABLE;
}

/* Sends one request and reads its reply. Returns 0 with *ret set, or an
 * exit code (69 when the daemon cannot be reached). */
static int request(json_object *req, json_object **ret)
{
        const char *text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
        LineReader lr = {};
        char *line;
        int fd, r;

        fd = connect_unix(arg_socket);
        if (fd < 0)
                return fail_unavailable(arg_socket, fd);
        lr.fd = fd;
        r = fd_write_all(fd, text, strlen(text));
        if (r >= 0)
                r = fd_write_all(fd, "\n", 1);
        if (r < 0) {
                close(fd);
                return fail_unavailable(arg_socket, r);
        }
        line = read_line(&lr, REPLY_MAX, &r);
        if (!line) {
                close(fd);
                free(lr.buf);
                return fail_unavailable(arg_socket, r < 0 ? r : -ECONNRESET);
        }
        *ret = json_tokener_parse(line);
        close(fd);
        free(lr.buf);
        if (!*ret || !json_object_is_type(*ret, json_type_object)) {
                json_object_put(*ret);
                fprintf(stderr, "sessionwatchctl: the daemon's reply is not a JSON object\n");
                return CTL_EXIT_ERROR;
        }
        return 0;
}

static json_object *get(json_object *o, const char *key)
{
        json_object *v = NULL;

        return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static int64_t get_int(json_object *o, const char *key)
{
        return json_object_get_int64(get(o, key));
}

static const char *get_str(json_object *o, const char *key, const char *fallback)
{
        json_object *v = get(o, key);

        return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : fallback;
}

/* Human output shows the daemon's text, much of it the API's (ids, names,
 * statuses, runbooks) or echoed from a request: before any of it reaches a
 * terminal, every string in the reply is cleaned the way the daemon's own
 * text lines are (text_sanitize()), so that no newline or escape sequence
 * can forge a row or a colour. Keys are the daemon's own names. */
static void sanitize_strings(json_object *o)
{
        switch (json_object_get_type(o)) {
        case json_type_object: {
                json_object_object_foreach(o, k, v)
                {
                        (void)k;
                        sanitize_strings(v);
                }
                break;
        }
        case json_type_array:
                for (size_t k = 0; k < json_object_array_length(o); k++)
                        sanitize_strings(json_object_array_get_idx(o, k));
                break;
        case json_type_string: {
                const char *v = json_object_get_string(o);
                size_t n = strlen(v);
                bool unsafe = n != (size_t)json_object_get_string_len(o);
                char *copy;

                for (size_t k = 0; k < n && !unsafe; k++)
                        unsafe = text_unsafe_len(v + k, n - k) > 0;
                if (!unsafe)
                        break;
                /* An embedded NUL ends what is shown. */
                copy = strdup(v);
                if (copy) {
                        json_object_set_string(o, text_sanitize(copy));
                        free(copy);
                }
                break;
        }
        default:
                break;
        }
}

/* An error reply: printed (raw with --json), exit 1. */
static int check_reply(json_object *reply)
{
        if (json_object_get_boolean(get(reply, "ok")))
                return 0;
        if (arg_json)
                printf("%s\n", json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN));
        sanitize_strings(reply);
        fprintf(stderr, "sessionwatchctl: %s (%s)\n", get_str(reply, "message", "request failed"),
                get_str(reply, "error", "error"));
        return CTL_EXIT_ERROR;
}

static void print_metrics(json_object *r);

/* Sends `req`, prints the reply raw with --json, hands it to `print`
 * otherwise (its strings made safe to show, see sanitize_strings()). */
static int run_simple(json_object *req, void (*print)(json_object *reply))
{
        json_object *reply = NULL;
        int r = request(req, &reply);

        json_object_put(req);
        if (r != 0)
                return r;
        r = check_reply(reply);
        if (r == 0) {
                if (arg_json)
                        printf("%s\n", json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN));
                else if (print == print_metrics)
                        print(reply);
                else {
                        sanitize_strings(reply);
                        print(reply);
                }
        }
        json_object_put(reply);
        return r;
}

static json_object *make_request(const char *command)
{
        json_object *o = json_object_new_object();

        json_object_object_add(o, "command", json_object_new_string(command));
        return o;
}

static void print_row(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void print_row(const char *key, const char *fmt, ...)
{
        va_list ap;

        printf("%-16s", key);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
}

/* "name value, name value" of an object's non-zero integer members. */
static void print_counts_row(const char *key, json_object *o, bool skip_zero)
{
        char line[2048] = "";
        size_t n = 0;

        json_object_object_foreach(o, k, v)
        {
                if (skip_zero && json_object_get_int64(v) == 0)
                        continue;
                n += (size_t)snprintf(line + n, n < sizeof(line) ? sizeof(line) - n : 0, "%s%s %" PRId64,
                                      n ? ", " : "", k, json_object_get_int64(v));
                if (n >= sizeof(line))
                        break;
        }
        print_row(key, "%s", n ? line : "none");
}

static void print_status(json_object *r)
{
        json_object *sessions = get(r, "sessions"), *state = get(r, "state"), *hooks = get(r, "webhooks");
        int64_t up = get_int(r, "uptimeSeconds");

        print_row("Daemon",
                  "sessionwatchd %s (pid %" PRId64 "), up %" PRId64 "d %02" PRId64 ":%02" PRId64
                  ":%02" PRId64,
                  get_str(r, "version", "?"), get_int(r, "pid"), up / 86400, up / 3600 % 24, up / 60 % 60,
                  up % 60);
        print_row("API", "%s", get_str(r, "apiUrl", "?"));
        print_row("Sessions", "%" PRId64 " watched, %" PRId64 " not yet seen, %" PRId64 " gone",
                  get_int(sessions, "watched"), get_int(sessions, "unseen"), get_int(sessions, "gone"));
        json_object_object_foreach(get(sessions, "byStatus"), k, v)
        {
                char key[64];

                snprintf(key, sizeof(key), "  %s", k);
                print_row(key, "%" PRId64, json_object_get_int64(v));
        }
        print_row("In flight", "%" PRId64, get_int(r, "inFlight"));
        {
                json_object *cov = get(r, "coverage");

                if (cov) {
                        double behind = json_object_get_double(get(cov, "behindSeconds"));

                        print_row("Coverage",
                                  "mode %s: %" PRId64 " covered by sweeps of %" PRId64 " scope(s), %" PRId64
                                  " polled one by one",
                                  get_str(cov, "mode", "?"), get_int(cov, "covered"),
                                  get_int(cov, "sweptScopes"), get_int(cov, "polled"));
                        print_counts_row("Requests", get(cov, "requests"), false);
                        if (behind >= 1)
                                print_row("Behind", "%.0f s (the request budget does not carry the load)",
                                          behind);
                        else
                                print_row("Behind", "on time");
                }
        }
        print_counts_row("Polls", get(r, "polls"), true);
        print_counts_row("API errors", get(r, "apiErrors"), true);
        print_row("Transitions", "%" PRId64 " (%" PRId64 " events)", get_int(r, "transitions"),
                  get_int(r, "events"));
        if (!state)
                print_row("State", "not kept (no [state] path)");
        else if (json_object_get_boolean(get(state, "degraded")))
                print_row("State", "%s: DEGRADED, %s failed: %s", get_str(state, "path", "?"),
                          get_str(state, "lastErrorWhat", "a write"), get_str(state, "lastError", "?"));
        else
                print_row("State", "%s: healthy, %" PRId64 " bytes", get_str(state, "path", "?"),
                          get_int(state, "fileBytes"));
        if (get(r, "eventsSocket"))
                print_row("Event stream", "%s (%" PRId64 " client(s), %" PRId64 " cut off)",
                          get_str(r, "eventsSocket", "?"), get_int(r, "streamClients"),
                          get_int(r, "streamOverflows"));
        else
                print_row("Event stream", "off");
        if (!hooks || json_object_array_length(hooks) == 0)
                print_row("Webhooks", "none");
        else
                for (size_t j = 0; j < json_object_array_length(hooks); j++) {
                        json_object *h = json_object_array_get_idx(hooks, j);
                        print_row(j == 0 ? "Webhooks" : "",
                                  "%s: %s, %" PRId64 " queued (oldest %.0f s), %" PRId64
                                  " delivered, %" PRId64 " dropped",
                                  get_str(h, "name", "?"), get_str(h, "state", "?"), get_int(h, "queued"),
                                  json_object_get_double(get(h, "oldestAgeSeconds")),
                                  get_int(h, "delivered"), get_int(h, "dropped"));
                }
        {
                json_object *orphans = get(r, "orphanedQueues");
                size_t n = orphans ? json_object_array_length(orphans) : 0;

                for (size_t j = 0; j < n; j++) {
                        json_object *q = json_object_array_get_idx(orphans, j);
                        print_row(j == 0 ? "Orphaned queues" : "",
                                  "%s: %" PRId64 " event(s) (oldest %.0f s), %s", get_str(q, "name", "?"),
                                  get_int(q, "events"), json_object_get_double(get(q, "oldestAgeSeconds")),
                                  get_str(q, "file", "?"));
                }
        }
}

static void print_reload(json_object *r)
{
        printf("Reloaded: %" PRId64 " session(s) added, %" PRId64 " removed, %" PRId64 " watched; %" PRId64
               " webhook(s) added, %" PRId64 " removed.\n",
               get_int(r, "added"), get_int(r, "removed"), get_int(r, "watched"),
               get_int(r, "webhooksAdded"), get_int(r, "webhooksRemoved"));
        if (get(r, "restartNeeded"))
                printf("Changes to %s take effect at the next restart.\n", get_str(r, "restartNeeded", "?"));
}

/* Label values may be the API's text too: each line is cleaned like any
 * other string, keeping the line ends. */
static void print_metrics(json_object *r)
{
        const char *text = get_str(r, "text", "");
        size_t n = strlen(text);

        for (size_t i = 0; i < n;) {
                size_t k = text[i] == '\n' ? 0 : text_unsafe_len(text + i, n - i);

                putchar(k > 0 ? '?' : text[i]);
                i += k > 0 ? k : 1;
        }
}

static void print_ids(json_object *r, const char *key, const char *before, const char *after)
{
        json_object *a = get(r, key);

        for (size_t k = 0; a && k < json_object_array_length(a); k++)
                printf("%s%s%s\n", before, json_object_get_string(json_object_array_get_idx(a, k)), after);
}

static void print_watch(json_object *r)
{
        print_ids(r, "added", "Watching ", ".");
        print_ids(r, "already", "", " was already watched.");
}

static void print_unwatch(json_object *r)
{
        print_ids(r, "removed", "Stopped watching ", ".");
        print_ids(r, "unknown", "", " was not watched.");
}

/* Sends the ids in requests of at most CONTROL_IDS_MAX and merges the
 * replies' id lists, so any number can be given. */
static int cmd_ids(const char *command, int argc, char **argv, void (*print)(json_object *))
{
        static const char *const lists[] = {"added", "already", "removed", "unknown"};
        json_object *merged;
        int r = 0;

        if (argc < 1) {
                fprintf(stderr, "sessionwatchctl: '%s' needs at least one session id\n", command);
                return CTL_EXIT_USAGE;
        }
        merged = json_object_new_object();
        json_object_object_add(merged, "ok", json_object_new_boolean(1));
        for (int from = 0; from < argc && r == 0; from += CONTROL_IDS_MAX) {
                json_object *req = make_request(command), *ids = json_object_new_array(), *reply = NULL;

                for (int k = from; k < argc && k < from + CONTROL_IDS_MAX; k++)
                        json_object_array_add(ids, json_object_new_string(argv[k]));
                json_object_object_add(req, "ids", ids);
                r = request(req, &reply);
                json_object_put(req);
                if (r != 0)
                        break;
                r = check_reply(reply);
                if (r == 0)
                        for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
                                json_object *part = get(reply, lists[l]), *all = get(merged, lists[l]);

                                if (!part)
                                        continue;
                                if (!all) {
                                        all = json_object_new_array();
                                        json_object_object_add(merged, lists[l], all);
                                }
                                for (size_t k = 0; k < json_object_array_length(part); k++)
                                        json_object_array_add(
                                            all, json_object_get(json_object_array_get_idx(part, k)));
                        }
                else if (from > 0)
                        fprintf(stderr, "sessionwatchctl: the first %d id(s) were taken before this error\n",
                                from);
                json_object_put(reply);
        }
        if (r == 0) {
                if (arg_json)
                        printf("%s\n", json_object_to_json_string_ext(merged, JSON_C_TO_STRING_PLAIN));
                else {
                        sanitize_strings(merged);
                        print(merged);
                }
        }
        json_object_put(merged);
        return r;
}

static int cmd_list(int argc, char **argv)
{
        static const struct option options[] = {
            {"status", required_argument, NULL, 's'},
            {"runbook", required_argument, NULL, 'r'},
            {},
        };
        const char *status = NULL, *runbook = NULL;
        json_object *all = json_object_new_array(), *next = NULL;
        int c, r;

        optind = 1;
        while ((c = getopt_long(argc, argv, "+s:r:", options, NULL)) >= 0) {
                switch (c) {
                case 's':
                        status = optarg;
                        break;
                case 'r':
                        runbook = optarg;
                        break;
                default:
                        json_object_put(all);
                        return CTL_EXIT_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "sessionwatchctl: 'list' takes no argument '%s'\n", argv[optind]);
                json_object_put(all);
                return CTL_EXIT_USAGE;
        }

        /* Every page, following the cursor. */
        for (;;) {
                json_object *req = make_request(CONTROL_CMD_LIST), *reply = NULL, *page;

                if (status)
                        json_object_object_add(req, "status", json_object_new_string(status));
                if (runbook)
                        json_object_object_add(req, "runbook", json_object_new_string(runbook));
                if (next)
                        json_object_object_add(req, "cursor",
                                               json_object_new_int64(json_object_get_int64(next)));
                r = request(req, &reply);
                json_object_put(req);
                json_object_put(next);
                next = NULL;
                if (r != 0) {
                        json_object_put(all);
                        return r;
                }
                r = check_reply(reply);
                if (r != 0) {
                        json_object_put(reply);
                        json_object_put(all);
                        return r;
                }
                page = get(reply, "sessions");
                for (size_t k = 0; page && k < json_object_array_length(page); k++)
                        json_object_array_add(all, json_object_get(json_object_array_get_idx(page, k)));
                next = get(reply, "next");
                if (next)
                        json_object_get(next);
                json_object_put(reply);
                if (!next)
                        break;
        }

        if (arg_json) {
                json_object *o = json_object_new_object();

                json_object_object_add(o, "ok", json_object_new_boolean(1));
                json_object_object_add(o, "sessions", all);
                printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
                return 0;
        }

        sanitize_strings(all);
        size_t n = json_object_array_length(all), w_id = 2, w_status = 6, w_updated = 7, w_runbook = 7;
        for (size_t k = 0; k < n; k++) {
                json_object *s = json_object_array_get_idx(all, k);
                size_t a = strlen(get_str(s, "id", "")), b = strlen(get_str(s, "status", "-")),
                       u = strlen(get_str(s, "updatedAt", "-")), rb = strlen(get_str(s, "runbook", "-"));
                w_id = a > w_id ? a : w_id;
                w_status = b > w_status ? b : w_status;
                w_updated = u > w_updated ? u : w_updated;
                w_runbook = rb > w_runbook ? rb : w_runbook;
        }
        printf("%-*s  %-*s  %-*s  %-*s  %s\n", (int)w_id, "ID", (int)w_status, "STATUS", (int)w_updated,
               "UPDATED", (int)w_runbook, "RUNBOOK", "SOURCE");
        for (size_t k = 0; k < n; k++) {
                json_object *s = json_object_array_get_idx(all, k);
                char src[64];

                snprintf(src, sizeof(src), "%s%s%s%s",
                         json_object_get_boolean(get(s, "configured")) ? "config" : "",
                         json_object_get_boolean(get(s, "configured")) &&
                                 json_object_get_boolean(get(s, "dynamic"))
                             ? "+"
                             : "",
                         json_object_get_boolean(get(s, "dynamic")) ? "watch" : "",
                         json_object_get_boolean(get(s, "gone")) ? " (gone)" : "");
                printf("%-*s  %-*s  %-*s  %-*s  %s\n", (int)w_id, get_str(s, "id", ""), (int)w_status,
                       get_str(s, "status", "-"), (int)w_updated, get_str(s, "updatedAt", "-"),
                       (int)w_runbook, get_str(s, "runbook", "-"), src);
        }
        printf("%zu session(s)\n", n);
        json_object_put(all);
        return 0;
}

/* -- events ---------------------------------------------------------------- */

static const char *status_colour(const char *status)
{
        if (!status)
                return "";
        if (strcmp(status, "Failed") == 0)
                return "\033[1;31m";
        if (strcmp(status, "Waiting") == 0 || strcmp(status, "Cancelled") == 0)
                return "\033[33m";
        if (strcmp(status, "Succeeded") == 0)
                return "\033[32m";
        return "";
}

/* One readable line per event: local time, session, name, transition. */
static void print_event_line(json_object *e, bool colour)
{
        const char *type = get_str(e, "type", "?");
        json_object *data = get(e, "data"), *session = get(data, "session");
        const char *subject = get_str(e, "subject", "?"), *status = get_str(data, "status", NULL),
                   *previous = get_str(data, "previousStatus", NULL), *name = get_str(session, "name", NULL);
        const char *on = colour ? status_colour(status) : "", *off = colour && *on ? "\033[0m" : "";
        char when[16] = "--:--:--", who[200];
        struct tm tm;
        time_t now = time(NULL);

        if (strcmp(type, STREAM_TYPE_LIVE) == 0) {
                printf("-- live: events follow (sequence %" PRId64 ")%s --\n", get_int(e, "sequence"),
                       json_object_get_boolean(get(e, "resumed")) ? ", resumed" : "");
                return;
        }
        if (strcmp(type, STREAM_TYPE_OVERFLOW) == 0) {
                printf("-- the daemon cut this stream off: it was read too slowly --\n");
                return;
        }
        if (localtime_r(&now, &tm))
                strftime(when, sizeof(when), "%H:%M:%S", &tm);
        /* The strings are the API's text, already through sanitize_strings(). */
        snprintf(who, sizeof(who), "%s%s%s%s", subject, name ? " '" : "", name ? name : "", name ? "'" : "");
        if (strcmp(type, "sessionwatch.session.snapshot") == 0)
                printf("%s %s is %s%s%s (snapshot)\n", when, who, on, status ? status : "?", off);
        else if (strcmp(type, "sessionwatch.session.gone") == 0)
                printf("%s %s is gone (was %s)\n", when, who, previous ? previous : "?");
        else if (strcmp(type, "sessionwatch.session.stalled") == 0)
                printf("%s %s stalled in %s\n", when, who, status ? status : "?");
        else if (previous)
                printf("%s %s %s → %s%s%s\n", when, who, previous, on, status ? status : "?", off);
        else
                printf("%s %s → %s%s%s (new)\n", when, who, on, status ? status : "?", off);
}

static void on_stop(int sig)
{
        stop_requested = 1;
}

static int cmd_events(int argc, char **argv)
{
        static const struct option options[] = {
            {"events", required_argument, NULL, 'e'},
            {},
        };
        char *path = NULL;
        bool colour = !arg_json && isatty(STDOUT_FILENO), have_seq = false, said_lost = false;
        int64_t seq = 0;
        int c;

        optind = 1;
        while ((c = getopt_long(argc, argv, "+e:", options, NULL)) >= 0) {
                if (c != 'e')
                        return CTL_EXIT_USAGE;
                free(path);
                path = strdup(optarg);
        }
        if (optind < argc) {
                fprintf(stderr, "sessionwatchctl: 'events' takes no argument '%s'\n", argv[optind]);
                free(path);
                return CTL_EXIT_USAGE;
        }
        if (!path) {
                /* The stream's path is the daemon's to say. */
                json_object *req = make_request(CONTROL_CMD_STATUS), *reply = NULL;
                int r = request(req, &reply);

                json_object_put(req);
                if (r != 0)
                        return r;
                if (!get(reply, "eventsSocket")) {
                        fprintf(stderr, "sessionwatchctl: the daemon runs without an event stream socket\n");
                        json_object_put(reply);
                        return CTL_EXIT_ERROR;
                }
                path = strdup(get_str(reply, "eventsSocket", ""));
                json_object_put(reply);
        }

        struct sigaction sa = {.sa_handler = on_stop};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);

        for (bool first = true; !stop_requested; first = false) {
                LineReader lr = {};
                char hello[64], *line;
                int fd = connect_unix(path), r;

                if (fd < 0) {
                        if (first) {
                                int code = fail_unavailable(path, fd);
                                free(path);
                                return code;
                        }
                        sleep(RECONNECT_DELAY_S);
                        continue;
                }
                said_lost = false;
                lr.fd = fd;
                /* Resuming: only what was missed, when the daemon still has it. */
                if (have_seq)
                        snprintf(hello, sizeof(hello), "{\"since\":%" PRId64 "}\n", seq);
                else
                        snprintf(hello, sizeof(hello), "{}\n");
                (void)fd_write_all(fd, hello, strlen(hello));
                while (!stop_requested && (line = read_line(&lr, REPLY_MAX, &r))) {
                        json_object *e = json_tokener_parse(line), *s;

                        if (e && (s = get(e, "sequence")) && json_object_is_type(s, json_type_int)) {
                                seq = json_object_get_int64(s);
                                have_seq = true;
                        }
                        if (arg_json)
                                printf("%s\n", line);
                        else if (e) {
                                sanitize_strings(e);
                                print_event_line(e, colour);
                        }
                        json_object_put(e);
                }
                close(fd);
                free(lr.buf);
                if (stop_requested)
                        break;
                if (!said_lost) {
                        fprintf(stderr, "sessionwatchctl: the event stream ended; reconnecting\n");
                        said_lost = true;
                }
                sleep(RECONNECT_DELAY_S);
        }
        free(path);
        return 0;
}

int main(int argc, char **argv)
{
        enum { OPT_VERSION = 0x100 };
        static const struct option options[] = {
            {"socket", required_argument, NULL, 's'},
            {"json", no_argument, NULL, 'j'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, OPT_VERSION},
            {},
        };
        const char *rt = getenv("RUNTIME_DIRECTORY"), *command;
        int c;

        /* A daemon that hangs up learns us an EPIPE, not a death by signal. */
        signal(SIGPIPE, SIG_IGN);

        if (rt && *rt) {
                /* A colon-separated list names several directories: the first is ours. */
                size_t n = strcspn(rt, ":");
                snprintf(default_socket, sizeof(default_socket), "%.*s/%s", (int)n, rt, CONTROL_SOCKET_NAME);
        } else
                snprintf(default_socket, sizeof(default_socket), "%s/%s", CONTROL_DEFAULT_RUNTIME_DIR,
                         CONTROL_SOCKET_NAME);
        arg_socket = default_socket;

        while ((c = getopt_long(argc, argv, "+s:jh", options, NULL)) >= 0) {
                switch (c) {
                case 's':
                        arg_socket = optarg;
                        break;
                case 'j':
                        arg_json = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case OPT_VERSION:
                        printf("sessionwatchctl %s\n", SW_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return CTL_EXIT_USAGE;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return CTL_EXIT_USAGE;
        }
        command = argv[optind];
        argc -= optind;
        argv += optind;

        if (strcmp(command, "status") == 0 && argc == 1)
                return run_simple(make_request(CONTROL_CMD_STATUS), print_status);
        if (strcmp(command, "reload") == 0 && argc == 1)
                return run_simple(make_request(CONTROL_CMD_RELOAD), print_reload);
        if (strcmp(command, "metrics") == 0 && argc == 1)
                return run_simple(make_request(CONTROL_CMD_METRICS), print_metrics);
        if (strcmp(command, "list") == 0)
                return cmd_list(argc, argv);
        if (strcmp(command, "watch") == 0)
                return cmd_ids(CONTROL_CMD_WATCH, argc - 1, argv + 1, print_watch);
        if (strcmp(command, "unwatch") == 0)
                return cmd_ids(CONTROL_CMD_UNWATCH, argc - 1, argv + 1, print_unwatch);
        if (strcmp(command, "events") == 0)
                return cmd_events(argc, argv);
        if (strcmp(command, "status") == 0 || strcmp(command, "reload") == 0 ||
            strcmp(command, "metrics") == 0)
                fprintf(stderr, "sessionwatchctl: '%s' takes no arguments\n", command);
        else
                fprintf(stderr, "sessionwatchctl: unknown command '%s' (see --help)\n", command);
        return CTL_EXIT_USAGE;
}
