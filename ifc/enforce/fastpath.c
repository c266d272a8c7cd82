/* The mount daemon's requests that decide nothing, answered without entering Python.

   libfuse's high-level API calls one function per request. mfusepy points every one of them at a Python
   callback; `ifc.enforce.fastpath` swaps some for the functions here, which answer what needs no decision —
   attributes (every LOOKUP and GETATTR), the `security.*`/`system.*` xattrs the kernel probes before each write,
   reads and writes on descriptors the monitor already decided, flush, the release of a descriptor Python keeps
   nothing for, directory listings, and the *warm* answers: a read-only open of a name, or a change of its mode,
   owner or times, that the monitor already allowed this subject, at the same taint, label store and token
   window, when it said the answer repeats — and
   hand everything else to the Python callback they replaced (`py_*`), with the same arguments. Every first
   decision, and every rename or link, is Python's; a create, a delete, or a change of mode, owner or times is
   answered here only by *class*: as the monitor answered it for another name matching the same globs (the last
   section, "names made and removed").

   The rule for every function: answer only the plain case whose Python answer is a system call with no state
   of the daemon's behind it; in any other case (a reserved name, `..`, a long path, a file with several names,
   a name of a secret-file format, a descriptor Python did not mark, a run whose taint moved, an EACCES/EPERM
   that Python logs as a refusal) call Python, which is the authority. Python marks descriptors (`ifc_fast_mark`)
   and unmarks them before it closes them (`ifc_fast_close`); it keeps the inode incarnations (`ifc_fast_epoch`)
   and open views (`ifc_fast_view`) mirrored here, and bumps the taint generation (`ifc_fast_taint_moved`)
   whenever the run's taint rises. Warm opens (`ifc_fast_warm`) are Python's answers too: it records each one the
   monitor says repeats, with which caller threads are which subject (`ifc_fast_caller`, a pidfd per thread, as
   ifc.enforce.identity keeps them), and says when answers may have changed: all of them (`ifc_fast_stale`: the
   taint rose, the revocation list or the label store as a whole moved) or those for one name
   (`ifc_fast_stale_name`: its label changed). Each is a tick of one clock; an answer is recorded with the tick
   Python read before deciding it, and served only while no tick that covers it came later.
   docs/benchmarks.md (issue 16, parts 6 and 7) has why and what it buys. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

typedef int (*getattr_fn)(const char *, struct stat *, void *);
typedef int (*read_fn)(const char *, char *, size_t, off_t, void *);
typedef int (*write_fn)(const char *, const char *, size_t, off_t, void *);
typedef int (*flush_fn)(const char *, void *);
typedef int (*getxattr_fn)(const char *, const char *, char *, size_t);
typedef int (*fill_fn)(void *, const char *, const struct stat *, off_t, int);
typedef int (*readdir_fn)(const char *, void *, fill_fn, off_t, void *, int);
typedef int (*open_fn)(const char *, void *);
typedef int (*chmod_fn)(const char *, mode_t, void *);
typedef int (*chown_fn)(const char *, uid_t, gid_t, void *);
typedef int (*utimens_fn)(const char *, const struct timespec *, void *);
typedef int (*mkdir_fn)(const char *, mode_t);
typedef int (*create_fn)(const char *, mode_t, void *);
typedef int (*unlink_fn)(const char *);
typedef void (*made_fn)(int, const char *, int64_t);
struct context { void *fuse; uid_t uid; gid_t gid; pid_t pid; }; /* the head of libfuse's struct fuse_context */
typedef struct context *(*context_fn)(void);
typedef void (*hit_fn)(int, const char *, uint64_t, int64_t);

#define RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
#define PATH_PIECE 3072 /* as ifc.enforce.fs._PATH_PIECE: longer paths are Python's (it walks them in pieces) */
#define EPOCH_SHIFT 48  /* as ifc.enforce.fs._EPOCH_SHIFT */
#define DIR_NLINK 1     /* a directory's link count, size and blocks: as ifc.enforce.fs.DIR_NLINK, DIR_SIZE, DIR_BLOCKS */
#define DIR_SIZE 4096
#define DIR_BLOCKS 8
#define MAX_NAMES 16
#define FMODE_EXEC 0x20 /* as ifc.enforce.fs.FMODE_EXEC */
#define OPEN_KEEP (O_ACCMODE | O_APPEND | O_NONBLOCK | O_DSYNC | O_SYNC | O_DIRECT | O_LARGEFILE | O_DIRECTORY | \
                   O_NOFOLLOW | O_NOATIME | O_CLOEXEC | O_ASYNC) /* fs._VALID_FLAGS & fs._OPEN_MASK, no creation */
#define WAL_HEADER 96 /* as ifc.monitor.wal_index.HEADER */
#define MAX_WARM (1u << 17) /* warm table slots; full: Python drains and clears it */
#define MAX_CALLERS 1024
#define FULL (-1)          /* ifc_fast_warm: the table is full */
#define UNKNOWN_THREAD (-2) /* ifc_fast_warm: recorded, but the caller's thread is not known as that subject */
#define MAX_STALE 8192 /* names whose label changed, remembered; full: every answer goes stale instead */
#define CHANGES (1 << 30) /* warm table key of a subject's metadata changes (its slot | CHANGES): as fastpath.CHANGES */

enum kind { NONE = 0, PLAIN = 1, WRITE_FREE = 2, WRITE_CHECKED = 3 };

struct handle {
    _Atomic int kind;
    uint64_t generation; /* the taint generation its write decision was made at (WRITE_CHECKED) */
    char *rel;           /* the name it was decided for (WRITE_CHECKED) */
    int made;            /* made here (a new file): the class answer it was made under (`made_handle`), else 0 */
    pid_t made_by;       /* ... and the thread whose request made it */
};

static struct {
    int root;
    dev_t dev; /* the backing root's: listings report inode numbers of this device, as Python's */
    size_t fh_offset; /* of `fh` in libfuse's struct fuse_file_info (from mfusepy's ctypes layout) */
    int map_ids;
    uid_t owner_uid, agent_uid;
    gid_t owner_gid, agent_gid;
    int is_root;      /* the daemon runs as root: what it makes is given to the caller (settle_new) */
    int track_links;  /* multi-link files' names are tracked (invalidation): their attributes are Python's */
    int views;        /* secret-file views are served: files of a secret format are Python's */
    char *reserved[MAX_NAMES];
    int nreserved;
    char *formats[MAX_NAMES * 2];
    int nformats;
    getattr_fn py_getattr;
    read_fn py_read;
    write_fn py_write;
    flush_fn py_flush, py_release;
    getxattr_fn py_getxattr;
    readdir_fn py_readdir;
    open_fn py_open;
    chmod_fn py_chmod;
    chown_fn py_chown;
    utimens_fn py_utimens;
    mkdir_fn py_mkdir;
    create_fn py_create;
    unlink_fn py_unlink, py_rmdir;
    context_fn context;
    int one_subject;         /* every caller is one subject (slot 0): no thread is looked up */
    size_t noflush_byte;     /* where FOPEN_NOFLUSH is in struct fuse_file_info (0: not there) */
    unsigned char noflush_mask;
} cfg = {.root = -1};

static struct handle *handles;
static size_t nhandles;
static pthread_mutex_t rel_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t generation;
static _Atomic int links_seen;
/* Shared by every request that makes or removes a name, exclusive for a directory's rename (ifc.enforce.fs.NameLock,
   whose lock this is while the fast path serves): a waiting rename goes first. Set up by ifc_fast_configure. */
static pthread_rwlock_t name_lock;

/* (dev, ino) -> value, open addressing; for inode incarnations and open views. */
struct map {
    pthread_mutex_t lock;
    size_t cap, used;
    uint64_t *dev, *ino, *val; /* val 0 = empty slot (every value stored is at least 1) */
};
static struct map epochs = {.lock = PTHREAD_MUTEX_INITIALIZER};
static struct map views = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Names with a stored label or a record of the tainted run that made or removed them (Python's `listed`): a lookup
   of one (that it is there, and a file's attributes), or a directory's listing, is a read the monitor decides
   (ifc.monitor.Monitor._list), so it is Python's. More than fit: all are Python's. */
#define MAX_LISTED (1 << 16)
static struct {
    pthread_rwlock_t lock;
    char *names[MAX_LISTED];
    unsigned char held[MAX_LISTED]; /* 1: a name only this run's own commits gave a label or record (`held`) */
    _Atomic int used; /* 0: none (the common case, checked without the lock); -1: too many, every one is Python's */
    _Atomic int nheld; /* how many names are held; -1: too many, no name is a class's (`ifc_fast_held`) */
    int shm_fd;       /* the label store's WAL index (-1: no database), and its header when the set was made: */
    unsigned char seen[WAL_HEADER]; /* another run's commit since may have made names, so lookups are Python's */
} listed = {.lock = PTHREAD_RWLOCK_INITIALIZER, .shm_fd = -1};

static size_t slot(const struct map *m, uint64_t dev, uint64_t ino) {
    uint64_t h = (ino * 0x9E3779B97F4A7C15ull) ^ (dev * 0xC2B2AE3D27D4EB4Full);
    size_t i = (size_t)(h >> 17) & (m->cap - 1);
    while (m->val[i] && (m->dev[i] != dev || m->ino[i] != ino))
        i = (i + 1) & (m->cap - 1);
    return i;
}

static uint64_t map_get(struct map *m, uint64_t dev, uint64_t ino) {
    uint64_t v = 0;
    pthread_mutex_lock(&m->lock);
    if (m->used)
        v = m->val[slot(m, dev, ino)];
    pthread_mutex_unlock(&m->lock);
    return v;
}

static int map_grow(struct map *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    struct map bigger = {.cap = cap, .used = 0};
    bigger.dev = calloc(cap, 8), bigger.ino = calloc(cap, 8), bigger.val = calloc(cap, 8);
    if (!bigger.dev || !bigger.ino || !bigger.val) {
        free(bigger.dev), free(bigger.ino), free(bigger.val);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->val[i]) {
            size_t j = slot(&bigger, m->dev[i], m->ino[i]);
            bigger.dev[j] = m->dev[i], bigger.ino[j] = m->ino[i], bigger.val[j] = m->val[i];
            bigger.used++;
        }
    free(m->dev), free(m->ino), free(m->val);
    m->cap = cap, m->used = bigger.used, m->dev = bigger.dev, m->ino = bigger.ino, m->val = bigger.val;
    return 0;
}

/* Entries are never deleted: an incarnation only counts up (`val` 0: one more), and a view's entry is 1 + its opens
   (1: none). */
static int map_set(struct map *m, uint64_t dev, uint64_t ino, uint64_t val) {
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    if ((m->used + 1) * 2 > m->cap && map_grow(m) != 0) {
        rc = -1;
    } else {
        size_t i = slot(m, dev, ino);
        if (!m->val[i]) {
            m->dev[i] = dev, m->ino[i] = ino;
            m->used++;
        }
        m->val[i] = val ? val : (m->val[i] ? m->val[i] : 1) + 1;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* Warm answers: (subject slot, name) -> the inode the monitor's repeatable answer was for, the clock tick read
   before it was decided and the token window it holds in; with the hits Python has not yet counted in the
   monitor. The slot is the subject's for read-only opens (`read`), its slot | CHANGES for changes of mode,
   owner and times (`chmod`). */
struct warm_entry {
    char *rel; /* NULL: empty */
    int slot;
    uint64_t dev, ino, tick;
    double not_before, expires;
    _Atomic uint64_t hits;
    _Atomic int64_t last_ns;
};
static struct {
    pthread_rwlock_t lock;
    struct warm_entry *slots; /* MAX_WARM of them */
    size_t used;
    int watch;                          /* the label store is a database: its WAL index header must be unchanged */
    int shm_fd;                         /* the store's own descriptor (never closed here: SQLite's locks ride on it) */
    unsigned char seen[WAL_HEADER];     /* the header as Python last saw it, its answers current with it */
    char *stale[MAX_STALE];             /* names whose label changed (NULL: empty) ... */
    uint64_t stale_at[MAX_STALE];       /* ... and the tick it changed at */
    size_t nstale;
} warm = {.lock = PTHREAD_RWLOCK_INITIALIZER, .shm_fd = -1};
static _Atomic uint64_t ticks = 1; /* the clock: one tick per change that may move an answer */
static _Atomic uint64_t floor_tick = 1; /* answers decided before this tick are all stale */
static _Atomic uint64_t unseen_hits;  /* warm opens Python has not counted yet */

/* Caller threads -> subject slot, each kept by a pidfd of that very thread (signal 0 through it says the thread
   still exists; a pidfd never names a later thread with the same id). */
static struct {
    pthread_mutex_t lock;
    pid_t tid[MAX_CALLERS];
    int pidfd[MAX_CALLERS], slot[MAX_CALLERS]; /* pidfd -1: empty (set so by ifc_fast_configure) */
    size_t used;
} callers = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* FNV-1a of a name, from `seed`, folded: where an open-addressing table starts looking for it. */
static uint64_t name_hash(uint64_t seed, const char *rel) {
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (const unsigned char *p = (const unsigned char *)rel; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static size_t warm_index(int slot, const char *rel) {
    size_t i = (size_t)name_hash((uint64_t)(unsigned)slot, rel) & (MAX_WARM - 1);
    while (warm.slots[i].rel && (warm.slots[i].slot != slot || strcmp(warm.slots[i].rel, rel) != 0))
        i = (i + 1) & (MAX_WARM - 1);
    return i;
}

static size_t caller_index(pid_t tid) {
    size_t i = ((uint32_t)tid * 2654435761u) & (MAX_CALLERS - 1);
    while (callers.pidfd[i] >= 0 && callers.tid[i] != tid)
        i = (i + 1) & (MAX_CALLERS - 1);
    return i;
}

/* ------------------------------------------------------------------------------------------ set up (Python) */

int ifc_fast_configure(int root, uint64_t dev, size_t fh_offset, size_t max_fds, int track_links, int views_on) {
    if (cfg.root != -1)
        return -2; /* one mount per process */
    if (!(warm.slots = calloc(MAX_WARM, sizeof *warm.slots)))
        return -1;
    for (size_t i = 0; i < MAX_CALLERS; i++)
        callers.pidfd[i] = -1;
    cfg.root = root;
    cfg.dev = (dev_t)dev;
    cfg.fh_offset = fh_offset;
    cfg.track_links = track_links;
    cfg.views = views_on;
    cfg.is_root = geteuid() == 0;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&name_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    handles = calloc(max_fds, sizeof *handles);
    if (!handles)
        return -1;
    nhandles = max_fds;
    return 0;
}

void ifc_fast_ids(uid_t owner_uid, gid_t owner_gid, uid_t agent_uid, gid_t agent_gid) {
    cfg.map_ids = 1;
    cfg.owner_uid = owner_uid, cfg.owner_gid = owner_gid, cfg.agent_uid = agent_uid, cfg.agent_gid = agent_gid;
}

int ifc_fast_reserve(const char *name) {
    if (cfg.nreserved == MAX_NAMES)
        return -1;
    cfg.reserved[cfg.nreserved++] = strdup(name);
    return 0;
}

int ifc_fast_format(const char *pattern) {
    if (cfg.nformats == MAX_NAMES * 2)
        return -1;
    cfg.formats[cfg.nformats++] = strdup(pattern);
    return 0;
}

/* For warm opens: libfuse's fuse_get_context, whether every caller is one subject, and where FOPEN_NOFLUSH is. */
void ifc_fast_callers(context_fn context, int one_subject, size_t noflush_byte, unsigned noflush_bit) {
    cfg.context = context;
    cfg.one_subject = one_subject;
    cfg.noflush_byte = noflush_byte;
    cfg.noflush_mask = (unsigned char)(1u << noflush_bit);
}

/* The Python callbacks, in the order of ifc.enforce.fastpath.OPERATIONS. */
void ifc_fast_fallbacks(getattr_fn g, read_fn r, write_fn w, flush_fn f, getxattr_fn x, flush_fn rl, readdir_fn rd,
                        open_fn o, chmod_fn cm, chown_fn co, utimens_fn ut, mkdir_fn mk, create_fn cr, unlink_fn ul,
                        unlink_fn rm) {
    cfg.py_getattr = g, cfg.py_read = r, cfg.py_write = w, cfg.py_flush = f, cfg.py_getxattr = x;
    cfg.py_release = rl, cfg.py_readdir = rd, cfg.py_open = o;
    cfg.py_chmod = cm, cfg.py_chown = co, cfg.py_utimens = ut;
    cfg.py_mkdir = mk, cfg.py_create = cr, cfg.py_unlink = ul, cfg.py_rmdir = rm;
}

/* A descriptor Python opened and decided: PLAIN (read only), WRITE_FREE (no monitor), or WRITE_CHECKED at
   taint generation `gen` for name `rel` (called again after every write Python decided anew). */
int ifc_fast_mark(uint64_t fh, int kind, const char *rel, uint64_t gen) {
    if (fh >= nhandles)
        return 0; /* not marked: Python answers it */
    struct handle *h = &handles[fh];
    char *copy = NULL;
    if (kind == WRITE_CHECKED && !(copy = strdup(rel)))
        return -1;
    pthread_mutex_lock(&rel_lock);
    char *old = h->rel;
    h->rel = copy;
    h->generation = gen;
    h->made = 0;
    atomic_store(&h->kind, kind);
    pthread_mutex_unlock(&rel_lock);
    free(old);
    return 0;
}

void ifc_fast_close(uint64_t fh) {
    if (fh >= nhandles)
        return;
    struct handle *h = &handles[fh];
    pthread_mutex_lock(&rel_lock);
    atomic_store(&h->kind, NONE);
    char *old = h->rel;
    h->rel = NULL;
    h->made = 0;
    pthread_mutex_unlock(&rel_lock);
    free(old);
}

uint64_t ifc_fast_generation(void) { return atomic_load(&generation); }

void ifc_fast_taint_moved(void) { atomic_fetch_add(&generation, 1); }

void ifc_fast_links_seen(void) { atomic_store(&links_seen, 1); }

/* Open views of an inode: 1 + how many (an entry is never removed; 1 means none). */
int ifc_fast_view(uint64_t dev, uint64_t ino, uint64_t opens) { return map_set(&views, dev, ino, opens + 1); }

/* ------------------------------------------------------------------------------------------ warm opens (Python) */

/* The clock's tick now: read before a decision, recorded with its answer. */
uint64_t ifc_fast_decisions(void) { return atomic_load(&ticks); }

/* No answer given before may hold now: the taint rose, the revocation list or the label store as a whole moved. */
void ifc_fast_stale(void) { atomic_store(&floor_tick, atomic_fetch_add(&ticks, 1) + 1); }

static size_t stale_index(const char *rel) {
    size_t i = (size_t)name_hash(0, rel) & (MAX_STALE - 1);
    while (warm.stale[i] && strcmp(warm.stale[i], rel) != 0)
        i = (i + 1) & (MAX_STALE - 1);
    return i;
}

/* The label of `rel` changed: answers about it decided before now are stale. */
void ifc_fast_stale_name(const char *rel) {
    pthread_rwlock_wrlock(&warm.lock);
    uint64_t tick = atomic_fetch_add(&ticks, 1) + 1;
    size_t i = stale_index(rel);
    char *copy = warm.stale[i] ? warm.stale[i] : (warm.nstale + 1) * 2 > MAX_STALE ? NULL : strdup(rel);
    if (copy) {
        if (!warm.stale[i])
            warm.nstale++;
        warm.stale[i] = copy, warm.stale_at[i] = tick;
    } else { /* full (or no memory): forget the names, and every answer with them */
        for (size_t j = 0; j < MAX_STALE; j++)
            free(warm.stale[j]), warm.stale[j] = NULL;
        warm.nstale = 0;
        atomic_store(&floor_tick, tick);
    }
    pthread_rwlock_unlock(&warm.lock);
}

static size_t listed_index(const char *rel) {
    size_t i = (size_t)name_hash(0, rel) & (MAX_LISTED - 1);
    while (listed.names[i] && strcmp(listed.names[i], rel) != 0)
        i = (i + 1) & (MAX_LISTED - 1);
    return i;
}

/* The label store as Python last looked (`header`, WAL_HEADER bytes, of the WAL index `shm_fd`; -1: no database),
   for lookups and listings and for warm and class answers alike: whatever changed since an answer was recorded is
   stale already (this run's own changes name by name, another run's all at once), so answers recorded before
   hold with this header as with theirs — and a run's own commit (a hard link's record, a floated label) no longer
   sends every answer to Python until its next decision. */
void ifc_fast_listed_seen(int shm_fd, const unsigned char *header) {
    pthread_rwlock_wrlock(&listed.lock);
    listed.shm_fd = shm_fd;
    if (shm_fd >= 0)
        memcpy(listed.seen, header, WAL_HEADER);
    pthread_rwlock_unlock(&listed.lock);
    pthread_rwlock_wrlock(&warm.lock);
    warm.watch = shm_fd >= 0;
    warm.shm_fd = shm_fd;
    if (shm_fd >= 0)
        memcpy(warm.seen, header, WAL_HEADER);
    pthread_rwlock_unlock(&warm.lock);
}

/* The names whose reading is decided, all of them: `count` names, each NUL-terminated, one after the other in
   `names` ("" is the root). Replaces the set; more than half the table: every name is. */
void ifc_fast_listed(const char *names, size_t count) {
    pthread_rwlock_wrlock(&listed.lock);
    for (size_t i = 0; i < MAX_LISTED; i++)
        free(listed.names[i]), listed.names[i] = NULL, listed.held[i] = 0;
    atomic_store(&listed.nheld, 0); /* the set has every stored name now, the run's own too */
    int used = 0;
    for (size_t k = 0; k < count && used >= 0; k++, names += strlen(names) + 1) {
        size_t i = listed_index(names);
        if (listed.names[i])
            continue;
        listed.names[i] = (used + 1) * 2 > MAX_LISTED ? NULL : strdup(names);
        used = listed.names[i] ? used + 1 : -1;
    }
    atomic_store(&listed.used, used);
    pthread_rwlock_unlock(&listed.lock);
}

/* Is reading the name `rel` (a lookup; a directory's listing) decided (`held` 0)? Or has it a label or record a
   class's answer did not read (`held` 1: listed, or held)? Both also when someone committed to the label store
   since Python made the set (another run's names or labels: Python looks again, and says so). */
static int in_listed(const char *rel, int held) {
    unsigned char now[WAL_HEADER];
    pthread_rwlock_rdlock(&listed.lock);
    int hit = listed.shm_fd >= 0 && (pread(listed.shm_fd, now, WAL_HEADER, 0) != WAL_HEADER ||
                                     memcmp(now, listed.seen, WAL_HEADER) != 0);
    int used = atomic_load(&listed.used), nheld = held ? atomic_load(&listed.nheld) : 0;
    if (!hit && (used || nheld)) {
        size_t i = listed_index(rel);
        hit = used < 0 || nheld < 0 || (listed.names[i] != NULL && (held || !listed.held[i]));
    }
    pthread_rwlock_unlock(&listed.lock);
    return hit;
}

static int is_listed(const char *rel) { return in_listed(rel, 0); }

/* Names this run's own commits gave a stored label, record or object (Python, after each commit: `count` names,
   NUL-terminated, one after the other). Lookups of them stay this side's (the run changed them, or saw them as
   they were); but no answer of a class is theirs: the class was decided on a name with none (a key renamed
   under a plain name keeps `secret` unread). More than fit: no name is a class's, until Python lists every
   stored name again (`ifc_fast_listed`). */
void ifc_fast_held(const char *names, size_t count) {
    pthread_rwlock_wrlock(&listed.lock);
    for (size_t k = 0; k < count && atomic_load(&listed.nheld) >= 0; k++, names += strlen(names) + 1) {
        size_t i = listed_index(names);
        if (listed.names[i])
            continue; /* listed already, or held */
        int used = atomic_load(&listed.used), held = atomic_load(&listed.nheld);
        char *copy = (used < 0 ? 0 : used) + held + 1 > MAX_LISTED / 2 ? NULL : strdup(names);
        if (!copy) {
            atomic_store(&listed.nheld, -1);
            break;
        }
        listed.names[i] = copy, listed.held[i] = 1;
        atomic_store(&listed.nheld, held + 1);
    }
    pthread_rwlock_unlock(&listed.lock);
}

/* Is the answer for `rel` recorded at `tick` still current? (Called with the warm table locked.) */
static int current(const char *rel, uint64_t tick) {
    if (tick < atomic_load(&floor_tick))
        return 0;
    size_t i = stale_index(rel);
    return !warm.stale[i] || warm.stale_at[i] <= tick;
}

/* Thread `tid` is subject `slot` while the thread that `pidfd` names lives; the pidfd is this side's now. */
void ifc_fast_caller(pid_t tid, int pidfd, int slot) {
    pthread_mutex_lock(&callers.lock);
    if (callers.used * 2 >= MAX_CALLERS) { /* full: forget all; Python tells again as threads call */
        for (size_t i = 0; i < MAX_CALLERS; i++)
            if (callers.pidfd[i] >= 0)
                close(callers.pidfd[i]), callers.pidfd[i] = -1;
        callers.used = 0;
    }
    size_t i = caller_index(tid);
    if (callers.pidfd[i] >= 0)
        close(callers.pidfd[i]);
    else
        callers.used++;
    callers.tid[i] = tid, callers.pidfd[i] = pidfd, callers.slot[i] = slot;
    pthread_mutex_unlock(&callers.lock);
}

/* The thread id of the request being served (libfuse's context), or 0 when there is none. */
static pid_t caller_tid(void) {
    struct context *ctx = cfg.context ? cfg.context() : NULL;
    return ctx && ctx->pid > 0 ? ctx->pid : 0;
}

/* Is the thread of the request being served known as subject `slot` (and not found gone since)? */
static int caller_is(int slot) {
    if (cfg.one_subject)
        return 1;
    pid_t tid = caller_tid();
    if (!tid)
        return 0;
    pthread_mutex_lock(&callers.lock);
    size_t i = caller_index(tid);
    int known = callers.pidfd[i] >= 0 && callers.slot[i] == slot; /* a dead one's slot is -1 (caller_slot) */
    pthread_mutex_unlock(&callers.lock);
    return known;
}

/* The monitor allowed subject `slot` (the subject of the thread whose request is being served) to read `rel`,
   inode (dev, ino), deciding after clock tick `tick`; it says the answer repeats in [not_before, expires) while the
   label store's WAL index (`shm_fd`, -1: the store is no database) has the `header` it saw. One packed record
   (ifc.enforce.fastpath.RECORD: little-endian int32 slot, int32 shm_fd, uint64 dev, ino, tick, double not_before,
   expires, the header's WAL_HEADER bytes, then the name and its NUL), not ten arguments: ctypes converts each
   argument in Python, and a record is made for every read the daemon decides. Returns how many warm opens Python
   has not counted yet, or FULL (nothing recorded: Python drains and clears the table, then asks again), or
   UNKNOWN_THREAD (recorded, but this side does not know the caller's thread as `slot`: Python tells it,
   `ifc_fast_caller`). */
int ifc_fast_warm(const unsigned char *record, size_t len) {
    int32_t slot, shm_fd;
    uint64_t dev, ino, tick;
    double not_before, expires;
    size_t head = 8 + 24 + 16 + WAL_HEADER;
    if (len <= head || record[len - 1] != '\0')
        return FULL; /* malformed: nothing recorded (Python never sends one) */
    memcpy(&slot, record, 4), memcpy(&shm_fd, record + 4, 4);
    memcpy(&dev, record + 8, 8), memcpy(&ino, record + 16, 8), memcpy(&tick, record + 24, 8);
    memcpy(&not_before, record + 32, 8), memcpy(&expires, record + 40, 8);
    const unsigned char *header = record + 48;
    const char *rel = (const char *)record + head;
    pthread_rwlock_wrlock(&warm.lock);
    size_t i = warm_index(slot, rel);
    struct warm_entry *e = &warm.slots[i];
    if (!e->rel) {
        char *copy = (warm.used + 1) * 2 > MAX_WARM ? NULL : strdup(rel);
        if (!copy) {
            pthread_rwlock_unlock(&warm.lock);
            return FULL;
        }
        e->rel = copy, e->slot = slot;
        atomic_store(&e->hits, 0);
        warm.used++;
    }
    e->dev = dev, e->ino = ino, e->tick = tick, e->not_before = not_before, e->expires = expires;
    warm.watch = shm_fd >= 0;
    warm.shm_fd = shm_fd;
    if (shm_fd >= 0)
        memcpy(warm.seen, header, WAL_HEADER);
    pthread_rwlock_unlock(&warm.lock);
    if (!caller_is(slot & ~CHANGES))
        return UNKNOWN_THREAD;
    return (int)(atomic_load(&unseen_hits) < INT32_MAX ? atomic_load(&unseen_hits) : INT32_MAX);
}

/* Hand every entry's uncounted hits to `fn` (slot, name, hits, last hit in ns), zeroing them; with `clear`, empty
   the table too. `fn` must not call back into this file's warm functions (the table is locked). */
void ifc_fast_drain(hit_fn fn, int clear) {
    pthread_rwlock_wrlock(&warm.lock);
    for (size_t i = 0; i < MAX_WARM; i++) {
        struct warm_entry *e = &warm.slots[i];
        if (!e->rel)
            continue;
        uint64_t hits = atomic_exchange(&e->hits, 0);
        if (hits) {
            atomic_fetch_sub(&unseen_hits, hits);
            fn(e->slot, e->rel, hits, atomic_load(&e->last_ns));
        }
        if (clear)
            free(e->rel), memset(e, 0, sizeof *e);
    }
    if (clear)
        warm.used = 0;
    pthread_rwlock_unlock(&warm.lock);
}

/* ------------------------------------------------------------------------------------------ helpers */

static uint64_t fh_of(void *fi) {
    uint64_t fh;
    memcpy(&fh, (char *)fi + cfg.fh_offset, sizeof fh);
    return fh;
}

static int kind_of(uint64_t fh) { return fh < nhandles ? atomic_load(&handles[fh].kind) : NONE; }

/* A FUSE path as Python's Backing.relative makes it, or NULL when Python must answer it: `..` as a component,
   a reserved name, or longer than one openat2 takes. */
static const char *relative(const char *path) {
    const char *rel = path + strspn(path, "/");
    if (strlen(rel) >= PATH_PIECE)
        return NULL;
    for (const char *p = rel; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == rel || p[-1] == '/') && (p[2] == '\0' || p[2] == '/'))
            return NULL;
    for (int i = 0; i < cfg.nreserved; i++)
        if (strcmp(rel, cfg.reserved[i]) == 0)
            return NULL;
    return rel;
}

/* Every open but an O_PATH one leaves the access time as it was (O_NOATIME; as ifc.enforce.fs.Backing.open): the
   instant a run reads a file is its choice, and no later run may read it off. Not the file's owner and without
   CAP_FOWNER, the daemon may not: then as asked. */
static int openat2_mode(int dirfd, const char *path, int flags, mode_t mode) {
    int noatime = flags & O_PATH ? 0 : O_NOATIME;
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC | noatime), .mode = mode, .resolve = RESOLVE};
    int fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (fd < 0 && errno == EPERM && noatime && !(flags & O_NOATIME)) {
        how.flags &= ~(uint64_t)O_NOATIME;
        fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    }
    return fd;
}

static int openat2_beneath(int dirfd, const char *path, int flags) { return openat2_mode(dirfd, path, flags, 0); }

/* lstat of `rel` beneath the root, as Backing.lstat: its parent by openat2, the name by fstatat. */
static int lstat_beneath(const char *rel, struct stat *st) {
    if (!*rel)
        return fstat(cfg.root, st) ? -errno : 0;
    const char *slash = strrchr(rel, '/');
    if (!slash)
        return fstatat(cfg.root, rel, st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
    if (slash[1] == '\0')
        return -EINVAL; /* the workspace root has no parent (a trailing slash): Python says so */
    char head[PATH_PIECE];
    size_t len = (size_t)(slash - rel);
    memcpy(head, rel, len);
    head[len] = '\0';
    int dfd = openat2_beneath(cfg.root, head, O_PATH | O_DIRECTORY);
    if (dfd < 0)
        return -errno;
    int rc = fstatat(dfd, slash + 1, st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
    close(dfd);
    return rc;
}

/* A glob of `*` and literal bytes (the only metacharacter of ifc.secretfiles.registry.FORMATS; Python hands
   over no other), matched bytewise as fnmatchcase does on the name's bytes. */
static int glob(const char *pattern, const char *s) {
    for (; *pattern; pattern++, s++) {
        if (*pattern == '*') {
            for (const char *rest = s;; rest++) {
                if (glob(pattern + 1, rest))
                    return 1;
                if (!*rest)
                    return 0;
            }
        }
        if (*pattern != *s)
            return 0;
    }
    return *s == '\0';
}

/* Would Python's format_of(rel) name a secret-file format? The same globs, over the name, or over the last
   two components for a glob with a `/`. */
int ifc_fast_secret_format(const char *rel) {
    const char *name = strrchr(rel, '/');
    name = name ? name + 1 : rel;
    const char *tail = rel;
    for (const char *p = name - 1; name > rel && p > rel; p--)
        if (p[-1] == '/') {
            tail = p;
            break;
        }
    for (int i = 0; i < cfg.nformats; i++)
        if (glob(cfg.formats[i], strchr(cfg.formats[i], '/') ? tail : name))
            return 1;
    return 0;
}

static uint64_t served_ino(dev_t dev, ino_t ino) {
    uint64_t epoch = map_get(&epochs, dev, ino);
    return epoch > 1 ? (uint64_t)ino ^ ((epoch - 1) << EPOCH_SHIFT) : (uint64_t)ino;
}

/* ------------------------------------------------------------------------------------------ the operations */

int ifc_fast_getattr(const char *path, struct stat *out, void *fi) {
    struct stat st;
    int rc;
    const char *rel = path ? relative(path) : NULL;
    if (fi) {
        if (kind_of(fh_of(fi)) == NONE)
            return cfg.py_getattr(path, out, fi);
        rc = fstat((int)fh_of(fi), &st) ? -errno : 0;
    } else {
        if (!rel)
            return cfg.py_getattr(path, out, fi);
        if (*rel && is_listed(rel))
            return cfg.py_getattr(path, out, fi); /* a lookup of it is a read */
        rc = lstat_beneath(rel, &st);
    }
    if (rc)
        return rc;
    if (st.st_nlink > 1 && cfg.track_links && !S_ISDIR(st.st_mode))
        return cfg.py_getattr(path, out, fi); /* Python keeps the names of multi-link files */
    if (cfg.views && S_ISREG(st.st_mode) && st.st_nlink == 1 &&
        (map_get(&views, st.st_dev, st.st_ino) > 1 || !rel || ifc_fast_secret_format(rel)))
        return cfg.py_getattr(path, out, fi); /* maybe served as a view: its size is the view's */
    memset(out, 0, sizeof *out);
    out->st_mode = st.st_mode;
    out->st_ino = served_ino(st.st_dev, st.st_ino);
    out->st_nlink = S_ISDIR(st.st_mode) ? DIR_NLINK : st.st_nlink; /* a directory's: as fs.DIR_* */
    out->st_uid = cfg.map_ids && st.st_uid == cfg.owner_uid ? cfg.agent_uid : st.st_uid;
    out->st_gid = cfg.map_ids && st.st_gid == cfg.owner_gid ? cfg.agent_gid : st.st_gid;
    out->st_size = S_ISDIR(st.st_mode) ? DIR_SIZE : st.st_size;
    out->st_rdev = st.st_rdev;
    out->st_blocks = S_ISDIR(st.st_mode) ? DIR_BLOCKS : st.st_blocks;
    out->st_blksize = st.st_blksize;
    out->st_atim = st.st_atim;
    out->st_mtim = st.st_mtim;
    out->st_ctim = st.st_ctim;
    return 0;
}

int ifc_fast_read(const char *path, char *buf, size_t size, off_t offset, void *fi) {
    if (kind_of(fh_of(fi)) == NONE)
        return cfg.py_read(path, buf, size, offset, fi);
    ssize_t n = pread((int)fh_of(fi), buf, size, offset);
    return n < 0 ? -errno : (int)n;
}

/* A write on a descriptor whose write was decided at the run's present taint, for the name it has now. */
int ifc_fast_write(const char *path, const char *buf, size_t size, off_t offset, void *fi) {
    uint64_t fh = fh_of(fi);
    int kind = kind_of(fh);
    if (kind == WRITE_CHECKED) {
        pthread_mutex_lock(&rel_lock);
        struct handle *h = &handles[fh];
        int same = atomic_load(&h->kind) == WRITE_CHECKED && h->generation == atomic_load(&generation) &&
                   h->rel && (!path || strcmp(path + strspn(path, "/"), h->rel) == 0);
        pthread_mutex_unlock(&rel_lock);
        if (!same)
            return cfg.py_write(path, buf, size, offset, fi);
    } else if (kind != WRITE_FREE) {
        return cfg.py_write(path, buf, size, offset, fi);
    }
    ssize_t n = pwrite((int)fh, buf, size, offset);
    return n < 0 ? -errno : (int)n;
}

int ifc_fast_flush(const char *path, void *fi) {
    uint64_t fh = fh_of(fi);
    if (kind_of(fh) == NONE)
        return cfg.py_flush(path, fi);
    struct stat st; /* a file with other names: Python tells the kernel their size and times moved */
    if (atomic_load(&links_seen) && (fstat((int)fh, &st) != 0 || st.st_nlink > 1))
        return cfg.py_flush(path, fi);
    return 0;
}

/* `security.*` and `system.*` attributes: no decision (they carry no data of the workspace's). */
int ifc_fast_getxattr(const char *path, const char *name, char *value, size_t size) {
    const char *rel = path ? relative(path) : NULL;
    if (!rel || (strncmp(name, "security.", 9) != 0 && strncmp(name, "system.", 7) != 0))
        return cfg.py_getxattr(path, name, value, size);
    int fd = openat2_beneath(cfg.root, *rel ? rel : ".", O_PATH);
    if (fd < 0) {
        if (errno == ELOOP)
            return -ENODATA; /* a symlink: no attributes of its own are served */
        if (errno == EACCES || errno == EPERM)
            return cfg.py_getxattr(path, name, value, size);
        return -errno;
    }
    char proc[32];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = getxattr(proc, name, value, size);
    int err = errno;
    close(fd);
    if (n >= 0)
        return (int)n;
    if (err == EACCES || err == EPERM)
        return cfg.py_getxattr(path, name, value, size);
    return err == ELOOP ? -ENODATA : -err;
}

/* A descriptor Python keeps nothing for (read only, any without a monitor, a new file made here that Python never
   asked about: `made_handle`): closed here. */
int ifc_fast_release(const char *path, void *fi) {
    uint64_t fh = fh_of(fi);
    int kind = kind_of(fh);
    if (kind == WRITE_CHECKED) {
        pthread_mutex_lock(&rel_lock);
        kind = handles[fh].made ? PLAIN : WRITE_CHECKED;
        pthread_mutex_unlock(&rel_lock);
    }
    if (kind != PLAIN && kind != WRITE_FREE)
        return cfg.py_release(path, fi);
    ifc_fast_close(fh); /* before the number can be handed out again */
    return close((int)fh) ? -errno : 0;
}

static mode_t dtype_mode(int dirfd, const struct dirent *e) {
    switch (e->d_type) {
    case DT_LNK:
        return S_IFLNK;
    case DT_DIR:
        return S_IFDIR;
    case DT_REG:
        return S_IFREG;
    case DT_UNKNOWN: { /* as os.scandir: ask the filesystem */
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            (S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)))
            return st.st_mode & S_IFMT;
        return 0;
    }
    default:
        return 0; /* other types: the kernel asks getattr */
    }
}

/* A listing: names with their inode numbers and types, straight from getdents, as EnforcingFS.readdir (all at
   offset 0: libfuse keeps the listing and serves the kernel's later pieces from it). */
int ifc_fast_readdir(const char *path, void *buf, fill_fn fill, off_t offset, void *fi, int flags) {
    const char *rel = path ? relative(path) : NULL;
    if (!rel || is_listed(rel))
        return cfg.py_readdir(path, buf, fill, offset, fi, flags);
    int fd = openat2_beneath(cfg.root, *rel ? rel : ".", O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        if (errno == EACCES || errno == EPERM)
            return cfg.py_readdir(path, buf, fill, offset, fi, flags); /* logged there as a refusal */
        return -errno;
    }
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int err = errno;
        close(fd);
        return -err;
    }
    struct stat st;
    memset(&st, 0, sizeof st);
    int rc = 0;
    if (fill(buf, ".", &st, 0, 0) || fill(buf, "..", &st, 0, 0))
        goto done;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(dir);
        if (!e) {
            rc = errno ? -errno : 0;
            break;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int hidden = 0; /* names served by the daemon itself (and backing files they hide), at the root */
        for (int i = 0; !*rel && i < cfg.nreserved; i++)
            hidden |= strcmp(e->d_name, cfg.reserved[i]) == 0;
        if (hidden)
            continue;
        memset(&st, 0, sizeof st);
        st.st_ino = served_ino(cfg.dev, e->d_ino);
        st.st_mode = dtype_mode(dirfd(dir), e);
        if (fill(buf, e->d_name, &st, 0, 0))
            break;
    }
done:
    closedir(dir);
    return rc;
}

/* The caller's subject slot, or -1 when Python must find it (a thread it has not told of, or one that is gone). */
static int caller_slot(void) {
    if (cfg.one_subject)
        return 0;
    pid_t tid = caller_tid();
    if (!tid)
        return -1;
    int slot = -1;
    pthread_mutex_lock(&callers.lock);
    size_t i = caller_index(tid);
    if (callers.pidfd[i] >= 0 && callers.slot[i] >= 0) {
        if (syscall(SYS_pidfd_send_signal, callers.pidfd[i], 0, NULL, 0) == 0)
            slot = callers.slot[i];
        else
            callers.slot[i] = -1; /* that thread is gone: one with its id is Python's until Python tells again */
    }
    pthread_mutex_unlock(&callers.lock);
    return slot;
}

/* Is the label store as Python last saw it? (Called with the warm table locked.) */
static int labels_unchanged(void) {
    if (!warm.watch)
        return 1;
    unsigned char now[WAL_HEADER];
    return pread(warm.shm_fd, now, WAL_HEADER, 0) == WAL_HEADER && memcmp(now, warm.seen, WAL_HEADER) == 0;
}

typedef int (*warm_act)(int fd, const void *arg);

/* What a warm answer may be for: a single-name regular file; for a change of mode, owner or times, also a
   directory (it has one name). */
static int warm_kind(int slot, const struct stat *st) {
    return (S_ISREG(st->st_mode) && st->st_nlink == 1) || ((slot & CHANGES) && S_ISDIR(st->st_mode));
}

/* The warm answer of subject key `slot` for `rel`, if it still holds: the name opened as Python would (openat2
   beneath the root, `flags`) is the same inode, of a kind `warm_kind` allows, and `act` on it succeeded; the hit
   counted. The descriptor, or -1 (nothing done: Python answers). `act` runs with the table locked, so a hit is
   counted only for what was done, and only while the answer was current. */
static int warm_serve(int slot, const char *rel, int flags, warm_act act, const void *arg) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    int fd = -1;
    pthread_rwlock_rdlock(&warm.lock);
    struct warm_entry *e = warm.slots ? &warm.slots[warm_index(slot, rel)] : NULL;
    if (e && e->rel && current(rel, e->tick) && e->not_before <= now && now < e->expires && labels_unchanged()) {
        fd = openat2_beneath(cfg.root, rel, flags);
        struct stat st;
        if (fd >= 0 && (fstat(fd, &st) != 0 || !warm_kind(slot, &st) ||
                        (uint64_t)st.st_dev != e->dev || (uint64_t)st.st_ino != e->ino ||
                        !current(rel, e->tick) || act(fd, arg) != 0)) {
            close(fd);
            fd = -1;
        }
        if (fd >= 0) {
            atomic_fetch_add(&e->hits, 1);
            atomic_fetch_add(&unseen_hits, 1);
            atomic_store(&e->last_ns, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
        }
    }
    pthread_rwlock_unlock(&warm.lock);
    return fd;
}

/* The name a warm answer may be for (not a reserved name, not one that may be a secret-file view), or NULL. */
static const char *warm_name(const char *path) {
    const char *rel = path ? relative(path) : NULL;
    if (!rel || !*rel || (cfg.views && ifc_fast_secret_format(rel)))
        return NULL;
    return rel;
}

static int handle_fits(int fd, const void *arg) {
    (void)arg;
    return (uint64_t)fd < nhandles ? 0 : -1;
}

static int made_open(const char *rel, int flags);

/* A read-only open of a name the monitor already allowed this subject to read, with nothing changed since, or of
   a name its class answers (`made_open`): the open Python would make, marked PLAIN. */
static int warm_open(const char *path, void *fi) {
    int flags;
    memcpy(&flags, fi, sizeof flags); /* struct fuse_file_info starts with the open flags */
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_CREAT | FMODE_EXEC)) || !cfg.py_open)
        return 0;
    const char *rel = warm_name(path);
    int slot = rel ? caller_slot() : -1;
    if (slot < 0)
        return 0;
    int fd = warm_serve(slot, rel, flags & OPEN_KEEP, handle_fits, NULL);
    if (fd < 0 && (fd = made_open(rel, flags & OPEN_KEEP)) < 0)
        return 0;
    ifc_fast_mark((uint64_t)fd, PLAIN, NULL, 0);
    uint64_t fh = (uint64_t)fd;
    memcpy((char *)fi + cfg.fh_offset, &fh, sizeof fh);
    if (cfg.noflush_byte)
        ((unsigned char *)fi)[cfg.noflush_byte] |= cfg.noflush_mask; /* reading only: close(2) asks nothing */
    return 1;
}

/* A change of mode, owner or times (the monitor's `chmod`), as EnforcingFS.chmod, chown and utimens make it on
   the O_PATH descriptor they open. */
struct change {
    enum { MODE, OWNER, TIMES } what;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    const struct timespec *times; /* NULL: both now; UTIME_NOW and UTIME_OMIT as utimensat(2) takes them */
};

static int made_change(const char *rel, const struct change *c);

static int apply_change(int fd, const void *arg) {
    const struct change *c = arg;
    char proc[32];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    switch (c->what) {
    case MODE:
        return fchmodat(AT_FDCWD, proc, c->mode & 07777, 0);
    case OWNER:
        return fchownat(fd, "", c->uid, c->gid, AT_EMPTY_PATH);
    case TIMES:
        return utimensat(AT_FDCWD, proc, c->times, 0);
    }
    return -1;
}

/* A change the monitor already allowed this subject on this name, with nothing changed since: made here. Any
   failure (EPERM of an immutable file, ...) is Python's to make again and log. */
static int warm_change(const char *path, const struct change *c) {
    const char *rel = warm_name(path);
    int slot = rel ? caller_slot() : -1;
    if (slot < 0)
        return 0;
    int fd = warm_serve(slot | CHANGES, rel, O_PATH, apply_change, c);
    if (fd < 0)
        return made_change(rel, c);
    close(fd);
    return 1;
}

int ifc_fast_chmod(const char *path, mode_t mode, void *fi) {
    struct change c = {.what = MODE, .mode = mode};
    return warm_change(path, &c) ? 0 : cfg.py_chmod(path, mode, fi);
}

int ifc_fast_chown(const char *path, uid_t uid, gid_t gid, void *fi) {
    struct change c = {.what = OWNER, .uid = uid, .gid = gid};
    if (cfg.map_ids) { /* the agent giving a file to itself gives it to the workspace's owner (as Python) */
        c.uid = uid == cfg.agent_uid ? cfg.owner_uid : uid;
        c.gid = gid == cfg.agent_gid ? cfg.owner_gid : gid;
    }
    return warm_change(path, &c) ? 0 : cfg.py_chown(path, uid, gid, fi);
}

int ifc_fast_utimens(const char *path, const struct timespec tv[2], void *fi) {
    struct change c = {.what = TIMES, .times = tv};
    return warm_change(path, &c) ? 0 : cfg.py_utimens(path, tv, fi);
}

int ifc_fast_open_file(const char *path, void *fi) {
    return warm_open(path, fi) ? 0 : cfg.py_open(path, fi);
}

/* ------------------------------------------------------------------------------------------ names made and removed

   A new name's create, a name's deletion, a change of its mode, owner or times and a file's first read are
   decided by what the name and its directory match: the policy's globs (file rules, flow and capability sinks,
   the agent's grants, the session token's rights, host-executed configuration), the labels stored for the name
   (none: it is neither `listed` nor held), the run's taint and the token's window. Python gives the globs
   (`ifc_fast_glob`, once), and after the monitor decided one such request without effect — allowed, nothing
   raised, recorded, declassified or logged but the count (Monitor.decide_made) — it records the answer for that
   *class*: the subject, the operation, and which globs the name and its directory match
   (`ifc_fast_made_class`). A later request of the same class is answered here while the clock says nothing
   moved, and noted (`made_log`) for Python to record in the monitor, in order, before its next decision
   (`ifc_fast_made_drain`): the graph's edge, the count. A name that is not plain printable ASCII, of a
   secret-file format, or with a label or record is Python's, as is any failure. docs/benchmarks.md (issue 16,
   parts 12 and 13) has why. */

#define MAX_GLOBS 256
#define SIG_WORDS (MAX_GLOBS / 64)
#define MAX_TOKENS 512
#define MAX_CLASSES 4096
#define MAX_MADE 4096
enum made_op { MADE_CREATE = 1, MADE_DELETE = 2, MADE_CHMOD = 3, MADE_READ = 4 }; /* as fastpath.MADE_OPS */
enum token_kind { T_LIT = 1, T_SET, T_NSET, T_STAR, T_ALL, T_DIRS, T_DESC }; /* as fastpath.TOKENS */

struct token {
    unsigned char kind, c;   /* c: a literal's byte */
    unsigned char set[32];   /* a class's bytes, as a bitmap */
};
static struct {
    struct token *t[MAX_GLOBS];
    int n[MAX_GLOBS];
    int count;
    _Atomic int on; /* the globs are all given: classes may be recorded */
} globs;

struct made_class {
    int used, slot, op, root;
    uint64_t sig[2 * SIG_WORDS]; /* the globs the directory matches, then those the name matches */
    int id;
    uint64_t tick, generation;
    double not_before, expires;
};
static struct made_class *classes; /* MAX_CLASSES of them, under warm.lock */
static size_t nclasses;

struct made_record {
    int id; /* 0: taken back (the request went to Python) */
    int64_t when_ns;
    char *rel;
};
static struct {
    pthread_mutex_t lock;
    struct made_record r[MAX_MADE];
    size_t n;
} made_log = {.lock = PTHREAD_MUTEX_INITIALIZER};

void ifc_fast_names(int how) {
    switch (how) {
    case 0:
        pthread_rwlock_rdlock(&name_lock);
        break;
    case 1:
        pthread_rwlock_wrlock(&name_lock);
        break;
    default:
        pthread_rwlock_unlock(&name_lock);
    }
}

/* One glob of the policy's, as a program (fastpath.program): a kind byte per token, a literal's byte after it, a
   class's count and bytes after it. Classes hold only ASCII; a literal outside it is 0x80 (no plain name has it).
   Returns its number, or -1. */
int ifc_fast_glob(const unsigned char *prog, size_t len) {
    if (globs.count == MAX_GLOBS || atomic_load(&globs.on))
        return -1;
    struct token *t = calloc(len ? len : 1, sizeof *t);
    if (!t)
        return -1;
    int n = 0;
    for (size_t i = 0; i < len;) {
        if (n == MAX_TOKENS)
            goto bad;
        struct token *k = &t[n++];
        k->kind = prog[i++];
        if (k->kind == T_LIT) {
            if (i >= len)
                goto bad;
            k->c = prog[i++];
        } else if (k->kind == T_SET || k->kind == T_NSET) {
            if (i >= len || i + 1 + prog[i] > len)
                goto bad;
            for (size_t j = 0, m = prog[i++]; j < m; j++, i++)
                k->set[prog[i] >> 3] |= (unsigned char)(1u << (prog[i] & 7));
        } else if (k->kind < T_STAR || k->kind > T_DESC) {
            goto bad;
        }
    }
    globs.t[globs.count] = t, globs.n[globs.count] = n;
    return globs.count++;
bad:
    free(t);
    return -1;
}

/* Every glob is given: answers by class may be recorded from now on. */
int ifc_fast_globs_done(void) {
    if (!cfg.context || !(classes = calloc(MAX_CLASSES, sizeof *classes)))
        return -1; /* (no context: the caller is unknown) */
    atomic_store(&globs.on, 1);
    return 0;
}

/* The states of one glob's automaton: i (0..n) before token i, n + 1 + i inside token i (a directory name of `**`, what
   lies beneath a match); followed over the active ones only. */
struct states {
    unsigned char on[2 * MAX_TOKENS + 2];
    int list[2 * MAX_TOKENS + 2];
    int count;
};

static int leads_on(const struct token *t) {
    return t->kind == T_STAR || t->kind == T_ALL || t->kind == T_DIRS || t->kind == T_DESC;
}

static void enter(struct states *s, const struct token *t, int n, int state) {
    while (!s->on[state]) {
        s->on[state] = 1;
        s->list[s->count++] = state;
        if (state < n && leads_on(&t[state])) /* stars, `**` and what lies beneath may match nothing */
            state++;
        else if (state > n && t[state - n - 1].kind == T_DESC) /* beneath a match: the match goes on */
            state = state - n;
        else
            return;
    }
}

/* Does glob `g` match the whole of `s`, as ifc.match.Glob.matches does? And (`*head`) its first `split` bytes? */
static int glob_matches(int g, const char *s, size_t split, int *head) {
    const struct token *t = globs.t[g];
    int n = globs.n[g];
    struct states a, b, *cur = &a, *next = &b;
    memset(a.on, 0, (size_t)(2 * n + 2));
    memset(b.on, 0, (size_t)(2 * n + 2));
    a.count = b.count = 0;
    enter(cur, t, n, 0);
    *head = split == 0 && cur->on[n];
    for (const unsigned char *p = (const unsigned char *)s; *p && cur->count; p++) {
        unsigned c = *p;
        for (int j = 0; j < cur->count; j++) {
            int state = cur->list[j];
            if (state < n) {
                const struct token *k = &t[state];
                int in = (k->set[c >> 3] >> (c & 7)) & 1;
                if ((k->kind == T_LIT && c == k->c) || (k->kind == T_SET && in) ||
                    (k->kind == T_NSET && c != '/' && !in))
                    enter(next, t, n, state + 1);
                else if ((k->kind == T_STAR && c != '/') || k->kind == T_ALL)
                    enter(next, t, n, state);
                else if ((k->kind == T_DIRS && c != '/') || (k->kind == T_DESC && c == '/'))
                    enter(next, t, n, n + 1 + state);
            } else if (state > n) {
                int i = state - n - 1;
                enter(next, t, n, t[i].kind == T_DIRS && c == '/' ? i : state);
            }
        }
        for (int j = 0; j < cur->count; j++)
            cur->on[cur->list[j]] = 0;
        cur->count = 0;
        struct states *swap = cur;
        cur = next, next = swap;
        if ((size_t)(p + 1 - (const unsigned char *)s) == split)
            *head = cur->on[n];
    }
    return cur->on[n];
}

/* Does glob number `g` match `s`? (-1: no such glob.) What tests/test_fuse_made.py holds against Glob.matches. */
int ifc_fast_matches(int g, const char *s) {
    int head;
    return g >= 0 && g < globs.count ? glob_matches(g, s, 0, &head) : -1;
}

/* A name the class answers may be for: printable ASCII (as the globs' bytes are; its length `relative` bounds). */
static int plain_name(const char *rel) {
    for (const unsigned char *p = (const unsigned char *)rel; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            return 0;
    return *rel != '\0';
}

/* The class of (`slot`, `op`, `rel`): filled into `key` (its `used` unset). One pass over the name per glob: its
   directory is its head. */
static void made_key(int slot, int op, const char *rel, struct made_class *key) {
    memset(key, 0, sizeof *key);
    key->slot = slot, key->op = op;
    const char *slash = strrchr(rel, '/');
    key->root = !slash;
    size_t k = slash ? (size_t)(slash - rel) : 0;
    for (int g = 0, head; g < globs.count; g++) {
        if (glob_matches(g, rel, k, &head))
            key->sig[SIG_WORDS + g / 64] |= 1ull << (g % 64);
        if (head)
            key->sig[g / 64] |= 1ull << (g % 64);
    }
}

/* What `made_key` makes of `rel`: whether it is at the root, then the globs its directory and it match (as
   2 * SIG_WORDS words). What tests/test_fuse_made.py holds against the monitor's answers. */
void ifc_fast_class_of(const char *rel, uint64_t *out) {
    struct made_class key;
    made_key(0, 0, rel, &key);
    out[0] = (uint64_t)key.root;
    memcpy(out + 1, key.sig, sizeof key.sig);
}

static size_t class_index(const struct made_class *key) {
    uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)(unsigned)key->slot ^ ((uint64_t)key->op << 32) ^
                 ((uint64_t)key->root << 40);
    for (int i = 0; i < 2 * SIG_WORDS; i++)
        h = (h ^ key->sig[i]) * 0x100000001b3ull;
    size_t i = (size_t)(h ^ (h >> 29)) & (MAX_CLASSES - 1);
    while (classes[i].used && (classes[i].slot != key->slot || classes[i].op != key->op ||
                               classes[i].root != key->root || memcmp(classes[i].sig, key->sig, sizeof key->sig)))
        i = (i + 1) & (MAX_CLASSES - 1);
    return i;
}

/* The monitor answered `op` on `rel` for subject `slot` without effect, deciding after clock tick `tick` at taint
   generation `generation`; the answer repeats for its class in [not_before, expires) while the label store's WAL
   index (`shm_fd`, -1: no database) has `header`. Python numbers the answer `id` (it keeps what it records). One
   packed record (fastpath.CLASS_RECORD, then the name and its NUL). Returns 0, UNKNOWN_THREAD (recorded, but
   the caller's thread must be told: `ifc_fast_caller`), or FULL (not recorded: no class for it). */
int ifc_fast_made_class(const unsigned char *record, size_t len) {
    int32_t slot, op, id, shm_fd;
    uint64_t tick, gen;
    double not_before, expires;
    size_t head = 16 + 16 + 16 + WAL_HEADER;
    if (!atomic_load(&globs.on) || len <= head || record[len - 1] != '\0')
        return FULL;
    memcpy(&slot, record, 4), memcpy(&op, record + 4, 4), memcpy(&id, record + 8, 4), memcpy(&shm_fd, record + 12, 4);
    memcpy(&tick, record + 16, 8), memcpy(&gen, record + 24, 8);
    memcpy(&not_before, record + 32, 8), memcpy(&expires, record + 40, 8);
    const char *rel = (const char *)record + head;
    if (!plain_name(rel) || strlen(rel) >= PATH_PIECE || id <= 0)
        return FULL;
    struct made_class key;
    made_key(slot, op, rel, &key);
    pthread_rwlock_wrlock(&warm.lock);
    if ((nclasses + 1) * 2 > MAX_CLASSES) { /* full: start again */
        memset(classes, 0, MAX_CLASSES * sizeof *classes);
        nclasses = 0;
    }
    struct made_class *e = &classes[class_index(&key)];
    if (!e->used)
        nclasses++;
    *e = key;
    e->used = 1, e->id = id, e->tick = tick, e->generation = gen, e->not_before = not_before, e->expires = expires;
    warm.watch = shm_fd >= 0;
    warm.shm_fd = shm_fd;
    if (shm_fd >= 0)
        memcpy(warm.seen, record + 48, WAL_HEADER);
    pthread_rwlock_unlock(&warm.lock);
    return caller_is(slot) ? 0 : UNKNOWN_THREAD;
}

/* The answer for `op` on `rel` by the caller of the request being served, if its class has one that holds: a
   record in `made_log` taken for it (its index; fill `*decided_at`, the taint generation it was decided at, and the
   answer's id, `*made`), or -1: Python's. The record is taken before
   the request's effect, so a later request on the name, decided in Python, finds it noted (`made_undo` if it
   then goes to Python after all). */
static long made_answer(int op, const char *rel, uint64_t *decided_at, int *made) {
    if (!atomic_load(&globs.on) || !plain_name(rel) || ifc_fast_secret_format(rel) || in_listed(rel, 1))
        return -1;
    int slot = caller_slot();
    if (slot < 0)
        return -1;
    struct made_class key;
    made_key(slot, op, rel, &key);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    int id = 0;
    pthread_rwlock_rdlock(&warm.lock);
    const struct made_class *e = &classes[class_index(&key)];
    if (e->used && current(rel, e->tick) && e->not_before <= now && now < e->expires && labels_unchanged()) {
        id = e->id;
        *decided_at = e->generation;
    }
    pthread_rwlock_unlock(&warm.lock);
    char *copy = id ? strdup(rel) : NULL;
    if (!copy)
        return -1;
    long at = -1;
    pthread_mutex_lock(&made_log.lock);
    if (made_log.n < MAX_MADE) {
        at = (long)made_log.n++;
        made_log.r[at] = (struct made_record){id, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec, copy};
    }
    pthread_mutex_unlock(&made_log.lock);
    if (at < 0)
        free(copy); /* full: Python records what is noted, then answers this one */
    *made = id;
    return at;
}

static void made_undo(long at) {
    pthread_mutex_lock(&made_log.lock);
    made_log.r[at].id = 0;
    pthread_mutex_unlock(&made_log.lock);
}

/* A read-only open of a file this subject has not read yet (nothing warm for it), answered by its class: the
   monitor read another name of the class without effect (an `internal` file once the run holds `internal`). The
   open Python would make, of a regular file with one name only (another name may be labelled otherwise). */
static int made_open(const char *rel, int flags) {
    uint64_t gen;
    int id;
    long at = made_answer(MADE_READ, rel, &gen, &id);
    if (at < 0)
        return -1;
    int fd = openat2_beneath(cfg.root, rel, flags);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || handle_fits(fd, NULL) != 0)) {
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        made_undo(at); /* Python decides it, and says why it fails */
    return fd;
}

/* Hand every noted answer to `fn` (id, name, when in ns), in order, and forget them. `fn` must not call back here. */
void ifc_fast_made_drain(made_fn fn) {
    pthread_mutex_lock(&made_log.lock);
    for (size_t i = 0; i < made_log.n; i++) {
        if (made_log.r[i].id)
            fn(made_log.r[i].id, made_log.r[i].rel, made_log.r[i].when_ns);
        free(made_log.r[i].rel);
    }
    made_log.n = 0;
    pthread_mutex_unlock(&made_log.lock);
}

/* A descriptor made here (a new file) that Python asks about for the first time: the answer it was made under (0:
   none, or asked before), its name into `rel` (`size` bytes), the taint generation it was decided at and the thread
   that made it (`*by`). */
int ifc_fast_made_handle(uint64_t fh, char *rel, size_t size, uint64_t *gen, int *by) {
    if (fh >= nhandles)
        return 0;
    pthread_mutex_lock(&rel_lock);
    struct handle *h = &handles[fh];
    int id = h->made && h->rel && strlen(h->rel) < size ? h->made : 0;
    if (id) {
        strcpy(rel, h->rel);
        *gen = h->generation;
        *by = (int)h->made_by;
        h->made = 0; /* Python keeps a record of it from now on: its release is Python's */
    }
    pthread_mutex_unlock(&rel_lock);
    return id;
}

/* The directory of `rel` beneath the root (an O_PATH descriptor, or the root's own, not to be closed) and the last
   component; -1 with errno. */
static int parent_of(const char *rel, const char **name) {
    const char *slash = strrchr(rel, '/');
    *name = slash ? slash + 1 : rel;
    if (!slash)
        return cfg.root;
    char head[PATH_PIECE];
    memcpy(head, rel, (size_t)(slash - rel));
    head[slash - rel] = '\0';
    return openat2_beneath(cfg.root, head, O_PATH | O_DIRECTORY);
}

static void parent_done(int dfd) {
    if (dfd != cfg.root)
        close(dfd);
}

/* chmod of the name `name` in `dfd` that is no symlink (as ifc.enforce.fs._chmod_at). */
static int chmod_at(int dfd, const char *name, mode_t mode) {
    int fd = openat2_beneath(dfd, name, O_PATH | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    struct stat st;
    int rc = fstat(fd, &st);
    if (rc == 0 && !S_ISLNK(st.st_mode)) {
        char proc[32];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        rc = chmod(proc, mode);
    }
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

/* Make a new object what the caller's own system call would have made, as EnforcingFS._settle_new: the caller's
   (the agent's is the workspace owner's), in a set-gid directory the directory's group, exactly the mode the
   kernel passed. `fd` the object (or -1: `name` in `dfd`). 0 or -errno. */
static int settle_new(int fd, int dfd, const char *name, mode_t mode) {
    struct stat st;
    if (fd >= 0 ? fstat(fd, &st) : fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW))
        return -errno;
    mode_t want = mode & 07777;
    if (S_ISDIR(st.st_mode))
        want |= st.st_mode & S_ISGID; /* inherited from a set-gid parent */
    int chowned = 0;
    struct context *ctx = cfg.context();
    if (cfg.is_root && ctx && ctx->uid != 0 && ctx->uid != (uid_t)-1) {
        uid_t uid = ctx->uid;
        gid_t gid = ctx->gid;
        if (cfg.map_ids && uid == cfg.agent_uid)
            uid = cfg.owner_uid, gid = cfg.owner_gid;
        int keep_group = st.st_gid != getegid(); /* a set-gid parent gave it the parent's group */
        gid_t to = keep_group ? (gid_t)-1 : gid;
        if (fd >= 0 ? fchown(fd, uid, to) : fchownat(dfd, name, uid, to, AT_SYMLINK_NOFOLLOW))
            return -errno;
        chowned = 1;
        if ((want & S_ISGID) && keep_group && st.st_gid != gid && !S_ISDIR(st.st_mode))
            want &= ~(mode_t)S_ISGID;
    }
    if (want != (st.st_mode & 07777) || (chowned && (want & (S_ISUID | S_ISGID))))
        if (fd >= 0 ? fchmod(fd, want) : chmod_at(dfd, name, want))
            return -errno;
    return 0;
}

int ifc_fast_mkdir(const char *path, mode_t mode) {
    const char *rel = path ? relative(path) : NULL;
    uint64_t gen;
    int id;
    long at;
    if (!rel || !*rel)
        return cfg.py_mkdir(path, mode);
    pthread_rwlock_rdlock(&name_lock);
    if ((at = made_answer(MADE_CREATE, rel, &gen, &id)) < 0) {
        pthread_rwlock_unlock(&name_lock);
        return cfg.py_mkdir(path, mode);
    }
    const char *name;
    int dfd = parent_of(rel, &name), made = 0, rc = 0;
    if (dfd >= 0 && (made = mkdirat(dfd, name, mode) == 0))
        rc = settle_new(-1, dfd, name, mode); /* made: a failure from here is the answer */
    if (dfd >= 0)
        parent_done(dfd);
    if (!made)
        made_undo(at);
    pthread_rwlock_unlock(&name_lock);
    return made ? rc : cfg.py_mkdir(path, mode); /* not made: Python decides, makes and logs it */
}

int ifc_fast_create(const char *path, mode_t mode, void *fi) {
    const char *rel = path ? relative(path) : NULL;
    uint64_t gen;
    int id;
    long at;
    if (!rel || !*rel)
        return cfg.py_create(path, mode, fi);
    pthread_rwlock_rdlock(&name_lock);
    if ((at = made_answer(MADE_CREATE, rel, &gen, &id)) < 0) {
        pthread_rwlock_unlock(&name_lock);
        return cfg.py_create(path, mode, fi);
    }
    int flags;
    memcpy(&flags, fi, sizeof flags);
    const char *name;
    int dfd = parent_of(rel, &name), fd = -1, rc = -1;
    if (dfd >= 0) {
        fd = openat2_mode(dfd, name, (flags & OPEN_KEEP & ~O_ACCMODE) | O_CREAT | O_EXCL | O_RDWR, mode & 07777);
        if (fd >= 0 && (uint64_t)fd >= nhandles) { /* no mark for it: Python makes it */
            unlinkat(dfd, name, 0);
            close(fd);
            fd = -1;
        }
        if (fd >= 0 && (rc = settle_new(fd, -1, NULL, mode)) == 0) {
            ifc_fast_mark((uint64_t)fd, WRITE_CHECKED, rel, gen);
            pthread_mutex_lock(&rel_lock);
            handles[fd].made = id;
            handles[fd].made_by = caller_tid();
            pthread_mutex_unlock(&rel_lock);
            uint64_t fh = (uint64_t)fd;
            memcpy((char *)fi + cfg.fh_offset, &fh, sizeof fh);
        } else if (fd >= 0) {
            close(fd);
        }
        parent_done(dfd);
    }
    if (fd < 0)
        made_undo(at);
    pthread_rwlock_unlock(&name_lock);
    return fd < 0 ? cfg.py_create(path, mode, fi) : rc;
}

/* The next file with this inode's number is another one (ifc.enforce.fs.EnforcingFS._died): its incarnation counts
   up. Python asks it (`ifc_fast_epoch_of`) and counts it here too: one table for both. */
int ifc_fast_died(uint64_t dev, uint64_t ino) { return map_set(&epochs, dev, ino, 0); }

uint64_t ifc_fast_epoch_of(uint64_t dev, uint64_t ino) {
    uint64_t v = map_get(&epochs, dev, ino);
    return v ? v - 1 : 0;
}

/* unlink(2) (`dir` 0) or rmdir(2) of a name whose deletion the caller's class answer allows: a single-name file, a
   symlink, or a directory, not open as a view. Nothing done, or failed before any effect: Python's. */
static int made_delete(const char *path, int dir) {
    const char *rel = path ? relative(path) : NULL;
    uint64_t gen;
    int id;
    long at;
    if (!rel || !*rel)
        return 1;
    pthread_rwlock_rdlock(&name_lock);
    if ((at = made_answer(MADE_DELETE, rel, &gen, &id)) < 0) {
        pthread_rwlock_unlock(&name_lock);
        return 1;
    }
    const char *name;
    struct stat st;
    int dfd = parent_of(rel, &name), rc = 1;
    if (dfd >= 0 && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        (dir ? S_ISDIR(st.st_mode) : (S_ISLNK(st.st_mode) || (S_ISREG(st.st_mode) && st.st_nlink == 1))) &&
        (dir || !cfg.views || map_get(&views, st.st_dev, st.st_ino) <= 1)) {
        if (unlinkat(dfd, name, dir ? AT_REMOVEDIR : 0) == 0)
            rc = ifc_fast_died(st.st_dev, st.st_ino) == 0 ? 0 : -ENOMEM;
        else if (dir && (errno == ENOTEMPTY || errno == EEXIST))
            rc = -ENOTEMPTY; /* as EnforcingFS.rmdir, which says so before deciding: nothing to note */
    }
    if (dfd >= 0)
        parent_done(dfd);
    if (rc > 0 || rc == -ENOTEMPTY)
        made_undo(at);
    pthread_rwlock_unlock(&name_lock);
    return rc;
}

int ifc_fast_unlink(const char *path) {
    int rc = made_delete(path, 0);
    return rc > 0 ? cfg.py_unlink(path) : rc;
}

int ifc_fast_rmdir(const char *path) {
    int rc = made_delete(path, 1);
    return rc > 0 ? cfg.py_rmdir(path) : rc;
}

/* A change of mode, owner or times the caller's class answer allows (no warm answer for the name): of a
   single-name file or a directory, made as warm_change makes it. */
static int made_change(const char *rel, const struct change *c) {
    uint64_t gen;
    int id;
    long at = made_answer(MADE_CHMOD, rel, &gen, &id);
    if (at < 0)
        return 0;
    int fd = openat2_beneath(cfg.root, rel, O_PATH);
    struct stat st;
    int done = fd >= 0 && fstat(fd, &st) == 0 && warm_kind(CHANGES, &st) && apply_change(fd, c) == 0;
    if (fd >= 0)
        close(fd);
    if (!done)
        made_undo(at);
    return done;
}
