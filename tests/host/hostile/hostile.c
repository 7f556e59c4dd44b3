/*
 * The hostile guest: a freestanding 64-bit "kernel" that the VMM loads like an ELF vmlinux
 * (long mode, identity-mapped low 4 GiB, interrupts off) and that attacks every virtio-mmio
 * device the VMM gives it, then the legacy I/O ports and unmapped MMIO. It never uses an
 * interrupt: it polls used rings and the device status register.
 *
 * Protocol (docs/hostile-guest.md): progress lines "HOSTILE: ..." on COM1 (the VMM logs them
 * at debug level), "HOSTILE: DONE failures=N" at the end; then the status N goes to port
 * 0xf4, a last disk write is notified and the vCPU triple-faults at once, so the VM stops
 * with that request in flight (sectors INFLIGHT_SECTOR.. INFLIGHT_SECTOR+7).
 *
 * Built with -DHOSTILE_ABRUPT it only does the last step, without reporting a status.
 *
 * A failure is a device that no longer works after an attack and a device reset, or a
 * check of documented behaviour that does not hold (the VMM's, not the spec's wording).
 *
 * Built at test time by tests/host/tests/hostile.rs:
 *   gcc -ffreestanding -nostdlib -static -no-pie -fno-pic -mno-red-zone -mgeneral-regs-only
 *       -O2 -T hostile.ld hostile.c -o hostile.elf
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

/* Must match the test (tests/host/tests/hostile.rs). */
#define RAM_END 0x10000000ull          /* --ram-mib 256 */
#define DISK_SECTORS 8192ull           /* 4 MiB root image */
#define INFLIGHT_SECTOR 2048ull
#define FLOOD_ADDR 0x8000000ull        /* 64 MiB flood buffer (the console uses 2 MiB of it) */
#define FLOOD_LEN (2u << 20)
#define FLOOD_ROUNDS 5                 /* 5 rings of 16 x 2 MiB: 160 MiB through the console */

/* Scratch memory (guest RAM above the initrd). */
#define QUEUE_AREA 0x6000000ull
#define HDR_BUF 0x7000000ull
#define STATUS_BUF 0x7001000ull
#define DATA_BUF 0x7002000ull          /* 64 KiB */
#define INDIRECT_BUF 0x7100000ull
#define VS_TX_BUF 0x7200000ull         /* 256 x 4 KiB */
#define VS_RX_BUF 0x7400000ull         /* 256 x 4 KiB */

#define MMIO_BASE 0xd0000000ull
#define MMIO_SLOTS 16
#define SLOT_SIZE 0x1000

#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEAT 0x010
#define R_DEV_FEAT_SEL 0x014
#define R_DRV_FEAT 0x020
#define R_DRV_FEAT_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS 0x060
#define R_INT_ACK 0x064
#define R_STATUS 0x070
#define R_DESC_LO 0x080
#define R_DESC_HI 0x084
#define R_DRIVER_LO 0x090
#define R_DRIVER_HI 0x094
#define R_DEVICE_LO 0x0a0
#define R_DEVICE_HI 0x0a4
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_FAILED 0x80

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

#define T_NET 1
#define T_BLOCK 2
#define T_CONSOLE 3
#define T_VSOCK 19

#define BLK_IN 0
#define BLK_OUT 1
#define BLK_FLUSH 4
#define BLK_GET_ID 8
#define BLK_S_OK 0

#define VS_OP_REQUEST 1
#define VS_OP_RESPONSE 2
#define VS_OP_RST 3
#define VS_OP_RW 5
#define VS_OP_CREDIT_REQUEST 7
#define VS_GUEST_CID 3
#define VS_HOST_CID 2
#define VS_PORT_STDERR 1030

#define QSIZE 16

#define NET_HDR_LEN 12
#define NET_FLOOD_FRAMES 1000
#define NET_FLOOD_FRAME_LEN 60000      /* 60 MB to the network peer */

static int failures;

/* ---- low level -------------------------------------------------------------------------- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }

static inline u8 r8(u64 a) { return *(volatile u8 *)a; }
static inline u16 r16(u64 a) { return *(volatile u16 *)a; }
static inline u32 r32(u64 a) { return *(volatile u32 *)a; }
static inline u64 r64(u64 a) { return *(volatile u64 *)a; }
static inline void w8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void w16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void w32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void w64(u64 a, u64 v) { *(volatile u64 *)a = v; }

void *memset(void *d, int c, unsigned long n) {
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, unsigned long n) {
    u8 *p = d;
    const u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

/* ---- serial progress -------------------------------------------------------------------- */

static void putc_(char c) { outb(0x3f8, (u8)c); }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void puthex(u64 v) {
    char b[19];
    int i = 18;
    b[i] = 0;
    do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    b[--i] = 'x';
    b[--i] = '0';
    puts_(b + i);
}
static void putdec(u64 v) {
    char b[21];
    int i = 20;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts_(b + i);
}
static void line(const char *s) { puts_("HOSTILE: "); puts_(s); putc_('\n'); }
static void fail(const char *what, const char *detail, u64 v) {
    failures++;
    puts_("HOSTILE: FAIL "); puts_(what); puts_(": "); puts_(detail); puts_(" "); puthex(v); putc_('\n');
}

/* ---- virtio-mmio driver (polling) ------------------------------------------------------- */

struct vdesc { u64 addr; u32 len; u16 flags; u16 next; };

struct vq {
    u64 base;            /* desc table; avail at +0x1000, used at +0x2000 */
    u16 size;
    u16 avail_idx;
    u16 used_seen;
};

struct dev {
    u64 mmio;
    u32 type;
    int nq;
    struct vq q[3];
};

static struct dev devs[MMIO_SLOTS];
static int ndevs;

static volatile struct vdesc *desc(struct vq *q) { return (volatile struct vdesc *)q->base; }
static u64 avail_addr(struct vq *q) { return q->base + 0x1000; }
static u64 used_addr(struct vq *q) { return q->base + 0x2000; }
static u16 used_idx(struct vq *q) { return r16(used_addr(q) + 2); }
static u32 used_len(struct vq *q, u16 i) { return r32(used_addr(q) + 4 + 8 * (u64)(i % q->size) + 4); }

static u32 reg(struct dev *d, u32 off) { return r32(d->mmio + off); }
static void setreg(struct dev *d, u32 off, u32 v) { w32(d->mmio + off, v); }

static void set_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
    volatile struct vdesc *t = desc(q);
    t[i].addr = addr;
    t[i].len = len;
    t[i].flags = flags;
    t[i].next = next;
}

/* Resets the device and sets it up with VERSION_1 only and queues of `qsize`. Returns 0 when
 * the device reached DRIVER_OK without NEEDS_RESET. */
static int dev_setup(struct dev *d, u16 qsize) {
    setreg(d, R_STATUS, 0);
    if (reg(d, R_STATUS) != 0) return -1;
    setreg(d, R_STATUS, S_ACK);
    setreg(d, R_STATUS, S_ACK | S_DRIVER);
    setreg(d, R_DRV_FEAT_SEL, 0);
    setreg(d, R_DRV_FEAT, 0);
    setreg(d, R_DRV_FEAT_SEL, 1);
    setreg(d, R_DRV_FEAT, 1); /* VIRTIO_F_VERSION_1 */
    setreg(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(reg(d, R_STATUS) & S_FEATURES_OK)) return -2;
    for (int i = 0; i < d->nq; i++) {
        struct vq *q = &d->q[i];
        setreg(d, R_QUEUE_SEL, (u32)i);
        u32 max = reg(d, R_QUEUE_NUM_MAX);
        if (max < qsize) return -3;
        q->size = qsize;
        q->avail_idx = 0;
        q->used_seen = 0;
        memset((void *)q->base, 0, 0x3000);
        setreg(d, R_QUEUE_NUM, qsize);
        setreg(d, R_DESC_LO, (u32)q->base);
        setreg(d, R_DESC_HI, 0);
        setreg(d, R_DRIVER_LO, (u32)avail_addr(q));
        setreg(d, R_DRIVER_HI, 0);
        setreg(d, R_DEVICE_LO, (u32)used_addr(q));
        setreg(d, R_DEVICE_HI, 0);
        setreg(d, R_QUEUE_READY, 1);
    }
    setreg(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    u32 s = reg(d, R_STATUS);
    if (s & S_NEEDS_RESET || !(s & S_DRIVER_OK)) return -4;
    return 0;
}

/* Publishes `n` heads starting at ring position avail_idx, then notifies queue `qi`. */
static void publish(struct dev *d, int qi, const u16 *heads, int n) {
    struct vq *q = &d->q[qi];
    for (int i = 0; i < n; i++) {
        w16(avail_addr(q) + 4 + 2 * (u64)((u16)(q->avail_idx + i) % q->size), heads[i]);
    }
    barrier();
    q->avail_idx = (u16)(q->avail_idx + n);
    w16(avail_addr(q) + 2, q->avail_idx);
    barrier();
    setreg(d, R_QUEUE_NOTIFY, (u32)qi);
}

static void submit(struct dev *d, int qi, u16 head) { publish(d, qi, &head, 1); }

#define WAIT_USED 1
#define WAIT_RESET 2
#define WAIT_TIMEOUT 0
#define SHORT_WAIT 600000000ull      /* ~0.2-0.3 s of TSC */
#define LONG_WAIT 60000000000ull     /* ~20-30 s */

/* Waits until the used index reaches `target`, the device needs a reset, or the time is up. */
static int wait_for(struct dev *d, int qi, u16 target, u64 budget) {
    struct vq *q = &d->q[qi];
    u64 start = rdtsc();
    for (u64 n = 0;; n++) {
        barrier();
        if ((u16)(used_idx(q) - target) < 0x8000) {
            q->used_seen = used_idx(q);
            return WAIT_USED;
        }
        if ((n & 63) == 0 && (reg(d, R_STATUS) & S_NEEDS_RESET)) return WAIT_RESET;
        if (rdtsc() - start > budget) return WAIT_TIMEOUT;
        __asm__ volatile("pause");
    }
}

/* As wait_for, but the budget is for each step of progress: the clock restarts whenever the
 * used index moves. */
static int wait_progress(struct dev *d, int qi, u16 target, u64 budget) {
    for (;;) {
        u16 before = used_idx(&d->q[qi]);
        int w = wait_for(d, qi, target, budget);
        if (w != WAIT_TIMEOUT || used_idx(&d->q[qi]) == before) return w;
    }
}

static int wait_one(struct dev *d, int qi, u64 budget) {
    return wait_for(d, qi, (u16)(d->q[qi].used_seen + 1), budget);
}

static const char *outcome(int w) {
    return w == WAIT_USED ? "used" : w == WAIT_RESET ? "needs-reset" : "ignored";
}

static void report(const char *dev, const char *attack, int w) {
    puts_("HOSTILE: ATTACK "); puts_(dev); puts_(" "); puts_(attack); puts_(" -> ");
    puts_(outcome(w)); putc_('\n');
}

/* ---- block ------------------------------------------------------------------------------ */

static void blk_header(u32 type, u64 sector) {
    w32(HDR_BUF, type);
    w32(HDR_BUF + 4, 0);
    w64(HDR_BUF + 8, sector);
    w8(STATUS_BUF, 0xee);
}

/* A well-formed request on descriptors 0..2; returns the status byte or -1. */
static int blk_request(struct dev *d, u32 type, u64 sector, u64 data, u32 len, int data_write) {
    struct vq *q = &d->q[0];
    blk_header(type, sector);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    set_desc(q, 1, data, len, (u16)(F_NEXT | (data_write ? F_WRITE : 0)), 2);
    set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
    submit(d, 0, 0);
    int w = wait_one(d, 0, LONG_WAIT);
    if (w != WAIT_USED) return -1 - w;
    return r8(STATUS_BUF);
}

/* After an attack: reset, set up again, and read sector 0 and 1, which must hold what the
 * test wrote there. */
static void blk_recover(struct dev *d, const char *attack) {
    int rc = dev_setup(d, QSIZE);
    if (rc) { fail(attack, "blk setup after attack", (u64)-rc); return; }
    memset((void *)DATA_BUF, 0, 1024);
    int st = blk_request(d, BLK_IN, 0, DATA_BUF, 1024, 1);
    if (st != BLK_S_OK) { fail(attack, "blk read after attack", (u64)st); return; }
    const char *magic = "HOSTILE-DISK-SECTOR-0";
    for (int i = 0; magic[i]; i++) {
        if (r8(DATA_BUF + i) != (u8)magic[i]) { fail(attack, "blk sector 0 content", i); return; }
    }
    if (r8(DATA_BUF + 512) != 1 || r8(DATA_BUF + 1023) != 1) {
        fail(attack, "blk sector 1 content", r8(DATA_BUF + 512));
    }
}

/* Submits a chain starting at descriptor `head` that the device must not execute; it must
 * complete it (used) or stop the queue (needs reset), then work again after a reset. */
static void blk_bad_chain(struct dev *d, const char *attack, u16 head) {
    submit(d, 0, head);
    int w = wait_one(d, 0, LONG_WAIT);
    report("blk", attack, w);
    if (w == WAIT_USED && used_len(&d->q[0], (u16)(d->q[0].used_seen - 1)) > 1) {
        fail(attack, "device wrote data for a malformed chain", used_len(&d->q[0], 0));
    }
    blk_recover(d, attack);
}

static void attack_blk(struct dev *d) {
    struct vq *q = &d->q[0];
    const char *a;
    line("blk: descriptor attacks");
    if (dev_setup(d, QSIZE)) { fail("blk", "initial setup", 0); return; }
    blk_recover(d, "baseline");

    /* Data buffer outside RAM (the MMIO gap, far above RAM, straddling RAM's end). */
    u64 bad_addrs[] = { 0xe0000000ull, 0x100000000000ull, RAM_END - 256, 0xfffffffffffff000ull };
    for (int i = 0; i < 4; i++) {
        blk_header(BLK_IN, 0);
        set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
        set_desc(q, 1, bad_addrs[i], 4096, F_NEXT | F_WRITE, 2);
        set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
        blk_bad_chain(d, "data-outside-ram", 0);
    }
    /* Length overflowing RAM and the address space. */
    a = "length-overflow";
    blk_header(BLK_IN, 0);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    set_desc(q, 1, DATA_BUF, 0xffffffffu, F_NEXT | F_WRITE, 2);
    set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
    blk_bad_chain(d, a, 0);
    /* Header outside RAM. */
    set_desc(q, 0, 0xd0000000ull, 16, F_NEXT, 1);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT | F_WRITE, 2);
    set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
    blk_bad_chain(d, "header-outside-ram", 0);
    /* Status outside RAM. */
    blk_header(BLK_IN, 0);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT | F_WRITE, 2);
    set_desc(q, 2, RAM_END, 1, F_WRITE, 0);
    blk_bad_chain(d, "status-outside-ram", 0);
    /* A loop: 0 -> 1 -> 0. */
    blk_header(BLK_IN, 0);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT | F_WRITE, 0);
    blk_bad_chain(d, "loop-2", 0);
    /* A self loop. */
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 0);
    blk_bad_chain(d, "self-loop", 0);
    /* A chain through the whole table and back (longer than the queue). */
    blk_header(BLK_IN, 0);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    for (u16 i = 1; i < QSIZE; i++) set_desc(q, i, DATA_BUF, 512, F_NEXT | F_WRITE, (u16)((i + 1) % QSIZE));
    blk_bad_chain(d, "chain-longer-than-queue", 0);
    /* next beyond the table. */
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 0xffff);
    blk_bad_chain(d, "next-out-of-table", 0);
    /* Head index beyond the table. */
    blk_bad_chain(d, "head-out-of-table", 0x8000);
    /* Indirect tables: outside RAM, to itself, nested, bad length, huge. */
    blk_header(BLK_IN, 0);
    set_desc(q, 0, 0xe0000000ull, 48, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-outside-ram", 0);
    volatile struct vdesc *it = (volatile struct vdesc *)INDIRECT_BUF;
    it[0].addr = HDR_BUF; it[0].len = 16; it[0].flags = F_NEXT; it[0].next = 1;
    it[1].addr = INDIRECT_BUF; it[1].len = 48; it[1].flags = F_INDIRECT; it[1].next = 0;
    set_desc(q, 0, INDIRECT_BUF, 32, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-nested-self", 0);
    it[0].addr = HDR_BUF; it[0].len = 16; it[0].flags = F_NEXT; it[0].next = 0;
    set_desc(q, 0, INDIRECT_BUF, 16, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-loop", 0);
    set_desc(q, 0, INDIRECT_BUF, 17, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-len-not-multiple", 0);
    set_desc(q, 0, INDIRECT_BUF, 0xfffffff0u, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-len-huge", 0);
    set_desc(q, 0, INDIRECT_BUF, 0, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-len-zero", 0);
    set_desc(q, 0, RAM_END - 16, 32, F_INDIRECT, 0);
    blk_bad_chain(d, "indirect-straddles-ram-end", 0);
    /* Directions: write-only header, read-only status, read-only buffer for a read,
     * writable buffer for a write. */
    blk_header(BLK_IN, 0);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT | F_WRITE, 1);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT | F_WRITE, 2);
    set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
    blk_bad_chain(d, "header-write-only", 0);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    set_desc(q, 2, STATUS_BUF, 1, 0, 0);
    blk_bad_chain(d, "status-read-only", 0);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT, 2);
    set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
    blk_bad_chain(d, "read-into-read-only", 0);
    blk_header(BLK_OUT, 4);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT | F_WRITE, 2);
    blk_bad_chain(d, "write-from-write-only", 0);
    /* Header shorter than 16 bytes; no status; only a header. */
    set_desc(q, 0, HDR_BUF, 15, F_NEXT, 1);
    set_desc(q, 1, STATUS_BUF, 1, F_WRITE, 0);
    blk_bad_chain(d, "short-header", 0);
    set_desc(q, 0, HDR_BUF, 16, 0, 0);
    blk_bad_chain(d, "header-only", 0);
    set_desc(q, 0, HDR_BUF, 0, 0, 0);
    blk_bad_chain(d, "empty-descriptor", 0);

    /* Avail index far beyond the queue size. */
    a = "avail-idx-far-ahead";
    q->avail_idx = (u16)(q->avail_idx + 1000);
    w16(avail_addr(q) + 2, q->avail_idx);
    barrier();
    setreg(d, R_QUEUE_NOTIFY, 0);
    report("blk", a, wait_one(d, 0, SHORT_WAIT * 4));
    blk_recover(d, a);
    /* Avail ring entries all out of range. */
    a = "avail-ring-garbage";
    for (int i = 0; i < QSIZE; i++) w16(avail_addr(q) + 4 + 2 * (u64)i, (u16)(0xfff0 + i));
    q->avail_idx = (u16)(q->avail_idx + QSIZE);
    w16(avail_addr(q) + 2, q->avail_idx);
    barrier();
    setreg(d, R_QUEUE_NOTIFY, 0);
    report("blk", a, wait_for(d, 0, q->avail_idx, LONG_WAIT));
    blk_recover(d, a);

    line("blk: request attacks");
    struct { const char *name; u32 type; u64 sector; u32 len; int write; } reqs[] = {
        { "read-beyond-end", BLK_IN, DISK_SECTORS, 512, 1 },
        { "read-straddling-end", BLK_IN, DISK_SECTORS - 1, 1024, 1 },
        { "write-beyond-end", BLK_OUT, DISK_SECTORS, 512, 0 },
        { "write-straddling-end", BLK_OUT, DISK_SECTORS - 1, 4096, 0 },
        { "sector-overflow", BLK_IN, 0xffffffffffffffffull, 512, 1 },
        { "sector-byte-overflow", BLK_OUT, 0x0080000000000000ull, 512, 0 },
        { "sector-wraps-to-zero", BLK_OUT, 0xfffffffffffffff8ull, 4096, 0 },
        { "unaligned-length", BLK_IN, 0, 511, 1 },
        { "unaligned-write", BLK_OUT, 8, 100, 0 },
        { "bad-type", 0x1234, 0, 512, 1 },
        { "bad-type-max", 0xffffffff, 0, 512, 0 },
        { "get-id-short-buffer", BLK_GET_ID, 0, 3, 1 },
        { "flush-with-data", BLK_FLUSH, 0, 512, 0 },
    };
    for (unsigned i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        memset((void *)DATA_BUF, 0x5a, 4096);
        int st = blk_request(d, reqs[i].type, reqs[i].sector, DATA_BUF, reqs[i].len, reqs[i].write);
        puts_("HOSTILE: ATTACK blk "); puts_(reqs[i].name); puts_(" -> status ");
        puthex((u64)(u32)st); putc_('\n');
        int ok_allowed = reqs[i].type == BLK_GET_ID || reqs[i].type == BLK_FLUSH;
        /* Refused requests must get an error status (IOERR or UNSUPP) written by the
         * device, not our stale 0xee marker. */
        if (!ok_allowed && st != 1 && st != 2) fail(reqs[i].name, "no error status", (u64)(u32)st);
        blk_recover(d, reqs[i].name);
    }
    /* A data buffer of almost 4 GiB: the chain leaves RAM, so it is invalid as a whole and
     * the status byte may stay untouched. */
    memset((void *)DATA_BUF, 0x5a, 4096);
    {
        int st = blk_request(d, BLK_IN, 0, DATA_BUF, 0xfffffe00u, 1);
        puts_("HOSTILE: ATTACK blk huge-read -> status "); puthex((u64)(u32)st); putc_('\n');
        if (st == BLK_S_OK) fail("huge-read", "request succeeded", 0);
        blk_recover(d, "huge-read");
    }
    /* Many bad requests in one notification (the whole ring). */
    a = "ring-of-bad-requests";
    blk_header(BLK_OUT, DISK_SECTORS + 5);
    set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
    set_desc(q, 1, DATA_BUF, 512, F_NEXT, 2);
    set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
    for (int round = 0; round < 64; round++) {
        u16 heads[QSIZE];
        for (int i = 0; i < QSIZE; i++) heads[i] = 0;
        publish(d, 0, heads, QSIZE);
        if (wait_for(d, 0, q->avail_idx, LONG_WAIT) != WAIT_USED) { fail(a, "not completed", round); break; }
    }
    report("blk", a, WAIT_USED);
    blk_recover(d, a);
}

/* ---- queue configuration attacks (any device) ------------------------------------------- */

/* Partial set-up up to FEATURES_OK. */
static void dev_begin(struct dev *d) {
    setreg(d, R_STATUS, 0);
    setreg(d, R_STATUS, S_ACK | S_DRIVER);
    setreg(d, R_DRV_FEAT_SEL, 1);
    setreg(d, R_DRV_FEAT, 1);
    setreg(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
}

static void queue_addr(struct dev *d, int qi, u64 descp, u64 availp, u64 usedp) {
    setreg(d, R_QUEUE_SEL, (u32)qi);
    setreg(d, R_DESC_LO, (u32)descp);
    setreg(d, R_DESC_HI, (u32)(descp >> 32));
    setreg(d, R_DRIVER_LO, (u32)availp);
    setreg(d, R_DRIVER_HI, (u32)(availp >> 32));
    setreg(d, R_DEVICE_LO, (u32)usedp);
    setreg(d, R_DEVICE_HI, (u32)(usedp >> 32));
}

static void check_refused(struct dev *d, const char *name, void (*recover)(struct dev *, const char *)) {
    setreg(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    u32 s = reg(d, R_STATUS);
    /* Notify every queue, a queue that does not exist, and a huge index. */
    for (u32 i = 0; i < 4; i++) setreg(d, R_QUEUE_NOTIFY, i);
    setreg(d, R_QUEUE_NOTIFY, 0xffffffffu);
    puts_("HOSTILE: ATTACK "); puts_(name); puts_(" -> status "); puthex(s); putc_('\n');
    recover(d, name);
}

static void attack_queue_config(struct dev *d, const char *tag, void (*recover)(struct dev *, const char *)) {
    puts_("HOSTILE: queue configuration attacks on "); puts_(tag); putc_('\n');
    u64 qa = d->q[0].base;
    u64 placements[][3] = {
        { 0xe0000000ull, qa + 0x1000, qa + 0x2000 },            /* desc in the MMIO gap */
        { qa, 0xfee00000ull, qa + 0x2000 },                      /* avail on the LAPIC */
        { qa, qa + 0x1000, RAM_END - 8 },                        /* used straddles RAM's end */
        { 0xfffffffffffff000ull, qa + 0x1000, qa + 0x2000 },     /* desc wraps */
        { qa + 8, qa + 0x1000, qa + 0x2000 },                    /* misaligned desc */
        { qa, qa + 0x1001, qa + 0x2000 },                        /* misaligned avail */
        { qa, qa + 0x1000, qa + 0x2002 },                        /* misaligned used */
        { qa, qa, qa },                                          /* all rings overlap */
    };
    for (int p = 0; p < 8; p++) {
        dev_begin(d);
        for (int i = 0; i < d->nq; i++) {
            setreg(d, R_QUEUE_SEL, (u32)i);
            setreg(d, R_QUEUE_NUM, QSIZE);
            queue_addr(d, i, placements[p][0], placements[p][1], placements[p][2]);
            setreg(d, R_QUEUE_READY, 1);
        }
        if (p < 7 && d->nq > 0) {
            setreg(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
            if (!(reg(d, R_STATUS) & S_NEEDS_RESET)) fail(tag, "bad queue placement accepted", (u64)p);
        }
        check_refused(d, "queue-placement", recover);
    }
    u32 sizes[] = { 0, 3, 0x8000, 0xffff, 0x10000, 0xffffffffu };
    for (int s = 0; s < 6; s++) {
        dev_begin(d);
        for (int i = 0; i < d->nq; i++) {
            struct vq *q = &d->q[i];
            setreg(d, R_QUEUE_SEL, (u32)i);
            setreg(d, R_QUEUE_NUM, sizes[s]);
            queue_addr(d, i, q->base, avail_addr(q), used_addr(q));
            setreg(d, R_QUEUE_READY, 1);
        }
        check_refused(d, "queue-size", recover);
    }
    /* Queues never made ready; queue select beyond the queues; DRIVER_OK without
     * FEATURES_OK; features not offered; FAILED; status bits cleared. */
    dev_begin(d);
    setreg(d, R_QUEUE_SEL, 7);
    setreg(d, R_QUEUE_NUM, QSIZE);
    setreg(d, R_QUEUE_READY, 1);
    setreg(d, R_QUEUE_SEL, 0xffffffffu);
    setreg(d, R_QUEUE_READY, 1);
    check_refused(d, "queues-not-ready", recover);

    setreg(d, R_STATUS, 0);
    setreg(d, R_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
    if (reg(d, R_STATUS) & S_DRIVER_OK) fail(tag, "DRIVER_OK accepted without FEATURES_OK", reg(d, R_STATUS));
    check_refused(d, "driver-ok-without-features-ok", recover);

    setreg(d, R_STATUS, 0);
    setreg(d, R_STATUS, S_ACK | S_DRIVER);
    setreg(d, R_DRV_FEAT_SEL, 0);
    setreg(d, R_DRV_FEAT, 0xffffffffu);
    setreg(d, R_DRV_FEAT_SEL, 1);
    setreg(d, R_DRV_FEAT, 0xffffffffu);
    setreg(d, R_DRV_FEAT_SEL, 7);
    setreg(d, R_DRV_FEAT, 0xffffffffu);
    setreg(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (reg(d, R_STATUS) & S_FEATURES_OK) fail(tag, "FEATURES_OK with features not offered", reg(d, R_STATUS));
    check_refused(d, "features-not-offered", recover);

    setreg(d, R_STATUS, 0);
    setreg(d, R_STATUS, S_FEATURES_OK);
    setreg(d, R_STATUS, 0xff);
    setreg(d, R_STATUS, S_ACK);
    setreg(d, R_STATUS, S_NEEDS_RESET | S_FAILED);
    check_refused(d, "status-garbage", recover);

    /* Reconfigure queues after DRIVER_OK: must be ignored, the device keeps working. */
    if (dev_setup(d, QSIZE) == 0) {
        setreg(d, R_QUEUE_SEL, 0);
        setreg(d, R_QUEUE_READY, 0);
        setreg(d, R_QUEUE_NUM, 1);
        queue_addr(d, 0, 0xe0000000ull, 0xe0000000ull, 0xe0000000ull);
        setreg(d, R_DRV_FEAT_SEL, 0);
        setreg(d, R_DRV_FEAT, 0xffffffffu);
        puts_("HOSTILE: ATTACK "); puts_(tag); puts_(" reconfigure-after-driver-ok -> status ");
        puthex(reg(d, R_STATUS)); putc_('\n');
    }
    recover(d, "reconfigure-after-driver-ok");
}

/* ---- register window attacks ------------------------------------------------------------ */

static void attack_window(struct dev *d, const char *tag) {
    puts_("HOSTILE: register window attacks on "); puts_(tag); putc_('\n');
    u64 b = d->mmio;
    u64 sum = 0;
    /* Every offset read with each width, aligned or not. */
    for (u64 off = 0; off < SLOT_SIZE; off += 4) sum += r32(b + off);
    for (u64 off = 0; off < 0x140; off++) {
        sum += r8(b + off);
        if (off + 2 <= SLOT_SIZE) sum += r16(b + off);
        if (off + 8 <= SLOT_SIZE) sum += r64(b + off);
    }
    for (u64 off = SLOT_SIZE - 8; off < SLOT_SIZE; off++) sum += r8(b + off);
    sum += r64(b + SLOT_SIZE - 8);
    /* Reads crossing the end of the window. */
    sum += r64(b + SLOT_SIZE - 4);
    sum += r32(b + SLOT_SIZE - 2);
    /* Writes of every width at unaligned offsets of the registers (ignored by the
     * transport) and garbage to the read-only registers. */
    dev_begin(d);
    for (u64 off = 0; off < 0x100; off++) {
        if ((off & 3) != 0) {
            w8(b + off, 0xff);
            w16(b + off, 0xffff);
            w32(b + off, 0xffffffffu);
        }
        if (off + 8 <= 0x100) w64(b + off, 0xffffffffffffffffull);
        w8(b + off, 0xa5);
    }
    u32 ro[] = { R_MAGIC, R_VERSION, R_DEVICE_ID, 0x00c, R_DEV_FEAT, R_QUEUE_NUM_MAX, R_INT_STATUS,
                 0x0fc, 0x0b0, 0x0b4, 0x0ac };
    for (unsigned i = 0; i < sizeof ro / sizeof ro[0]; i++) setreg(d, ro[i], 0xdeadbeefu);
    if (reg(d, R_MAGIC) != 0x74726976) fail(tag, "magic changed by a write", reg(d, R_MAGIC));
    if (reg(d, R_DEVICE_ID) != d->type) fail(tag, "device id changed by a write", reg(d, R_DEVICE_ID));
    setreg(d, R_INT_ACK, 0xffffffffu);
    setreg(d, R_DEV_FEAT_SEL, 0xffffffffu);
    sum += reg(d, R_DEV_FEAT);
    setreg(d, R_QUEUE_SEL, 0xffffffffu);
    sum += reg(d, R_QUEUE_NUM_MAX) + reg(d, R_QUEUE_READY);
    /* Configuration space: every offset and width, in and beyond the device's config. */
    for (u64 off = R_CONFIG; off < SLOT_SIZE; off += 4) {
        sum += r32(b + off);
        w32(b + off, 0xffffffffu);
    }
    for (u64 off = R_CONFIG; off < R_CONFIG + 0x40; off++) {
        sum += r8(b + off) + r16(b + off) + r64(b + off);
        w8(b + off, 0x11);
        w16(b + off, 0x2222);
        w64(b + off, 0x3333333333333333ull);
    }
    w64(b + SLOT_SIZE - 8, 0x4444444444444444ull);
    w64(b + SLOT_SIZE - 4, 0x5555555555555555ull);
    puts_("HOSTILE: ATTACK "); puts_(tag); puts_(" window -> survived, checksum "); puthex(sum); putc_('\n');
}

/* ---- console ---------------------------------------------------------------------------- */

static void console_recover(struct dev *d, const char *attack) {
    int rc = dev_setup(d, QSIZE);
    if (rc) { fail(attack, "console setup after attack", (u64)-rc); return; }
    const char *msg = "HOSTILE-CONSOLE-OK\n";
    u64 n = 0;
    while (msg[n]) { w8(DATA_BUF + n, (u8)msg[n]); n++; }
    set_desc(&d->q[1], 0, DATA_BUF, (u32)n, 0, 0);
    submit(d, 1, 0);
    if (wait_one(d, 1, LONG_WAIT) != WAIT_USED) fail(attack, "console write after attack", 0);
}

static void console_bad_chain(struct dev *d, const char *attack) {
    submit(d, 1, 0);
    report("console", attack, wait_one(d, 1, LONG_WAIT));
    console_recover(d, attack);
}

static void attack_console(struct dev *d) {
    line("console: descriptor attacks");
    struct vq *tx = &d->q[1];
    if (dev_setup(d, QSIZE)) { fail("console", "initial setup", 0); return; }
    set_desc(tx, 0, 0xe0000000ull, 4096, 0, 0);
    console_bad_chain(d, "tx-outside-ram");
    set_desc(tx, 0, RAM_END - 16, 32, 0, 0);
    console_bad_chain(d, "tx-straddles-ram-end");
    set_desc(tx, 0, DATA_BUF, 0xffffffffu, 0, 0);
    console_bad_chain(d, "tx-length-overflow");
    set_desc(tx, 0, DATA_BUF, 8, F_NEXT, 1);
    set_desc(tx, 1, DATA_BUF, 8, F_NEXT, 0);
    console_bad_chain(d, "tx-loop");
    set_desc(tx, 0, INDIRECT_BUF, 16, F_INDIRECT, 0);
    ((volatile struct vdesc *)INDIRECT_BUF)[0].addr = INDIRECT_BUF;
    ((volatile struct vdesc *)INDIRECT_BUF)[0].len = 16;
    ((volatile struct vdesc *)INDIRECT_BUF)[0].flags = F_INDIRECT;
    console_bad_chain(d, "tx-indirect-self");
    /* A receive chain pointing outside RAM (the host has no input: it may never be used). */
    set_desc(&d->q[0], 0, 0xe0000000ull, 4096, F_WRITE, 0);
    submit(d, 0, 0);
    report("console", "rx-outside-ram", wait_one(d, 0, SHORT_WAIT));
    console_recover(d, "rx-outside-ram");
    /* Avail index far ahead on the transmit queue. */
    tx->avail_idx = (u16)(tx->avail_idx + 5000);
    w16(avail_addr(tx) + 2, tx->avail_idx);
    barrier();
    setreg(d, R_QUEUE_NOTIFY, 1);
    report("console", "tx-avail-idx-far-ahead", wait_one(d, 1, SHORT_WAIT * 4));
    console_recover(d, "tx-avail-idx-far-ahead");

    /* The flood: FLOOD_ROUNDS rings of QSIZE x 2 MiB through the transmit queue, one
     * notification per ring; the host process must stream it (the test counts the bytes)
     * without buffering it. The wait fails only when the device stops making progress: how
     * fast the bytes drain depends on the host's load, not on the device. */
    line("console: flood");
    u64 t0 = rdtsc();
    int w = WAIT_USED;
    for (int round = 0; round < FLOOD_ROUNDS && w == WAIT_USED; round++) {
        u16 heads[QSIZE];
        for (int i = 0; i < QSIZE; i++) {
            set_desc(tx, (u16)i, FLOOD_ADDR, FLOOD_LEN, 0, 0);
            heads[i] = (u16)i;
        }
        publish(d, 1, heads, QSIZE);
        w = wait_progress(d, 1, tx->avail_idx, LONG_WAIT);
    }
    puts_("HOSTILE: ATTACK console flood ");
    putdec((u64)FLOOD_ROUNDS * QSIZE * FLOOD_LEN);
    puts_(" bytes -> "); puts_(outcome(w)); puts_(" tsc "); puthex(rdtsc() - t0); putc_('\n');
    if (w != WAIT_USED) fail("console-flood", "not consumed", (u64)w);
    /* Many small writes: one notification per buffer. */
    for (int i = 0; i < 2000; i++) {
        set_desc(tx, 0, DATA_BUF, 64, 0, 0);
        submit(d, 1, 0);
        if (wait_one(d, 1, LONG_WAIT) != WAIT_USED) { fail("console-small-writes", "stuck", (u64)i); break; }
    }
    console_recover(d, "flood");
}

/* ---- vsock ------------------------------------------------------------------------------ */

static u64 vs_tx_slot(int i) { return VS_TX_BUF + 4096 * (u64)i; }

static void vs_hdr(u64 at, u32 src_port, u32 dst_port, u32 len, u16 op, u16 type) {
    memset((void *)at, 0, 44);
    w64(at, VS_GUEST_CID);
    w64(at + 8, VS_HOST_CID);
    w32(at + 16, src_port);
    w32(at + 20, dst_port);
    w32(at + 24, len);
    w16(at + 28, type);
    w16(at + 30, op);
    w32(at + 36, 65536); /* buf_alloc */
}

/* Sends `n` copies of the packet at tx slot 0 (a single descriptor of `len` bytes), in
 * rounds of the ring, waiting for each round. */
static int vs_send_many(struct dev *d, u32 len, int n) {
    struct vq *tx = &d->q[1];
    for (int i = 0; i < QSIZE; i++) set_desc(tx, (u16)i, vs_tx_slot(0), len, 0, 0);
    while (n > 0) {
        int k = n < QSIZE ? n : QSIZE;
        u16 heads[QSIZE];
        for (int i = 0; i < k; i++) heads[i] = (u16)i;
        publish(d, 1, heads, k);
        int w = wait_for(d, 1, tx->avail_idx, LONG_WAIT);
        if (w != WAIT_USED) return w;
        n -= k;
    }
    return WAIT_USED;
}

/* Gives the device every receive buffer it does not hold. Ring slot k always holds
 * descriptor k, a 4 KiB buffer at VS_RX_BUF + 4 KiB * k: at most QSIZE buffers are
 * outstanding, so a slot is reused only once its previous buffer came back. */
static void vs_refill_rx(struct dev *d) {
    struct vq *rx = &d->q[0];
    u16 outstanding = (u16)(rx->avail_idx - rx->used_seen);
    int k = QSIZE - outstanding;
    if (k <= 0) return;
    u16 heads[QSIZE];
    for (int j = 0; j < k; j++) {
        u16 slot = (u16)((u16)(rx->avail_idx + j) % QSIZE);
        set_desc(rx, slot, VS_RX_BUF + 4096 * (u64)slot, 4096, F_WRITE, 0);
        heads[j] = slot;
    }
    publish(d, 0, heads, k);
}

/* The receive buffer of used element `i`. */
static u64 vs_rx_packet(struct vq *rx, u16 i) {
    u32 id = r32(used_addr(rx) + 4 + 8 * (u64)(i % rx->size));
    return VS_RX_BUF + 4096 * (u64)(id % QSIZE);
}

/* Connects from `src_port` to the host's stderr service and waits for the RESPONSE, draining
 * whatever the host queued before it (RSTs, credit updates). Returns the number of packets
 * drained before the RESPONSE, or -1. */
static long vs_connect(struct dev *d, u32 src_port) {
    struct vq *rx = &d->q[0];
    vs_hdr(vs_tx_slot(0), src_port, VS_PORT_STDERR, 0, VS_OP_REQUEST, 1);
    if (vs_send_many(d, 44, 1) != WAIT_USED) return -1;
    long drained = 0;
    for (int round = 0; round < 20000; round++) {
        vs_refill_rx(d);
        u16 start = rx->used_seen;
        if (wait_one(d, 0, LONG_WAIT) != WAIT_USED) return -1;
        u16 end = used_idx(rx);
        rx->used_seen = end;
        for (u16 i = start; i != end; i++) {
            u64 p = vs_rx_packet(rx, i);
            if (r16(p + 30) == VS_OP_RESPONSE && r32(p + 16) == VS_PORT_STDERR && r32(p + 20) == src_port) {
                return drained;
            }
            drained++;
        }
    }
    return -1;
}

/* Receives everything the host has queued for the guest (until it goes quiet); returns the
 * number of packets. */
static long vs_drain_all(struct dev *d) {
    struct vq *rx = &d->q[0];
    long got = 0;
    for (int round = 0; round < 20000; round++) {
        vs_refill_rx(d);
        u16 start = rx->used_seen;
        if (wait_one(d, 0, SHORT_WAIT * 4) != WAIT_USED) break;
        got += (u16)(used_idx(rx) - start);
    }
    return got;
}

static void vs_recover(struct dev *d, const char *attack) {
    static u32 port = 40000;
    int rc = dev_setup(d, QSIZE);
    if (rc) { fail(attack, "vsock setup after attack", (u64)-rc); return; }
    long drained = vs_connect(d, port++);
    if (drained < 0) fail(attack, "vsock connect after attack", 0);
}

static void attack_vsock(struct dev *d) {
    line("vsock: packet attacks");
    struct vq *tx = &d->q[1];
    if (dev_setup(d, QSIZE)) { fail("vsock", "initial setup", 0); return; }
    vs_recover(d, "baseline");
    dev_setup(d, QSIZE);
    /* Truncated header; declared length beyond the buffers; beyond the payload limit;
     * huge; writable buffer in the transmit queue; outside RAM. */
    vs_hdr(vs_tx_slot(0), 1, VS_PORT_STDERR, 0, VS_OP_REQUEST, 1);
    report("vsock", "truncated-header", vs_send_many(d, 20, 1));
    report("vsock", "zero-length", vs_send_many(d, 0, 1));
    vs_hdr(vs_tx_slot(0), 2, VS_PORT_STDERR, 100, VS_OP_RW, 1);
    report("vsock", "len-beyond-buffer", vs_send_many(d, 44 + 10, 1));
    vs_hdr(vs_tx_slot(0), 2, VS_PORT_STDERR, 0x10001, VS_OP_RW, 1);
    set_desc(tx, 0, vs_tx_slot(0), 44, F_NEXT, 1);
    set_desc(tx, 1, FLOOD_ADDR, 0x20000, 0, 0);
    submit(d, 1, 0);
    report("vsock", "len-over-limit", wait_one(d, 1, LONG_WAIT));
    vs_hdr(vs_tx_slot(0), 2, VS_PORT_STDERR, 0xffffffffu, VS_OP_RW, 1);
    set_desc(tx, 0, vs_tx_slot(0), 44, F_NEXT, 1);
    set_desc(tx, 1, FLOOD_ADDR, 0xffffffffu, 0, 0);
    submit(d, 1, 0);
    report("vsock", "len-huge", wait_one(d, 1, LONG_WAIT));
    set_desc(tx, 0, vs_tx_slot(0), 44, F_WRITE, 0);
    submit(d, 1, 0);
    report("vsock", "tx-write-only", wait_one(d, 1, LONG_WAIT));
    set_desc(tx, 0, 0xe0000000ull, 44, 0, 0);
    submit(d, 1, 0);
    report("vsock", "tx-outside-ram", wait_one(d, 1, LONG_WAIT));
    set_desc(tx, 0, vs_tx_slot(0), 20, F_NEXT, 1);
    set_desc(tx, 1, vs_tx_slot(0) + 20, 24, F_NEXT, 0);
    submit(d, 1, 0);
    report("vsock", "tx-loop", wait_one(d, 1, LONG_WAIT));
    /* Header split over many one-byte descriptors. */
    vs_hdr(vs_tx_slot(0), 3, 4242, 0, VS_OP_REQUEST, 1);
    for (int i = 0; i < QSIZE; i++) set_desc(tx, (u16)i, vs_tx_slot(0) + (u64)i, 1, i + 1 < QSIZE ? F_NEXT : 0, (u16)(i + 1));
    submit(d, 1, 0);
    report("vsock", "header-in-1-byte-pieces", wait_one(d, 1, LONG_WAIT));
    /* Bad op codes, types, CIDs, unknown ports; packets for connections that do not exist. */
    u16 ops[] = { 0, 2, 3, 4, 5, 6, 7, 8, 0x99, 0xffff };
    for (unsigned i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        vs_hdr(vs_tx_slot(0), 100 + i, VS_PORT_STDERR, 0, ops[i], 1);
        vs_send_many(d, 44, 1);
    }
    line("vsock: bad ops sent");
    vs_hdr(vs_tx_slot(0), 7, VS_PORT_STDERR, 0, VS_OP_REQUEST, 2);
    vs_send_many(d, 44, 4);
    vs_hdr(vs_tx_slot(0), 7, VS_PORT_STDERR, 0, VS_OP_REQUEST, 1);
    w64(vs_tx_slot(0), 0xffffffffffffffffull);
    vs_send_many(d, 44, 4);
    vs_hdr(vs_tx_slot(0), 7, VS_PORT_STDERR, 0, VS_OP_REQUEST, 1);
    w64(vs_tx_slot(0) + 8, 77);
    vs_send_many(d, 44, 4);
    /* A flood of connection requests to a port nobody listens on, with no receive buffers:
     * every one asks for an RST the host cannot deliver. */
    vs_hdr(vs_tx_slot(0), 9, 4242, 0, VS_OP_REQUEST, 1);
    int w = vs_send_many(d, 44, 20000);
    report("vsock", "unknown-port-flood-20000", w);
    if (w != WAIT_USED) fail("vsock-unknown-port-flood", "not consumed", (u64)w);
    /* A real connection to the stderr service, then a credit-request flood on it (each asks
     * for a credit update) and writes over the announced credit. */
    long drained = vs_connect(d, 5000);
    puts_("HOSTILE: vsock connect drained "); putdec((u64)drained); puts_(" packets\n");
    if (drained < 0) fail("vsock", "connect to the stderr service", 0);
    if (drained > 4096) fail("vsock", "host queued too many packets for the guest", (u64)drained);
    /* Let the host fill the buffers still posted, then flood with none posted. */
    long pending = vs_drain_all(d);
    puts_("HOSTILE: vsock pending before credit flood "); putdec((u64)pending); puts_(" packets\n");
    vs_hdr(vs_tx_slot(0), 5000, VS_PORT_STDERR, 0, VS_OP_CREDIT_REQUEST, 1);
    w = vs_send_many(d, 44, 20000);
    report("vsock", "credit-request-flood-20000", w);
    pending = vs_drain_all(d);
    puts_("HOSTILE: vsock credit flood left "); putdec((u64)pending); puts_(" packets for the guest\n");
    if (pending > 4096) fail("vsock", "host queued a credit update per credit request", (u64)pending);
    const char *msg = "HOSTILE-VSOCK-STDERR\n";
    u32 n = 0;
    while (msg[n]) n++;
    vs_hdr(vs_tx_slot(0), 5000, VS_PORT_STDERR, n, VS_OP_RW, 1);
    for (u32 k = 0; k < n; k++) w8(vs_tx_slot(0) + 44 + k, (u8)msg[k]);
    report("vsock", "stderr-write", vs_send_many(d, 44 + n, 1));
    /* Data far beyond the credit the host announced, in 64 KiB packets. */
    vs_hdr(vs_tx_slot(0), 5000, VS_PORT_STDERR, 0x10000, VS_OP_RW, 1);
    set_desc(tx, 0, vs_tx_slot(0), 44, F_NEXT, 1);
    set_desc(tx, 1, FLOOD_ADDR, 0x10000, 0, 0);
    for (int i = 0; i < 64; i++) {
        submit(d, 1, 0);
        if (wait_one(d, 1, LONG_WAIT) != WAIT_USED) { fail("vsock-credit-overrun", "stuck", (u64)i); break; }
    }
    report("vsock", "credit-overrun-4MiB", WAIT_USED);
    /* The host must still accept a new connection, without first making the guest drain an
     * unbounded backlog. */
    drained = vs_connect(d, 5001);
    puts_("HOSTILE: vsock connect after floods drained "); putdec((u64)drained); puts_(" packets\n");
    if (drained < 0) fail("vsock", "connect after floods", 0);
    if (drained > 4096) fail("vsock", "host queued too many packets for the guest", (u64)drained);
    /* More connections than the host allows (256): requests from 300 ports to the stderr
     * service (each one a host thread), counting RESPONSEs and RSTs; then close them all. */
    {
        struct vq *rx = &d->q[0];
        vs_drain_all(d);
        for (u32 i = 0; i < 300; i++) {
            vs_hdr(vs_tx_slot(0), 6000 + i, VS_PORT_STDERR, 0, VS_OP_REQUEST, 1);
            vs_send_many(d, 44, 1);
        }
        long responses = 0, rsts = 0;
        for (int round = 0; round < 1000; round++) {
            vs_refill_rx(d);
            u16 start = rx->used_seen;
            if (wait_one(d, 0, SHORT_WAIT * 4) != WAIT_USED) break;
            u16 end = used_idx(rx);
            rx->used_seen = end;
            for (u16 i = start; i != end; i++) {
                u64 p = vs_rx_packet(rx, i);
                u32 dport = r32(p + 20);
                if (dport < 6000 || dport >= 6300) continue;
                if (r16(p + 30) == VS_OP_RESPONSE) responses++;
                if (r16(p + 30) == VS_OP_RST) rsts++;
            }
        }
        puts_("HOSTILE: ATTACK vsock 300-connections -> responses "); putdec((u64)responses);
        puts_(" rsts "); putdec((u64)rsts); putc_('\n');
        if (responses > 256) fail("vsock-300-connections", "more connections than the limit", (u64)responses);
        if (responses + rsts != 300) fail("vsock-300-connections", "requests left unanswered", (u64)(responses + rsts));
        for (u32 i = 0; i < 300; i++) {
            vs_hdr(vs_tx_slot(0), 6000 + i, VS_PORT_STDERR, 0, VS_OP_RST, 1);
            vs_send_many(d, 44, 1);
        }
    }
    /* Avail index far ahead on each queue. */
    for (int qi = 0; qi < 3; qi++) {
        struct vq *q = &d->q[qi];
        q->avail_idx = (u16)(q->avail_idx + 3000);
        w16(avail_addr(q) + 2, q->avail_idx);
        barrier();
        setreg(d, R_QUEUE_NOTIFY, (u32)qi);
        report("vsock", "avail-idx-far-ahead", wait_one(d, qi, SHORT_WAIT * 4));
        vs_recover(d, "avail-idx-far-ahead");
    }
}

/* ---- network ---------------------------------------------------------------------------- */

/* Sends one frame of `len` bytes (after the 12-byte virtio-net header) from DATA_BUF. */
static int net_send(struct dev *d, u32 len) {
    memset((void *)DATA_BUF, 0, NET_HDR_LEN);
    set_desc(&d->q[1], 0, DATA_BUF, NET_HDR_LEN + len, 0, 0);
    submit(d, 1, 0);
    return wait_one(d, 1, LONG_WAIT);
}

static void net_recover(struct dev *d, const char *attack) {
    int rc = dev_setup(d, QSIZE);
    if (rc) { fail(attack, "net setup after attack", (u64)-rc); return; }
    for (int i = 0; i < 6; i++) w8(DATA_BUF + NET_HDR_LEN + i, 0xff);          /* broadcast */
    for (int i = 6; i < 12; i++) w8(DATA_BUF + NET_HDR_LEN + i, 0x52);
    w16(DATA_BUF + NET_HDR_LEN + 12, 0xb588);                                   /* 0x88b5 */
    if (net_send(d, 64) != WAIT_USED) fail(attack, "net send after attack", 0);
}

static void net_bad_tx(struct dev *d, const char *attack) {
    submit(d, 1, 0);
    report("net", attack, wait_one(d, 1, LONG_WAIT));
    net_recover(d, attack);
}

static void attack_net(struct dev *d) {
    line("net: frame attacks");
    struct vq *tx = &d->q[1], *rx = &d->q[0];
    if (dev_setup(d, QSIZE)) { fail("net", "initial setup", 0); return; }
    net_recover(d, "baseline");
    set_desc(tx, 0, DATA_BUF, NET_HDR_LEN, 0, 0);
    net_bad_tx(d, "header-only");
    set_desc(tx, 0, DATA_BUF, 5, 0, 0);
    net_bad_tx(d, "short-header");
    set_desc(tx, 0, DATA_BUF, NET_HDR_LEN + 13, 0, 0);
    net_bad_tx(d, "runt-frame");
    set_desc(tx, 0, FLOOD_ADDR, NET_HDR_LEN + 65550 + 1, 0, 0);
    net_bad_tx(d, "frame-over-limit");
    set_desc(tx, 0, FLOOD_ADDR, 0xffffffffu, 0, 0);
    net_bad_tx(d, "frame-4g");
    set_desc(tx, 0, 0xe0000000ull, 1500, 0, 0);
    net_bad_tx(d, "tx-outside-ram");
    set_desc(tx, 0, DATA_BUF, 1500, F_WRITE, 0);
    net_bad_tx(d, "tx-write-only");
    set_desc(tx, 0, DATA_BUF, 8, F_NEXT, 1);
    set_desc(tx, 1, DATA_BUF, 8, F_NEXT, 0);
    net_bad_tx(d, "tx-loop");
    /* A frame split over the whole table. */
    for (int i = 0; i < QSIZE; i++) set_desc(tx, (u16)i, DATA_BUF + 100 * (u64)i, 100, i + 1 < QSIZE ? F_NEXT : 0, (u16)(i + 1));
    net_bad_tx(d, "frame-in-16-pieces");
    /* Receive buffers that cannot take a frame: outside RAM, read-only, shorter than the
     * header; the peer's frames must not be written anywhere the guest did not offer. */
    set_desc(rx, 0, 0xe0000000ull, 4096, F_WRITE, 0);
    set_desc(rx, 1, DATA_BUF, 4096, 0, 0);
    set_desc(rx, 2, DATA_BUF, 4, F_WRITE, 0);
    u16 heads[3] = { 0, 1, 2 };
    publish(d, 0, heads, 3);
    report("net", "bad-rx-buffers", wait_for(d, 0, rx->avail_idx, SHORT_WAIT * 4));
    net_recover(d, "bad-rx-buffers");
    rx->avail_idx = (u16)(rx->avail_idx + 4000);
    w16(avail_addr(rx) + 2, rx->avail_idx);
    barrier();
    setreg(d, R_QUEUE_NOTIFY, 0);
    report("net", "rx-avail-idx-far-ahead", wait_one(d, 0, SHORT_WAIT * 4));
    net_recover(d, "rx-avail-idx-far-ahead");
    /* The flood: NET_FLOOD_FRAMES maximum-size frames, a ring's worth per notification. */
    line("net: flood");
    u64 t0 = rdtsc();
    for (int i = 0; i < QSIZE; i++) set_desc(tx, (u16)i, FLOOD_ADDR, NET_HDR_LEN + NET_FLOOD_FRAME_LEN, 0, 0);
    int w = WAIT_USED;
    for (int sent = 0; sent < NET_FLOOD_FRAMES && w == WAIT_USED; sent += QSIZE) {
        u16 h[QSIZE];
        for (int i = 0; i < QSIZE; i++) h[i] = (u16)i;
        publish(d, 1, h, QSIZE);
        w = wait_for(d, 1, tx->avail_idx, LONG_WAIT);
    }
    puts_("HOSTILE: ATTACK net flood -> "); puts_(outcome(w)); puts_(" tsc "); puthex(rdtsc() - t0); putc_('\n');
    if (w != WAIT_USED) fail("net-flood", "not consumed", (u64)w);
    net_recover(d, "flood");
}

/* ---- legacy I/O ports and unmapped MMIO ------------------------------------------------- */

static void attack_ports_and_holes(void) {
    line("ports and unmapped MMIO");
    u64 sum = 0;
    for (u32 p = 0; p < 0x10000; p += (p < 0x1000 ? 1 : 0x10)) {
        u16 port = (u16)p;
        sum += inb(port);
        if ((p & 1) == 0) sum += inw(port);
        if ((p & 3) == 0) sum += inl(port);
        /* Not the exit-status port, the reset ports or COM1 (our progress channel). */
        if (port == 0xf4 || port == 0x64 || port == 0xcf9 || (port >= 0x3f8 && port < 0x400)) continue;
        /* Not the in-kernel PIC/PIT/RTC either: they belong to KVM, not the VMM. */
        if (port < 0x100) continue;
        outb(port, 0xff);
        if ((p & 1) == 0) outw(port, 0xffff);
        if ((p & 3) == 0) outl(port, 0xffffffffu);
    }
    /* String I/O: rep outs/ins of a page to an unused port and to COM1's scratch register,
     * and rep movs into a device window. */
    {
        u64 src = DATA_BUF, cnt = 4096;
        u16 port = 0x1234;
        __asm__ volatile("rep outsb" : "+S"(src), "+c"(cnt) : "d"(port) : "memory");
        src = DATA_BUF; cnt = 2048; port = 0x3ff;
        __asm__ volatile("rep outsw" : "+S"(src), "+c"(cnt) : "d"(port) : "memory");
        u64 dst = DATA_BUF; cnt = 1024; port = 0x1238;
        __asm__ volatile("rep insl" : "+D"(dst), "+c"(cnt) : "d"(port) : "memory");
        src = DATA_BUF; dst = MMIO_BASE + 3 * SLOT_SIZE + R_CONFIG; cnt = 512;
        __asm__ volatile("rep movsb" : "+S"(src), "+D"(dst), "+c"(cnt) :: "memory");
        src = MMIO_BASE; dst = DATA_BUF; cnt = 512;
        __asm__ volatile("rep movsq" : "+S"(src), "+D"(dst), "+c"(cnt) :: "memory");
    }
    /* COM1: a line far longer than the sink's buffer, control bytes, divisor latch on and
     * off; then the line control register back to 8N1. */
    for (int i = 0; i < 5000; i++) outb(0x3f8, (u8)(i & 0xff) == '\n' ? 'x' : (u8)i);
    outb(0x3fb, 0x80);
    outb(0x3f8, 0x01);
    outb(0x3f9, 0x00);
    outb(0x3fb, 0x03);
    for (int i = 1; i < 8; i++) outb((u16)(0x3f8 + i), 0xff);
    outb(0x3fb, 0x03);
    putc_('\n');
    /* Unmapped MMIO: empty slots, the rest of the gap, around the IOAPIC, just above RAM. */
    u64 holes[] = { MMIO_BASE + 5 * SLOT_SIZE, MMIO_BASE + 15 * SLOT_SIZE + 0xffc, MMIO_BASE + 16 * SLOT_SIZE,
                    0xd8000000ull, 0xe0000000ull, 0xfebff000ull, 0xfec01000ull, 0xfed00000ull,
                    RAM_END, RAM_END + 0x1000, 0xcffffff8ull };
    for (unsigned i = 0; i < sizeof holes / sizeof holes[0]; i++) {
        u64 a = holes[i];
        sum += r8(a) + r16(a) + r32(a) + r64(a);
        w8(a, 1);
        w16(a, 2);
        w32(a, 3);
        w64(a, 4);
    }
    /* A 4-byte access that starts in the last device slot's window and ends outside it. */
    sum += r32(MMIO_BASE + 4 * SLOT_SIZE + SLOT_SIZE - 2);
    puts_("HOSTILE: ATTACK ports-and-holes -> survived, checksum "); puthex(sum); putc_('\n');
}

/* ---- main ------------------------------------------------------------------------------- */

static void discover(void) {
    for (int s = 0; s < MMIO_SLOTS; s++) {
        u64 b = MMIO_BASE + (u64)s * SLOT_SIZE;
        if (r32(b + R_MAGIC) != 0x74726976) continue;
        u32 type = r32(b + R_DEVICE_ID);
        puts_("HOSTILE: slot "); putdec((u64)s); puts_(" version "); putdec(r32(b + R_VERSION));
        puts_(" device "); putdec(type); putc_('\n');
        struct dev *d = &devs[ndevs++];
        d->mmio = b;
        d->type = type;
        d->nq = type == T_BLOCK ? 1 : type == T_CONSOLE || type == T_NET ? 2 : type == T_VSOCK ? 3 : 0;
        for (int i = 0; i < 3; i++) d->q[i].base = QUEUE_AREA + (u64)s * 0x10000 + (u64)i * 0x4000;
    }
}

static struct dev *find(u32 type) {
    for (int i = 0; i < ndevs; i++) if (devs[i].type == type) return &devs[i];
    return 0;
}

static void noop_recover(struct dev *d, const char *attack) { (void)d; (void)attack; }

/* The last act: a disk write notified, and the VM gone before the device may finish it. */
static void __attribute__((noreturn)) inflight_exit(struct dev *blk, int status) {
    line("in-flight write and abrupt exit");
    if (status >= 0) outb(0xf4, (u8)status);
    if (blk && dev_setup(blk, QSIZE) == 0) {
        struct vq *q = &blk->q[0];
        memset((void *)DATA_BUF, 0xa7, 4096);
        blk_header(BLK_OUT, INFLIGHT_SECTOR);
        set_desc(q, 0, HDR_BUF, 16, F_NEXT, 1);
        set_desc(q, 1, DATA_BUF, 4096, F_NEXT, 2);
        set_desc(q, 2, STATUS_BUF, 1, F_WRITE, 0);
        submit(blk, 0, 0);
    }
    /* Triple fault: an IDT of limit 0 and an invalid opcode. */
    static const struct { u16 limit; u64 base; } __attribute__((packed)) no_idt = { 0, 0 };
    __asm__ volatile("lidt %0; ud2" ::"m"(no_idt));
    for (;;) __asm__ volatile("hlt");
}

void hmain(void) {
    outb(0x3fb, 0x03);
    line("START");
    discover();
#ifdef HOSTILE_ABRUPT
    /* The second variant: no status at all, only the write in flight and the triple fault;
     * the VMM must stop the VM with an error, not hang. */
    inflight_exit(find(T_BLOCK), -1);
#endif
    struct dev *blk = find(T_BLOCK), *con = find(T_CONSOLE), *vs = find(T_VSOCK);
    if (!blk || !con || !vs) fail("discover", "missing a device", (u64)ndevs);
    if (blk) { attack_blk(blk); attack_queue_config(blk, "blk", blk_recover); attack_window(blk, "blk"); blk_recover(blk, "blk-window"); }
    if (con) { attack_console(con); attack_queue_config(con, "console", console_recover); attack_window(con, "console"); console_recover(con, "console-window"); }
    if (vs) { attack_vsock(vs); attack_queue_config(vs, "vsock", vs_recover); attack_window(vs, "vsock"); vs_recover(vs, "vsock-window"); }
    struct dev *net = find(T_NET);
    if (net) { attack_net(net); attack_queue_config(net, "net", net_recover); attack_window(net, "net"); net_recover(net, "net-window"); }
    for (int i = 0; i < ndevs; i++) {
        if (devs[i].nq == 0) { attack_window(&devs[i], "empty-slot"); attack_queue_config(&devs[i], "empty-slot", noop_recover); }
    }
    attack_ports_and_holes();
    if (blk) blk_recover(blk, "final");
    if (con) console_recover(con, "final");
    if (vs) vs_recover(vs, "final");
    if (net) net_recover(net, "final");
    puts_("HOSTILE: DONE failures="); putdec((u64)failures); putc_('\n');
    inflight_exit(blk, failures > 200 ? 200 : failures);
}

__asm__(".section .text.start, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "  lea stack_top(%rip), %rsp\n"
        "  call hmain\n"
        "1: hlt\n"
        "  jmp 1b\n"
        ".section .bss\n"
        ".balign 16\n"
        "stack: .skip 65536\n"
        "stack_top:\n"
        ".text\n");
