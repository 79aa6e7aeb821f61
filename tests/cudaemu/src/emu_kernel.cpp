/* emu_kernel.cpp - kernel execution of the CPU emulation: each CUDA thread of a block is a
 * cooperative fiber (Boost.Context's fcontext: a switch is a few register moves, no signal-mask
 * system call as with ucontext) on the stream's host thread; barriers and warp collectives switch.
 *
 * DESIGN
 * - One kernel runs at a time in the process (g_kernel_lock): static __shared__ variables are
 *   process globals in the section cudaemu_shared, refilled with 0xFF before each block. Copies,
 *   memsets and host work of other streams still run beside a kernel.
 * - Blocks run one after another in a seeded random order (CUDAEMU_SEED, default 1, mixed with the
 *   launch number): a kernel that assumes block order sees a different one.
 * - Within a block the scheduler picks, seeded-randomly, either a runnable suspended thread or a
 *   fresh one. A fiber runs fresh threads back to back until one blocks, so a kernel without
 *   barriers costs one fiber and no switches; only threads suspended at a barrier hold a fiber.
 *   Between two barriers the threads of a block (and the lanes of a warp) run in random order,
 *   so a missing __syncthreads/__syncwarp shows up as a reader running before its writer.
 * - __syncthreads releases when every thread of the block has arrived. A warp collective forms a
 *   group per mask; it releases when every lane of its mask has arrived, and each lane's result
 *   (shuffle source, ballot) is computed at release. When nothing can run and threads still wait,
 *   the block is deadlocked: the report names the kernel, block, waiting threads and the threads
 *   that never arrived (exited, or waiting elsewhere), and the kernel faults.
 * - Each block's dynamic shared memory is a fresh heap block (ASan redzones, 0xFF fill) freed at
 *   the end of the block. Fiber stacks are mmap'ed with a guard page; ASan is told about every
 *   switch (__sanitizer_start/finish_switch_fiber). */
#include "emu_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <boost/context/detail/fcontext.hpp>

#include <mutex>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

__thread cudaemu::thread_view *cudaemu_cur;

/* Bounds of the static shared section (weak: a program may have no static __shared__ at all). */
extern "C" char __start_cudaemu_shared[] __attribute__((weak));
extern "C" char __stop_cudaemu_shared[] __attribute__((weak));

namespace cudaemu {

namespace bctx = boost::context::detail;

enum tstate { T_FRESH, T_RUNNING, T_RUNNABLE, T_AT_BAR, T_AT_WARP, T_EXITED };

struct fiber;
struct block;

struct ethread : thread_view {
    unsigned linear, lane, warp;
    tstate state;
    fiber *f;
    block *blk;
    unsigned wait_mask;   /* T_AT_WARP: the mask of the collective */
    coll_op wait_op;
    uint64_t result;
};

struct wgroup {
    unsigned mask, arrived;
    coll_op op;
    int width;
    uint64_t val[32];
    int param[32];
};

struct warp_state {
    unsigned exists;   /* lanes that exist in this warp */
    unsigned exited;
    std::vector<wgroup> pending;
};

struct fiber {
    bctx::fcontext_t ctx;   /* where the fiber stopped (valid while it is suspended) */
    void *stack;   /* usable stack above the guard page */
    size_t size;
    bool busy;
    bool fresh_ctx;   /* needs make_fcontext before the next start */
};

struct block {
    const grid_job *job;
    uint3 bid;
    unsigned n, n_exited, bar_arrived;
    std::vector<ethread> th;
    std::vector<unsigned> fresh;   /* thread indices not yet started, in start order */
    size_t next_fresh;
    std::vector<unsigned> runnable;
    std::vector<warp_state> warps;
    void *dyn;
    bool fault;
    uint64_t rng;
};

static const size_t STACK = 256 * 1024;

static __thread block *t_block;
static __thread bctx::fcontext_t t_sched_ctx;   /* the scheduler, while a fiber runs */
#if EMU_ASAN
static __thread const void *t_sched_bottom;   /* the scheduler's stack, for ASan */
static __thread size_t t_sched_size;
#endif
/* The stream thread's fibers, unmapped when the thread ends. */
struct fiber_pool : std::vector<fiber *> {
    ~fiber_pool()
    {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (fiber *f : *this) {
#if EMU_ASAN
            /* the redzones of the frames still on it: a later mapping of these pages would
             * inherit them (ASan clears a stack only when it sees swapcontext, not fcontext) */
            __asan_unpoison_memory_region(f->stack, f->size);
#endif
            munmap((char *)f->stack - page, f->size + page);
            delete f;
        }
    }
};
static thread_local fiber_pool t_fibers;

static std::mutex g_kernel_lock;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static ethread *me() { return (ethread *)cudaemu_cur; }

/* ---- switching ---- */

/* Scheduler -> fiber f; returns when f yields back. */
static void resume_fiber(fiber *f)
{
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, f->size);
#endif
    bctx::transfer_t back = bctx::jump_fcontext(f->ctx, f);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    f->ctx = back.fctx;
}

/* From a fiber back to the scheduler; returns when the scheduler resumes this fiber. */
static void yield_fiber(fiber *f)
{
    (void)f;
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, t_sched_bottom, t_sched_size);
#endif
    bctx::transfer_t from = bctx::jump_fcontext(t_sched_ctx, nullptr);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    t_sched_ctx = from.fctx;
}

static void run_fresh_threads(fiber *f)
{
    for (;;) {
        block *B = t_block;
        while (B && !B->fault && B->next_fresh < B->fresh.size()) {
            ethread *t = &B->th[B->fresh[B->next_fresh++]];
            t->f = f;
            t->state = T_RUNNING;
            cudaemu_cur = t;
            B->job->body();
            t = me();   /* the same thread: a fiber does not change threads while it runs one */
            t->state = T_EXITED;
            B->n_exited++;
            B->warps[t->warp].exited |= 1u << t->lane;
        }
        f->busy = false;
        yield_fiber(f);
    }
}

static void fiber_entry(bctx::transfer_t from)
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &t_sched_bottom, &t_sched_size);
#endif
    t_sched_ctx = from.fctx;
    run_fresh_threads((fiber *)from.data);
}

static fiber *new_fiber()
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *m = mmap(NULL, STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return nullptr;
    mprotect(m, page, PROT_NONE);   /* a stack overflow faults instead of corrupting the neighbour */
    fiber *f = new fiber;
    f->stack = (char *)m + page;
    f->size = STACK;
    f->busy = false;
    f->fresh_ctx = true;
    return f;
}

static void start_fiber(fiber *f)
{
    if (f->fresh_ctx) {
#if EMU_ASAN
        __asan_unpoison_memory_region(f->stack, f->size);   /* frames of an abandoned thread */
#endif
        f->ctx = bctx::make_fcontext((char *)f->stack + f->size, f->size, fiber_entry);
        f->fresh_ctx = false;
    }
    f->busy = true;
    resume_fiber(f);
}

/* ---- reports ---- */

static std::string thread_name(const ethread &t)
{
    char b[64];
    snprintf(b, sizeof b, "(%u,%u,%u)", t.tid.x, t.tid.y, t.tid.z);
    return b;
}

static std::string where(const block *B)
{
    char b[256];
    const grid_job *j = B->job;
    snprintf(b, sizeof b, "kernel %s <<<(%u,%u,%u), (%u,%u,%u), %zu>>> block (%u,%u,%u)", j->name, j->grid.x,
             j->grid.y, j->grid.z, j->block.x, j->block.y, j->block.z, j->shmem, B->bid.x, B->bid.y, B->bid.z);
    return b;
}

static const char *op_name(coll_op op)
{
    switch (op) {
    case COLL_SYNCWARP: return "__syncwarp";
    case COLL_BALLOT: return "__ballot_sync";
    case COLL_ANY: return "__any_sync";
    case COLL_ALL: return "__all_sync";
    case COLL_SHFL: return "__shfl_sync";
    case COLL_SHFL_XOR: return "__shfl_xor_sync";
    case COLL_SHFL_UP: return "__shfl_up_sync";
    case COLL_SHFL_DOWN: return "__shfl_down_sync";
    }
    return "?";
}

/* A misuse seen by the running thread: report, fault the kernel, never return to the kernel. */
[[noreturn]] static void thread_fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void thread_fault(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ethread *t = me();
    block *B = t->blk;
    fault(cudaErrorLaunchFailure, "%s thread %s (warp %u lane %u): %s (seed %llu)", where(B).c_str(),
          thread_name(*t).c_str(), t->warp, t->lane, msg, (unsigned long long)seed());
    B->fault = true;
    fiber *f = t->f;
    f->fresh_ctx = true;   /* abandoned: restarted from scratch when reused */
    f->busy = false;
    for (;;)
        yield_fiber(f);
}

static std::string describe_state(const block *B, const ethread &t)
{
    char b[160];
    switch (t.state) {
    case T_EXITED: return "exited";
    case T_AT_BAR: return "waits at __syncthreads";
    case T_AT_WARP:
        snprintf(b, sizeof b, "waits at %s (mask 0x%08x)", op_name(t.wait_op), t.wait_mask);
        return b;
    case T_FRESH: return "never started";
    default: (void)B; return "runnable";
    }
}

static void report_deadlock(block *B)
{
    std::string m = where(B) + ": deadlock, a barrier is not reached by every thread it waits for:";
    int lines = 0;
    if (B->bar_arrived > 0) {
        char b[200];
        snprintf(b, sizeof b, "\n  %u of %u threads wait at __syncthreads; missing:", B->bar_arrived, B->n);
        m += b;
        int shown = 0;
        for (const ethread &t : B->th)
            if (t.state != T_AT_BAR && shown++ < 6)
                m += "\n    thread " + thread_name(t) + " " + describe_state(B, t);
        lines++;
    }
    for (size_t w = 0; w < B->warps.size() && lines < 8; w++)
        for (const wgroup &g : B->warps[w].pending) {
            char b[200];
            snprintf(b, sizeof b, "\n  warp %zu: %s with mask 0x%08x has lanes 0x%08x; missing:", w, op_name(g.op),
                     g.mask, g.arrived);
            m += b;
            int shown = 0;
            for (unsigned l = 0; l < 32; l++)
                if ((g.mask >> l & 1) && !(g.arrived >> l & 1) && shown++ < 4) {
                    unsigned idx = (unsigned)w * 32 + l;
                    if (idx >= B->n) {
                        snprintf(b, sizeof b, "\n    lane %u does not exist", l);
                        m += b;
                    } else {
                        m += "\n    lane " + std::to_string(l) + " thread " + thread_name(B->th[idx]) + " " +
                             describe_state(B, B->th[idx]);
                    }
                }
            lines++;
        }
    fault(cudaErrorLaunchFailure, "%s (seed %llu)", m.c_str(), (unsigned long long)seed());
    B->fault = true;
}

/* ---- barriers ---- */

static void block_wait(ethread *t)
{
    yield_fiber(t->f);
    t->state = T_RUNNING;
    cudaemu_cur = t;
}

void syncthreads()
{
    ethread *t = me();
    block *B = t->blk;
    t->state = T_AT_BAR;
    if (++B->bar_arrived == B->n) {
        B->bar_arrived = 0;
        for (ethread &o : B->th) {
            o.state = T_RUNNABLE;
            B->runnable.push_back(o.linear);
        }
    }
    block_wait(t);
}

static void release_group(block *B, unsigned w, wgroup &g)
{
    unsigned bal = 0;
    for (unsigned l = 0; l < 32; l++)
        if ((g.mask >> l & 1) && g.val[l])
            bal |= 1u << l;
    for (unsigned l = 0; l < 32; l++) {
        if (!(g.mask >> l & 1))
            continue;
        ethread &t = B->th[w * 32 + l];
        const int wd = g.width, base = (int)l / wd * wd;
        int src = (int)l;
        switch (g.op) {
        case COLL_SYNCWARP: t.result = 0; break;
        case COLL_BALLOT: t.result = bal; break;
        case COLL_ANY: t.result = bal != 0; break;
        case COLL_ALL: t.result = bal == g.mask; break;
        case COLL_SHFL: src = base + ((g.param[l] % wd) + wd) % wd; break;
        case COLL_SHFL_XOR: src = (int)l ^ g.param[l]; if (src / wd > (int)l / wd || src > 31) src = (int)l; break;
        case COLL_SHFL_UP: src = (int)l - g.param[l]; if (src < base) src = (int)l; break;
        case COLL_SHFL_DOWN: src = (int)l + g.param[l]; if (src >= base + wd) src = (int)l; break;
        }
        if (g.op >= COLL_SHFL) {
            if (!(g.mask >> src & 1)) {
                /* reported on behalf of lane l once every lane is here */
                cudaemu_cur = &t;
                char b[160];
                snprintf(b, sizeof b, "%s with mask 0x%08x reads lane %d, which is not in the mask (undefined)",
                         op_name(g.op), g.mask, src);
                fault(cudaErrorLaunchFailure, "%s thread %s (warp %u lane %u): %s (seed %llu)", where(B).c_str(),
                      thread_name(t).c_str(), w, l, b, (unsigned long long)seed());
                B->fault = true;
                return;
            }
            t.result = g.val[src];
        }
        t.state = T_RUNNABLE;
        B->runnable.push_back(t.linear);
    }
}

uint64_t warp_collective(coll_op op, unsigned mask, uint64_t value, int param, int width)
{
    ethread *t = me();
    block *B = t->blk;
    warp_state &W = B->warps[t->warp];
    const unsigned bit = 1u << t->lane;
    if (!(mask & bit))
        thread_fault("%s with mask 0x%08x called by lane %u, which is not in the mask", op_name(op), mask, t->lane);
    if (mask & ~W.exists)
        thread_fault("%s with mask 0x%08x names lanes that do not exist (this warp has lanes 0x%08x)", op_name(op),
                     mask, W.exists);
    if (width < 1 || width > 32 || (width & (width - 1)))
        thread_fault("%s with width %d (a power of two <= 32)", op_name(op), width);
    wgroup *g = nullptr;
    for (wgroup &p : W.pending) {
        if (p.mask == mask) {
            g = &p;
        } else if (p.mask & mask) {
            thread_fault("%s with mask 0x%08x while lanes 0x%08x of an overlapping mask 0x%08x wait at %s",
                         op_name(op), mask, p.arrived, p.mask, op_name(p.op));
        }
    }
    if (!g) {
        W.pending.push_back(wgroup());
        g = &W.pending.back();
        g->mask = mask;
        g->arrived = 0;
        g->op = op;
        g->width = width;
    } else if (g->op != op) {
        thread_fault("lanes of mask 0x%08x meet at different collectives: %s here, %s by lanes 0x%08x",
                     mask, op_name(op), op_name(g->op), g->arrived);
    }
    g->val[t->lane] = value;
    g->param[t->lane] = param;
    g->arrived |= bit;
    t->state = T_AT_WARP;
    t->wait_mask = mask;
    t->wait_op = op;
    if (g->arrived == mask) {
        wgroup done = *g;
        W.pending.erase(W.pending.begin() + (g - W.pending.data()));
        release_group(B, t->warp, done);
        if (B->fault) {
            fiber *f = t->f;
            f->fresh_ctx = true;
            f->busy = false;
            for (;;)
                yield_fiber(f);
        }
    }
    block_wait(t);
    return t->result;
}

unsigned activemask()
{
    ethread *t = me();
    const warp_state &W = t->blk->warps[t->warp];
    return W.exists & ~W.exited;
}

void *dynamic_shared() { return me()->blk->dyn; }

void nanosleep_ns(unsigned ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
}

/* ---- blocks and grids ---- */

__attribute__((no_sanitize_address)) static void poison_static_shared()
{
    if (!__start_cudaemu_shared || !__stop_cudaemu_shared)
        return;
    /* byte loop, not memset: ASan's redzones between the variables are in this range too */
    for (volatile char *p = __start_cudaemu_shared; p < __stop_cudaemu_shared; p++)
        *p = (char)0xFF;
}

static fiber *idle_fiber()
{
    for (fiber *f : t_fibers)
        if (!f->busy)
            return f;
    fiber *f = new_fiber();
    if (f)
        t_fibers.push_back(f);
    return f;
}

static void run_block(block &B)
{
    for (;;) {
        if (B.fault)
            return;
        const bool have_fresh = B.next_fresh < B.fresh.size();
        if (!B.runnable.empty() && (!have_fresh || (rng_next(&B.rng) & 1))) {
            size_t k = (size_t)(rng_next(&B.rng) % B.runnable.size());
            ethread *t = &B.th[B.runnable[k]];
            B.runnable[k] = B.runnable.back();
            B.runnable.pop_back();
            t->state = T_RUNNING;
            cudaemu_cur = t;
            fiber *f = t->f;
            f->busy = true;
            resume_fiber(f);
        } else if (have_fresh) {
            fiber *f = idle_fiber();
            if (!f) {
                fault(cudaErrorLaunchOutOfResources, "%s: cannot map a fiber stack", where(&B).c_str());
                B.fault = true;
                return;
            }
            start_fiber(f);
        } else if (B.n_exited == B.n) {
            return;
        } else {
            report_deadlock(&B);
            return;
        }
    }
}

void run_grid(const grid_job &job)
{
    std::lock_guard<std::mutex> kl(g_kernel_lock);
    t_sched_ctx = nullptr;
    const uint64_t nb = (uint64_t)job.grid.x * job.grid.y * job.grid.z;
    const unsigned nt = job.block.x * job.block.y * job.block.z;
    uint64_t rng = seed() * 0x2545F4914F6CDD1Dull + job.launch_id;
    std::vector<uint32_t> order(nb);
    for (uint64_t i = 0; i < nb; i++)
        order[i] = (uint32_t)i;
    for (uint64_t i = nb; i > 1; i--) {
        uint64_t j = rng_next(&rng) % i;
        std::swap(order[i - 1], order[j]);
    }
    block B;
    B.job = &job;
    B.n = nt;
    B.th.resize(nt);
    B.warps.resize((nt + 31) / 32);
    B.fresh.resize(nt);
    for (uint64_t bi = 0; bi < nb && !faulted(); bi++) {
        const uint64_t b = order[bi];
        B.bid = make_uint3((unsigned)(b % job.grid.x), (unsigned)(b / job.grid.x % job.grid.y),
                           (unsigned)(b / ((uint64_t)job.grid.x * job.grid.y)));
        B.n_exited = 0;
        B.bar_arrived = 0;
        B.next_fresh = 0;
        B.runnable.clear();
        B.fault = false;
        B.rng = rng_next(&rng);
        for (unsigned i = 0; i < nt; i++) {
            ethread &t = B.th[i];
            t.tid = make_uint3(i % job.block.x, i / job.block.x % job.block.y, i / (job.block.x * job.block.y));
            t.bid = B.bid;
            t.bdim = job.block;
            t.gdim = job.grid;
            t.linear = i;
            t.lane = i % 32;
            t.warp = i / 32;
            t.state = T_FRESH;
            t.f = nullptr;
            t.blk = &B;
            B.fresh[i] = i;
        }
        for (unsigned w = 0; w < B.warps.size(); w++) {
            unsigned lanes = nt - w * 32 >= 32 ? 32 : nt - w * 32;
            B.warps[w].exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
            B.warps[w].exited = 0;
            B.warps[w].pending.clear();
        }
        for (unsigned i = nt; i > 1; i--) {
            unsigned j = (unsigned)(rng_next(&B.rng) % i);
            std::swap(B.fresh[i - 1], B.fresh[j]);
        }
        B.dyn = malloc(job.shmem ? job.shmem : 1);
        if (!B.dyn) {
            fault(cudaErrorLaunchOutOfResources, "%s: out of host memory for shared memory", where(&B).c_str());
            break;
        }
        memset(B.dyn, 0xFF, job.shmem ? job.shmem : 1);
        poison_static_shared();
        t_block = &B;
        run_block(B);
        t_block = nullptr;
        free(B.dyn);
        if (B.fault) {
            /* fibers still holding threads of this block are abandoned */
            for (fiber *f : t_fibers)
                if (f->busy) {
                    f->busy = false;
                    f->fresh_ctx = true;
                }
            break;
        }
    }
    cudaemu_cur = nullptr;
    t_sched_ctx = nullptr;
}

}   // namespace cudaemu
