/* textsafe: making foreign text safe to show (see textsafe.h). */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "textsafe.h"

size_t utf8_char_len(const char *s, size_t n)
{
        const unsigned char *p = (const unsigned char *)s;
        unsigned char lo = 0x80, hi = 0xbf;
        size_t len;

        if (n == 0)
                return 0;
        if (p[0] < 0x80)
                return 1;
        if (p[0] >= 0xc2 && p[0] <= 0xdf)
                len = 2;
        else if (p[0] >= 0xe0 && p[0] <= 0xef) {
                len = 3;
                if (p[0] == 0xe0)
                        lo = 0xa0; /* overlong */
                else if (p[0] == 0xed)
                        hi = 0x9f; /* surrogates */
        } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
                len = 4;
                if (p[0] == 0xf0)
                        lo = 0x90; /* overlong */
                else if (p[0] == 0xf4)
                        hi = 0x8f; /* past U+10FFFF */
        } else
                return 0;

        if (n < len)
                return 0;
        if (p[1] < lo || p[1] > hi)
                return 0;
        for (size_t i = 2; i < len; i++)
                if (p[i] < 0x80 || p[i] > 0xbf)
                        return 0;
        return len;
}

bool utf8_is_valid(const char *s, size_t n)
{
        assert(s || n == 0);

        for (size_t i = 0; i < n;) {
                size_t k = utf8_char_len(s + i, n - i);

                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}

char *utf8_make_valid(const char *s, size_t n, size_t *ret_len)
{
        static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */
        char *out, *o;

        assert(s || n == 0);

        /* Each bad byte grows to three. */
        if (n > (SIZE_MAX - 1) / 3)
                return NULL;
        out = malloc(n * 3 + 1);
        if (!out)
                return NULL;
        o = out;
        for (size_t i = 0; i < n;) {
                size_t k = utf8_char_len(s + i, n - i);

                if (k == 0) {
                        memcpy(o, replacement, 3);
                        o += 3;
                        i++;
                } else {
                        memcpy(o, s + i, k);
                        o += k;
                        i += k;
                }
        }
        *o = '\0';
        if (ret_len)
                *ret_len = (size_t)(o - out);
        return out;
}

size_t text_unsafe_len(const char *s, size_t n)
{
        const unsigned char *p = (const unsigned char *)s;

        if (n == 0)
                return 0;
        if (p[0] < 0x20 || p[0] == 0x7f)
                return 1;
        /* U+0080-U+009F are C2 80 to C2 9F in UTF-8. */
        if (p[0] == 0xc2 && n >= 2 && p[1] >= 0x80 && p[1] <= 0x9f)
                return 2;
        return 0;
}

char *text_sanitize(char *s)
{
        size_t n, r = 0, w = 0;

        assert(s);

        n = strlen(s);
        while (r < n) {
                size_t k = text_unsafe_len(s + r, n - r);

                if (k > 0) {
                        s[w++] = '?';
                        r += k;
                } else
                        s[w++] = s[r++];
        }
        s[w] = '\0';
        return s;
}

char *text_escape(const char *s, size_t max, char *buf, size_t size)
{
        static const char hex[] = "0123456789abcdef";
        size_t i = 0, w = 0;

        assert(s);
        assert(buf);
        assert(size >= 4);

        while (s[i] && i < max) {
                size_t rest = strnlen(s + i, 4), k = utf8_char_len(s + i, rest), need;
                bool bytes = k == 0 || text_unsafe_len(s + i, rest) > 0;

                /* A bad or control character is shown byte by byte. */
                if (k == 0)
                        k = 1;
                need = bytes ? 4 * k : s[i] == '\\' ? 2 : k;
                /* Keep room for "..." and the NUL. */
                if (w + need + 4 > size)
                        break;
                if (bytes)
                        for (size_t j = 0; j < k; j++) {
                                unsigned char c = (unsigned char)s[i + j];

                                buf[w++] = '\\';
                                buf[w++] = 'x';
                                buf[w++] = hex[c >> 4];
                                buf[w++] = hex[c & 0xf];
                        }
                else if (s[i] == '\\') {
                        buf[w++] = '\\';
                        buf[w++] = '\\';
                } else {
                        memcpy(buf + w, s + i, k);
                        w += k;
                }
                i += k;
        }
        if (s[i])
                memcpy(buf + w, "...", 4);
        else
                buf[w] = '\0';
        return buf;
}
