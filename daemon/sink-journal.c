#include <errno.h>
#include <stdlib.h>
#include <systemd/sd-journal.h>

#include "log.h"
#include "sink.h"

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
        if (r < 0) {
                if (!j->unreachable)
                        log_warning_errno(r, "Cannot write events to the journal, continuing without it: %m");
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
        j->sink = (Sink){ .ops = &journal_ops, .status_mask = status_mask };
        *ret = &j->sink;
        return 0;
}
