#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "fdio.h"
#include "log.h"
#include "sink.h"

/* Bytes of event lines queued for a reader that does not keep up; past it,
 * events are dropped (and counted) rather than stalling the loop or growing
 * without bound. */
#define PRINT_QUEUE_MAX ((size_t)4 * 1024 * 1024)

typedef struct PrintSink {
        Sink sink;
        int fd;
        PrintFormat format;
        EventBuffer buf;
        bool broken; /* the reader went away: said once */

        /* A pipe, socket or terminal is written without blocking through a
         * libuv stream; a regular file (or no loop) with plain write(2). */
        union {
                uv_pipe_t pipe;
                uv_tty_t tty;
                uv_stream_t stream;
        } h;
        bool async;
        bool closing;
        /* A pipe that would not open is closing: the sink, which holds its
         * handle, is freed by that close callback, not before. */
        bool pipe_closing, free_when_closed;
        uint64_t dropped;
        LogRateLimit drop_rl;
} PrintSink;

typedef struct PrintWrite {
        uv_write_t req;
        PrintSink *sink;
        size_t len;
        char data[];
} PrintWrite;


static void print_failed(PrintSink *p, int r)
{
        if (!p->broken)
                log_warning_errno(r, "Cannot write events to standard output: %m");
        p->broken = true;
}

/* libuv write callback: runs on the loop when a queued line is out (or the
 * stream closed under it). */
static void on_print_written(uv_write_t *req, int status)
{
        PrintWrite *w = (PrintWrite *)req;

        if (status < 0 && status != UV_ECANCELED)
                print_failed(w->sink, status);
        free(w);
}

static void print_async(PrintSink *p, const char *out, size_t len)
{
        uv_buf_t b = uv_buf_init((char *)out, (unsigned)len);
        PrintWrite *w;
        int r;

        if (p->broken || p->closing)
                return;
        /* Lines go out in order: only when nothing is queued may one be
         * tried directly. */
        if (uv_stream_get_write_queue_size(&p->h.stream) == 0) {
                r = uv_try_write(&p->h.stream, &b, 1);
                if (r == (int)len)
                        return;
                if (r < 0 && r != UV_EAGAIN) {
                        print_failed(p, r);
                        return;
                }
                if (r > 0) {
                        out += r;
                        len -= (size_t)r;
                }
        }
        if (uv_stream_get_write_queue_size(&p->h.stream) + len > PRINT_QUEUE_MAX) {
                p->dropped++;
                log_ratelimited(&p->drop_rl, uv_now(p->h.stream.loop), LOG_WARNING,
                                "Standard output is not being read; dropped %" PRIu64
                                " event line(s) so far.",
                                p->dropped);
                return;
        }
        w = malloc(sizeof(*w) + len);
        if (!w) {
                p->dropped++;
                return;
        }
        w->sink = p;
        w->len = len;
        memcpy(w->data, out, len);
        b = uv_buf_init(w->data, (unsigned)len);
        r = uv_write(&w->req, &p->h.stream, &b, 1, on_print_written);
        if (r < 0) {
                free(w);
                print_failed(p, r);
        }
}

/* Runs on the loop thread for every event. A line goes out whole and in
 * order, so a reader sees one event per line, at once when it keeps up. */
static void print_emit(Sink *s, const Event *e)
{
        PrintSink *p = (PrintSink *)s;
        char line[2048];
        const char *out;
        size_t len;
        int r;

        if (p->format == PRINT_JSON) {
                p->buf.len = 0;
                r = event_append_json(e, -1, &p->buf);
                /* The buffer keeps a NUL after the data: room for the newline. */
                if (r >= 0)
                        p->buf.data[p->buf.len] = '\n';
                out = p->buf.data;
                len = p->buf.len + 1;
        } else {
                /* A text line that does not fit is cut, not dropped. */
                r = event_format_text(e, line, sizeof(line) - 1);
                if (r == -ENOBUFS)
                        r = 0;
                len = strlen(line);
                line[len++] = '\n';
                out = line;
        }
        if (r < 0) {
                log_error_errno(r, "Failed to format event '%s': %m", e->id);
                return;
        }
        if (p->async)
                print_async(p, out, len);
        else {
                r = fd_write_all(p->fd, out, len);
                if (r < 0)
                        print_failed(p, r);
        }
        if (p->format == PRINT_JSON)
                p->buf.data[p->buf.len] = '\0';
}

static void on_print_closed(uv_handle_t *h)
{
        PrintSink *p = h->data;

        event_buffer_done(&p->buf);
        free(p);
}

static void print_free_now(PrintSink *p)
{
        if (p->pipe_closing) {
                p->free_when_closed = true;
                return;
        }
        event_buffer_done(&p->buf);
        free(p);
}

/* The pipe handle given up in sink_print_new() is closed. */
static void on_unused_pipe_closed(uv_handle_t *h)
{
        PrintSink *p = h->data;

        p->pipe_closing = false;
        if (p->free_when_closed)
                print_free_now(p);
}

/* Closes the stream (queued lines that did not get out are dropped) and
 * frees the sink from the close callback. */
static void print_close(Sink *s)
{
        PrintSink *p = (PrintSink *)s;

        if (!p->async) {
                print_free_now(p);
                return;
        }
        p->closing = true;
        uv_close((uv_handle_t *)&p->h.stream, on_print_closed);
}

static void print_free(Sink *s)
{
        PrintSink *p = (PrintSink *)s;

        /* An async sink is freed by print_close(). */
        if (!p->async)
                print_free_now(p);
}

static const SinkOps print_ops = {
    .name = "stdout",
    .emit = print_emit,
    .close = print_close,
    .free = print_free,
};

int sink_print_new(uv_loop_t *loop, int fd, PrintFormat format, Sink **ret)
{
        PrintSink *p = calloc(1, sizeof(*p));
        struct stat st;
        int r;

        if (!p)
                return -ENOMEM;
        p->sink = (Sink){.ops = &print_ops, .status_mask = SESSION_STATUS_MASK_ALL};
        p->fd = fd;
        p->format = format;
        p->drop_rl = (LogRateLimit)LOG_RATELIMIT_INIT(10000, 1);

        /* A regular file never makes write(2) wait for a reader. */
        if (loop && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
                switch (uv_guess_handle(fd)) {
                case UV_TTY:
                        /* libuv reopens the terminal, so the non-blocking mode
                         * does not leak to the shell sharing it. */
                        r = uv_tty_init(loop, &p->h.tty, fd, 0);
                        break;
                case UV_NAMED_PIPE:
                        r = uv_pipe_init(loop, &p->h.pipe, 0);
                        if (r == 0) {
                                r = uv_pipe_open(&p->h.pipe, fd);
                                if (r < 0) {
                                        /* Written to synchronously instead. */
                                        p->h.pipe.data = p;
                                        p->pipe_closing = true;
                                        uv_close((uv_handle_t *)&p->h.pipe, on_unused_pipe_closed);
                                }
                        }
                        break;
                default:
                        r = -ENOTSUP;
                        break;
                }
                if (r == 0) {
                        p->async = true;
                        p->h.stream.data = p;
                }
        }
        *ret = &p->sink;
        return 0;
}
