#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <string.h>

#include "webhook-key.h"

int webhook_key_from_secret(const char *secret, WebhookKey *ret)
{
        const char *b64;
        size_t n, pad = 0;
        /* EVP_DecodeBlock() writes 3 bytes per 4 characters, padding
         * included: room for the longest key plus that slack. */
        unsigned char out[WEBHOOK_KEY_MAX + 4];
        int k;

        if (!secret || strncmp(secret, WEBHOOK_SECRET_PREFIX, strlen(WEBHOOK_SECRET_PREFIX)) != 0)
                return -EINVAL;
        b64 = secret + strlen(WEBHOOK_SECRET_PREFIX);
        n = strlen(b64);
        /* EVP_DecodeBlock() takes no line breaks and wants whole quanta; it
         * would also skip leading blanks, which a secret must not have. */
        if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof(out) - 1)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                char c = b64[i];
                bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                          c == '+' || c == '/' || (c == '=' && i >= n - 2);
                if (!ok)
                        return -EINVAL;
        }
        if (b64[n - 1] == '=')
                pad++;
        if (b64[n - 2] == '=')
                pad++;
        if (pad == 1 && b64[n - 2] == '=')
                return -EINVAL;
        k = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
        if (k < 0 || (size_t)k < pad) {
                OPENSSL_cleanse(out, sizeof(out));
                return -EINVAL;
        }
        /* The block decoder counts padding as zero bytes. */
        k -= (int)pad;
        if (k <= 0 || (size_t)k > WEBHOOK_KEY_MAX) {
                OPENSSL_cleanse(out, sizeof(out));
                return -EINVAL;
        }
        memcpy(ret->data, out, (size_t)k);
        ret->len = (size_t)k;
        OPENSSL_cleanse(out, sizeof(out));
        return 0;
}
