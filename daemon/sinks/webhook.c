#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpmux.h"
#include "webhook.h"

/* Appends n bytes to b, keeping the NUL after the data that EventBuffer
 * promises. */
static int append(EventBuffer *b, const char *s, size_t n)
{
        if (b->len + n + 1 > b->allocated) {
                size_t want = b->allocated ? b->allocated : 256;
                char *p;

                while (want < b->len + n + 1)
                        want *= 2;
                p = realloc(b->data, want);
                if (!p)
                        return -ENOMEM;
                b->data = p;
                b->allocated = want;
        }
        memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
}

static int append_str(EventBuffer *b, const char *s)
{
        return append(b, s, strlen(s));
}

int webhook_append_signatures(const WebhookKey *keys, size_t n_keys, const char *msg_id, int64_t timestamp,
                              const char *body, size_t body_len, EventBuffer *b)
{
        char ts[24];
        int r;

        snprintf(ts, sizeof(ts), "%" PRId64, timestamp);
        for (size_t k = 0; k < n_keys; k++) {
                unsigned char md[EVP_MAX_MD_SIZE];
                char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
                EVP_MAC *mac;
                EVP_MAC_CTX *ctx;
                OSSL_PARAM params[2];
                size_t out_len = 0;
                bool ok;

                /* The signed content is id "." timestamp "." body, fed in
                 * pieces so the body is not copied. */
                mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
                if (!mac)
                        return -EIO;
                ctx = EVP_MAC_CTX_new(mac);
                EVP_MAC_free(mac);
                if (!ctx)
                        return -ENOMEM;
                params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0);
                params[1] = OSSL_PARAM_construct_end();
                ok = EVP_MAC_init(ctx, keys[k].data, keys[k].len, params) &&
                     EVP_MAC_update(ctx, (const unsigned char *)msg_id, strlen(msg_id)) &&
                     EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
                     EVP_MAC_update(ctx, (const unsigned char *)ts, strlen(ts)) &&
                     EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
                     EVP_MAC_update(ctx, (const unsigned char *)body, body_len) &&
                     EVP_MAC_final(ctx, md, &out_len, sizeof(md));
                EVP_MAC_CTX_free(ctx);
                if (!ok)
                        return -EIO;
                EVP_EncodeBlock((unsigned char *)b64, md, (int)out_len);
                if ((k > 0 && (r = append(b, " ", 1)) < 0) || (r = append(b, "v1,", 3)) < 0 ||
                    (r = append_str(b, b64)) < 0)
                        return r;
        }
        return 0;
}

int webhook_headers_new(const WebhookKey *keys, size_t n_keys, const char *content_type, const char *msg_id,
                        int64_t timestamp, const char *body, size_t body_len, HttpHeaders **ret)
{
        HttpHeaders *l = NULL;
        EventBuffer sig = EVENT_BUFFER_NULL;
        char ts[24];
        int r;

        snprintf(ts, sizeof(ts), "%" PRId64, timestamp);
        if ((r = http_headers_add(&l, "Content-Type", content_type)) < 0 ||
            (r = http_headers_add(&l, "webhook-id", msg_id)) < 0 ||
            (r = http_headers_add(&l, "webhook-timestamp", ts)) < 0)
                goto fail;
        if (n_keys > 0) {
                r = webhook_append_signatures(keys, n_keys, msg_id, timestamp, body, body_len, &sig);
                if (r < 0)
                        goto fail;
                r = http_headers_add(&l, "webhook-signature", sig.data);
                if (r < 0)
                        goto fail;
        }
        /* A large body must not wait for a "100 Continue" first. */
        {
                r = http_headers_add_line(&l, "Expect:");
                if (r < 0)
                        goto fail;
        }
        event_buffer_done(&sig);
        *ret = l;
        return 0;
fail:
        event_buffer_done(&sig);
        http_headers_free(l);
        return r;
}

int webhook_append_slack(const Event *e, const char *app_url, EventBuffer *b)
{
        EventBuffer text = EVENT_BUFFER_NULL;
        int r;

        r = event_append_message(e, &text);
        if (r >= 0 && app_url && *app_url) {
                if ((r = append(&text, " <", 2)) >= 0 && (r = append_str(&text, app_url)) >= 0 &&
                    (r = append_str(&text, "/sessions/")) >= 0 &&
                    (r = append_str(&text, e->session_id)) >= 0)
                        r = append(&text, ">", 1);
        }
        if (r >= 0 && (r = append_str(b, "{\"text\":")) >= 0 &&
            (r = event_buffer_append_json_string(b, text.data ? text.data : "", text.len)) >= 0)
                r = append(b, "}", 1);
        event_buffer_done(&text);
        return r;
}

uint64_t webhook_retry_delay(uint64_t retry_min_ms, uint64_t retry_max_ms, unsigned failures,
                             uint64_t random)
{
        uint64_t d = retry_min_ms ? retry_min_ms : 1;

        for (unsigned k = 1; k < failures && d < retry_max_ms; k++)
                d = d > UINT64_MAX / 2 ? UINT64_MAX : d * 2;
        if (d > retry_max_ms)
                d = retry_max_ms;
        /* Full jitter in the upper half spreads retries of many events that
         * failed together without ever waiting less than half the step. */
        d = d / 2 + (d / 2 + 1 > 0 ? random % (d / 2 + 1) : 0);
        if (d < retry_min_ms)
                d = retry_min_ms;
        return d;
}

uint64_t webhook_attempt_delay(bool honour_retry_after, int64_t retry_after_ms, uint64_t retry_min_ms,
                               uint64_t retry_max_ms, uint64_t max_age_ms, unsigned failures,
                               uint64_t random)
{
        uint64_t delay;

        if (!honour_retry_after || retry_after_ms < 0)
                return webhook_retry_delay(retry_min_ms, retry_max_ms, failures, random);
        delay = (uint64_t)retry_after_ms;
        if (delay < retry_min_ms)
                delay = retry_min_ms;
        if (delay > max_age_ms)
                delay = max_age_ms;
        return delay;
}

void webhook_headers_free(HttpHeaders *l)
{
        http_headers_free(l);
}
