/* Reference echo server on libev (epoll), for benches/run.sh.
 * usage: echo_libev PORT [MAX_SECONDS] */
#include <errno.h>
#include <ev.h>
#include "echo_common.h"

struct conn {
    ev_io io;
    char *out;
    size_t len, cap;
};

static void conn_close(struct ev_loop *loop, struct conn *c) {
    ev_io_stop(loop, &c->io);
    close(c->io.fd);
    free(c->out);
    free(c);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents) {
    struct conn *c = (struct conn *)w;
    if (revents & EV_READ) {
        char buf[65536];
        ssize_t n = read(w->fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { conn_close(loop, c); return; }
        if (n > 0) {
            if (c->len + n > c->cap) {
                c->cap = (c->len + n) * 2;
                c->out = realloc(c->out, c->cap);
            }
            memcpy(c->out + c->len, buf, n);
            c->len += n;
        }
    }
    if (c->len) {
        ssize_t n = write(w->fd, c->out, c->len);
        if (n < 0 && errno != EAGAIN && errno != EINTR) { conn_close(loop, c); return; }
        if (n > 0) {
            memmove(c->out, c->out + n, c->len - n);
            c->len -= n;
        }
    }
    int want = c->len ? EV_READ | EV_WRITE : EV_READ;
    if (want != (w->events & (EV_READ | EV_WRITE))) {
        ev_io_stop(loop, w);
        ev_io_set(w, w->fd, want);
        ev_io_start(loop, w);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    for (;;) {
        int fd = accept(w->fd, NULL, NULL);
        if (fd < 0) return;
        set_nonblock(fd);
        set_nodelay(fd);
        struct conn *c = calloc(1, sizeof *c);
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        ev_io_start(loop, &c->io);
    }
}

static void stop_cb(struct ev_loop *loop, ev_timer *w, int revents) { (void)w; (void)revents; ev_break(loop, EVBREAK_ALL); }

int main(int argc, char **argv) {
    struct ev_loop *loop = ev_default_loop(EVBACKEND_EPOLL);
    int lfd = listen_on(argc > 1 ? atoi(argv[1]) : 1234, "libev-epoll");
    ev_io lw;
    ev_io_init(&lw, accept_cb, lfd, EV_READ);
    ev_io_start(loop, &lw);
    ev_timer stop;
    if (argc > 2 && atoi(argv[2]) > 0) {
        ev_timer_init(&stop, stop_cb, atoi(argv[2]), 0.);
        ev_timer_start(loop, &stop);
    }
    ev_run(loop, 0);
    return 0;
}
