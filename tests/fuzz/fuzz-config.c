/* Fuzz target: the config loader, as --check-config runs it, on a file
 * holding the input. It must never crash; a rejected file must say why, each
 * message naming the file; the API key never appears in a message. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz-util.h"

/* No hex digit, 'x' or backslash: no escape sequence in a message can
 * produce a piece of it. */
#define FUZZ_KEY "ZQ-KEY-PRSTUVW-zqjkmnop"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static char path[256];
        char errbuf[8192];
        ConfigEnv env = {};
        Config *cfg = NULL;
        int r;

        if (!path[0]) {
                fuzz_write_file("api-key", FUZZ_KEY "\n", sizeof(FUZZ_KEY));
                snprintf(path, sizeof(path), "%s/sessionwatchd.conf", fuzz_dir());
        }
        fuzz_write_file("sessionwatchd.conf", data, size);
        env.credentials_directory = fuzz_dir();
        env.runtime_directory = fuzz_dir();
        env.state_directory = fuzz_dir();
        errbuf[0] = '\0';

        r = config_load(path, &env, &cfg, errbuf, sizeof(errbuf));
        if (r == 0) {
                if (!cfg || !cfg->api.api_key || strcmp(cfg->api.api_key, FUZZ_KEY) != 0)
                        abort();
                config_free(cfg);
        } else {
                if (cfg)
                        abort();
                if (r == -EINVAL) {
                        /* Every line names the file. */
                        const char *line = errbuf;

                        if (!*errbuf)
                                abort();
                        while (line && *line) {
                                if (strncmp(line, path, strlen(path)) != 0)
                                        abort();
                                line = strchr(line, '\n');
                                if (line)
                                        line++;
                        }
                }
        }
        /* Unless the file itself holds the key's text (libFuzzer finds it
         * in the comparison above and tries it), no message may. */
        if (strstr(errbuf, FUZZ_KEY) && !memmem(data, size, FUZZ_KEY, strlen(FUZZ_KEY)))
                abort();
        return 0;
}
