/* sink: where events go. The journal, stdout, webhooks and the socket stream
 * all sit behind this one small interface; the daemon hands each event to
 * every sink whose filter takes it, in order, on the loop thread. A sink must
 * never block the loop for long: one that needs the network or a slow peer
 * queues and returns. */
#pragma once

#include <stdbool.h>

#include "event.h"

typedef struct Sink Sink;

typedef struct SinkOps {
        const char *name;
        /* Takes one event. The event and everything it points to are valid
         * only during the call: a sink that keeps it copies what it needs. */
        void (*emit)(Sink *s, const Event *e);
        /* Releases the sink; called once, after the last emit. */
        void (*free)(Sink *s);
} SinkOps;

struct Sink {
        const SinkOps *ops;
        unsigned status_mask; /* bit (1 << SessionStatus) of new statuses taken; gone and stalled always */
};

static inline bool sink_wants(const Sink *s, const Event *e)
{
        if (e->kind != EVENT_TRANSITION)
                return true;
        return s->status_mask & (1u << e->status);
}

static inline void sink_emit(Sink *s, const Event *e)
{
        if (sink_wants(s, e))
                s->ops->emit(s, e);
}

static inline void sink_free(Sink *s)
{
        if (s)
                s->ops->free(s);
}

/* The systemd journal: one entry per event with the fields of DESIGN §4. */
int sink_journal_new(unsigned status_mask, Sink **ret);

typedef enum PrintFormat {
        PRINT_NONE,
        PRINT_JSON, /* one CloudEvents object per line */
        PRINT_TEXT, /* one readable line per event */
} PrintFormat;

/* Events on a file descriptor (stdout), each line written at once. */
int sink_print_new(int fd, PrintFormat format, Sink **ret);
