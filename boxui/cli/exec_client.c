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
 * Build: cc -O2 -o .venv/bin/boxui exec_client.c (bin/setup does).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* the API socket's path must fit in this many bytes (StateDir.api_socket), else the
   sockets live under /tmp and the Python path finds them */
#define API_SOCKET_MAX 100

static char *exec_socket_path;

/* Hand the whole command line to the Python entry point beside this program. */
static void python_path(char **argv) {
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

static void fail(const char *message) {
    fprintf(stderr, "boxui: %s\n", message);
    exit(1);
}

static void unreachable(const char *reason) {
    fprintf(stderr, "boxui: the boxui daemon on %s did not answer: %s\n",
            exec_socket_path, reason);
    exit(1);
}

/* The request: BXE1, a count, then each string with its length (name first). */
static char *request(char **strings, int count, size_t *size) {
    size_t total = 8;
    for (int i = 0; i < count; i++) total += 4 + strlen(strings[i]);
    char *buf = malloc(total), *at = buf + 8;
    if (!buf) fail("out of memory");
    memcpy(buf, "BXE1", 4);
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
        if (!read_all(fd, head, 5))
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

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[1], "exec") != 0 || getenv("_BOXUI_COMPLETE")) python_path(argv);
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
    signal(SIGINT, on_interrupt);
    size_t size;
    char *buf = request(strings, count, &size);
    send_all(fd, buf, size);
    relay(fd);
    return 1;
}
