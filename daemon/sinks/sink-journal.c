#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include "log.h"
#include "sink.h"

/* Where journald listens for native-protocol datagrams; sd_journal_sendv()
 * sends there and nowhere else. */
#define JOURNAL_SOCKET "/run/systemd/journal/socket"

typedef struct JournalSink {
        Sink sink;
        EventBuffer storage; /* reused for every entry's field values */
        bool unreachable;    /* said once; said again when it comes back */
} JournalSink;

/* Runs on the loop thread for every event that passes the filter. */
static void journal_emit(Sink *s, const Event *e)
{
        JournalSink *j = (JournalSink *)s;
        struct iovec iov[EVENT_JOURNAL_FIELDS_MAX];
        int n, r;

        n = event_journal_fields(e, iov, &j->storage);
        if (n < 0) {
                log_error_errno(n, "Failed to build journal fields for event '%s': %m", e->id);
                return;
        }
        r = sd_journal_sendv(iov, n);
        /* sd_journal_sendv() reports success when the socket does not exist
         * (no journald on this system), so the entry is lost silently; look
         * for the socket ourselves. One stat(2) per event is cheap next to
         * the datagram itself. */
        if (r >= 0) {
                struct stat st;

                if (stat(JOURNAL_SOCKET, &st) < 0)
                        r = -errno;
                else if (!S_ISSOCK(st.st_mode))
                        r = -ENOTSOCK;
        }
        if (r < 0) {
                if (!j->unreachable)
                        log_warning_errno(r, "Cannot write events to the journal (" JOURNAL_SOCKET
                                             "), continuing without it: %m");
                j->unreachable = true;
                return;
        }
        if (j->unreachable) {
                log_notice("The journal is reachable again.");
                j->unreachable = false;
        }
}

static void journal_free(Sink *s)
{
        JournalSink *j = (JournalSink *)s;

        event_buffer_done(&j->storage);
        free(j);
}

static const SinkOps journal_ops = {
    .name = "journal",
    .emit = journal_emit,
    .free = journal_free,
};

int sink_journal_new(unsigned status_mask, Sink **ret)
{
        JournalSink *j = calloc(1, sizeof(*j));

        if (!j)
                return -ENOMEM;
        j->sink = (Sink){.ops = &journal_ops, .status_mask = status_mask};
        *ret = &j->sink;
        return 0;
}
