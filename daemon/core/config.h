/* config: the INI file (DESIGN §4) turned into a validated Config.
 *
 * Pure: no libuv, no libcurl, no logging. The only I/O is reading the config
 * file itself and the secret files it names (the API key and webhook signing
 * secrets), so that `sessionwatchd --check-config` proves the daemon could
 * start. Every problem becomes one line "FILE:LINE: what is wrong" (or
 * "FILE: what is wrong" when no line is to blame) in the caller's buffer;
 * secrets never appear in these messages.
 *
 * Syntax, as read by inih with a few rules of our own on top:
 *   - "[section]" and "key = value" lines (or "key: value"); whole-line
 *     comments start with '#' or ';', inline comments with ';' after a blank;
 *   - indentation is ignored: a line never continues the value of the line
 *     before it, so an indented key is just a key;
 *   - a non-repeatable key set twice is an error; an empty value puts a key
 *     back to its default, and empties a repeatable key's list;
 *   - durations are an integer and a unit (ms s m h d), "0" needs none;
 *     sizes are an integer with an optional k, M or G (1024-based). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "status.h"

#define CONFIG_DEFAULT_PATH "/etc/sessionwatchd/sessionwatchd.conf"
#define CONFIG_DEFAULT_API_URL "https://api.airplane.dev/v0"
#define CONFIG_DEFAULT_APP_URL "https://app.airplane.dev"

/* The environment that supplies defaults (systemd sets these for
 * LoadCredential=, RuntimeDirectory= and StateDirectory=). A NULL or empty
 * member counts as unset; for a colon-separated list (several directories of
 * one kind) the first entry is used. */
typedef struct ConfigEnv {
        const char *credentials_directory; /* $CREDENTIALS_DIRECTORY */
        const char *runtime_directory;     /* $RUNTIME_DIRECTORY */
        const char *state_directory;       /* $STATE_DIRECTORY */
} ConfigEnv;

typedef enum ConfigWebhookFormat {
        CONFIG_WEBHOOK_FORMAT_CLOUDEVENTS,
        CONFIG_WEBHOOK_FORMAT_SLACK,
        _CONFIG_WEBHOOK_FORMAT_MAX,
} ConfigWebhookFormat;

/* Status filters are bit masks: bit (1u << SessionStatus), in the order of
 * status.h; SESSION_STATUS_MASK_ALL is "all". */
typedef uint32_t ConfigStatusMask;

/* The default of [webhook] max-age (see the key table in config.c). */
#define CONFIG_DEFAULT_WEBHOOK_MAX_AGE_MS ((uint64_t)24 * 3600 * 1000)

typedef struct ConfigWebhook {
        char *name;          /* from [webhook "NAME"]: [A-Za-z0-9_.-], 1-64 characters */
        unsigned line;       /* line of the section header, for messages */
        char *url;           /* required; http:// or https://, used as given */
        char **secret_files; /* NULL-terminated, n_secret_files entries, may be none */
        size_t n_secret_files;
        char **secrets;             /* the files' contents, trimmed, same order; wiped by config_free() */
        ConfigStatusMask statuses;  /* default: all */
        ConfigWebhookFormat format; /* default: cloudevents */
        uint64_t timeout_ms;        /* per attempt; default 10s */
        uint64_t retry_min_ms;      /* first retry delay; default 5s */
        uint64_t retry_max_ms;      /* cap of the retry delay, >= retry_min_ms; default 1h */
        uint64_t max_age_ms;        /* an event older than this is dropped; default 24h */
        unsigned max_in_flight;     /* concurrent deliveries; default 4 */
} ConfigWebhook;

/* The largest [api] max-connections. */
#define CONFIG_MAX_CONNECTIONS_MAX 1024

typedef struct ConfigApi {
        char *url;                /* without a trailing '/'; default CONFIG_DEFAULT_API_URL */
        char *key_file;           /* default $CREDENTIALS_DIRECTORY/api-key; always set after a load */
        char *api_key;            /* the key file's contents, trimmed; wiped by config_free() */
        char *team_id;            /* X-Team-ID, or NULL */
        char *env_slug;           /* X-Airplane-Env-Slug, or NULL */
        char *app_url;            /* without a trailing '/'; default CONFIG_DEFAULT_APP_URL */
        char *ca_file;            /* CA bundle for TLS, or NULL for the system's */
        uint64_t timeout_ms;      /* per request; default 10s */
        unsigned max_connections; /* 1-CONFIG_MAX_CONNECTIONS_MAX; default 16 */
        double rate_per_sec;      /* shared request budget; 0 = unlimited; default 50 */
        uint64_t max_body;        /* largest response body accepted, bytes; default 1M */
} ConfigApi;

/* [poll] mode: how sessions are looked at (see the daemon's coverage). */
typedef enum ConfigPollMode {
        CONFIG_POLL_AUTO, /* sweep a runbook for its sessions once that costs fewer requests */
        CONFIG_POLL_GET,  /* one GET per session per interval; sweeps only discover */
        CONFIG_POLL_LIST, /* cover every session whose runbook is known */
        _CONFIG_POLL_MODE_MAX,
} ConfigPollMode;

typedef struct ConfigPoll {
        ConfigPollMode mode;               /* default auto */
        uint64_t audit_interval_ms;        /* GET of each covered running session; default 10m */
        uint64_t interval_ms;              /* Pending, Active, Cancelling; default 5s, >= 1ms */
        uint64_t waiting_interval_ms;      /* Waiting; default 30s, >= 1ms */
        unsigned jitter_percent;           /* 0-100; default 10 */
        size_t max_sessions;               /* default 1000000 */
        uint64_t retain_ms;                /* terminal sessions leave memory after this; default 24h */
        uint64_t stalled_after_ms;         /* 0 = off (the default) */
        uint64_t stalled_after_waiting_ms; /* the same for Waiting sessions; 0 = off */
        uint64_t backoff_max_ms;           /* cap of the per-session error backoff; default 5m */
} ConfigPoll;

typedef struct ConfigWatch {
        /* Both lists are NULL-terminated and hold ids that passed
         * config_session_id_valid(); duplicates are kept (the daemon's
         * table deduplicates for free), so loading stays linear. */
        char **sessions;
        size_t n_sessions;
        char **runbooks;
        size_t n_runbooks;
        uint64_t discover_interval_ms; /* default 30s */
        uint64_t list_overlap_ms;      /* how far each sweep reaches below the last; default 2s */
        bool all;                      /* every session the key can see; default no */
        bool backfill;                 /* announce sessions already finished at the first sweep */
} ConfigWatch;

typedef struct ConfigJournal {
        bool enable;               /* default yes */
        ConfigStatusMask statuses; /* default all */
} ConfigJournal;

/* [events] and [control]. A NULL path means the environment did not give a
 * default ($RUNTIME_DIRECTORY unset) and the file did not set one: the daemon
 * decides (it may refuse to start, or run without that socket). */
typedef struct ConfigSocket {
        char *path;
        mode_t mode;            /* events default 0660, control default 0600 */
        char *group;            /* owning group, or NULL to keep the daemon's */
        uint64_t client_buffer; /* events only: bytes queued per client before it is dropped; 1M */
} ConfigSocket;

typedef struct ConfigListen {
        char *listen; /* "HOST:PORT" as written, or NULL: off */
        char *host;   /* without brackets for IPv6; NULL for any address ("*:PORT" or ":PORT") */
        uint16_t port;
} ConfigListen;

/* [http]: the one HTTP listener (metrics, the page, the JSON API and the
 * event stream). [metrics] listen is the old spelling of `listen`: after a
 * load it has been moved here (with a warning), and `metrics` stays empty. */
typedef struct ConfigHttp {
        ConfigListen listen;
        char *token_file;           /* NULL: no token; required when listen is not the loopback */
        char *token;                /* its contents, read at load */
        unsigned max_connections;   /* default 64 */
        unsigned max_event_streams; /* default 32 */
        uint64_t heartbeat_ms;      /* default 15s */
        uint64_t client_buffer;     /* bytes an event stream client may lag before it is cut; 1M */
} ConfigHttp;

typedef struct ConfigState {
        char *path; /* default $STATE_DIRECTORY; NULL: the daemon decides */
} ConfigState;

typedef struct Config {
        char *path; /* the file this was loaded from */
        ConfigApi api;
        ConfigPoll poll;
        ConfigWatch watch;
        ConfigJournal journal;
        ConfigWebhook *webhooks;
        size_t n_webhooks;
        ConfigSocket events;
        ConfigSocket control;
        ConfigListen metrics; /* empty after a load: see ConfigHttp */
        ConfigHttp http;
        unsigned http_listen_deprecated_line; /* line of a [metrics] listen moved to [http]; 0: none */
        ConfigState state;
} Config;

/* Whether a listen address is the loopback only (127.0.0.0/8, ::1,
 * localhost); "any address" is not. */
bool config_listen_is_loopback(const ConfigListen *l);

/* Fills *ret from getenv(); the strings stay owned by the environment. */
void config_env_from_environ(ConfigEnv *ret);

/* Loads and validates `path`, reading the key file and the webhook secret
 * files. `env` may be NULL (no environment defaults). Returns 0 and a new
 * Config in *ret, or a negative errno with *ret untouched: -EINVAL for any
 * problem with the contents (each gets a line in errbuf, lines separated by
 * '\n'; past 20 a last line counts the rest; truncated to errlen), the
 * open or read error of the
 * file itself ("FILE: Cannot read: ..."), or -ENOMEM.
 *
 * Not thread-safe: inih's line buffer size is a process-wide setting that is
 * raised for the duration of the call. */
int config_load(const char *path, const ConfigEnv *env, Config **ret, char *errbuf, size_t errlen);

/* For --check-config: a missing API key (no key-file and no
 * $CREDENTIALS_DIRECTORY, or a key file that does not exist) is a warning,
 * not an error. The daemon itself never loads with it. */
#define CONFIG_LOAD_KEY_OPTIONAL (1u << 0)

/* config_load() with CONFIG_LOAD_* flags, and warnings: problems that do not
 * make the file bad (an http:// API URL that is not the loopback, a missing
 * key with CONFIG_LOAD_KEY_OPTIONAL), as lines "FILE:LINE: warning: ..." in
 * warnbuf (may be NULL), also when the load fails. */
int config_load_full(const char *path, const ConfigEnv *env, unsigned flags, Config **ret, char *errbuf,
                     size_t errlen, char *warnbuf, size_t warnlen);
void config_free(Config *c);

/* Whether `url` is http:// to a host other than the loopback (127.0.0.0/8,
 * ::1, localhost): the API key would cross the network in clear text. */
bool config_url_is_cleartext(const char *url);

/* Frees the [watch] session list (leaving it empty) once the daemon has
 * copied it into its table: a million ids need not be held twice. */
void config_release_sessions(Config *c);

/* "1ms", "5s", "30m", "24h", "2d" (and "0"). -EINVAL for bad syntax, a
 * missing or unknown unit; -ERANGE on overflow. */
int config_parse_duration(const char *s, uint64_t *ret_ms);

/* "512", "64k", "1M", "2G" (1024-based). -EINVAL or -ERANGE. */
int config_parse_size(const char *s, uint64_t *ret_bytes);

/* yes/no, true/false, on/off, 1/0, in any case. -EINVAL otherwise. */
int config_parse_bool(const char *s, bool *ret);

/* "all", or status names separated by blanks, spelled as the API does
 * ("Failed Waiting"), plus "unknown" for statuses outside the enum.
 * -EINVAL for an unknown word or an empty list. */
int config_status_mask_from_list(const char *list, ConfigStatusMask *ret_mask);

/* Reads a secret file: a regular file of at most 64 KiB whose contents,
 * trimmed of surrounding whitespace, are not empty and hold no control
 * characters (the key goes into an HTTP header). On failure, returns a
 * negative errno and writes "'PATH': reason" into errbuf; the contents never
 * appear there. The returned string is the caller's to wipe and free. */
int config_read_secret(const char *path, char **ret, char *errbuf, size_t errlen);

/* A session (or runbook) id: 1-64 characters of [A-Za-z0-9_-]. */
bool config_session_id_valid(const char *id);

const char *config_webhook_format_to_string(ConfigWebhookFormat f);
const char *config_poll_mode_to_string(ConfigPollMode m);
