/* stream-ring: the event stream's memory of recent lines.
 *
 * Pure: no libuv, no logging. Each encoded event line lives in one
 * reference-counted StreamChunk, shared by the ring and by every write that
 * sends it to a client, so that fanning a line out to many clients copies
 * nothing. The ring keeps the newest lines within a count and a byte budget,
 * with consecutive sequence numbers, so that a client that reconnects with
 * {"since": N} can be sent what it missed. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct StreamChunk {
        unsigned refs;
        long sequence; /* -1 for a line that is not an event (snapshot, marker) */
        size_t len;
        char data[];
} StreamChunk;

/* A chunk holding a copy of `data` with one reference, or NULL. */
StreamChunk *stream_chunk_new(const char *data, size_t len, long sequence);
/* A chunk of `len` bytes whose contents the caller fills, or NULL. */
StreamChunk *stream_chunk_alloc(size_t len, long sequence);
StreamChunk *stream_chunk_ref(StreamChunk *c);
void stream_chunk_unref(StreamChunk *c);

typedef struct StreamRing {
        StreamChunk **items; /* circular, `cap` slots */
        size_t cap, head, n; /* head: index of the oldest */
        size_t bytes, max_bytes;
        long last; /* sequence of the newest line ever pushed; first - 1 when none */
} StreamRing;

/* Keeps at most `max_events` lines and `max_bytes` bytes of them (at least
 * the newest line is always kept). `next_sequence` is the sequence the first
 * pushed line will carry. Returns 0 or -ENOMEM. */
int stream_ring_init(StreamRing *r, size_t max_events, size_t max_bytes, long next_sequence);
void stream_ring_done(StreamRing *r);

/* Appends a line whose sequence must be r->last + 1 (it takes its own
 * reference) and drops the oldest past the limits. Returns 0, or -EINVAL for
 * a sequence out of order. */
int stream_ring_push(StreamRing *r, StreamChunk *c);

/* The sequence of the oldest line held (r->last + 1 when empty). */
long stream_ring_first(const StreamRing *r);

/* True when everything after `since` is still held, so a client that saw
 * up to `since` can be brought up to date from the ring alone. */
bool stream_ring_covers(const StreamRing *r, long since);

/* The line with this sequence (borrowed), or NULL when not held. */
StreamChunk *stream_ring_get(const StreamRing *r, long sequence);
