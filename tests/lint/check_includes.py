#!/usr/bin/env python3
"""The include rules of daemon/, as a check.

  1. Only httpmux.c includes curl/curl.h: the rest of the daemon sees libcurl
     through httpmux.h alone (and so never both libuv and libcurl).
  2. The pure modules include none of uv.h, curl/curl.h, log.h or a
     systemd header: they are plain functions of their inputs, tested and
     fuzzed without a loop, a network or a journal.
  3. A header includes uv.h only if it holds libuv types by value (the
     internal headers listed in UV_HEADERS); every other header that passes
     a loop or a handle on forward-declares it (typedef struct uv_loop_s
     uv_loop_t;), so including a module's header does not pull libuv in.

Files are found recursively and named by their base name, wherever a folder
puts them. Prints one line per broken rule, naming the file, the line and the
include, and exits 1; exits 0 when every rule holds.

Usage: check_includes.py DAEMON_DIR
"""
import os
import re
import sys

CURL_OWNER = "httpmux.c"
PURE = {"config", "decode", "event", "runbooks", "scheduler", "sessions", "status", "stream-ring",
        "textsafe", "metrics", "webhook-key"}
UV_HEADERS = {"daemon-private.h", "daemon-http.h", "durable.h"}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')


def impure(header):
    return (header in ("uv.h", "curl/curl.h", "log.h") or header.startswith("systemd/")
            or os.path.basename(header).startswith("sd-"))


def check(root):
    problems = []
    seen = 0
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.endswith((".c", ".h")):
                continue
            seen += 1
            path = os.path.join(folder, name)
            module = name.rsplit(".", 1)[0]
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    header = m.group(1)
                    rel = os.path.relpath(path, root)
                    if header == "curl/curl.h" and name != CURL_OWNER:
                        problems.append(f"{rel}:{n}: includes <curl/curl.h>: only {CURL_OWNER} may "
                                        "(use httpmux.h)")
                    if header == "uv.h" and name.endswith(".h") and name not in UV_HEADERS:
                        problems.append(f"{rel}:{n}: includes <uv.h>: a header forward-declares the "
                                        "libuv types it passes on (uv.h only in "
                                        + ", ".join(sorted(UV_HEADERS)) + ")")
                    if module in PURE and impure(header):
                        problems.append(f"{rel}:{n}: includes {header}, but '{module}' is a pure module "
                                        "(no uv, curl, log or systemd)")
    if seen == 0:
        problems.append(f"{root}: no .c or .h files found")
    return problems


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    problems = check(sys.argv[1])
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
