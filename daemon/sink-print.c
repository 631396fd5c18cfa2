#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sink.h"

typedef struct PrintSink {
        Sink sink;
        int fd;
        PrintFormat format;
        EventBuffer buf;
        bool broken; /* the reader went away: said once */
} PrintSink;

static int write_all(int fd, const char *p, size_t n)
{
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t)k;
        }
        return 0;
}

/* Runs on the loop thread for every event. The line goes out with one
 * write(2), so a reader of the pipe sees it at once and lines from
 * different events never interleave. */
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
        r = write_all(p->fd, out, len);
        if (p->format == PRINT_JSON)
                p->buf.data[p->buf.len] = '\0';
        if (r < 0 && !p->broken) {
                log_warning_errno(r, "Cannot write events to standard output: %m");
                p->broken = true;
        }
}

static void print_free(Sink *s)
{
        PrintSink *p = (PrintSink *)s;

        event_buffer_done(&p->buf);
        free(p);
}

static const SinkOps print_ops = {
    .name = "stdout",
    .emit = print_emit,
    .free = print_free,
};

int sink_print_new(int fd, PrintFormat format, Sink **ret)
{
        PrintSink *p = calloc(1, sizeof(*p));

        if (!p)
                return -ENOMEM;
        p->sink = (Sink){.ops = &print_ops, .status_mask = SESSION_STATUS_MASK_ALL};
        p->fd = fd;
        p->format = format;
        *ret = &p->sink;
        return 0;
}
