/*
 * ifc-guestd: the guest's half of the control channel (the virtio-serial port `ifc.ctl`).
 *
 * Why it exists: the workspace reaches the host through virtiofs, which carries no guest pid, so the host's
 * monitor sees the whole VM as one subject. This daemon tells the host which guest processes ran, so a
 * denial can name the command line that caused it. It runs as root in the initramfs (outside the agent's
 * chroot, before the agent starts), which the unprivileged agent cannot reach; still, the host treats what
 * it says as advisory: attribution, never enforcement.
 *
 * Up (one line per write, so lines from init's own `echo` never interleave with ours):
 *   proc exec PID PPID UID HEX     HEX = /proc/PID/cmdline in hex (NUL-separated argv; empty if it is gone)
 *   proc exit PID STATUS           STATUS = the wait status
 *   proc lost                      the kernel dropped events (ENOBUFS): the table may be incomplete
 * Down:
 *   winsize ROWS COLS              TIOCSWINSZ on the agent's terminal; the kernel sends SIGWINCH to its
 *                                  foreground process group, as a real terminal resize does
 *
 * Usage: ifc-guestd CONTROL-FD TERMINAL, CONTROL-FD being the port, opened read-write by init (a virtio port
 * can be open only once, and init writes its own lines on the same descriptor). It returns once subscribed to the kernel's process events (so
 * init starts the agent only after that: no early process goes unseen) and keeps running in the background.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#define ARGV_MAX 2048

static int ctl = -1;
static const char *tty_path;

static void say(const char *line, size_t len) {
    while (len > 0) {
        ssize_t n = write(ctl, line, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        line += n;
        len -= (size_t)n;
    }
}

static long field_of(const char *path, const char *key) {
    char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *at = strstr(buf, key);
    return at ? strtol(at + strlen(key), NULL, 10) : -1;
}

static void report_exec(int pid) {
    static const char hex[] = "0123456789abcdef";
    char path[64], argv[ARGV_MAX];
    char line[96 + 2 * ARGV_MAX];
    ssize_t n = 0;
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, argv, sizeof argv);
        close(fd);
        if (n < 0) n = 0;
    }
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    long ppid = field_of(path, "\nPPid:\t");
    long uid = field_of(path, "\nUid:\t");
    int len = snprintf(line, 96, "proc exec %d %ld %ld ", pid, ppid, uid);
    for (ssize_t i = 0; i < n; i++) {
        line[len++] = hex[(unsigned char)argv[i] >> 4];
        line[len++] = hex[(unsigned char)argv[i] & 15];
    }
    line[len++] = '\n';
    say(line, (size_t)len);
}

static void apply(char *command) {
    unsigned short rows, cols;
    if (sscanf(command, "winsize %hu %hu", &rows, &cols) == 2) {
        int fd = open(tty_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) return;
        struct winsize ws = {.ws_row = rows, .ws_col = cols};
        ioctl(fd, TIOCSWINSZ, &ws);
        close(fd);
    }
}

static int subscribe(void) {
    int sock = socket(PF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
    if (sock < 0) return -1;
    struct sockaddr_nl addr = {.nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC, .nl_pid = (unsigned)getpid()};
    if (bind(sock, (struct sockaddr *)&addr, sizeof addr) < 0) return -1;
    int size = 4 << 20;
    setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    struct {
        struct nlmsghdr hdr;
        struct cn_msg msg;
        enum proc_cn_mcast_op op;
    } __attribute__((packed)) request = {0};
    request.hdr.nlmsg_len = sizeof request;
    request.hdr.nlmsg_type = NLMSG_DONE;
    request.hdr.nlmsg_pid = (unsigned)getpid();
    request.msg.id.idx = CN_IDX_PROC;
    request.msg.id.val = CN_VAL_PROC;
    request.msg.len = sizeof request.op;
    request.op = PROC_CN_MCAST_LISTEN;
    if (send(sock, &request, sizeof request, 0) < 0) return -1;
    return sock;
}

static void on_events(int sock) {
    char buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
    ssize_t n = recv(sock, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == ENOBUFS) say("proc lost\n", 10);
        return;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
        struct cn_msg *msg = NLMSG_DATA(h);
        if (msg->id.idx != CN_IDX_PROC || msg->id.val != CN_VAL_PROC) continue;
        struct proc_event *ev = (struct proc_event *)msg->data;
        if (ev->what == PROC_EVENT_EXEC) {
            report_exec(ev->event_data.exec.process_tgid);
        } else if (ev->what == PROC_EVENT_EXIT && ev->event_data.exit.process_pid == ev->event_data.exit.process_tgid) {
            char line[64];
            int len = snprintf(line, sizeof line, "proc exit %d %u\n", ev->event_data.exit.process_tgid,
                               ev->event_data.exit.exit_code);
            say(line, (size_t)len);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: ifc-guestd CONTROL-FD TERMINAL\n");
        return 2;
    }
    tty_path = argv[2];
    ctl = atoi(argv[1]);
    if (ctl < 3 || fcntl(ctl, F_GETFD) < 0) {
        fprintf(stderr, "ifc-guestd: %s is not an open descriptor\n", argv[1]);
        return 2;
    }
    int sock = subscribe();
    if (sock < 0) {
        perror("ifc-guestd: process events");
        say("proc lost\n", 10);  /* attribution unavailable; the run goes on */
        sock = -1;
    }
    pid_t child = fork();
    if (child < 0) return 1;
    if (child > 0) return 0; /* subscribed: init may start the agent */
    setsid();
    /* Real-time priority: on the VM's one CPU the event wakes us before the exec'd process runs on, so even a
     * short-lived command's argv is read before it exits. We sleep in poll() otherwise. */
    struct sched_param priority = {.sched_priority = 1};
    sched_setscheduler(0, SCHED_FIFO, &priority);
    char pending[256];
    size_t have = 0;
    struct pollfd fds[2] = {{.fd = ctl, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    for (;;) {
        if (poll(fds, sock >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (sock >= 0 && (fds[1].revents & POLLIN)) on_events(sock);
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(ctl, pending + have, sizeof pending - 1 - have);
            if (n > 0) {
                have += (size_t)n;
                char *nl;
                while ((nl = memchr(pending, '\n', have)) != NULL) {
                    *nl = 0;
                    apply(pending);
                    have -= (size_t)(nl + 1 - pending);
                    memmove(pending, nl + 1, have);
                }
                if (have == sizeof pending - 1) have = 0; /* an over-long line: drop it */
            }
        } else if (fds[0].revents & (POLLHUP | POLLERR)) {
            usleep(100000); /* the host end is not connected yet (or went away): keep the events flowing */
        }
    }
}
