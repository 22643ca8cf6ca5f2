/*
 * The `boxui` command of a bin/setup install: `boxui exec NAME -- CMD` without Python.
 *
 * `boxui exec vm -- true` is timed against `ssh` on a ControlMaster connection, and a
 * Python process spends longer starting and importing than the daemon spends running
 * the command. So bin/setup builds this file into .venv/bin/boxui and puts the Python
 * entry point beside it as boxui-py. This program sends exec to a running daemon's exec
 * socket (backend/api/exec_socket.py has the protocol) and hands everything else to
 * boxui-py unchanged, by execv, before it has done anything: every other command, exec
 * command lines the Python hand parser would not claim (help, a bad name: click's usage
 * errors, any option before `--`: `exec vm -- ls -la` is served here, `exec vm ls -la`
 * is Python's), and an exec with no daemon answering (Python then starts one). What it prints
 * itself is what the Python path prints: the command's output, its exit status, and the
 * daemon's one-line errors as `boxui: MESSAGE` with exit 1.
 *
 * `boxui run [OPTIONS] -- CMD` (a cell: backend/api/run_socket.py) is served here too,
 * as `boxui run --template ... -- true` is held to half a second end to end: its options
 * are parsed as click parses them, and whatever this parser is not sure of goes to
 * boxui-py the same way (see run_main).
 *
 * Build: cc -O2 -o .venv/bin/boxui exec_client.c (bin/setup does).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* the API socket's path must fit in this many bytes (StateDir.api_socket), else the
   sockets live under /tmp and the Python path finds them */
#define API_SOCKET_MAX 100

static char *exec_socket_path;

/* BOXUI_EXEC_TRACE set: one line on stderr at exit with this process's phases on
   CLOCK_MONOTONIC, the clock of the daemon's trace (backend/supervision/exec_trace.py). */
enum { TRACE_START, TRACE_CONNECTED, TRACE_SENT, TRACE_FIRST, TRACE_PHASES };
static long long trace_at[TRACE_PHASES];
static int tracing;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void trace_mark(int phase) {
    if (tracing && !trace_at[phase]) trace_at[phase] = now_ns();
}

static void trace_print(void) {
    long long end = now_ns(), start = trace_at[TRACE_START];
    const char *names[TRACE_PHASES] = {"start", "connected", "sent", "first frame"};
    fprintf(stderr, "boxui-trace: start_ns=%lld", start);
    for (int i = 1; i < TRACE_PHASES; i++)
        if (trace_at[i]) fprintf(stderr, " %s=%.3f", names[i], (trace_at[i] - start) / 1e6);
    fprintf(stderr, " end=%.3f\n", (end - start) / 1e6);
}

static void trace_start(void) {
    const char *trace = getenv("BOXUI_EXEC_TRACE");
    if (!trace || !*trace) return;
    tracing = 1;
    trace_at[TRACE_START] = now_ns();
    atexit(trace_print);
}

/* Hand the whole command line to the Python entry point beside this program. */
static __attribute__((noreturn)) void python_path(char **argv) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 16);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            strcpy(slash + 1, "boxui-py");
            execv(self, argv);
        }
    }
    fprintf(stderr, "boxui: cannot run the Python part of boxui (%s): %s\n",
            n > 0 ? self : "/proc/self/exe", strerror(errno));
    exit(1);
}

static int valid_name(const char *s) {
    size_t len = strlen(s);
    if (len < 1 || len > 63 || s[0] == '-') return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return 0;
    }
    return 1;
}

/* An option (not `--`, not `-` alone): before `--` it may be one of exec's own (a
   deadline, attempts), which Python's click parses wherever it stands, or help. Which
   options exec has is Python's to know (fast_exec, click): this client hands them all
   over rather than keep a copy of that list. */
static int is_option(const char *arg) {
    return arg[0] == '-' && arg[1] != '\0' && strcmp(arg, "--") != 0;
}

/* A path Python's pathlib would keep as it is: absolute, no empty or `.` parts. */
static int plain_absolute(const char *p) {
    size_t len = strlen(p);
    if (p[0] != '/' || len < 2 || p[len - 1] == '/' || strstr(p, "//")) return 0;
    if (strstr(p, "/./") || (len >= 2 && strcmp(p + len - 2, "/.") == 0)) return 0;
    return 1;
}

/* The exec socket of the state dir `boxui` resolves (backend.state.state_dir), or NULL
   when resolving it takes more than this program knows (Python then does it). */
static char *socket_path(void) {
    static char path[PATH_MAX];
    const char *home = getenv("BOXUI_HOME"), *xdg = getenv("XDG_DATA_HOME");
    int n;
    if (home && *home) {
        if (!plain_absolute(home)) return NULL;
        n = snprintf(path, sizeof path, "%s/run/api.sock", home);
    } else if (xdg && *xdg) {
        if (!plain_absolute(xdg)) return NULL;
        n = snprintf(path, sizeof path, "%s/boxui/run/api.sock", xdg);
    } else {
        const char *user = getenv("HOME");
        if (!user || !plain_absolute(user)) return NULL;
        n = snprintf(path, sizeof path, "%s/.local/share/boxui/run/api.sock", user);
    }
    if (n < 0 || n > API_SOCKET_MAX) return NULL;
    strcpy(path + n - strlen("api.sock"), "exec.sock");
    return path;
}

static void put_u32(char *at, uint32_t v) {
    at[0] = (char)(v >> 24); at[1] = (char)(v >> 16); at[2] = (char)(v >> 8); at[3] = (char)v;
}

static uint32_t get_u32(const unsigned char *at) {
    return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3];
}

static __attribute__((noreturn)) void fail(const char *message) {
    fprintf(stderr, "boxui: %s\n", message);
    exit(1);
}

static __attribute__((noreturn)) void unreachable(const char *reason) {
    fprintf(stderr, "boxui: the boxui daemon on %s did not answer: %s\n",
            exec_socket_path, reason);
    exit(1);
}

/* A request: its magic (BXE1: exec, BXR1: run), a count, then each string with its
   length. */
static char *request(const char *magic, char **strings, int count, size_t *size) {
    size_t total = 8;
    for (int i = 0; i < count; i++) total += 4 + strlen(strings[i]);
    char *buf = malloc(total), *at = buf + 8;
    if (!buf) fail("out of memory");
    memcpy(buf, magic, 4);
    put_u32(buf + 4, (uint32_t)count);
    for (int i = 0; i < count; i++) {
        size_t len = strlen(strings[i]);
        put_u32(at, (uint32_t)len);
        memcpy(at + 4, strings[i], len);
        at += 4 + len;
    }
    *size = total;
    return buf;
}

static void send_all(int fd, const char *buf, size_t size) {
    while (size > 0) {
        ssize_t n = send(fd, buf, size, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) unreachable(strerror(errno));
        buf += n;
        size -= (size_t)n;
    }
}

/* Exactly `size` bytes from the daemon; 0 when it closed first. */
static int read_all(int fd, void *into, size_t size) {
    char *at = into;
    while (size > 0) {
        ssize_t n = read(fd, at, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) unreachable(strerror(errno));
        if (n == 0) return 0;
        at += n;
        size -= (size_t)n;
    }
    return 1;
}

static void write_all(int fd, const char *buf, size_t size) {
    while (size > 0) {
        ssize_t n = write(fd, buf, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) exit(1);  /* our own output is gone: nobody to tell */
        buf += n;
        size -= (size_t)n;
    }
}

static void on_interrupt(int sig) {
    (void)sig;
    _exit(130);  /* as the Python path exits on KeyboardInterrupt */
}

/* Relay the answer's frames; exit with the command's status or the daemon's error. */
static void relay(int fd) {
    static char chunk[1 << 16];
    unsigned char head[5];
    for (int started = 0;; started = 1) {
        int got = read_all(fd, head, 5);
        trace_mark(TRACE_FIRST);
        if (!got)
            unreachable(started ? "the connection closed in the middle of the answer"
                                : "the connection closed before an answer");
        uint32_t left = get_u32(head + 1);
        if (head[0] == 'x' || head[0] == '!') {
            char *payload = malloc(left + 1);
            if (!payload) fail("out of memory");
            if (!read_all(fd, payload, left))
                unreachable("the connection closed in the middle of the answer");
            if (head[0] == 'x') {
                if (left != 4) fail("the boxui daemon sent an answer boxui cannot read");
                exit((int)get_u32((unsigned char *)payload) & 0xff);
            }
            fprintf(stderr, "boxui: %.*s\n", (int)left, payload);
            exit(1);
        }
        if (head[0] != 'o' && head[0] != 'e')
            fail("the boxui daemon sent an answer boxui cannot read");
        while (left > 0) {
            size_t want = left < sizeof chunk ? left : sizeof chunk;
            if (!read_all(fd, chunk, want))
                unreachable("the connection closed in the middle of the answer");
            write_all(head[0] == 'o' ? 1 : 2, chunk, want);
            left -= (uint32_t)want;
        }
    }
}

/* The exec socket, connected, or the Python path when this program cannot be sure it is
   the state dir's daemon that would answer. */
static int connect_daemon(char **argv) {
    exec_socket_path = socket_path();
    if (!exec_socket_path) python_path(argv);
    /* another host chosen (BOXUI_HOST, or `boxui host use`'s current-host file beside
       run/): Python reaches it through SSH */
    const char *chosen = getenv("BOXUI_HOST");
    if (chosen && *chosen && strcmp(chosen, "local") != 0) python_path(argv);
    char marker[PATH_MAX];
    snprintf(marker, sizeof marker, "%.*scurrent-host",
             (int)(strlen(exec_socket_path) - strlen("run/exec.sock")), exec_socket_path);
    if (access(marker, F_OK) == 0) python_path(argv);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, exec_socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        python_path(argv);  /* no daemon (or none of this version): Python decides */
    trace_mark(TRACE_CONNECTED);
    return fd;
}

static void exec_main(int argc, char **argv) {
    /* NAME and COMMAND as click takes them: the first `--` dropped, NAME first */
    char **strings = calloc((size_t)argc, sizeof *strings);
    int count = 0, dashes = 0;
    if (!strings) python_path(argv);
    for (int i = 2; i < argc; i++) {
        if (!dashes && strcmp(argv[i], "--") == 0) { dashes = 1; continue; }
        if (!dashes && is_option(argv[i])) python_path(argv);
        strings[count++] = argv[i];
    }
    if (count < 2 || !valid_name(strings[0])) python_path(argv);
    int fd = connect_daemon(argv);
    signal(SIGINT, on_interrupt);
    size_t size;
    char *buf = request("BXE1", strings, count, &size);
    send_all(fd, buf, size);
    trace_mark(TRACE_SENT);
    relay(fd);
}

/* ---- `boxui run`: a cell on the daemon's exec socket (backend/api/run_socket.py) ----
   run's options are parsed here as click parses them, and any command line this parser
   is not sure of (help, an unknown option, a value click would refuse, a file that is
   not there) goes to boxui-py, whose errors are then the ones the user sees. */

/* os.path.abspath: against the working directory, `.`, `..` and doubled slashes
   resolved by the letters (no symlinks followed); NULL for what posixpath keeps as it is
   (a leading `//`), which Python then handles. */
static char *absolute(const char *path) {
    if (strncmp(path, "//", 2) == 0 && path[2] != '/') return NULL;
    char cwd[PATH_MAX];
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd)) return NULL;
    size_t size = strlen(path) + (path[0] == '/' ? 0 : strlen(cwd)) + 3;
    char *joined = malloc(size), *out = malloc(size), *save = NULL;
    if (!joined || !out) return NULL;
    snprintf(joined, size, "%s/%s", path[0] == '/' ? "" : cwd, path);
    size_t len = 0;
    for (char *part = strtok_r(joined, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
        if (strcmp(part, ".") == 0) continue;
        if (strcmp(part, "..") == 0) {
            while (len > 0 && out[len - 1] != '/') len--;
            if (len > 0) len--;
            continue;
        }
        out[len++] = '/';
        memcpy(out + len, part, strlen(part));
        len += strlen(part);
    }
    if (len == 0) out[len++] = '/';
    out[len] = '\0';
    free(joined);
    return out;
}

static int is_kind(const char *path, mode_t kind) {
    struct stat st;
    return path && stat(path, &st) == 0 && (st.st_mode & S_IFMT) == kind;
}

/* ID or ID:ROLE, as boxui.cli.params.template_ref takes it */
static int valid_template(const char *value) {
    const char *colon = strchr(value, ':');
    if (!colon) return valid_name(value);
    char *id = strndup(value, (size_t)(colon - value));
    int ok = id && valid_name(id) && (colon[1] == '\0' || valid_name(colon + 1));
    free(id);
    return ok;
}

/* a float Python reads alike and click's FloatRange(min=0, min_open=True) keeps */
static int valid_timeout(const char *value) {
    char *end;
    if (!*value || strspn(value, "0123456789.eE+-") != strlen(value)) return 0;
    double seconds = strtod(value, &end);
    return *end == '\0' && isfinite(seconds) && seconds > 0;
}

/* KEY=VALUE with a name a shell takes and a value of one line (MachineSpec's check_env) */
static int valid_env(const char *value) {
    const char *eq = strchr(value, '=');
    if (!eq || eq == value || eq - value > 128 || strpbrk(eq, "\r\n") || strlen(eq + 1) > 4096)
        return 0;
    for (const char *c = value; c < eq; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || *c == '_' ||
              (c > value && *c >= '0' && *c <= '9')))
            return 0;
    return 1;
}

/* a guest path CellRequest takes (absolute, naming a file) */
static int valid_guest_path(const char *path) {
    return path[0] == '/' && path[strlen(path) - 1] != '/';
}

/* One option and its value into the request's strings; 0 when Python must decide. */
static int run_option(const char *key, const char *value, char **strings, int *count) {
    if (strcmp(key, "template") == 0 ? valid_template(value)
        : strcmp(key, "image") == 0 || strcmp(key, "name") == 0 ? valid_name(value)
        : strcmp(key, "timeout") == 0 ? valid_timeout(value)
        : strcmp(key, "env") == 0 ? valid_env(value) : 0) {
        strings[(*count)++] = (char *)key;
        strings[(*count)++] = (char *)value;
        return 1;
    }
    if (strcmp(key, "input") == 0) {  /* HOST_PATH:GUEST_PATH, split at the last ":/" */
        const char *at = NULL;
        for (const char *p = strstr(value, ":/"); p; p = strstr(p + 1, ":/")) at = p;
        if (!at || at == value || !valid_guest_path(at + 1)) return 0;
        char *host = strndup(value, (size_t)(at - value)), *path = host ? absolute(host) : NULL;
        if (!is_kind(path, S_IFREG)) return 0;
        strings[(*count)++] = "input";
        strings[(*count)++] = path;
        strings[(*count)++] = (char *)at + 1;
        return 1;
    }
    if (strcmp(key, "export") == 0) {  /* GUEST_PATH[:HOST_DIR], split at the first ':' */
        const char *colon = strchr(value, ':');
        char *guest = colon ? strndup(value, (size_t)(colon - value)) : (char *)value;
        if (!guest || !valid_guest_path(guest)) return 0;
        char *dir = absolute(colon && colon[1] ? colon + 1 : ".");
        if (!is_kind(dir, S_IFDIR)) return 0;
        strings[(*count)++] = "export";
        strings[(*count)++] = guest;
        strings[(*count)++] = dir;
        return 1;
    }
    return 0;
}

static volatile sig_atomic_t interrupts, gave_up;
static int cell_started, cancel_sent, interrupts_seen;
/* the signal mask while waiting for the daemon: SIGINT and SIGALRM let through */
static sigset_t waiting_mask, original_mask;
static char **run_argv;
/* what a daemon from before `run` was served here answers (nothing was done) */
#define NOT_SERVED "the boxui daemon cannot read the request: not a boxui exec request"

static void on_run_signal(int sig) {
    if (sig == SIGALRM) gave_up = 1;
    else interrupts++;
}

static __attribute__((noreturn)) void cell_ends(const char *message, const char *detail) {
    fprintf(stderr, "boxui: %s%s\n", message, detail ? detail : "");
    exit(130);
}

static __attribute__((noreturn)) void broke_off(const char *reason) {
    fprintf(stderr, "boxui: the boxui daemon on %s broke off the cell: %s; its next start "
            "finishes the cell (see `boxui cells`)\n", exec_socket_path, reason);
    exit(1);
}

/* Ctrl-C asks the daemon to cancel the cell and waits for it to say the cell is
   destroyed (as boxui.daemon.cell_stream does); a second one, or a minute, stops waiting. */
static void handle_interrupts(int fd) {
    if (gave_up)
        cell_ends("cell cancelled; the daemon is still destroying its machine "
                  "(see `boxui cells`)", NULL);
    if (interrupts == interrupts_seen) return;
    interrupts_seen = interrupts;
    if (!cell_started) cell_ends("interrupted before the cell started", NULL);
    if (cancel_sent) cell_ends("cell cancelled, but its end was not confirmed: ",
                               "interrupted again");
    if (send(fd, "c", 1, MSG_NOSIGNAL) != 1)
        cell_ends("cell cancelled, but its end was not confirmed: ", strerror(errno));
    cancel_sent = 1;
    alarm(60);
}

/* Exactly `size` bytes, or 0 at the end of the stream; signals are seen only while
   waiting (ppoll), so none is missed between a check and a read. */
static int run_read(int fd, void *into, size_t size) {
    char *at = into;
    while (size > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (ppoll(&pfd, 1, NULL, &waiting_mask) < 0) {
            if (errno != EINTR) broke_off(strerror(errno));
            handle_interrupts(fd);
            continue;
        }
        ssize_t n = read(fd, at, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) broke_off(strerror(errno));
        if (n == 0) return 0;
        at += n;
        size -= (size_t)n;
    }
    return 1;
}

static void relay_run(int fd) {
    static char chunk[1 << 16];
    unsigned char head[5];
    int steps = isatty(2);  /* as the Python path: step lines only for a person */
    for (;;) {
        if (!run_read(fd, head, 5)) broke_off("the connection closed before the cell ended");
        trace_mark(TRACE_FIRST);
        uint32_t left = get_u32(head + 1);
        if (head[0] == 'o' || head[0] == 'e') {
            for (size_t want; left > 0; left -= (uint32_t)want) {
                want = left < sizeof chunk ? left : sizeof chunk;
                if (!run_read(fd, chunk, want))
                    broke_off("the connection closed in the middle of the output");
                write_all(head[0] == 'o' ? 1 : 2, chunk, want);
            }
            continue;
        }
        if (!strchr("x!wsi", head[0]) || head[0] == '\0')
            fail("the boxui daemon sent an answer boxui cannot read");
        char *payload = malloc(left + 1);
        if (!payload) fail("out of memory");
        if (!run_read(fd, payload, left))
            broke_off("the connection closed in the middle of the answer");
        if (head[0] == 'x') {
            if (left != 4) fail("the boxui daemon sent an answer boxui cannot read");
            exit((int)get_u32((unsigned char *)payload) & 0xff);
        }
        if (head[0] == '!' && !cell_started && left == strlen(NOT_SERVED) &&
            memcmp(payload, NOT_SERVED, left) == 0) {
            sigprocmask(SIG_SETMASK, &original_mask, NULL);
            python_path(run_argv);  /* an older daemon: the API serves run */
        }
        if (head[0] == '!' || head[0] == 'w') fprintf(stderr, "boxui: %.*s\n", (int)left, payload);
        if (head[0] == '!') exit(1);
        if (head[0] == 's' && steps) fprintf(stderr, "\xc2\xb7 %.*s\n", (int)left, payload);
        if (head[0] == 'i') cell_started = 1;
        free(payload);
    }
}

static void run_main(int argc, char **argv) {
    char **strings = calloc((size_t)argc * 3 + 2, sizeof *strings);
    int count = 0, i = 2, sources = 0, envs = 0;
    if (!strings) python_path(argv);
    for (; i < argc; i++) {
        const char *arg = argv[i], *value;
        if (strcmp(arg, "--") == 0) { i++; break; }
        if (arg[0] != '-' || arg[1] == '\0') break;  /* the command begins */
        if (strcmp(arg, "--keep") == 0) { strings[count++] = "keep"; continue; }
        if (strncmp(arg, "--", 2) != 0) python_path(argv);
        const char *eq = strchr(arg, '=');
        char *key = strndup(arg + 2, eq ? (size_t)(eq - arg - 2) : strlen(arg + 2));
        if (eq) value = eq + 1;
        else if (i + 1 < argc && argv[i + 1][0] != '-') value = argv[++i];
        else python_path(argv);
        if (!key || !run_option(key, value, strings, &count)) python_path(argv);
        sources |= strcmp(key, "template") == 0 ? 1 : strcmp(key, "image") == 0 ? 2 : 0;
        envs += strcmp(key, "env") == 0;
    }
    if (i >= argc || sources == 3 || envs > 128) python_path(argv);
    strings[count++] = "--";
    while (i < argc) strings[count++] = argv[i++];
    int fd = connect_daemon(argv);
    run_argv = argv;
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGALRM);
    sigprocmask(SIG_BLOCK, &blocked, &original_mask);
    waiting_mask = original_mask;
    sigdelset(&waiting_mask, SIGINT);
    sigdelset(&waiting_mask, SIGALRM);
    struct sigaction on_signal = {.sa_handler = on_run_signal};
    sigemptyset(&on_signal.sa_mask);
    sigaction(SIGINT, &on_signal, NULL);
    sigaction(SIGALRM, &on_signal, NULL);
    size_t size;
    char *buf = request("BXR1", strings, count, &size);
    send_all(fd, buf, size);
    trace_mark(TRACE_SENT);
    relay_run(fd);
}

int main(int argc, char **argv) {
    trace_start();
    if (argc >= 3 && strcmp(argv[1], "run") == 0 && !getenv("_BOXUI_COMPLETE"))
        run_main(argc, argv);
    if (argc < 4 || strcmp(argv[1], "exec") != 0 || getenv("_BOXUI_COMPLETE")) python_path(argv);
    exec_main(argc, argv);
    return 1;
}
