/* Unit tests of the pure webhook helpers: secret decoding, Standard Webhooks
 * signatures (against the specification's published example and a value
 * computed independently with Python's hmac module), the header list, the
 * Slack body and the retry delays. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpmux.h"
#include "webhook.h"

#define SPEC_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SPEC_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SPEC_TS 1614265330
#define SPEC_BODY "{\"test\": 2432232314}"
#define SPEC_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
/* HMAC-SHA256 with the key "second" (whsec_c2Vjb25k) over the same
 * content, from Python's hmac module. */
#define SECOND_SIG "v1,WWQQXy0Z7arKJ9d3BF9mEO8o7FPlQSx373J1Xt8Puqw="

static void test_secret_decoding(void **state)
{
        static const char *const bad[] = {
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", /* no prefix */
            "whsec_",                           /* empty */
            "whsec_abc",                        /* not whole quanta */
            "whsec_ab!d",                       /* not base64 */
            "whsec_a===",                       /* too much padding */
            "whsec_ab=d",                       /* padding in the middle */
            "whsec_YWJj ZGVm",                  /* a blank */
            "WHSEC_YWJj",                       /* the prefix is lower case */
        };
        WebhookKey k;
        char big[1024];

        assert_int_equal(webhook_key_from_secret(SPEC_SECRET, &k), 0);
        assert_int_equal(k.len, 24);
        assert_int_equal(webhook_key_from_secret("whsec_c2Vjb25k", &k), 0);
        assert_int_equal(k.len, 6);
        assert_memory_equal(k.data, "second", 6);
        assert_int_equal(webhook_key_from_secret("whsec_bmV4dA==", &k), 0);
        assert_int_equal(k.len, 4);
        assert_memory_equal(k.data, "next", 4);
        assert_int_equal(webhook_key_from_secret("whsec_YWI=", &k), 0);
        assert_int_equal(k.len, 2);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_int_equal(webhook_key_from_secret(bad[i], &k), -EINVAL);

        /* Longer than WEBHOOK_KEY_MAX decoded bytes. */
        strcpy(big, "whsec_");
        memset(big + 6, 'A', 400);
        big[406] = '\0';
        assert_int_equal(webhook_key_from_secret(big, &k), -EINVAL);
}

static void test_signatures(void **state)
{
        WebhookKey keys[2];
        EventBuffer b = EVENT_BUFFER_NULL;

        assert_int_equal(webhook_key_from_secret(SPEC_SECRET, &keys[0]), 0);
        assert_int_equal(webhook_key_from_secret("whsec_c2Vjb25k", &keys[1]), 0);

        assert_int_equal(
            webhook_append_signatures(keys, 1, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), &b), 0);
        assert_string_equal(b.data, SPEC_SIG);

        /* Rotation: one signature per key, space-separated, in order. */
        b.len = 0;
        assert_int_equal(
            webhook_append_signatures(keys, 2, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), &b), 0);
        assert_string_equal(b.data, SPEC_SIG " " SECOND_SIG);

        /* Any change of id, time or body changes it. */
        b.len = 0;
        assert_int_equal(
            webhook_append_signatures(keys, 1, SPEC_ID, SPEC_TS + 1, SPEC_BODY, strlen(SPEC_BODY), &b), 0);
        assert_string_not_equal(b.data, SPEC_SIG);
        event_buffer_done(&b);
}

static void test_headers(void **state)
{
        WebhookKey keys[2];
        HttpHeaders *l = NULL;
        const char *want[] = {
            "Content-Type: application/cloudevents+json",
            "webhook-id: " SPEC_ID,
            "webhook-timestamp: 1614265330",
            "webhook-signature: " SPEC_SIG " " SECOND_SIG,
            "Expect:",
        };
        size_t n = 0;

        assert_int_equal(webhook_key_from_secret(SPEC_SECRET, &keys[0]), 0);
        assert_int_equal(webhook_key_from_secret("whsec_c2Vjb25k", &keys[1]), 0);
        assert_int_equal(webhook_headers_new(keys, 2, "application/cloudevents+json", SPEC_ID, SPEC_TS,
                                             SPEC_BODY, strlen(SPEC_BODY), &l),
                         0);
        for (const char *line; (line = http_headers_get(l, n)); n++) {
                assert_true(n < 5);
                assert_string_equal(line, want[n]);
        }
        assert_int_equal(n, 5);
        webhook_headers_free(l);

        /* Without secrets there is no signature header. */
        l = NULL;
        assert_int_equal(webhook_headers_new(NULL, 0, "application/json", SPEC_ID, SPEC_TS, "{}", 2, &l), 0);
        for (size_t k = 0; http_headers_get(l, k); k++)
                assert_null(strstr(http_headers_get(l, k), "webhook-signature"));
        webhook_headers_free(l);
}

static void test_slack_body(void **state)
{
        Event e = {
            .kind = EVENT_TRANSITION,
            .session_id = "ses20220120za1pskd",
            .status_raw = "Failed",
            .status = SESSION_STATUS_FAILED,
            .previous_status_raw = "Active",
            .name = "Deploy \"prod\"\n",
        };
        EventBuffer b = EVENT_BUFFER_NULL;
        json_object *o, *text;

        assert_int_equal(webhook_append_slack(&e, "https://app.example.test", &b), 0);
        assert_null(memchr(b.data, '\n', b.len));
        o = json_tokener_parse(b.data);
        assert_non_null(o);
        assert_int_equal(json_object_object_length(o), 1);
        assert_true(json_object_object_get_ex(o, "text", &text));
        assert_non_null(strstr(json_object_get_string(text), "'Deploy \"prod\""));
        assert_non_null(strstr(json_object_get_string(text), "(ses20220120za1pskd) Active → Failed"));
        assert_non_null(
            strstr(json_object_get_string(text), " <https://app.example.test/sessions/ses20220120za1pskd>"));
        json_object_put(o);

        /* No app URL: no link. */
        b.len = 0;
        assert_int_equal(webhook_append_slack(&e, NULL, &b), 0);
        assert_null(strstr(b.data, "https://"));
        event_buffer_done(&b);
}

static void test_retry_delay(void **state)
{
        /* Doubling from retry-min, capped at retry-max, jitter within
         * [half, full] but never under retry-min. */
        for (uint64_t rnd = 0; rnd < 2000; rnd += 7) {
                uint64_t d1 = webhook_retry_delay(5000, 3600000, 1, rnd);
                uint64_t d3 = webhook_retry_delay(5000, 3600000, 3, rnd * 31);
                uint64_t dmax = webhook_retry_delay(5000, 3600000, 40, rnd * 131);

                assert_true(d1 >= 5000 && d1 <= 5000);
                assert_true(d3 >= 10000 && d3 <= 20000);
                assert_true(dmax >= 1800000 && dmax <= 3600000);
        }
        /* The jitter does spread. */
        assert_int_not_equal(webhook_retry_delay(1000, 100000, 5, 1),
                             webhook_retry_delay(1000, 100000, 5, 5000));
        /* retry-min equal to retry-max: always that. */
        assert_int_equal(webhook_retry_delay(50, 50, 9, 12345), 50);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_secret_decoding), cmocka_unit_test(test_signatures),
            cmocka_unit_test(test_headers),         cmocka_unit_test(test_slack_body),
            cmocka_unit_test(test_retry_delay),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
