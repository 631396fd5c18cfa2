/* Fuzz target: how the webhook sink takes a receiver's answer. The input is
 * a transport outcome, a status code and the retry settings (the first
 * bytes), then response header lines as libcurl hands them over, then a body.
 * Invariants: a 2xx is a delivery, only a cancelled attempt is kept, only a
 * 4xx is dropped, only 410 disables; Retry-After is -1 or a non-negative
 * delay of at most a year; the next attempt's delay stays
 * within retry-min, retry-max and max-age. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "httpmux.h"
#include "sink-webhook.h"
#include "webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t take(const uint8_t **p, const uint8_t *end, size_t n)
{
        uint64_t v = 0;

        while (n-- > 0 && *p < end)
                v = v << 8 | *(*p)++;
        return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const uint8_t *p = data, *end = data + size;
        HttpResponse r = {.retry_after_ms = -1};
        uint64_t retry_min, retry_max, max_age, random, delay;
        unsigned failures;
        const char *blank;
        WebhookFailure kind;
        WebhookVerdict v;
        bool honour;

        r.error = (HttpError)(take(&p, end, 1) % _HTTP_ERR_MAX);
        r.status = (long)(take(&p, end, 2) % 1000);
        retry_min = take(&p, end, 3);
        retry_max = retry_min + take(&p, end, 4);
        max_age = take(&p, end, 4);
        failures = (unsigned)take(&p, end, 1) + 1;
        random = take(&p, end, 8);

        /* Header lines up to an empty one, then the body. */
        while (p < end) {
                const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
                size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);

                if (n <= 2 && (p[0] == '\n' || p[0] == '\r')) {
                        p += n;
                        break;
                }
                httpmux_header_line((const char *)p, n, &r.retry_after_ms);
                if (r.retry_after_ms < -1)
                        abort();
                /* At most a year, however far the date or large the number. */
                if (r.retry_after_ms > HTTPMUX_RETRY_AFTER_MAX_S * 1000)
                        abort();
                p += n;
        }
        r.body = (const char *)p;
        r.body_len = (size_t)(end - p);
        blank = "";
        r.error_text = r.error == HTTP_OK ? NULL : blank;

        v = sink_webhook_classify(&r, &kind, &honour);
        if ((r.error == HTTP_OK || r.error == HTTP_ERR_TOO_LARGE) && r.status >= 200 && r.status < 300) {
                if (v != WEBHOOK_VERDICT_DELIVERED)
                        abort();
        } else if (v == WEBHOOK_VERDICT_DELIVERED)
                abort();
        if ((v == WEBHOOK_VERDICT_KEEP) != (r.error == HTTP_ERR_CANCELLED))
                abort();
        if (v == WEBHOOK_VERDICT_DROP && !(r.error == HTTP_OK && r.status >= 400 && r.status < 500))
                abort();
        if ((v == WEBHOOK_VERDICT_DISABLE) != (r.error == HTTP_OK && r.status == 410))
                abort();
        if ((v == WEBHOOK_VERDICT_DELIVERED || v == WEBHOOK_VERDICT_KEEP) != (kind == _WEBHOOK_FAILURE_MAX))
                abort();
        if (honour && (v != WEBHOOK_VERDICT_RETRY || r.retry_after_ms < 0))
                abort();
        if (v != WEBHOOK_VERDICT_RETRY)
                return 0;
        if (!webhook_failure_to_string(kind))
                abort();

        delay =
            webhook_attempt_delay(honour, r.retry_after_ms, retry_min, retry_max, max_age, failures, random);
        if (honour) {
                if (delay > max_age || (delay < retry_min && delay != max_age))
                        abort();
        } else if (delay < retry_min || delay > (retry_max > retry_min ? retry_max : retry_min))
                abort();
        return 0;
}
