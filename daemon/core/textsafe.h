/* textsafe: making foreign text safe to show. Strings from the API, from a
 * control request or from a config file may hold terminal escape sequences,
 * newlines or bytes that are not UTF-8; these helpers decide what may reach a
 * terminal, a log line or a JSON reply as is. Pure: no allocation except
 * where said, no I/O. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The length (1-4) of the well-formed UTF-8 character at s[0..n) (RFC 3629:
 * no overlong forms, no surrogates, nothing past U+10FFFF), or 0 when the
 * bytes there are not one or n is 0. */
size_t utf8_char_len(const char *s, size_t n);

/* Whether s[0..n) is well-formed UTF-8. */
bool utf8_is_valid(const char *s, size_t n);

/* A copy of s[0..n) (malloc'd, NUL-terminated, its length in *ret_len) with
 * each byte that is not part of a well-formed UTF-8 character replaced by
 * U+FFFD. NULL when out of memory. */
char *utf8_make_valid(const char *s, size_t n, size_t *ret_len);

/* The number of bytes at s[0..n) that form one character a terminal line
 * must not show: a C0 control character (newline and ESC among them), DEL,
 * or a C1 control character (U+0080-U+009F, which some terminals take as
 * ESC-sequences). 0 when s[0] starts a harmless character. */
size_t text_unsafe_len(const char *s, size_t n);

/* Replaces, in place, each character text_unsafe_len() refuses with '?'.
 * This is how API-sourced text is shown on a terminal line. Returns s. */
char *text_sanitize(char *s);

/* Writes s into buf (size bytes, NUL-terminated, never more than size) with
 * each byte that is a control character, DEL or not part of well-formed
 * UTF-8 written as \xNN, and a backslash as \\, so that a message shows
 * exactly which bytes were there. At most max bytes of s are looked at; when
 * s is longer, or buf is too small, the text ends in "...". Returns buf. */
char *text_escape(const char *s, size_t max, char *buf, size_t size);
