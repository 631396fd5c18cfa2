/* Fuzz target: one control request line, parsed (control_parse_request) and
 * matched to a command (control_request_command) as the control socket does
 * it. It must never crash; a parsed request is a JSON object; every rejected
 * line gets a well-formed error reply with a known code, which serialises to
 * one line of valid UTF-8 JSON that parses back to the same reply; an accepted one names
 * its command. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "control-proto.h"
#include "control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_object *run_nothing(void *userdata, json_object *request)
{
        (void)userdata;
        (void)request;
        return control_reply_ok();
}

static const ControlCommand commands[] = {
    {CONTROL_CMD_STATUS, false, run_nothing},
    {CONTROL_CMD_LIST, false, run_nothing},
    {CONTROL_CMD_WATCH, true, run_nothing},
    {CONTROL_CMD_UNWATCH, true, run_nothing},
    {CONTROL_CMD_RELOAD, true, run_nothing},
    {CONTROL_CMD_METRICS, false, run_nothing},
    {NULL, false, NULL},
};

/* Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
 * U+10FFFF). */
static bool utf8_valid(const unsigned char *s)
{
        while (*s) {
                unsigned c = *s, n, min, cp;

                if (c < 0x80) {
                        s++;
                        continue;
                }
                if ((c & 0xe0) == 0xc0)
                        n = 1, min = 0x80, cp = c & 0x1f;
                else if ((c & 0xf0) == 0xe0)
                        n = 2, min = 0x800, cp = c & 0x0f;
                else if ((c & 0xf8) == 0xf0)
                        n = 3, min = 0x10000, cp = c & 0x07;
                else
                        return false;
                for (unsigned k = 1; k <= n; k++) {
                        if ((s[k] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (s[k] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                s += n + 1;
        }
        return true;
}

static bool known_error(const char *code)
{
        static const char *const codes[] = {CONTROL_ERROR_BAD_JSON, CONTROL_ERROR_BAD_REQUEST,
                                            CONTROL_ERROR_UNKNOWN_COMMAND};

        for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
                if (strcmp(code, codes[i]) == 0)
                        return true;
        return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        json_object *req = NULL, *reply, *v, *back;
        const ControlCommand *cmd = NULL;
        const char *text;
        char why[256];
        int r;

        /* The server hands over lines without their newline and no longer
         * than CONTROL_LINE_MAX. */
        if (size > CONTROL_LINE_MAX || memchr(data, '\n', size))
                return 0;
        r = control_parse_request((const char *)data, size, &req, why, sizeof(why));
        if (r == -EINVAL) {
                if (req || !why[0] || why[strlen(why) - 1] != '.')
                        abort();
                reply = control_reply_error(CONTROL_ERROR_BAD_JSON, "%s", why);
        } else if (r < 0)
                return 0;
        else {
                if (!req || !json_object_is_type(req, json_type_object))
                        abort();
                reply = control_request_command(commands, req, &cmd);
                if (cmd) {
                        if (reply || !json_object_object_get_ex(req, "command", &v) ||
                            strcmp(json_object_get_string(v), cmd->name) != 0)
                                abort();
                        json_object_put(req);
                        return 0;
                }
                json_object_put(req);
        }
        if (!reply)
                abort();
        if (!json_object_object_get_ex(reply, "ok", &v) || json_object_get_boolean(v) ||
            !json_object_object_get_ex(reply, "error", &v) || !known_error(json_object_get_string(v)) ||
            !json_object_object_get_ex(reply, "message", &v) || !json_object_is_type(v, json_type_string))
                abort();
        text = json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN);
        if (!text || strchr(text, '\n') || !utf8_valid((const unsigned char *)text) ||
            !utf8_valid((const unsigned char *)json_object_get_string(v)))
                abort();
        back = json_tokener_parse(text);
        if (!back || !json_object_equal(back, reply))
                abort();
        json_object_put(back);
        json_object_put(reply);
        return 0;
}
