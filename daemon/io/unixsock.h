/* unixsock: the one Unix-socket server under the event stream and the
 * control socket.
 *
 * A UnixServer binds its socket file (a stale one left by a crash is
 * replaced, any other file refused) or takes a passed listening socket,
 * accepts clients, keeps the list of them and frees each client only once
 * every handle of it is closed. What a client says and is sent is the
 * owner's: each client carries `client_size` bytes of the owner's data,
 * which every handle of the client points at (handle->data), and which the
 * owner reaches the client from with unix_client_of().
 *
 * Everything runs on the loop thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <sys/types.h>

typedef struct uv_loop_s uv_loop_t;
typedef struct uv_stream_s uv_stream_t;
typedef struct uv_timer_s uv_timer_t;
typedef struct uv_write_s uv_write_t;

typedef struct UnixServer UnixServer;
typedef struct UnixClient UnixClient;

typedef struct UnixServerOptions {
        const char *path; /* bound unless fd >= 0; then only named in messages (NULL: "(passed socket)") */
        int fd;           /* an already listening socket, or -1 */
        mode_t mode;
        const char *group; /* owning group of the socket file, or NULL */
        int backlog;
        size_t client_size;        /* bytes of the owner's data in each client, zeroed at the accept */
        bool client_timer;         /* each client gets a timer, closed with it */
        const char *out_of_memory; /* logged when a client cannot be allocated */
        /* Zeroed memory for a client, freed with free(); NULL: calloc(). On
         * NULL the connection waits and is accepted once memory is found. */
        void *(*alloc_client)(size_t size);
        /* A client was accepted: its handles are initialised, it is in the
         * list and counted, nothing is read yet. The owner may close it. */
        void (*connected)(void *userdata, UnixClient *c);
        /* The last handle of a client closed: the owner frees what its data
         * holds (not the data itself). May be NULL. */
        void (*client_freed)(void *userdata, void *data);
        /* The server closed (after unix_server_close(), or after a failed
         * unix_server_new()) and every client of it is freed: the owner may
         * free userdata now. May be NULL. */
        void (*closed)(void *userdata);
        void *userdata;
} UnixServerOptions;

/* Binds or takes the socket and listens; errors are logged naming the path.
 * On failure *ret is untouched and the half-made server closes itself on the
 * loop, calling `closed` when done (the loop must run for it to be freed;
 * when nothing could be allocated, `closed` is called before this returns).
 * Returns 0 or -errno. */
int unix_server_new(uv_loop_t *loop, const UnixServerOptions *o, UnixServer **ret);

/* Stops listening, removes the socket file if it is still the one bound
 * here, closes every client; `closed` follows once all is freed. */
void unix_server_close(UnixServer *s);

/* Clients connected and not being closed. */
unsigned unix_server_clients(const UnixServer *s);
/* The path in messages: the configured one, or "(passed socket)". */
const char *unix_server_path(const UnixServer *s);

/* The clients not being closed, newest first: unix_client_first(s), then
 * unix_client_next(c). Closing the current client keeps its next valid. */
UnixClient *unix_client_first(const UnixServer *s);
UnixClient *unix_client_next(const UnixClient *c);

void *unix_client_data(UnixClient *c);
UnixClient *unix_client_of(void *data);
uv_stream_t *unix_client_stream(UnixClient *c);
/* NULL unless the server was made with client_timer. */
uv_timer_t *unix_client_timer(UnixClient *c);
/* Bytes queued for the client and not yet written. */
size_t unix_client_queued(const UnixClient *c);
bool unix_client_closing(const UnixClient *c);
/* Writes what the socket takes at once, unless bytes are queued before it.
 * Returns the bytes written (0 to len), or -errno with the client closed. */
ssize_t unix_client_try_write(UnixClient *c, const char *data, size_t len);
/* Queues len bytes at data (which must stay until `done`) behind what is
 * queued; `done` runs on the loop once they are written or the client is
 * gone. Returns 0, or -errno with the client closed and `done` not to run. */
int unix_client_write(UnixClient *c, const char *data, size_t len, uv_write_t *req,
                      void (*done)(uv_write_t *req, int status));
/* In a `done` callback: whether the client goes on. False while it is
 * closing, or when the write failed (the client is then closed). */
bool unix_client_written(UnixClient *c, int status);

/* Takes the client out of the list and closes its handles; its writes are
 * cancelled and its data freed from the close callbacks. Idempotent. */
void unix_client_close(UnixClient *c);

/* A group name or number. Blocking NSS lookup: only during start-up. */
int unixsock_resolve_group(const char *name, gid_t *ret);
