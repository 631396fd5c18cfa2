-- wrk request setup for scripts/bench: the same headers sessionwatchd sends.
-- The API key is read from the file named by SW_BENCH_KEY_FILE, so that it
-- never appears on a command line.
local f = assert(io.open(assert(os.getenv("SW_BENCH_KEY_FILE")), "r"))
local key = f:read("*l")
f:close()
wrk.headers["X-Airplane-API-Key"] = key
wrk.headers["Accept"] = "application/json"
wrk.headers["User-Agent"] = "sessionwatchd/0.1.0"
