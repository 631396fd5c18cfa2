/* unixsock: the Unix-socket server under the event stream and the control
 * socket (see unixsock.h). */
#include <errno.h>
#include <grp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "unixsock.h"

/* The socket file as bound. While the listener is open its inode stays in
 * use, so no other socket can get the number; a file put in the socket's
 * place after it was deleted can, on file systems that reuse inode numbers
 * at once, but it is not a socket. */
typedef struct UnixSockId {
        dev_t dev;
        ino_t ino;
} UnixSockId;

/* Out of memory for a new client: the connection stays queued (libuv holds
 * it and stops watching the listener until it is accepted), and accepting it
 * is tried again this often. */
#define ACCEPT_RETRY_MS 100

struct UnixServer {
        uv_loop_t *loop;
        uv_pipe_t listener;
        UnixServerOptions opt; /* strings not kept: path is the copy below */
        char *path;
        bool unlink; /* bound here: removed at close while it is still the file bound */
        UnixSockId bound;
        bool closing;
        bool listener_open;
        uv_timer_t accept_retry;
        bool accept_retry_open;
        bool starved; /* out of memory at the last accept; said once until it passes */
        UnixClient *clients;
        unsigned n_clients;
        unsigned allocated_clients; /* including those whose handles are closing */
};

struct UnixClient {
        UnixServer *server;
        UnixClient *prev, *next;
        uv_pipe_t pipe;
        uv_timer_t timer; /* initialised only with client_timer */
        unsigned open_handles;
        bool closing;
        max_align_t data[]; /* the owner's client_size bytes */
};

int unixsock_resolve_group(const char *name, gid_t *ret)
{
        struct group *g;
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(name, &end, 10);
        if (*name && !*end && errno == 0) {
                *ret = (gid_t)v;
                return 0;
        }
        errno = 0;
        g = getgrnam(name);
        if (!g)
                return errno > 0 ? -errno : -ESRCH;
        *ret = g->gr_gid;
        return 0;
}

/* Whether a process listens on the socket file at `path`: a connection
 * attempt (non-blocking) is answered or queued. */
static bool socket_in_use(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        bool used;

        if (fd < 0)
                return false;
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        used =
            connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN || errno == EINPROGRESS;
        close(fd);
        return used;
}

static bool still_ours(const char *path, const UnixSockId *id)
{
        struct stat st;

        return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == id->dev && st.st_ino == id->ino;
}

/* Binds a new socket to `path` and hands it to `pipe` (initialised, not yet
 * opened): a socket file left by a crash is removed first, any other file is
 * refused. Mode and group are set before listen(), so no peer can connect in
 * between. The socket is bound here and not with uv_pipe_bind(), which would
 * have libuv remove whatever file has the path when the handle closes: only
 * the file bound here is removed, by unix_server_close(). Errors are logged
 * naming the path. Returns 0 or -errno. */
static int bind_path(uv_pipe_t *pipe, const char *path, mode_t mode, const char *group, UnixSockId *ret_id)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        const size_t max = sizeof(sa.sun_path) - 1;
        struct stat st;
        int fd, r;

        if (strlen(path) > max) {
                log_error("The socket path '%s' is too long (at most %zu bytes).", path, max);
                return -ENAMETOOLONG;
        }
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode)) {
                        log_error("'%s' exists and is not a socket; refusing to replace it.", path);
                        return -EEXIST;
                }
                /* Only a socket nobody listens on is stale: another running
                 * daemon's must not be taken over. */
                if (socket_in_use(path)) {
                        log_error("'%s' is in use by a running process (another sessionwatchd?).", path);
                        return -EADDRINUSE;
                }
                if (unlink(path) < 0)
                        return log_error_errno(errno, "Failed to remove the stale socket '%s': %m", path);
        }
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return log_error_errno(errno, "Failed to bind '%s': %m", path);
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                r = log_error_errno(errno, "Failed to bind '%s': %m", path);
                close(fd);
                return r;
        }
        r = 0;
        if (chmod(path, mode) < 0)
                r = log_error_errno(errno, "Failed to set the mode of '%s': %m", path);
        if (r >= 0 && group) {
                gid_t gid;

                r = unixsock_resolve_group(group, &gid);
                if (r < 0)
                        log_error_errno(r, "Unknown group '%s' for '%s': %m", group, path);
                else if (chown(path, (uid_t)-1, gid) < 0)
                        r = log_error_errno(errno, "Failed to give '%s' to group '%s': %m", path, group);
        }
        if (r >= 0 && lstat(path, &st) < 0)
                r = log_error_errno(errno, "Failed to look at '%s' after binding it: %m", path);
        if (r >= 0) {
                r = uv_pipe_open(pipe, fd);
                if (r < 0)
                        log_error_errno(r, "Failed to bind '%s': %m", path);
        }
        if (r < 0) {
                (void)unlink(path);
                close(fd);
                return r;
        }
        *ret_id = (UnixSockId){.dev = st.st_dev, .ino = st.st_ino};
        return 0;
}

/* The server is freed by the last of its close callbacks to run: libuv
 * promises them in no order. */
static void maybe_finish(UnixServer *s)
{
        if (!s->closing || s->listener_open || s->accept_retry_open || s->allocated_clients > 0)
                return;
        if (s->opt.closed)
                s->opt.closed(s->opt.userdata);
        free(s->path);
        free(s);
}

static void on_client_handle_closed(uv_handle_t *h)
{
        UnixClient *c = unix_client_of(h->data);
        UnixServer *s = c->server;

        if (--c->open_handles > 0)
                return;
        if (s->opt.client_freed)
                s->opt.client_freed(s->opt.userdata, c->data);
        free(c);
        s->allocated_clients--;
        maybe_finish(s);
}

void unix_client_close(UnixClient *c)
{
        UnixServer *s = c->server;

        if (c->closing)
                return;
        c->closing = true;
        if (c->prev)
                c->prev->next = c->next;
        else
                s->clients = c->next;
        if (c->next)
                c->next->prev = c->prev;
        s->n_clients--;
        uv_close((uv_handle_t *)&c->pipe, on_client_handle_closed);
        if (s->opt.client_timer)
                uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
}

static void accept_one(UnixServer *s);

static void on_accept_retry(uv_timer_t *t)
{
        accept_one(t->data);
}

/* Takes the connection libuv holds for the listener. */
static void accept_one(UnixServer *s)
{
        size_t size = sizeof(UnixClient) + s->opt.client_size;
        UnixClient *c = s->opt.alloc_client ? s->opt.alloc_client(size) : calloc(1, size);
        int r;

        if (!c) {
                if (!s->starved)
                        log_error("%s", s->opt.out_of_memory);
                s->starved = true;
                uv_timer_start(&s->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, 0);
                return;
        }
        s->starved = false;
        c->server = s;
        s->allocated_clients++;
        uv_pipe_init(s->loop, &c->pipe, 0);
        c->pipe.data = c->data;
        c->open_handles = 1;
        if (s->opt.client_timer) {
                uv_timer_init(s->loop, &c->timer);
                c->timer.data = c->data;
                c->open_handles++;
        }
        c->next = s->clients;
        if (s->clients)
                s->clients->prev = c;
        s->clients = c;
        s->n_clients++;
        r = uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->pipe);
        if (r < 0) {
                log_warning_errno(r, "Failed to accept on '%s': %m", s->path);
                unix_client_close(c);
                return;
        }
        s->opt.connected(s->opt.userdata, c);
}

/* A client connected, on the loop. */
static void on_connection(uv_stream_t *listener, int status)
{
        UnixServer *s = listener->data;

        if (status < 0) {
                log_warning_errno(status, "Failed to accept on '%s': %m", s->path);
                return;
        }
        accept_one(s);
}

static void on_listener_closed(uv_handle_t *h)
{
        UnixServer *s = h->data;

        s->listener_open = false;
        maybe_finish(s);
}

static void on_accept_retry_closed(uv_handle_t *h)
{
        UnixServer *s = h->data;

        s->accept_retry_open = false;
        maybe_finish(s);
}

int unix_server_new(uv_loop_t *loop, const UnixServerOptions *o, UnixServer **ret)
{
        UnixServer *s = calloc(1, sizeof(*s));
        int r;

        if (!s) {
                if (o->closed)
                        o->closed(o->userdata);
                return -ENOMEM;
        }
        s->loop = loop;
        s->opt = *o;
        s->opt.path = s->opt.group = NULL;
        if (!s->opt.out_of_memory)
                s->opt.out_of_memory = "Out of memory accepting a client.";
        s->path = strdup(o->path ? o->path : "(passed socket)");
        if (!s->path) {
                free(s);
                if (o->closed)
                        o->closed(o->userdata);
                return -ENOMEM;
        }
        uv_pipe_init(loop, &s->listener, 0);
        s->listener.data = s;
        s->listener_open = true;
        uv_timer_init(loop, &s->accept_retry);
        s->accept_retry.data = s;
        s->accept_retry_open = true;
        if (o->fd >= 0) {
                r = uv_pipe_open(&s->listener, o->fd);
                if (r < 0)
                        log_error_errno(r, "Failed to use the passed socket for '%s': %m", s->path);
        } else {
                r = bind_path(&s->listener, s->path, o->mode, o->group, &s->bound);
                s->unlink = r >= 0;
        }
        if (r >= 0) {
                r = uv_listen((uv_stream_t *)&s->listener, o->backlog, on_connection);
                if (r < 0)
                        log_error_errno(r, "Failed to listen on '%s': %m", s->path);
        }
        if (r < 0) {
                unix_server_close(s);
                return r;
        }
        *ret = s;
        return 0;
}

void unix_server_close(UnixServer *s)
{
        if (!s || s->closing)
                return;
        s->closing = true;
        if (s->unlink && still_ours(s->path, &s->bound))
                (void)unlink(s->path);
        while (s->clients)
                unix_client_close(s->clients);
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        uv_close((uv_handle_t *)&s->accept_retry, on_accept_retry_closed);
}

unsigned unix_server_clients(const UnixServer *s)
{
        return s->n_clients;
}

const char *unix_server_path(const UnixServer *s)
{
        return s->path;
}

UnixClient *unix_client_first(const UnixServer *s)
{
        return s->clients;
}

UnixClient *unix_client_next(const UnixClient *c)
{
        return c->next;
}

void *unix_client_data(UnixClient *c)
{
        return c->data;
}

UnixClient *unix_client_of(void *data)
{
        return (UnixClient *)((char *)data - offsetof(UnixClient, data));
}

uv_stream_t *unix_client_stream(UnixClient *c)
{
        return (uv_stream_t *)&c->pipe;
}

uv_timer_t *unix_client_timer(UnixClient *c)
{
        return c->server->opt.client_timer ? &c->timer : NULL;
}

size_t unix_client_queued(const UnixClient *c)
{
        return uv_stream_get_write_queue_size((const uv_stream_t *)&c->pipe);
}

bool unix_client_closing(const UnixClient *c)
{
        return c->closing;
}

ssize_t unix_client_try_write(UnixClient *c, const char *data, size_t len)
{
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int r;

        if (c->closing)
                return -ECANCELED;
        /* Behind queued bytes nothing may be written first. */
        if (unix_client_queued(c) > 0 || len == 0)
                return 0;
        r = uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
        if (r == UV_EAGAIN)
                return 0;
        if (r < 0) {
                unix_client_close(c);
                return r;
        }
        return r;
}

int unix_client_write(UnixClient *c, const char *data, size_t len, uv_write_t *req,
                      void (*done)(uv_write_t *req, int status))
{
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int r;

        if (c->closing)
                return -ECANCELED;
        r = uv_write(req, (uv_stream_t *)&c->pipe, &b, 1, done);
        if (r < 0)
                unix_client_close(c);
        return r;
}

bool unix_client_written(UnixClient *c, int status)
{
        if (c->closing)
                return false;
        if (status < 0) {
                unix_client_close(c);
                return false;
        }
        return true;
}
