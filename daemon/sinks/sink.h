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
        /* Optional: starts closing what the sink holds on the loop, while the
         * loop still runs; the sink may free itself from a close callback,
         * and then free() must not be called. */
        void (*close)(Sink *s);
        /* Releases the sink; called once, after the last emit, unless close()
         * took care of it. */
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

static inline void sink_close(Sink *s)
{
        if (s->ops->close)
                s->ops->close(s);
        else
                s->ops->free(s);
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

/* Events on a file descriptor (stdout), one line each. A pipe, socket or
 * terminal is written without blocking through `loop`, with a bounded queue
 * (lines past it are dropped and counted); a regular file with write(2). */
typedef struct uv_loop_s uv_loop_t;
int sink_print_new(uv_loop_t *loop, int fd, PrintFormat format, Sink **ret);
