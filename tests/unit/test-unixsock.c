/* Unit tests of the Unix-socket server: the socket file is made with its
 * mode, a stale one is replaced and a live one or any other file refused,
 * clients are accepted with their data zeroed and pointed at by their
 * handles, counted and listed, freed only once closed, and the server says
 * it closed only after its last client is freed; writes go out at once or
 * queued, in order, and a failed one closes the client; a connection that
 * finds no memory waits and is accepted later; the file is removed at
 * close only while it is still the one bound, and a passed socket is used
 * as it is. Each test works in its own temporary folder, on its own loop. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "unixsock.h"

#define CLIENTS_MAX 8

typedef struct TestClient {
        unsigned char bytes[200];
} TestClient;

typedef struct Fixture {
        char *dir;
        char *path;
        uv_loop_t loop;
        UnixServer *server;
        unsigned connected;
        unsigned freed;
        unsigned closed;
        unsigned step;          /* counts every callback */
        unsigned last_freed_at; /* `step` of the last client_freed */
        unsigned closed_at;     /* `step` of closed */
        void *data[CLIENTS_MAX];
        UnixClient *client[CLIENTS_MAX];
        void *freed_data[CLIENTS_MAX];
} Fixture;

static int setup(void **state)
{
        Fixture *f = calloc(1, sizeof(*f));
        const char *base = getenv("TMPDIR");

        assert_non_null(f);
        assert_true(asprintf(&f->dir, "%s/test-unixsock-XXXXXX", base && *base ? base : "/tmp") > 0);
        assert_non_null(mkdtemp(f->dir));
        assert_true(asprintf(&f->path, "%s/s.sock", f->dir) > 0);
        assert_int_equal(uv_loop_init(&f->loop), 0);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        Fixture *f = *state;

        /* Every handle is closed: a test that left one open fails here. */
        assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(uv_loop_close(&f->loop), 0);
        (void)unlink(f->path);
        assert_int_equal(rmdir(f->dir), 0);
        free(f->path);
        free(f->dir);
        free(f);
        return 0;
}

static void on_connected(void *userdata, UnixClient *c)
{
        Fixture *f = userdata;
        TestClient *t = unix_client_data(c);
        TestClient zero = {0};

        f->step++;
        assert_true(f->connected < CLIENTS_MAX);
        /* The owner's bytes are zeroed, and every handle points at them. */
        assert_memory_equal(t, &zero, sizeof(zero));
        assert_ptr_equal(unix_client_of(t), c);
        assert_ptr_equal(((uv_handle_t *)unix_client_stream(c))->data, t);
        assert_non_null(unix_client_timer(c));
        assert_ptr_equal(((uv_handle_t *)unix_client_timer(c))->data, t);
        assert_false(unix_client_closing(c));
        memset(t->bytes, 0xa5, sizeof(t->bytes));
        f->data[f->connected] = t;
        f->client[f->connected] = c;
        f->connected++;
}

static void on_client_freed(void *userdata, void *data)
{
        Fixture *f = userdata;
        TestClient *t = data;

        /* Still the owner's bytes: the data is freed after this returns. */
        assert_int_equal(t->bytes[0], 0xa5);
        assert_int_equal(t->bytes[sizeof(t->bytes) - 1], 0xa5);
        f->freed_data[f->freed++] = data;
        f->last_freed_at = ++f->step;
}

static void on_closed(void *userdata)
{
        Fixture *f = userdata;

        f->closed++;
        f->closed_at = ++f->step;
}

static UnixServerOptions options(Fixture *f)
{
        return (UnixServerOptions){
            .path = f->path,
            .fd = -1,
            .mode = 0640,
            .backlog = 8,
            .client_size = sizeof(TestClient),
            .client_timer = true,
            .connected = on_connected,
            .client_freed = on_client_freed,
            .closed = on_closed,
            .userdata = f,
        };
}

static int peer_connect(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        return fd;
}

static void run_until(Fixture *f, const unsigned *counter, unsigned want)
{
        while (*counter < want)
                assert_true(uv_run(&f->loop, UV_RUN_ONCE) != 0 || *counter >= want);
}

/* A peer whose connection was closed reads end-of-file. */
static void assert_peer_eof(int fd)
{
        char c;

        assert_int_equal(read(fd, &c, 1), 0);
}

/* ---- Tests ---- */

static void test_accept_list_close(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        struct stat st;
        int peer[3];
        unsigned listed = 0;

        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        assert_string_equal(unix_server_path(f->server), f->path);
        assert_int_equal(lstat(f->path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0640);

        for (unsigned k = 0; k < 3; k++)
                peer[k] = peer_connect(f->path);
        run_until(f, &f->connected, 3);
        assert_int_equal(unix_server_clients(f->server), 3);
        for (UnixClient *c = unix_client_first(f->server); c; c = unix_client_next(c))
                listed++;
        assert_int_equal(listed, 3);

        /* A client closed by the owner leaves the list and the count at
         * once, and is freed from the loop. */
        unix_client_close(f->client[1]);
        unix_client_close(f->client[1]); /* idempotent */
        assert_true(unix_client_closing(f->client[1]));
        assert_int_equal(unix_server_clients(f->server), 2);
        for (UnixClient *c = unix_client_first(f->server); c; c = unix_client_next(c))
                assert_ptr_not_equal(c, f->client[1]);
        assert_int_equal(f->freed, 0);
        run_until(f, &f->freed, 1);
        assert_ptr_equal(f->freed_data[0], f->data[1]);
        assert_peer_eof(peer[1]);

        /* Closing the server removes the file at once; `closed` comes after
         * the last client is freed. */
        unix_server_close(f->server);
        unix_server_close(f->server); /* idempotent */
        assert_int_equal(lstat(f->path, &st), -1);
        assert_int_equal(errno, ENOENT);
        assert_int_equal(f->closed, 0);
        assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(f->freed, 3);
        assert_int_equal(f->closed, 1);
        assert_true(f->closed_at > f->last_freed_at);
        assert_peer_eof(peer[0]);
        assert_peer_eof(peer[2]);
        for (unsigned k = 0; k < 3; k++)
                close(peer[k]);
}

/* A client the owner closes in `connected` (a limit, out of memory) is
 * freed like any other. */
static void on_connected_refuse(void *userdata, UnixClient *c)
{
        Fixture *f = userdata;

        f->connected++;
        memset(unix_client_data(c), 0xa5, sizeof(TestClient));
        unix_client_close(c);
}

static void test_client_closed_when_connected(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        int peer;

        o.connected = on_connected_refuse;
        o.client_timer = false;
        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        peer = peer_connect(f->path);
        run_until(f, &f->freed, 1);
        assert_int_equal(f->connected, 1);
        assert_int_equal(unix_server_clients(f->server), 0);
        assert_null(unix_client_first(f->server));
        assert_peer_eof(peer);
        close(peer);
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
}

static void test_stale_socket_is_replaced(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), peer;

        /* A socket file nobody listens on, as a crash leaves it. */
        assert_true(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        close(fd);

        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        peer = peer_connect(f->path);
        run_until(f, &f->connected, 1);
        close(peer);
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
}

static void test_live_socket_is_refused(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        UnixServer *second = NULL;
        struct stat st;
        int peer;

        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        /* Another daemon's socket is not taken over; the refused server
         * closes itself and says so. */
        assert_int_equal(unix_server_new(&f->loop, &o, &second), -EADDRINUSE);
        assert_null(second);
        run_until(f, &f->closed, 1);
        /* The first still owns the file and listens (connect() would be
         * refused otherwise). */
        assert_int_equal(lstat(f->path, &st), 0);
        peer = peer_connect(f->path);
        close(peer);
        unix_server_close(f->server);
        run_until(f, &f->closed, 2);
}

static void test_other_file_is_refused(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        UnixServer *s = NULL;
        char buf[16] = {0};
        int fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, "keep", 4), 4);
        close(fd);
        assert_int_equal(unix_server_new(&f->loop, &o, &s), -EEXIST);
        assert_null(s);
        run_until(f, &f->closed, 1);
        fd = open(f->path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(read(fd, buf, sizeof(buf) - 1), 4);
        assert_string_equal(buf, "keep");
        close(fd);
}

static void test_too_long_path_is_refused(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        UnixServer *s = NULL;
        char path[200];

        memset(path, 'x', sizeof(path) - 1);
        path[sizeof(path) - 1] = '\0';
        o.path = path;
        assert_int_equal(unix_server_new(&f->loop, &o, &s), -ENAMETOOLONG);
        run_until(f, &f->closed, 1);
}

/* A file put in the socket's place while it ran is not the server's to
 * remove. */
static void test_replaced_file_is_kept_at_close(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        struct stat st;
        int fd;

        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        assert_int_equal(unlink(f->path), 0);
        fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        close(fd);
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
        assert_int_equal(lstat(f->path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
}

/* A second server that took the path after the file was deleted keeps its
 * socket when the first one closes. */
static void test_socket_of_another_server_is_kept_at_close(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        UnixServer *second = NULL;
        struct stat st;

        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        assert_int_equal(unlink(f->path), 0);
        assert_int_equal(unix_server_new(&f->loop, &o, &second), 0);
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
        assert_int_equal(lstat(f->path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        close(peer_connect(f->path)); /* still listened on */
        unix_server_close(second);
        run_until(f, &f->closed, 2);
        assert_int_equal(lstat(f->path, &st), -1);
}

static unsigned alloc_failures_left, alloc_calls;

static void *alloc_failing(size_t size)
{
        alloc_calls++;
        if (alloc_failures_left > 0) {
                alloc_failures_left--;
                return NULL;
        }
        return calloc(1, size);
}

/* Without memory for a client the connection waits, and is accepted once
 * memory is found; the socket goes on accepting others after it. */
static void test_out_of_memory_at_accept_waits(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        int peer[2];

        alloc_failures_left = 3;
        alloc_calls = 0;
        o.alloc_client = alloc_failing;
        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        peer[0] = peer_connect(f->path);
        run_until(f, &f->connected, 1);
        assert_int_equal(alloc_calls, 4);
        assert_int_equal(alloc_failures_left, 0);
        peer[1] = peer_connect(f->path);
        run_until(f, &f->connected, 2);
        assert_int_equal(alloc_calls, 5);
        assert_int_equal(unix_server_clients(f->server), 2);
        /* Closing while a retry is pending is clean too. */
        alloc_failures_left = 1000;
        close(peer_connect(f->path));
        run_until(f, &alloc_calls, 6);
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
        assert_int_equal(f->freed, 2);
        close(peer[0]);
        close(peer[1]);
}

static void test_passed_socket(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), peer;
        struct stat st;

        assert_true(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 4), 0);
        o.fd = fd;
        o.path = NULL;
        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        assert_string_equal(unix_server_path(f->server), "(passed socket)");
        peer = peer_connect(f->path);
        run_until(f, &f->connected, 1);
        close(peer);
        /* Not bound here: the file is the passer's and stays. */
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
        assert_int_equal(lstat(f->path, &st), 0);
}

static unsigned writes_done;
static int last_write_status;

static void on_written(uv_write_t *req, int status)
{
        writes_done++;
        last_write_status = status;
}

/* Bytes go out at once while nothing is queued, and queued ones in order
 * behind them; a write to a peer that hung up closes the client. */
static void test_write(void **state)
{
        Fixture *f = *state;
        UnixServerOptions o = options(f);
        uv_write_t req;
        char buf[16] = {0};
        int peer;

        writes_done = 0;
        assert_int_equal(unix_server_new(&f->loop, &o, &f->server), 0);
        peer = peer_connect(f->path);
        run_until(f, &f->connected, 1);
        assert_int_equal(unix_client_try_write(f->client[0], "one ", 4), 4);
        assert_int_equal(unix_client_write(f->client[0], "two", 3, &req, on_written), 0);
        run_until(f, &writes_done, 1);
        assert_int_equal(last_write_status, 0);
        assert_true(unix_client_written(f->client[0], last_write_status));
        assert_int_equal(unix_client_queued(f->client[0]), 0);
        assert_int_equal(read(peer, buf, sizeof(buf) - 1), 7);
        assert_string_equal(buf, "one two");
        /* A failed write ends the client. */
        assert_false(unix_client_written(f->client[0], UV_EPIPE));
        assert_true(unix_client_closing(f->client[0]));
        assert_int_equal(unix_client_try_write(f->client[0], "x", 1), -ECANCELED);
        run_until(f, &f->freed, 1);
        assert_peer_eof(peer);
        close(peer);
        unix_server_close(f->server);
        run_until(f, &f->closed, 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_accept_list_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_client_closed_when_connected, setup, teardown),
            cmocka_unit_test_setup_teardown(test_write, setup, teardown),
            cmocka_unit_test_setup_teardown(test_stale_socket_is_replaced, setup, teardown),
            cmocka_unit_test_setup_teardown(test_live_socket_is_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_other_file_is_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_too_long_path_is_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replaced_file_is_kept_at_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_socket_of_another_server_is_kept_at_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_out_of_memory_at_accept_waits, setup, teardown),
            cmocka_unit_test_setup_teardown(test_passed_socket, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
