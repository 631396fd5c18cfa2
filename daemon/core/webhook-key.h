/* webhook-key: Standard Webhooks secrets, "whsec_<base64>", and the key
 * bytes they stand for. Pure: what the config checks at load and the webhook
 * sink signs with. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define WEBHOOK_SECRET_PREFIX "whsec_"
/* The longest decoded key accepted; Standard Webhooks keys are 24-64 bytes. */
#define WEBHOOK_KEY_MAX 256

typedef struct WebhookKey {
        uint8_t data[WEBHOOK_KEY_MAX];
        size_t len;
} WebhookKey;

/* Decodes a secret "whsec_<base64>" into its key bytes. Returns 0, or
 * -EINVAL when the prefix is missing, the base64 does not decode, or the key
 * is empty or longer than WEBHOOK_KEY_MAX. The secret is never copied
 * anywhere but into *ret. */
int webhook_key_from_secret(const char *secret, WebhookKey *ret);

