/* Unit tests of textsafe: UTF-8 checks, the terminal-safe form of foreign
 * text, and the escaped form used in messages. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "textsafe.h"

static void test_utf8(void **state)
{
        static const struct {
                const char *s;
                bool valid;
        } table[] = {
            {"", true},
            {"plain", true},
            {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", true},
            {"\xef\xbf\xbd", true},
            {"\xf4\x8f\xbf\xbf", true}, /* U+10FFFF */
            {"\xff", false},
            {"\xc3", false},             /* cut */
            {"\xe2\x82", false},         /* cut */
            {"\xc0\xaf", false},         /* overlong */
            {"\xe0\x80\xaf", false},     /* overlong */
            {"\xf0\x80\x80\xaf", false}, /* overlong */
            {"\xed\xa0\x80", false},     /* surrogate */
            {"\xf4\x90\x80\x80", false}, /* past U+10FFFF */
            {"\x80", false},             /* a lone continuation byte */
            {"ok\xc3(", false},
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
                if (utf8_is_valid(table[i].s, strlen(table[i].s)) != table[i].valid)
                        fail_msg("entry %zu: expected %s", i, table[i].valid ? "valid" : "invalid");
}

static void test_make_valid(void **state)
{
        size_t n;
        char *s = utf8_make_valid("a\xff"
                                  "b\xc3",
                                  4, &n);

        assert_non_null(s);
        assert_string_equal(s, "a\xef\xbf\xbd"
                               "b\xef\xbf\xbd");
        assert_int_equal(n, strlen(s));
        assert_true(utf8_is_valid(s, n));
        free(s);

        s = utf8_make_valid("caf\xc3\xa9", 5, &n);
        assert_string_equal(s, "caf\xc3\xa9");
        free(s);
}

static void test_sanitize(void **state)
{
        static const struct {
                const char *in, *out;
        } table[] = {
            {"Active", "Active"},
            {"Act\x1b[31mive\nINJECTED", "Act?[31mive?INJECTED"},
            {"a\r\tb\x7f", "a??b?"},
            {"csi\xc2\x9b"
             "31m",
             "csi?31m"},                                          /* C1 CSI, two bytes, one '?' */
            {"caf\xc3\xa9 \xc2\xa0ok", "caf\xc3\xa9 \xc2\xa0ok"}, /* not controls */
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
                char *s = strdup(table[i].in);

                assert_string_equal(text_sanitize(s), table[i].out);
                free(s);
        }
        assert_int_equal(text_unsafe_len("\x1b", 1), 1);
        assert_int_equal(text_unsafe_len("\xc2\x85", 2), 2);
        assert_int_equal(text_unsafe_len("\xc2", 1), 0);
        assert_int_equal(text_unsafe_len("x", 1), 0);
}

static void test_escape(void **state)
{
        char buf[64], small[12];

        assert_string_equal(text_escape("max-conn\x1b[31m", 100, buf, sizeof(buf)), "max-conn\\x1b[31m");
        assert_string_equal(text_escape("a\xff\xfe"
                                        "b",
                                        100, buf, sizeof(buf)),
                            "a\\xff\\xfeb");
        assert_string_equal(text_escape("back\\slash", 100, buf, sizeof(buf)), "back\\\\slash");
        assert_string_equal(text_escape("caf\xc3\xa9\n", 100, buf, sizeof(buf)), "caf\xc3\xa9\\x0a");
        assert_string_equal(text_escape("c1\xc2\x9b", 100, buf, sizeof(buf)), "c1\\xc2\\x9b");
        /* Cut by max, and by the buffer, never inside a character. */
        assert_string_equal(text_escape("abcdef", 3, buf, sizeof(buf)), "abc...");
        assert_string_equal(
            text_escape("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 100, small, sizeof(small)),
            "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9...");
        assert_true(utf8_is_valid(small, strlen(small)));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_utf8),
            cmocka_unit_test(test_make_valid),
            cmocka_unit_test(test_sanitize),
            cmocka_unit_test(test_escape),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
