/* Fuzz target: the two session decoders must never crash, and whenever both
 * accept a body they must agree on what it says. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        SessionSnapshot full = SESSION_SNAPSHOT_NULL;
        SessionQuick quick;
        const char *reason = NULL;
        json_object *root = NULL, *array = NULL;
        int rf, rq, n;

        rf = decode_session((const char *)data, size, &full, &reason);
        rq = decode_session_quick((const char *)data, size, &quick);
        if (rf == 0 && rq == 0) {
                if (quick.id_len != full.id_len || memcmp(quick.id, full.id, full.id_len) != 0 ||
                    quick.status_raw_len != full.status_raw_len ||
                    memcmp(quick.status_raw, full.status_raw, full.status_raw_len) != 0 ||
                    quick.status != full.status || quick.updated_at_us != full.updated_at_us)
                        abort();
        }
        if (rf < 0 && !reason)
                abort();
        session_snapshot_done(&full);

        n = decode_session_list((const char *)data, size, &root, &array, &reason);
        if (n > 0) {
                for (int i = 0; i < n; i++) {
                        SessionSnapshot s = SESSION_SNAPSHOT_NULL;

                        if (decode_session_object(json_object_array_get_idx(array, (size_t)i), &s, &reason) == 0)
                                session_snapshot_done(&s);
                }
        }
        json_object_put(root);
        return 0;
}
