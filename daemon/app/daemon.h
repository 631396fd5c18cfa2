/* daemon: owns the loop and wires the modules together: start-up and
 * shutdown order, signals, the poll cycle and event fan-out. */
#pragma once

#include "sink.h"

typedef struct DaemonOptions {
        const char *config_path;
        PrintFormat print; /* --print-events */
} DaemonOptions;

/* Runs until SIGTERM or SIGINT. Returns the process exit code: 0 after a
 * clean stop, 78 (EX_CONFIG) for a bad config, 1 for anything else. */
int daemon_run(const DaemonOptions *o);
