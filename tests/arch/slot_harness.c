/* Runs perftramp's slot template the way perftramp runs it, on any architecture.
 *
 * usage: slot_harness TEMPLATE_HEX RET_OFFSET TRAP_OFFSETS
 *   TEMPLATE_HEX  the exact bytes of one slot (perftramp._perftramp.stub_code(arch)), as hex;
 *                 its length is the slot stride
 *   RET_OFFSET    offset in the slot just after the call instruction (the return address the
 *                 evaluator must see)
 *   TRAP_OFFSETS  comma-separated offsets of the padding's trap instructions
 *
 * Maps a 64 KiB arena exactly as src/runtime/arena.rs does (mmap RW anonymous private, copy the template
 * to every stride, mprotect RX, clear the instruction cache), then calls a target through slots
 * other than the first as slot(a, b, c, target) and checks the arguments, the return value, the
 * frame-record chain (target -> stub -> caller) and the arena's permissions in /proc/self/maps,
 * then jumps into the padding and expects SIGTRAP. Prints "ok ..." per check, "FAIL ..." on a
 * mismatch, and "PASS" last; exits 1 on any failure.
 *
 * Build with -O1 -fno-omit-frame-pointer: the frame-record layout [fp] = saved fp,
 * [fp + 8] = return address is the same on x86_64 (rbp) and aarch64 (x29).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define ARENA_SIZE (64 * 1024)
#define NOINLINE __attribute__((noinline, noclone))

typedef long (*target_fn)(long, long, long);
typedef long (*slot_fn)(long, long, long, target_fn);

static int failures;

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (cond) {                                                                         \
            printf("ok   ");                                                                \
        } else {                                                                            \
            printf("FAIL ");                                                                \
            failures++;                                                                     \
        }                                                                                   \
        printf(__VA_ARGS__);                                                                \
        printf("\n");                                                                       \
    } while (0)

/* What the target observed, filled in from inside it. */
static struct {
    long a, b, c;
    void **fp;          /* target's frame pointer */
    void **stub_fp;     /* saved FP in the target's frame record: the stub's frame */
    void *ret_in_stub;  /* return address in the target's frame record */
    void *stub_saved_fp; /* saved FP in the stub's frame record */
    void *stub_ret;     /* return address in the stub's frame record */
} seen;

static void *caller_fp;
static volatile long sink;

/* The target's result: a value none of the arguments equals (unsigned: wraps, no UB). */
static long mix(long a, long b, long c) {
    return (long)((unsigned long)a * 3 + (unsigned long)b * 5 + (unsigned long)c * 7 + 11);
}

NOINLINE long target(long a, long b, long c) {
    void **fp = __builtin_frame_address(0);
    seen.a = a;
    seen.b = b;
    seen.c = c;
    seen.fp = fp;
    seen.stub_fp = (void **)fp[0];
    seen.ret_in_stub = fp[1];
    seen.stub_saved_fp = seen.stub_fp[0];
    seen.stub_ret = seen.stub_fp[1];
    return mix(a, b, c);
}

NOINLINE long call_through(slot_fn slot, long a, long b, long c) {
    caller_fp = __builtin_frame_address(0);
    long r = slot(a, b, c, target);
    sink = r; /* work after the call: no tail call, so this frame stays on the stack */
    return r;
}

/* Permissions of every /proc/self/maps line overlapping [lo, hi); "" if none. Fails the
 * check if the lines disagree. */
static void arena_perms(uintptr_t lo, uintptr_t hi, char out[8]) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    out[0] = '\0';
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) != 3) continue;
        if (end <= lo || start >= hi) continue;
        if (out[0] && strcmp(out, perms) != 0) strcpy(out, "mixed");
        else strcpy(out, perms);
    }
    fclose(f);
}

static sigjmp_buf trap_jmp;
static volatile sig_atomic_t trap_signal;

static void on_signal(int sig) {
    trap_signal = sig;
    siglongjmp(trap_jmp, 1);
}

/* Jumps to `addr` and returns the signal it raised (0 if it returned). */
static int signal_from(void *addr) {
    trap_signal = 0;
    if (sigsetjmp(trap_jmp, 1) == 0) ((void (*)(void))addr)();
    return trap_signal;
}

static int parse_hex(const char *hex, unsigned char **out) {
    size_t n = strlen(hex);
    if (n == 0 || n % 2) return -1;
    *out = malloc(n / 2);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        (*out)[i] = (unsigned char)v;
    }
    return (int)(n / 2);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TEMPLATE_HEX RET_OFFSET TRAP_OFFSETS\n", argv[0]);
        return 2;
    }
    unsigned char *tmpl;
    int stride = parse_hex(argv[1], &tmpl);
    long ret_off = strtol(argv[2], NULL, 0);
    if (stride <= 0 || stride % 16 || ARENA_SIZE % stride || ret_off <= 0 || ret_off >= stride) {
        fprintf(stderr, "bad template or offset\n");
        return 2;
    }
    int nslots = ARENA_SIZE / stride;
    printf("stride %d, %d slots, return offset %ld\n", stride, nslots, ret_off);

    /* Map the arena as src/runtime/arena.rs does. */
    unsigned char *arena =
        mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    uintptr_t lo = (uintptr_t)arena, hi = lo + ARENA_SIZE;
    char perms[8];
    arena_perms(lo, hi, perms);
    CHECK(strcmp(perms, "rw-p") == 0, "arena %s while being written", perms);
    for (int i = 0; i < nslots; i++) memcpy(arena + (size_t)i * stride, tmpl, stride);
    if (mprotect(arena, ARENA_SIZE, PROT_READ | PROT_EXEC) != 0) {
        perror("mprotect");
        return 2;
    }
    __builtin___clear_cache((char *)arena, (char *)arena + ARENA_SIZE);
    arena_perms(lo, hi, perms);
    CHECK(strcmp(perms, "r-xp") == 0, "arena %s once executable (never rwx)", perms);
    CHECK(memcmp(arena + (size_t)(nslots - 1) * stride, tmpl, stride) == 0,
          "last slot holds the template");

    /* Call through slot 1 and the last slot, never the first. */
    int slots[] = {1, nslots / 2 + 1, nslots - 1};
    const long a = 0x1111222233334444L, b = -0x5555666677778888L, c = 1;
    for (size_t k = 0; k < sizeof slots / sizeof slots[0]; k++) {
        unsigned char *slot = arena + (size_t)slots[k] * stride;
        printf("-- slot %d at %p\n", slots[k], (void *)slot);
        memset(&seen, 0, sizeof seen);
        long r = call_through((slot_fn)slot, a, b, c + k);
        CHECK(seen.a == a && seen.b == b && seen.c == (long)(c + k),
              "target got a, b, c unchanged (%#lx, %#lx, %ld)", seen.a, seen.b, seen.c);
        CHECK(r == mix(a, b, c + k), "return value came back (%#lx)", r);
        CHECK((uintptr_t)seen.fp % 16 == 0 && (uintptr_t)seen.stub_fp % 16 == 0,
              "frame records 16-byte aligned (target %p, stub %p)", (void *)seen.fp,
              (void *)seen.stub_fp);
        CHECK((void *)seen.fp < (void *)seen.stub_fp && (void *)seen.stub_fp < caller_fp,
              "target fp < stub fp < caller fp on the stack");
        CHECK(seen.ret_in_stub == slot + ret_off,
              "target's return address is slot+%ld, just after the call (got %p)", ret_off,
              seen.ret_in_stub);
        CHECK(seen.stub_saved_fp == caller_fp, "stub saved the caller's fp (%p, caller %p)",
              seen.stub_saved_fp, caller_fp);
        CHECK((unsigned char *)seen.stub_ret > (unsigned char *)call_through &&
                  (unsigned char *)seen.stub_ret < (unsigned char *)call_through + 256,
              "stub's return address is inside the caller (%p)", seen.stub_ret);
    }

    /* Padding traps: jump into it in a slot other than the first. */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTRAP, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    int ntraps = 0;
    for (char *s = argv[3], *end; *s; s = *end ? end + 1 : end) {
        long off = strtol(s, &end, 0);
        if (end == s || off <= 0 || off >= stride) {
            fprintf(stderr, "bad trap offset list\n");
            return 2;
        }
        int sig = signal_from(arena + (size_t)2 * stride + off);
        CHECK(sig == SIGTRAP, "padding at slot+%ld raises SIGTRAP (got signal %d)", off, sig);
        ntraps++;
    }
    CHECK(ntraps > 0, "%d padding traps checked", ntraps);

    arena_perms(lo, hi, perms);
    CHECK(strcmp(perms, "r-xp") == 0, "arena still %s at exit", perms);
    if (failures) printf("FAILED (%d checks)\n", failures);
    else printf("PASS\n");
    return failures ? 1 : 0;
}
