/* The C load generator of bench/rooms.py (bench tooling, not part of tidings).
 *
 * The Python generator (leanws) saturated before the servers did, so the saturated figures were
 * its own. This one is a single epoll loop over plain sockets: it costs well under a microsecond
 * per delivery, so one pinned core drives any of the servers past saturation.
 *
 *   rooms_gen PORT JOBFILE        (built by rooms.py: cc -O2 -o rooms_gen rooms_gen.c)
 *
 * JOBFILE lines: "R <channel>" a channel messages go to, "S <channel>[,<channel>…] <path>" a
 * subscriber connection (subscribed to each), "P <path>" a publisher connection. Every connection upgrades with GET <path>,
 * waits for its first text frame (hotsock.connected); a subscriber then subscribes and waits
 * for hotsock.subscribed. "ready" is printed once all are. Then stdin commands:
 *
 *   run <messages/s> <seconds>   open loop: random publisher → random channel at that rate;
 *                                prints "<delivered> <errors> <cpu s> <sent> <closed> <skipped>
 *                                <lat p50 µs> <lat p99 µs>" (counts are cumulative)
 *   stop
 *
 * Client frames are masked with the all-zero key (valid RFC 6455: the mask bit is what servers
 * check), so the payload is written as is. Latency = receipt wall clock − the message's "ts"
 * (time.time_ns() equivalent), sampled on every 16th subscriber.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HTTP, HELLO, SUBSCRIBING, READY, DEAD };

typedef struct {
  int fd, is_pub, state, sampled;
  int subs_wanted, subs_confirmed; /* a subscriber may join several comma-separated rooms */
  char *path, *room;
  char *carry; /* bytes of an incomplete frame (or HTTP head) from the previous read */
  size_t carry_len, carry_cap;
  char *out; /* bytes the socket did not take yet */
  size_t out_len, out_cap;
} Conn;

static Conn *conns;
static int nconns, nready, nclosed;
static char **rooms;
static int nrooms;
static int *pubs;
static int npubs;
static int epfd, port;
static long long delivered, errors, sent, skipped;
static uint32_t *lat; /* µs */
static size_t nlat, lat_cap = 1 << 22;
static char rbuf[1 << 18];
static const char PAD[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

static double now_mono(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static long long now_wall_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *m) {
  perror(m);
  exit(1);
}

static void grow(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return;
  size_t c = *cap ? *cap : 256;
  while (c < need) c *= 2;
  *buf = realloc(*buf, c);
  if (!*buf) die("realloc");
  *cap = c;
}

static void arm(Conn *c, int out) {
  struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void kill_conn(Conn *c) {
  if (c->state == DEAD) return;
  if (c->state != READY) {
    fprintf(stderr, "rooms_gen: connection %d lost before it was ready (state %d)\n",
            (int)(c - conns), c->state);
    exit(2);
  }
  c->state = DEAD;
  nclosed++;
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
}

/* Queue bytes; returns 0 when the connection's unsent backlog is too large to take them. */
static int send_bytes(Conn *c, const char *p, size_t n) {
  if (c->out_len == 0) {
    ssize_t w = write(c->fd, p, n);
    if (w == (ssize_t)n) return 1;
    if (w < 0) {
      if (errno != EAGAIN) {
        kill_conn(c);
        return 0;
      }
      w = 0;
    }
    p += w;
    n -= w;
    arm(c, 1);
  } else if (c->out_len > 65536) {
    return 0;
  }
  grow(&c->out, &c->out_cap, c->out_len + n);
  memcpy(c->out + c->out_len, p, n);
  c->out_len += n;
  return 1;
}

static void flush_out(Conn *c) {
  while (c->out_len) {
    ssize_t w = write(c->fd, c->out, c->out_len);
    if (w < 0) {
      if (errno != EAGAIN) kill_conn(c);
      return;
    }
    memmove(c->out, c->out + w, c->out_len - w);
    c->out_len -= w;
  }
  arm(c, 0);
}

static int send_text(Conn *c, const char *payload, size_t n) {
  char frame[4096];
  size_t h;
  frame[0] = (char)0x81;
  if (n < 126) {
    frame[1] = (char)(0x80 | n);
    h = 2;
  } else {
    frame[1] = (char)(0x80 | 126);
    frame[2] = (char)(n >> 8);
    frame[3] = (char)(n & 0xff);
    h = 4;
  }
  memset(frame + h, 0, 4); /* the zero mask key */
  h += 4;
  if (h + n > sizeof frame) return 0;
  memcpy(frame + h, payload, n);
  return send_bytes(c, frame, h + n);
}

static void start_conn(Conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (c->fd < 0) die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) die("connect");
  c->state = CONNECTING;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static void on_writable(Conn *c) {
  if (c->state == CONNECTING) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      errno = err;
      die("connect");
    }
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     c->path, port);
    c->state = HTTP;
    arm(c, 0);
    send_bytes(c, req, n);
    return;
  }
  flush_out(c);
}

static void sample_latency(const char *p, size_t n, long long now) {
  const char *ts = memmem(p, n, "\"ts\":", 5);
  if (!ts || nlat >= lat_cap) return;
  long long v = strtoll(ts + 5, NULL, 10);
  if (v > 0 && now > v) lat[nlat++] = (uint32_t)((now - v) / 1000);
}

static void on_text(Conn *c, const char *p, size_t n, long long *now) {
  if (c->state == READY) {
    if (c->is_pub) {
      if (memmem(p, n, "hotsock.error", 13)) errors++;
    } else {
      delivered++;
      if (c->sampled) {
        if (!*now) *now = now_wall_ns();
        sample_latency(p, n, *now);
      }
    }
    return;
  }
  if (c->state == HELLO) {
    if (c->is_pub) {
      c->state = READY;
      nready++;
      return;
    }
    c->state = SUBSCRIBING;
    for (const char *r = c->room; *r;) {
      size_t len = strcspn(r, ",");
      char msg[512];
      int m = snprintf(msg, sizeof msg, "{\"event\":\"hotsock.subscribe\",\"channel\":\"%.*s\"}", (int)len, r);
      send_text(c, msg, m);
      c->subs_wanted++;
      r += len + (r[len] == ',');
    }
    return;
  }
  if (c->state == SUBSCRIBING) {
    if (memmem(p, n, "hotsock.subscribed", 18)) {
      if (++c->subs_confirmed < c->subs_wanted) return;
      c->state = READY;
      nready++;
    } else {
      fprintf(stderr, "rooms_gen: unexpected frame while subscribing: %.*s\n", (int)(n > 300 ? 300 : n), p);
      exit(2);
    }
  }
}

/* Parse complete frames in buf; returns the bytes consumed. */
static size_t parse_frames(Conn *c, const char *buf, size_t len) {
  size_t off = 0;
  long long now = 0;
  while (len - off >= 2 && c->state != DEAD) {
    const unsigned char *b = (const unsigned char *)buf + off;
    size_t plen = b[1] & 0x7f, h = 2;
    if (plen == 126) {
      if (len - off < 4) break;
      plen = ((size_t)b[2] << 8) | b[3];
      h = 4;
    } else if (plen == 127) {
      if (len - off < 10) break;
      plen = 0;
      for (int i = 0; i < 8; i++) plen = (plen << 8) | b[2 + i];
      h = 10;
    }
    if (b[1] & 0x80) h += 4; /* servers do not mask, but be exact */
    if (len - off < h + plen) break;
    int op = b[0] & 0x0f;
    const char *p = buf + off + h;
    if (op == 1) {
      on_text(c, p, plen, &now);
    } else if (op == 9) {
      char pong[256];
      size_t n = plen < 125 ? plen : 125;
      pong[0] = (char)0x8a;
      pong[1] = (char)(0x80 | n);
      memset(pong + 2, 0, 4);
      memcpy(pong + 6, p, n);
      send_bytes(c, pong, 6 + n);
    } else if (op == 8) {
      if (c->state != READY) {
        fprintf(stderr, "rooms_gen: closed by the server before ready: %.*s\n", (int)plen, p);
        exit(2);
      }
      kill_conn(c);
    }
    off += h + plen;
  }
  return off;
}

static void on_readable(Conn *c) {
  for (;;) {
    size_t have = c->carry_len;
    if (have) memcpy(rbuf, c->carry, have);
    ssize_t r = read(c->fd, rbuf + have, sizeof rbuf - have);
    if (r <= 0) {
      if (r < 0 && errno == EAGAIN) return;
      kill_conn(c);
      return;
    }
    size_t len = have + r, off = 0;
    if (c->state == HTTP) {
      char *end = memmem(rbuf, len, "\r\n\r\n", 4);
      if (!end) {
        grow(&c->carry, &c->carry_cap, len);
        memcpy(c->carry, rbuf, len);
        c->carry_len = len;
        continue;
      }
      if (len < 12 || memcmp(rbuf + 9, "101", 3) != 0) {
        fprintf(stderr, "rooms_gen: upgrade refused: %.*s\n", (int)(len > 300 ? 300 : len), rbuf);
        exit(2);
      }
      off = end + 4 - rbuf;
      c->state = HELLO;
    }
    off += parse_frames(c, rbuf + off, len - off);
    if (c->state == DEAD) return;
    c->carry_len = len - off;
    if (c->carry_len) {
      grow(&c->carry, &c->carry_cap, c->carry_len);
      memcpy(c->carry, rbuf + off, c->carry_len);
    }
    if ((size_t)r < sizeof rbuf - have) return; /* drained (level-triggered: more wakes us) */
  }
}

static void poll_once(int timeout_ms) {
  struct epoll_event evs[1024];
  int n = epoll_wait(epfd, evs, 1024, timeout_ms);
  for (int i = 0; i < n; i++) {
    Conn *c = &conns[evs[i].data.u32];
    if (c->state == DEAD) continue;
    if (evs[i].events & (EPOLLOUT | EPOLLERR)) on_writable(c);
    if (c->state != DEAD && evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
  }
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t xorshift(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void publish_one(void) {
  Conn *c = &conns[pubs[xorshift() % npubs]];
  if (c->state != READY) {
    skipped++;
    return;
  }
  char msg[512];
  int n = snprintf(msg, sizeof msg, "{\"event\":\"chat\",\"channel\":\"%s\",\"data\":{\"ts\":%lld,\"p\":\"%s\"}}",
                   rooms[xorshift() % nrooms], now_wall_ns(), PAD);
  if (send_text(c, msg, n))
    sent++;
  else
    skipped++;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void run(double rate, double seconds) {
  double start = now_mono();
  long long due_sent = 0;
  nlat = 0;
  for (;;) {
    double t = now_mono() - start;
    if (t >= seconds) break;
    long long due = (long long)(t * rate) - due_sent;
    if (due > rate / 100 + 1) due = (long long)(rate / 100 + 1); /* no bursts after a stall */
    for (long long i = 0; i < due; i++) publish_one();
    due_sent += due;
    poll_once(1);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  uint32_t p50 = 0, p99 = 0;
  if (nlat) {
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    p50 = lat[nlat / 2];
    p99 = lat[nlat * 99 / 100];
  }
  printf("%lld %lld %.6f %lld %d %lld %u %u\n", delivered, errors, cpu, sent, nclosed, skipped, p50, p99);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: rooms_gen PORT JOBFILE\n");
    return 1;
  }
  port = atoi(argv[1]);
  FILE *f = fopen(argv[2], "r");
  if (!f) die("jobfile");
  char line[8192];
  int cap = 1024, rcap = 1024;
  conns = calloc(cap, sizeof *conns);
  rooms = calloc(rcap, sizeof *rooms);
  pubs = calloc(cap, sizeof *pubs);
  int nsubs = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    if (line[0] == 'R') {
      if (nrooms == rcap) rooms = realloc(rooms, (rcap *= 2) * sizeof *rooms);
      rooms[nrooms++] = strdup(line + 2);
      continue;
    }
    if (nconns == cap) {
      conns = realloc(conns, cap * 2 * sizeof *conns);
      memset(conns + cap, 0, cap * sizeof *conns);
      pubs = realloc(pubs, cap * 2 * sizeof *pubs);
      cap *= 2;
    }
    Conn *c = &conns[nconns];
    if (line[0] == 'S') {
      char *sp = strchr(line + 2, ' ');
      if (!sp) continue;
      *sp = 0;
      c->room = strdup(line + 2);
      c->path = strdup(sp + 1);
      c->sampled = nsubs++ % 16 == 0;
    } else if (line[0] == 'P') {
      c->is_pub = 1;
      c->path = strdup(line + 2);
      pubs[npubs++] = nconns;
    } else {
      continue;
    }
    nconns++;
  }
  fclose(f);
  if (!nrooms || !npubs) {
    fprintf(stderr, "rooms_gen: the job needs rooms and publishers\n");
    return 1;
  }
  lat = malloc(lat_cap * sizeof *lat);
  epfd = epoll_create1(0);
  rng ^= (uint64_t)getpid() << 20;
  /* at most 64 handshakes at a time: the servers' listen backlogs are ~100 */
  int started = 0;
  while (nready < nconns) {
    while (started < nconns && started - nready < 64) start_conn(&conns[started++]);
    poll_once(10);
  }
  printf("ready\n");
  fflush(stdout);
  char cmd[256];
  while (fgets(cmd, sizeof cmd, stdin)) {
    double rate, seconds;
    if (sscanf(cmd, "run %lf %lf", &rate, &seconds) == 2)
      run(rate, seconds);
    else if (strncmp(cmd, "stop", 4) == 0)
      break;
  }
  return 0;
}
