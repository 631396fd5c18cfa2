#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <json-c/json.h>

#include "control-proto.h"
#include "control.h"
#include "log.h"
#include "textsafe.h"
#include "unixsock.h"

/* Past this many reply bytes queued for a client, its requests are not read
 * until it has read its replies: a client that never reads cannot make the
 * daemon hold more than this (plus one reply). */
#define REPLY_QUEUE_MAX ((size_t)1024 * 1024)
/* Supplementary groups looked at for the control group. */
#define PEER_GROUPS_MAX 256
/* A connection with no request under way is closed after this long
 * without a byte: idle connections must not keep the slots from others. */
#define CLIENT_IDLE_MS 30000
/* Nesting a request may have; json-c refuses deeper text anyway. */
#define REQUEST_DEPTH_MAX JSON_TOKENER_DEFAULT_DEPTH
/* A duplicate key as a message shows it: 64 bytes, escaped. */
#define QUOTED_KEY_MAX (64 * 4 + 4)

/* The data of each UnixClient of the control socket. */
typedef struct ControlClient {
        ControlServer *server;
        UnixClient *u; /* whose data this is */
        uv_shutdown_t shutdown;
        bool reading;
        bool ending; /* a last reply is queued; nothing more is read */
        bool eof;    /* the client sent all it will */
        bool peer_known;
        uid_t uid;
        gid_t gid;
        gid_t groups[PEER_GROUPS_MAX];
        size_t n_groups;
        char *buf; /* CONTROL_LINE_MAX + 1 bytes */
        size_t len;
        bool more;             /* complete requests wait for the next loop turn */
        uint64_t last_read_ms; /* uv_now() of the last bytes read, or of the accept */
} ControlClient;

struct ControlServer {
        uv_loop_t *loop;
        UnixServer *sock; /* the socket and its clients */
        bool closing;
        bool sock_open; /* `sock` has not called back that it closed */
        gid_t group_gid; /* (gid_t)-1: none */
        const ControlCommand *commands;
        void *userdata;
        /* One request per client per loop turn: a client that sends many at
         * once is answered over several turns, so expensive requests (a
         * status over a big table) cannot hold the loop back in a batch. */
        uv_idle_t more;
        uv_timer_t idle_sweep; /* closes connections idle past CLIENT_IDLE_MS */
        unsigned open_handles; /* `more` and `idle_sweep` not yet closed */
};

typedef struct ControlWrite {
        uv_write_t req;
        ControlClient *client;
        char data[];
} ControlWrite;

static void client_process(ControlClient *c);
static void on_more_idle(uv_idle_t *h);
static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_client_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf);

json_object *control_reply_ok(void)
{
        json_object *o = json_object_new_object();

        if (o)
                json_object_object_add(o, "ok", json_object_new_boolean(1));
        return o;
}

json_object *control_reply_error(const char *code, const char *format, ...)
{
        json_object *o = json_object_new_object();
        char msg[1024];
        va_list ap;

        if (!o)
                return NULL;
        va_start(ap, format);
        vsnprintf(msg, sizeof(msg), format, ap);
        va_end(ap);
        json_object_object_add(o, "ok", json_object_new_boolean(0));
        json_object_object_add(o, "error", json_object_new_string(code));
        json_object_object_add(o, "message", json_object_new_string(msg));
        return o;
}

bool control_peer_allowed(uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups, uid_t self_uid,
                          gid_t group_gid)
{
        if (uid == 0 || uid == self_uid)
                return true;
        if (group_gid == (gid_t)-1)
                return false;
        if (gid == group_gid)
                return true;
        for (size_t k = 0; k < n_groups; k++)
                if (groups[k] == group_gid)
                        return true;
        return false;
}

static void maybe_free_server(ControlServer *s)
{
        /* libuv runs close callbacks in no promised order: the last one frees. */
        if (s->closing && !s->sock_open && s->open_handles == 0)
                free(s);
}

static void on_unix_closed(void *userdata)
{
        ControlServer *s = userdata;

        s->sock_open = false;
        s->sock = NULL;
        maybe_free_server(s);
}

static void on_client_freed(void *userdata, void *data)
{
        ControlClient *c = data;

        free(c->buf);
}

/* libuv write callback, on the loop. */
static void on_reply_written(uv_write_t *req, int status)
{
        ControlWrite *w = (ControlWrite *)req;
        ControlClient *c = w->client;

        free(w);
        if (!unix_client_written(c->u, status))
                return;
        /* Requests held back while replies piled up can go on now. */
        if (!c->ending && unix_client_queued(c->u) < REPLY_QUEUE_MAX)
                client_process(c);
}

static void send_reply(ControlClient *c, json_object *reply)
{
        char *valid = NULL;
        const char *text;
        size_t n = 0;
        ControlWrite *w;
        ssize_t done;

        if (!reply)
                reply = control_reply_error(CONTROL_ERROR_FAILED, "out of memory");
        text = reply ? json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, &n) : NULL;
        if (!text) {
                json_object_put(reply);
                unix_client_close(c->u);
                return;
        }
        /* json-c writes a string's bytes as they are. Requests are checked,
         * but a reply may still carry bytes from elsewhere (a file name, a
         * message cut short): clients must always get UTF-8. Outside strings
         * the text is ASCII, so replacing bad bytes keeps it JSON. */
        if (!utf8_is_valid(text, n)) {
                valid = utf8_make_valid(text, n, &n);
                if (!valid) {
                        json_object_put(reply);
                        unix_client_close(c->u);
                        return;
                }
                text = valid;
        }
        w = malloc(sizeof(*w) + n + 1);
        if (!w) {
                free(valid);
                json_object_put(reply);
                unix_client_close(c->u);
                return;
        }
        w->client = c;
        memcpy(w->data, text, n);
        w->data[n] = '\n';
        free(valid);
        json_object_put(reply);
        n++;
        done = unix_client_try_write(c->u, w->data, n);
        if (done < 0 || (size_t)done == n ||
            unix_client_write(c->u, w->data + done, n - (size_t)done, &w->req, on_reply_written) < 0)
                free(w);
}

static void on_client_shutdown(uv_shutdown_t *req, int status)
{
        unix_client_close(unix_client_of(req->data));
}

/* Sends the last reply and ends the connection once it is out. */
static void client_end(ControlClient *c, json_object *reply)
{
        c->ending = true;
        if (c->reading) {
                uv_read_stop(unix_client_stream(c->u));
                c->reading = false;
        }
        send_reply(c, reply);
        if (unix_client_closing(c->u))
                return;
        c->shutdown.data = c;
        if (uv_shutdown(&c->shutdown, unix_client_stream(c->u), on_client_shutdown) < 0)
                unix_client_close(c->u);
}

static void client_load_peer(ControlClient *c)
{
        struct ucred cred;
        socklen_t len = sizeof(cred);
        uv_os_fd_t fd;

        c->uid = (uid_t)-1;
        c->gid = (gid_t)-1;
        c->peer_known = false;
        if (uv_fileno((uv_handle_t *)unix_client_stream(c->u), &fd) < 0)
                return;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return;
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->peer_known = true;
        len = sizeof(c->groups);
        /* Supplementary groups at connect time (Linux 4.13+); without them
         * only the primary group counts. */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, c->groups, &len) == 0)
                c->n_groups = len / sizeof(gid_t);
}

/* The key of the JSON string at s[0..n) (quotes included), decoded,
 * malloc'd; NULL when out of memory. Only keys with an escape need json-c. */
static char *request_key(const char *s, size_t n)
{
        json_tokener *tok;
        json_object *o;
        char *key;

        if (!memchr(s, '\\', n))
                return strndup(s + 1, n - 2);
        tok = json_tokener_new();
        if (!tok)
                return NULL;
        o = json_tokener_parse_ex(tok, s, (int)n);
        json_tokener_free(tok);
        key = json_object_is_type(o, json_type_string) ? strdup(json_object_get_string(o)) : strdup("");
        json_object_put(o);
        return key;
}

/* Finds a key that appears twice in one object of the request, which json-c
 * would silently take the last of: {"command":"status","command":"reload"}
 * must not run either. Runs on text json-c has parsed, so the grammar is
 * known to be right but for json-c's extensions. Returns 0, -EEXIST with the
 * key (decoded, cut and escaped) in `dup`, -EBADMSG for a single-quoted
 * string or a comment, or -ENOMEM. */
static int request_find_duplicate_key(const char *line, size_t n, char *dup, size_t dup_size)
{
        json_object *keys[REQUEST_DEPTH_MAX + 1] = {}; /* per open object: the keys seen; NULL in an array */
        bool want_key[REQUEST_DEPTH_MAX + 1] = {};
        int depth = -1, r = 0;

        for (size_t i = 0; i < n && r == 0; i++) {
                switch (line[i]) {
                case '{':
                case '[':
                        if (depth + 1 > REQUEST_DEPTH_MAX) {
                                r = -E2BIG;
                                break;
                        }
                        depth++;
                        keys[depth] = line[i] == '{' ? json_object_new_object() : NULL;
                        want_key[depth] = line[i] == '{';
                        if (line[i] == '{' && !keys[depth])
                                r = -ENOMEM;
                        break;
                case '}':
                case ']':
                        if (depth >= 0) {
                                json_object_put(keys[depth]);
                                keys[depth--] = NULL;
                        }
                        break;
                case ',':
                        if (depth >= 0 && keys[depth])
                                want_key[depth] = true;
                        break;
                case '"': {
                        size_t start = i;
                        char *key;

                        for (i++; i < n && line[i] != '"'; i++)
                                if (line[i] == '\\')
                                        i++;
                        /* An unterminated string is no key (and must not be
                         * read past the end). */
                        if (i >= n || depth < 0 || !keys[depth] || !want_key[depth])
                                break;
                        want_key[depth] = false;
                        key = request_key(line + start, i + 1 - start);
                        if (!key) {
                                r = -ENOMEM;
                                break;
                        }
                        if (json_object_object_get_ex(keys[depth], key, NULL)) {
                                text_escape(key, 64, dup, dup_size);
                                r = -EEXIST;
                        } else if (json_object_object_add(keys[depth], key, NULL) < 0)
                                r = -ENOMEM;
                        free(key);
                        break;
                }
                case '\'':
                case '/':
                        /* json-c's single-quoted strings and comments, which
                         * JSON has not: they would hide keys from this scan. */
                        r = -EBADMSG;
                        break;
                default:
                        break;
                }
        }
        for (; depth >= 0; depth--)
                json_object_put(keys[depth]);
        return r == -E2BIG ? 0 : r;
}

int control_parse_request(const char *line, size_t n, json_object **ret, char *reason, size_t reason_size)
{
        json_tokener *tok;
        json_object *req;
        char dup[QUOTED_KEY_MAX];
        size_t end;
        int r;

        assert(line || n == 0);
        assert(ret);
        assert(reason && reason_size > 0);

        *ret = NULL;
        /* json-c takes any bytes in a string, and a reply that repeats them
         * would not be UTF-8 either. */
        for (size_t i = 0; i < n;) {
                size_t k = utf8_char_len(line + i, n - i);

                if (k == 0) {
                        snprintf(reason, reason_size, "The request is not valid UTF-8 (byte %zu).", i + 1);
                        return -EINVAL;
                }
                i += k;
        }

        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        req = json_tokener_parse_ex(tok, line, (int)n);
        end = req ? json_tokener_get_parse_end(tok) : 0;
        if (!req) {
                snprintf(reason, reason_size, "The request is not valid JSON: %s.",
                         json_tokener_error_desc(json_tokener_get_error(tok)));
                json_tokener_free(tok);
                return -EINVAL;
        }
        json_tokener_free(tok);
        /* Trailing text after the object counts as malformed too. */
        for (size_t k = end; k < n; k++)
                if (line[k] != ' ' && line[k] != '\t' && line[k] != '\r') {
                        json_object_put(req);
                        snprintf(reason, reason_size,
                                 "The request is not valid JSON: text after the JSON object.");
                        return -EINVAL;
                }
        if (!json_object_is_type(req, json_type_object)) {
                json_object_put(req);
                snprintf(reason, reason_size, "The request must be a JSON object.");
                return -EINVAL;
        }
        r = request_find_duplicate_key(line, end, dup, sizeof(dup));
        if (r < 0) {
                json_object_put(req);
                if (r == -EEXIST) {
                        snprintf(reason, reason_size,
                                 "The request has the key '%s' twice (a duplicate key).", dup);
                        return -EINVAL;
                }
                if (r == -EBADMSG) {
                        snprintf(reason, reason_size,
                                 "The request is not valid JSON: a single-quoted string or a comment.");
                        return -EINVAL;
                }
                return r;
        }
        *ret = req;
        return 0;
}

json_object *control_request_command(const ControlCommand *commands, json_object *request,
                                     const ControlCommand **ret_command)
{
        json_object *v;
        const char *name;
        const ControlCommand *cmd;

        *ret_command = NULL;
        if (!json_object_object_get_ex(request, "command", &v) || !json_object_is_type(v, json_type_string))
                return control_reply_error(CONTROL_ERROR_BAD_REQUEST,
                                           "The request needs a string member 'command'.");
        name = json_object_get_string(v);
        for (cmd = commands; cmd->name; cmd++)
                if (strcmp(cmd->name, name) == 0 && (size_t)json_object_get_string_len(v) == strlen(name))
                        break;
        if (!cmd->name) {
                char shown[80];

                /* The name is the peer's text: shown cut (at a character)
                 * and with control characters escaped. */
                text_escape(name, 64, shown, sizeof(shown));
                return control_reply_error(CONTROL_ERROR_UNKNOWN_COMMAND, "Unknown command '%s'.", shown);
        }
        *ret_command = cmd;
        return NULL;
}

static json_object *handle_line(ControlClient *c, const char *line, size_t n)
{
        ControlServer *s = c->server;
        json_object *req, *reply;
        const ControlCommand *cmd;
        char why[256];
        int r;

        r = control_parse_request(line, n, &req, why, sizeof(why));
        if (r == -EINVAL)
                return control_reply_error(CONTROL_ERROR_BAD_JSON, "%s", why);
        if (r < 0)
                return NULL;
        reply = control_request_command(s->commands, req, &cmd);
        if (cmd && cmd->mutating &&
            (!c->peer_known ||
             !control_peer_allowed(c->uid, c->gid, c->groups, c->n_groups, geteuid(), s->group_gid))) {
                log_notice("Refused '%s' on the control socket to uid %d.", cmd->name, (int)c->uid);
                reply = control_reply_error(CONTROL_ERROR_PERMISSION,
                                            "'%s' changes the daemon: only root, the daemon's user or "
                                            "the control group may run it (you are uid %d).",
                                            cmd->name, (int)c->uid);
        } else if (cmd)
                reply = cmd->run(s->userdata, req);
        json_object_put(req);
        return reply;
}

/* Answers the complete lines in the buffer, one at a time, while the
 * client reads its replies; an overlong line ends the connection. */
static void client_process(ControlClient *c)
{
        unsigned handled = 0;

        for (;;) {
                char *nl;
                size_t n;

                if (unix_client_closing(c->u) || c->ending)
                        return;
                if (unix_client_queued(c->u) >= REPLY_QUEUE_MAX) {
                        if (c->reading) {
                                uv_read_stop(unix_client_stream(c->u));
                                c->reading = false;
                        }
                        return;
                }
                nl = memchr(c->buf, '\n', c->len);
                if (!nl)
                        break;
                n = (size_t)(nl - c->buf);
                if (n > 0 && c->buf[n - 1] == '\r')
                        n--;
                /* An empty line is no request: skipped without a reply. */
                bool blank = true;
                for (size_t k = 0; k < n; k++)
                        if (c->buf[k] != ' ' && c->buf[k] != '\t')
                                blank = false;
                if (!blank && handled > 0) {
                        /* The next one waits for the next loop turn. */
                        if (c->reading) {
                                uv_read_stop(unix_client_stream(c->u));
                                c->reading = false;
                        }
                        c->more = true;
                        uv_idle_start(&c->server->more, on_more_idle);
                        return;
                }
                if (!blank) {
                        send_reply(c, handle_line(c, c->buf, n));
                        handled++;
                }
                n = (size_t)(nl - c->buf) + 1;
                memmove(c->buf, c->buf + n, c->len - n);
                c->len -= n;
        }
        if (c->len >= CONTROL_LINE_MAX) {
                client_end(c, control_reply_error(CONTROL_ERROR_TOO_LONG,
                                                  "The request line is longer than %d bytes; closing.",
                                                  CONTROL_LINE_MAX));
                return;
        }
        if (c->eof) {
                /* A last request without a newline still counts; then the
                 * connection ends once the replies are out. */
                if (c->len > 0) {
                        c->buf[c->len] = '\n';
                        c->len++;
                        client_process(c);
                        return;
                }
                c->ending = true;
                c->shutdown.data = c;
                if (uv_shutdown(&c->shutdown, unix_client_stream(c->u), on_client_shutdown) < 0)
                        unix_client_close(c->u);
                return;
        }
        if (!c->reading && !unix_client_closing(c->u)) {
                if (uv_read_start(unix_client_stream(c->u), on_client_alloc, on_client_read) == 0)
                        c->reading = true;
        }
}

/* The loop turned: each client with requests waiting gets one more
 * answered. Runs on the loop thread. */
static void on_more_idle(uv_idle_t *h)
{
        ControlServer *s = h->data;
        bool any = false;

        for (UnixClient *u = unix_client_first(s->sock), *next; u; u = next) {
                ControlClient *c = unix_client_data(u);

                next = unix_client_next(u);
                if (!c->more)
                        continue;
                c->more = false;
                client_process(c);
        }
        for (UnixClient *u = unix_client_first(s->sock); u && !any; u = unix_client_next(u))
                any = ((ControlClient *)unix_client_data(u))->more;
        if (!any)
                uv_idle_stop(h);
}

/* Every few seconds, on the loop thread: connections that sent nothing for
 * CLIENT_IDLE_MS and have nothing under way are closed. */
static void on_idle_sweep(uv_timer_t *t)
{
        ControlServer *s = t->data;
        uint64_t now = uv_now(s->loop);

        for (UnixClient *u = unix_client_first(s->sock), *next; u; u = next) {
                ControlClient *c = unix_client_data(u);

                next = unix_client_next(u);
                if (!c->ending && !c->more && c->len == 0 && unix_client_queued(c->u) == 0 &&
                    now - c->last_read_ms >= CLIENT_IDLE_MS)
                        unix_client_close(c->u);
        }
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        ControlClient *c = h->data;

        *buf = uv_buf_init(c->buf + c->len, (unsigned)(CONTROL_LINE_MAX - c->len));
}

/* libuv read callback, on the loop. */
static void on_client_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
        ControlClient *c = stream->data;

        if (unix_client_closing(c->u))
                return;
        c->last_read_ms = uv_now(c->server->loop);
        if (n < 0) {
                uv_read_stop(stream);
                c->reading = false;
                if (n != UV_EOF) {
                        unix_client_close(c->u);
                        return;
                }
                /* The client has no more requests: what it sent is still
                 * answered, then the connection ends. */
                c->eof = true;
                client_process(c);
                return;
        }
        c->len += (size_t)n;
        client_process(c);
}

static int client_start_reading(ControlClient *c)
{
        int r = uv_read_start(unix_client_stream(c->u), on_client_alloc, on_client_read);

        c->reading = r == 0;
        return r;
}

/* A client connected, on the loop: nothing is read from it yet. */
static void on_control_connected(void *userdata, UnixClient *u)
{
        ControlServer *s = userdata;
        ControlClient *c = unix_client_data(u);

        c->server = s;
        c->u = u;
        c->last_read_ms = uv_now(s->loop);
        c->buf = malloc(CONTROL_LINE_MAX + 1);
        if (!c->buf) {
                log_error("Out of memory accepting a control client.");
                unix_client_close(u);
                return;
        }
        if (unix_server_clients(s->sock) > CONTROL_CONNECTIONS_MAX) {
                client_end(c,
                           control_reply_error(CONTROL_ERROR_FAILED,
                                               "Too many control connections (at most %d); try again later.",
                                               CONTROL_CONNECTIONS_MAX));
                return;
        }
        client_load_peer(c);
        if (client_start_reading(c) < 0)
                unix_client_close(c->u);
}

static void on_server_handle_closed(uv_handle_t *h)
{
        ControlServer *s = h->data;

        s->open_handles--;
        maybe_free_server(s);
}

int control_new(uv_loop_t *loop, const ControlOptions *o, ControlServer **ret)
{
        ControlServer *s = calloc(1, sizeof(*s));
        UnixServerOptions uo = {
            .path = o->path,
            .fd = o->fd,
            .mode = o->mode,
            .group = o->group,
            .backlog = 64,
            .client_size = sizeof(ControlClient),
            .out_of_memory = "Out of memory accepting a control client.",
            .connected = on_control_connected,
            .client_freed = on_client_freed,
            .closed = on_unix_closed,
            .userdata = s,
        };
        int r;

        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->commands = o->commands;
        s->userdata = o->userdata;
        s->group_gid = (gid_t)-1;
        if (o->group) {
                r = unixsock_resolve_group(o->group, &s->group_gid);
                if (r < 0) {
                        log_error_errno(r, "Unknown [control] group '%s': %m", o->group);
                        free(s);
                        return r;
                }
        }
        uv_idle_init(loop, &s->more);
        uv_timer_init(loop, &s->idle_sweep);
        s->more.data = s->idle_sweep.data = s;
        s->open_handles = 2;
        uv_timer_start(&s->idle_sweep, on_idle_sweep, CLIENT_IDLE_MS / 6, CLIENT_IDLE_MS / 6);
        uv_unref((uv_handle_t *)&s->idle_sweep);
        s->sock_open = true;
        r = unix_server_new(loop, &uo, &s->sock);
        if (r < 0) {
                /* The UnixServer closes itself and says so in on_unix_closed(). */
                control_close(s);
                return r;
        }
        *ret = s;
        return 0;
}

void control_close(ControlServer *s)
{
        if (!s || s->closing)
                return;
        s->closing = true;
        unix_server_close(s->sock);
        uv_close((uv_handle_t *)&s->more, on_server_handle_closed);
        uv_close((uv_handle_t *)&s->idle_sweep, on_server_handle_closed);
}

unsigned control_connections(const ControlServer *s)
{
        return s->sock ? unix_server_clients(s->sock) : 0;
}
