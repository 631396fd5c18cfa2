/* sessionwatchd: watches Airplane runbook sessions and reports every status
 * transition to the journal, webhooks and a socket stream. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "config.h"
#include "daemon.h"
#include "log.h"

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: sessionwatchd [OPTIONS]\n"
                "\n"
                "Watches Airplane runbook sessions and reports every status transition.\n"
                "\n"
                "  -c, --config FILE        configuration file (default %s)\n"
                "      --check-config       validate the configuration and exit\n"
                "      --log-level LEVEL    err, warning, notice, info or debug (default info)\n"
                "      --print-events=FMT   also write each event to stdout: json or text\n"
                "  -h, --help               show this help\n"
                "      --version            show the version\n",
                CONFIG_DEFAULT_PATH);
}

int main(int argc, char **argv)
{
        enum { OPT_CHECK = 0x100, OPT_LOG_LEVEL, OPT_PRINT, OPT_VERSION };
        static const struct option options[] = {
            {"config", required_argument, NULL, 'c'},
            {"check-config", no_argument, NULL, OPT_CHECK},
            {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
            {"print-events", required_argument, NULL, OPT_PRINT},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, OPT_VERSION},
            {},
        };
        DaemonOptions o = {.config_path = CONFIG_DEFAULT_PATH};
        bool check = false;
        int c, level;

        log_setup(LOG_TARGET_AUTO);
        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        o.config_path = optarg;
                        break;
                case OPT_CHECK:
                        check = true;
                        break;
                case OPT_LOG_LEVEL:
                        level = log_level_from_string(optarg);
                        if (level < 0) {
                                fprintf(stderr, "sessionwatchd: unknown log level '%s'\n", optarg);
                                return EX_USAGE;
                        }
                        log_set_max_level(level);
                        break;
                case OPT_PRINT:
                        if (strcmp(optarg, "json") == 0)
                                o.print = PRINT_JSON;
                        else if (strcmp(optarg, "text") == 0)
                                o.print = PRINT_TEXT;
                        else {
                                fprintf(stderr,
                                        "sessionwatchd: --print-events takes 'json' or 'text', not '%s'\n",
                                        optarg);
                                return EX_USAGE;
                        }
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case OPT_VERSION:
                        printf("sessionwatchd %s\n", SW_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return EX_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "sessionwatchd: unexpected argument '%s'\n", argv[optind]);
                return EX_USAGE;
        }

        if (check) {
                char errbuf[4096], warnbuf[4096];
                ConfigEnv env;
                Config *cfg;
                int r;

                config_env_from_environ(&env);
                /* The key is often only there for the service
                 * (LoadCredential=), or not yet: its absence is said, but
                 * the file itself can still be good. */
                r = config_load_full(o.config_path, &env, CONFIG_LOAD_KEY_OPTIONAL, &cfg, errbuf,
                                     sizeof(errbuf), warnbuf, sizeof(warnbuf));
                if (warnbuf[0])
                        fprintf(stderr, "%s\n", warnbuf);
                if (r < 0) {
                        fprintf(stderr, "%s\n", errbuf);
                        return r == -ENOMEM ? 1 : EX_CONFIG;
                }
                printf("%s: OK (%zu session(s), %zu runbook(s), %zu webhook(s))\n", o.config_path,
                       cfg->watch.n_sessions, cfg->watch.n_runbooks, cfg->n_webhooks);
                config_free(cfg);
                return 0;
        }

        return daemon_run(&o);
}
