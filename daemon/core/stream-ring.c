#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "stream-ring.h"

StreamChunk *stream_chunk_alloc(size_t len, long sequence)
{
        StreamChunk *c = malloc(sizeof(*c) + len);

        if (!c)
                return NULL;
        c->refs = 1;
        c->sequence = sequence;
        c->len = len;
        return c;
}

StreamChunk *stream_chunk_new(const char *data, size_t len, long sequence)
{
        StreamChunk *c = stream_chunk_alloc(len, sequence);

        if (c && len > 0)
                memcpy(c->data, data, len);
        return c;
}

StreamChunk *stream_chunk_ref(StreamChunk *c)
{
        assert(c && c->refs > 0);
        c->refs++;
        return c;
}

void stream_chunk_unref(StreamChunk *c)
{
        if (!c)
                return;
        assert(c->refs > 0);
        if (--c->refs == 0)
                free(c);
}

int stream_ring_init(StreamRing *r, size_t max_events, size_t max_bytes, long next_sequence)
{
        assert(r);
        assert(max_events > 0);

        *r = (StreamRing){.cap = max_events, .max_bytes = max_bytes, .last = next_sequence - 1};
        r->items = calloc(max_events, sizeof(StreamChunk *));
        return r->items ? 0 : -ENOMEM;
}

static void ring_drop_oldest(StreamRing *r)
{
        StreamChunk *c = r->items[r->head];

        r->items[r->head] = NULL;
        r->head = (r->head + 1) % r->cap;
        r->n--;
        r->bytes -= c->len;
        stream_chunk_unref(c);
}

void stream_ring_done(StreamRing *r)
{
        if (!r->items)
                return;
        while (r->n > 0)
                ring_drop_oldest(r);
        free(r->items);
        r->items = NULL;
}

int stream_ring_push(StreamRing *r, StreamChunk *c)
{
        assert(r && c);

        if (c->sequence != r->last + 1)
                return -EINVAL;
        if (r->n == r->cap)
                ring_drop_oldest(r);
        /* The byte budget never empties the ring: the newest line is what a
         * client one event behind needs. */
        while (r->n > 0 && r->bytes + c->len > r->max_bytes)
                ring_drop_oldest(r);
        r->items[(r->head + r->n) % r->cap] = stream_chunk_ref(c);
        r->n++;
        r->bytes += c->len;
        r->last = c->sequence;
        return 0;
}

long stream_ring_first(const StreamRing *r)
{
        return r->last + 1 - (long)r->n;
}

bool stream_ring_covers(const StreamRing *r, long since)
{
        return since >= stream_ring_first(r) - 1 && since <= r->last;
}

StreamChunk *stream_ring_get(const StreamRing *r, long sequence)
{
        long first = stream_ring_first(r);

        if (sequence < first || sequence > r->last)
                return NULL;
        return r->items[(r->head + (size_t)(sequence - first)) % r->cap];
}
