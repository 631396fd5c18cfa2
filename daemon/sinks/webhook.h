/* webhook: the pure parts of webhook delivery (DESIGN §4 "Webhook
 * delivery"): Standard Webhooks signatures (the secrets are webhook-key.h's), the request headers,
 * the Slack body, and how long to wait before the next attempt.
 *
 * No libuv, no I/O, no logging: libcrypto for HMAC-SHA256 and base64, and
 * httpmux's header list type. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "webhook-key.h"

typedef struct HttpHeaders HttpHeaders; /* httpmux.h */

/* Appends "v1,<base64 HMAC-SHA256(key, id "." timestamp "." body)>" for
 * every key, separated by single spaces, to b. Returns 0, -ENOMEM, or -EIO
 * when libcrypto fails. */
int webhook_append_signatures(const WebhookKey *keys, size_t n_keys, const char *msg_id, int64_t timestamp,
                              const char *body, size_t body_len, EventBuffer *b);

/* Builds the header list of one delivery: Content-Type, webhook-id,
 * webhook-timestamp and webhook-signature (from the keys; left out when
 * there are none). Returns 0 and a list for webhook_headers_free(), or
 * -ENOMEM / -EIO. */
int webhook_headers_new(const WebhookKey *keys, size_t n_keys, const char *content_type, const char *msg_id,
                        int64_t timestamp, const char *body, size_t body_len, HttpHeaders **ret);

/* Appends the Slack body {"text":"<message>"} for an event: the journal
 * message (session name, id and transition) and, when app_url is set, a
 * link "<app_url>/sessions/<id>". Returns 0 or -ENOMEM. */
int webhook_append_slack(const Event *e, const char *app_url, EventBuffer *b);

/* The wait before attempt `failures` + 1 after `failures` (≥ 1) failed
 * attempts: retry_min_ms doubled per further failure, capped at
 * retry_max_ms, then scaled by a jitter factor in [0.5, 1.0] taken from
 * `random` (any 64-bit value) but never below retry_min_ms. */
uint64_t webhook_retry_delay(uint64_t retry_min_ms, uint64_t retry_max_ms, unsigned failures,
                             uint64_t random);

/* The wait before the next attempt of an event that failed `failures` (≥ 1)
 * times. With `honour_retry_after`, the receiver's Retry-After
 * (`retry_after_ms` ≥ 0), but never below retry_min_ms (a "Retry-After: 0"
 * must not become a tight loop) nor above max_age_ms; otherwise
 * webhook_retry_delay(). */
uint64_t webhook_attempt_delay(bool honour_retry_after, int64_t retry_after_ms, uint64_t retry_min_ms,
                               uint64_t retry_max_ms, uint64_t max_age_ms, unsigned failures,
                               uint64_t random);

/* Frees a list from webhook_headers_new(); NULL is fine. */
void webhook_headers_free(HttpHeaders *l);
