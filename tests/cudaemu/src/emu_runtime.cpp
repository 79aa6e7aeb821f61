/* emu_runtime.cpp - the CUDA runtime API of the CPU emulation: device memory on the host heap,
 * copies, streams as host threads, events, errors, the model GPU's properties.
 *
 * DESIGN
 * - A stream is one host thread draining a FIFO of closures; `done` counts finished items, so
 *   "everything queued so far" is a ticket (the count at enqueue time). The legacy NULL stream is
 *   a stream too: work queued on it first waits for the tickets of every blocking stream, and work
 *   queued on a blocking stream waits for the NULL stream's ticket (CUDA's implicit ordering).
 *   Non-blocking streams order only through events.
 * - An event counts records; a record queues "completed = generation" on its stream. Waiting for an
 *   event waits for the generation current when the wait was issued, as CUDA does.
 * - Device memory: posix_memalign(256) so ASan puts redzones around every allocation, filled with
 *   0xFF (NaN for fp32/fp16) when allocated; cudaFree synchronizes the device (as CUDA does), fills
 *   the block with 0xDD and frees it (ASan's quarantine then reports a use after free).
 * - A kernel fault is sticky for the process (CUDA loses the context); cudaDeviceReset clears it so
 *   the emulator self-tests can fault several times. */
#include "emu_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace cudaemu {

/* ---- errors ---- */

static thread_local cudaError_t t_last = cudaSuccess;
static std::atomic<int> g_sticky{cudaSuccess};
static std::mutex g_fault_lock;
static std::string g_fault_msg;

cudaError_t ret(cudaError_t e)
{
    int s = g_sticky.load();
    if (s != cudaSuccess)
        e = (cudaError_t)s;
    if (e != cudaSuccess)
        t_last = e;
    return e;
}

bool faulted() { return g_sticky.load() != cudaSuccess; }

void fault(cudaError_t e, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    {
        std::lock_guard<std::mutex> g(g_fault_lock);
        g_fault_msg = buf;
    }
    fprintf(stderr, "cudaemu: %s\n", buf);
    fflush(stderr);
    const char *ab = getenv("CUDAEMU_ABORT");
    if (ab && *ab == '1')
        abort();
    int expect = cudaSuccess;
    g_sticky.compare_exchange_strong(expect, (int)e);
}

uint64_t seed()
{
    static uint64_t s = [] {
        const char *v = getenv("CUDAEMU_SEED");
        return v && *v ? strtoull(v, NULL, 0) : 1ull;
    }();
    return s;
}

/* ---- allocations ---- */

struct alloc_info {
    size_t size;
    bool device;
    bool registered;   /* cudaHostRegister'ed caller memory: never freed here */
};
static std::mutex g_mem_lock;
static std::map<uintptr_t, alloc_info> g_allocs;
static size_t g_dev_bytes;

static size_t heap_limit()
{
    static size_t lim = [] {
        const char *v = getenv("CUDAEMU_HEAP_LIMIT");
        return v && *v ? (size_t)strtoull(v, NULL, 0) : (size_t)16 << 30;
    }();
    return lim;
}

static const alloc_info *find_alloc(uintptr_t p, uintptr_t *base)
{
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin())
        return nullptr;
    --it;
    if (p >= it->first + (it->second.size ? it->second.size : 1))
        return nullptr;
    *base = it->first;
    return &it->second;
}

static bool range_of(const void *p, size_t n, bool device)
{
    std::lock_guard<std::mutex> g(g_mem_lock);
    uintptr_t base;
    const alloc_info *a = find_alloc((uintptr_t)p, &base);
    return a && a->device == device && (uintptr_t)p - base + n <= a->size;
}
bool device_range(const void *p, size_t n) { return range_of(p, n, true); }
bool pinned_range(const void *p, size_t n) { return range_of(p, n, false); }

static cudaError_t emu_alloc(void **out, size_t size, bool device)
{
    if (!out)
        return ret(cudaErrorInvalidValue);
    *out = NULL;
    if (faulted())
        return ret(cudaSuccess);
    {
        std::lock_guard<std::mutex> g(g_mem_lock);
        if (device && (size > heap_limit() || g_dev_bytes + size > heap_limit()))
            return ret(cudaErrorMemoryAllocation);
    }
    void *p = NULL;
    if (posix_memalign(&p, 256, size ? size : 1) != 0 || !p)
        return ret(device ? cudaErrorMemoryAllocation : cudaErrorMemoryAllocation);
    memset(p, 0xFF, size);
    std::lock_guard<std::mutex> g(g_mem_lock);
    g_allocs[(uintptr_t)p] = alloc_info{size, device, false};
    if (device)
        g_dev_bytes += size;
    *out = p;
    return cudaSuccess;
}

static cudaError_t emu_free(void *p, bool device)
{
    if (!p)
        return cudaSuccess;
    drain_all();   /* cudaFree / cudaFreeHost synchronize the device */
    size_t size;
    {
        std::lock_guard<std::mutex> g(g_mem_lock);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end() || it->second.device != device || it->second.registered)
            return ret(device ? cudaErrorInvalidDevicePointer : cudaErrorInvalidValue);
        size = it->second.size;
        if (device)
            g_dev_bytes -= size;
        g_allocs.erase(it);
    }
    memset(p, 0xDD, size);
    free(p);
    return cudaSuccess;
}

/* ---- streams ---- */

struct stream {
    unsigned flags = 0;
    bool legacy = false;
    std::mutex m;
    std::condition_variable cv;        /* work queued / stop */
    std::condition_variable done_cv;   /* an item finished */
    std::deque<std::function<void()>> q;
    uint64_t enq = 0, done = 0;
    bool stop = false;
    std::thread th;

    void loop()
    {
        for (;;) {
            std::function<void()> w;
            {
                std::unique_lock<std::mutex> l(m);
                cv.wait(l, [&] { return stop || !q.empty(); });
                if (q.empty())
                    return;
                w = std::move(q.front());
                q.pop_front();
            }
            if (!faulted())
                w();
            w = nullptr;
            {
                std::lock_guard<std::mutex> l(m);
                done++;
            }
            done_cv.notify_all();
        }
    }
    uint64_t ticket()
    {
        std::lock_guard<std::mutex> l(m);
        return enq;
    }
    void wait_for(uint64_t t)
    {
        std::unique_lock<std::mutex> l(m);
        done_cv.wait(l, [&] { return done >= t; });
    }
    void push(std::function<void()> w)
    {
        {
            std::lock_guard<std::mutex> l(m);
            q.push_back(std::move(w));
            enq++;
        }
        cv.notify_one();
    }
};

static std::mutex g_streams_lock;
static std::set<stream *> g_streams;   /* live streams, the legacy one included */
static stream *g_legacy;

static stream *start_stream(unsigned flags, bool legacy)
{
    stream *s = new stream;
    s->flags = flags;
    s->legacy = legacy;
    s->th = std::thread([s] { s->loop(); });
    g_streams.insert(s);
    return s;
}

static void stop_stream(stream *s)
{
    {
        std::lock_guard<std::mutex> l(s->m);
        s->stop = true;
    }
    s->cv.notify_all();
    s->th.join();
    delete s;
}

/* The legacy stream's thread ends with the process: joined from an atexit hook. */
static void legacy_shutdown()
{
    stream *s;
    {
        std::lock_guard<std::mutex> g(g_streams_lock);
        s = g_legacy;
        g_legacy = nullptr;
        if (s)
            g_streams.erase(s);
    }
    if (s)
        stop_stream(s);
}

stream *resolve(cudaStream_t h)
{
    std::lock_guard<std::mutex> g(g_streams_lock);
    if (!h) {
        if (!g_legacy) {
            g_legacy = start_stream(0, true);
            atexit(legacy_shutdown);
        }
        return g_legacy;
    }
    stream *s = (stream *)h;
    return g_streams.count(s) ? s : nullptr;
}

void enqueue(stream *st, std::function<void()> work)
{
    std::vector<std::pair<stream *, uint64_t>> deps;
    {
        std::lock_guard<std::mutex> g(g_streams_lock);
        for (stream *o : g_streams) {
            if (o == st || (o->flags & cudaStreamNonBlocking) || (st->flags & cudaStreamNonBlocking))
                continue;
            if (st->legacy || o->legacy)
                deps.emplace_back(o, o->ticket());
        }
    }
    for (auto &d : deps) {
        stream *o = d.first;
        uint64_t t = d.second;
        st->push([o, t] { o->wait_for(t); });
    }
    st->push(std::move(work));
}

void drain(stream *st) { st->wait_for(st->ticket()); }

void drain_all()
{
    std::vector<std::pair<stream *, uint64_t>> all;
    {
        std::lock_guard<std::mutex> g(g_streams_lock);
        for (stream *o : g_streams)
            all.emplace_back(o, o->ticket());
    }
    for (auto &d : all)
        d.first->wait_for(d.second);
}

/* ---- function attributes ---- */

static std::mutex g_func_lock;
static std::map<const void *, size_t> g_func_smem;

size_t func_max_dynamic_shared(const void *fn)
{
    std::lock_guard<std::mutex> g(g_func_lock);
    auto it = g_func_smem.find(fn);
    return it == g_func_smem.end() ? DEFAULT_SHARED : it->second;
}

/* ---- launches ---- */

void launch(const char *name, const void *fn, dim3 grid, dim3 block, size_t shmem, cudaStream_t s,
            std::function<void()> body)
{
    static std::atomic<uint64_t> launches{0};
    stream *st = resolve(s);
    if (!st) {
        ret(cudaErrorInvalidResourceHandle);
        return;
    }
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (threads == 0 || threads > MAX_THREADS || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
        grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        fprintf(stderr, "cudaemu: launch of %s rejected: grid (%u,%u,%u) block (%u,%u,%u)\n", name, grid.x, grid.y,
                grid.z, block.x, block.y, block.z);
        ret(cudaErrorInvalidConfiguration);
        return;
    }
    const size_t lim = func_max_dynamic_shared(fn);
    if (shmem > OPTIN_SHARED || shmem > lim) {
        fprintf(stderr, "cudaemu: launch of %s rejected: %zu bytes of dynamic shared memory, the limit is %zu%s\n",
                name, shmem, shmem > OPTIN_SHARED ? (size_t)OPTIN_SHARED : lim,
                shmem > OPTIN_SHARED ? "" : " (cudaFuncSetAttribute(MaxDynamicSharedMemorySize) raises it)");
        ret(cudaErrorInvalidValue);
        return;
    }
    grid_job job{name, fn, grid, block, shmem, launches++, std::move(body)};
    enqueue(st, [job] { run_grid(job); });
}

}   // namespace cudaemu

using namespace cudaemu;

/* ---- the C API ---- */

extern "C" {

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
#define N(x) case x: return #x;
        N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation) N(cudaErrorInitializationError)
        N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidDevicePointer) N(cudaErrorInvalidMemcpyDirection)
        N(cudaErrorNoDevice) N(cudaErrorInvalidDevice) N(cudaErrorInvalidResourceHandle) N(cudaErrorNotReady)
        N(cudaErrorHostMemoryAlreadyRegistered) N(cudaErrorHostMemoryNotRegistered)
        N(cudaErrorIllegalAddress) N(cudaErrorLaunchOutOfResources) N(cudaErrorLaunchFailure)
        N(cudaErrorNotSupported) N(cudaErrorUnknown)
#undef N
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulator fault, see cudaemu: on stderr)";
    default: return cudaGetErrorName(e);
    }
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = t_last;
    t_last = cudaSuccess;
    int s = g_sticky.load();
    return s != cudaSuccess ? (cudaError_t)s : e;
}

cudaError_t cudaPeekAtLastError(void)
{
    int s = g_sticky.load();
    return s != cudaSuccess ? (cudaError_t)s : t_last;
}

const char *cudaemu_last_fault(void)
{
    static thread_local std::string copy;
    std::lock_guard<std::mutex> g(g_fault_lock);
    copy = g_fault_msg;
    return copy.c_str();
}

int cudaemu_active(void) { return 1; }

static int n_devices()
{
    const char *v = getenv("CUDAEMU_DEVICES");
    return v && *v ? atoi(v) : 1;
}

cudaError_t cudaGetDeviceCount(int *n)
{
    if (!n)
        return ret(cudaErrorInvalidValue);
    *n = n_devices();
    return *n > 0 ? cudaSuccess : ret(cudaErrorNoDevice);
}

static thread_local int t_device;

cudaError_t cudaSetDevice(int dev)
{
    if (dev < 0 || dev >= n_devices())
        return ret(cudaErrorInvalidDevice);
    t_device = dev;
    return ret(cudaSuccess);
}

cudaError_t cudaGetDevice(int *dev)
{
    if (!dev)
        return ret(cudaErrorInvalidValue);
    *dev = t_device;
    return ret(cudaSuccess);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev)
{
    if (!p)
        return ret(cudaErrorInvalidValue);
    if (dev < 0 || dev >= n_devices())
        return ret(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cudaemu (CPU emulation of an H100 SXM, sm_90)");
    p->totalGlobalMem = heap_limit();
    p->sharedMemPerBlock = DEFAULT_SHARED;
    p->sharedMemPerBlockOptin = OPTIN_SHARED;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = (int)MAX_THREADS;
    p->maxThreadsDim[0] = 1024;
    p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = 65535;
    p->maxGridSize[2] = 65535;
    p->multiProcessorCount = 132;
    p->maxThreadsPerMultiProcessor = 2048;
    p->major = 9;
    p->minor = 0;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->memoryBusWidth = 5120;
    p->totalConstMem = 65536;
    p->concurrentKernels = 1;
    p->asyncEngineCount = 3;
    p->unifiedAddressing = 1;
    return ret(cudaSuccess);
}

cudaError_t cudaDeviceSynchronize(void)
{
    drain_all();
    return ret(cudaSuccess);
}

cudaError_t cudaDeviceReset(void)
{
    drain_all();
    g_sticky.store(cudaSuccess);
    t_last = cudaSuccess;
    std::lock_guard<std::mutex> g(g_func_lock);
    g_func_smem.clear();
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t size) { return emu_alloc(p, size, true); }
cudaError_t cudaFree(void *p) { return emu_free(p, true); }
cudaError_t cudaMallocHost(void **p, size_t size) { return emu_alloc(p, size, false); }
cudaError_t cudaHostAlloc(void **p, size_t size, unsigned flags)
{
    (void)flags;
    return emu_alloc(p, size, false);
}
cudaError_t cudaFreeHost(void *p) { return emu_free(p, false); }

cudaError_t cudaHostRegister(void *p, size_t size, unsigned flags)
{
    (void)flags;
    if (!p || !size)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(g_mem_lock);
    uintptr_t base;
    if (find_alloc((uintptr_t)p, &base) || find_alloc((uintptr_t)p + size - 1, &base))
        return ret(cudaErrorHostMemoryAlreadyRegistered);
    g_allocs[(uintptr_t)p] = alloc_info{size, false, true};
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *p)
{
    drain_all();   /* queued copies may still read the range */
    std::lock_guard<std::mutex> g(g_mem_lock);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || !it->second.registered)
        return ret(cudaErrorHostMemoryNotRegistered);
    g_allocs.erase(it);
    return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *bus_id, int len, int dev)
{
    if (!bus_id || len < 13 || dev != 0)
        return ret(dev != 0 ? cudaErrorInvalidDevice : cudaErrorInvalidValue);
    const char *v = getenv("CUDAEMU_PCI_BUS_ID");
    snprintf(bus_id, (size_t)len, "%s", v && *v ? v : "0000:00:00.0");
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p)
{
    if (!a)
        return ret(cudaErrorInvalidValue);
    memset(a, 0, sizeof *a);
    std::lock_guard<std::mutex> g(g_mem_lock);
    uintptr_t base;
    const alloc_info *ai = find_alloc((uintptr_t)p, &base);
    if (ai) {
        a->type = ai->device ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
        a->devicePointer = (void *)p;
        a->hostPointer = ai->device ? NULL : (void *)p;
    }
    return ret(cudaSuccess);
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    std::lock_guard<std::mutex> g(g_mem_lock);
    if (free_bytes)
        *free_bytes = heap_limit() - g_dev_bytes;
    if (total_bytes)
        *total_bytes = heap_limit();
    return ret(cudaSuccess);
}

/* Validate a copy and say which ends are device memory. */
static cudaError_t check_copy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, bool *dst_dev,
                              bool *src_dev)
{
    if (kind == cudaMemcpyDefault) {
        kind = device_range(dst, n ? n : 1) ? (device_range(src, n ? n : 1) ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                            : (device_range(src, n ? n : 1) ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    }
    *dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    *src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((int)kind < 0 || kind > cudaMemcpyDefault)
        return cudaErrorInvalidMemcpyDirection;
    if (n == 0)
        return cudaSuccess;
    if (!dst || !src)
        return cudaErrorInvalidValue;
    if (*dst_dev && !device_range(dst, n)) {
        fprintf(stderr, "cudaemu: copy of %zu bytes to %p: not inside one device allocation\n", n, dst);
        return cudaErrorInvalidValue;
    }
    if (*src_dev && !device_range(src, n)) {
        fprintf(stderr, "cudaemu: copy of %zu bytes from %p: not inside one device allocation\n", n, src);
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

static cudaError_t copy_async(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s,
                              bool sync)
{
    bool dd, sd;
    cudaError_t e = check_copy(dst, src, n, kind, &dd, &sd);
    if (e != cudaSuccess)
        return ret(e);
    stream *st = resolve(s);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    if (faulted())
        return ret(cudaSuccess);
    if (n == 0)
        return ret(cudaSuccess);
    if (!sd && dd && !pinned_range(src, n)) {
        /* pageable source: CUDA returns once the source is staged, so the caller may reuse it */
        auto stage = std::make_shared<std::vector<uint8_t>>((const uint8_t *)src, (const uint8_t *)src + n);
        enqueue(st, [dst, stage, n] { memcpy(dst, stage->data(), n); });
    } else {
        enqueue(st, [dst, src, n] { memmove(dst, src, n); });
    }
    /* pageable destination of a device-to-host copy: CUDA returns once the copy is done */
    if (sync || (sd && !dd && !pinned_range(dst, n)))
        drain(st);
    return ret(cudaSuccess);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind)
{
    return copy_async(dst, src, n, kind, NULL, true);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s)
{
    return copy_async(dst, src, n, kind, s, false);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t s)
{
    if (n && !device_range(dst, n)) {
        fprintf(stderr, "cudaemu: memset of %zu bytes at %p: not inside one device allocation\n", n, dst);
        return ret(cudaErrorInvalidValue);
    }
    stream *st = resolve(s);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    if (n && !faulted())
        enqueue(st, [dst, value, n] { memset(dst, value, n); });
    return ret(cudaSuccess);
}

cudaError_t cudaMemset(void *dst, int value, size_t n) { return cudaMemsetAsync(dst, value, n, NULL); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    if (!s)
        return ret(cudaErrorInvalidValue);
    resolve(NULL);   /* the legacy stream exists before any blocking stream orders against it */
    std::lock_guard<std::mutex> g(g_streams_lock);
    *s = (cudaStream_t)start_stream(flags, false);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t h)
{
    if (!h)
        return ret(cudaErrorInvalidResourceHandle);
    stream *st;
    {
        std::lock_guard<std::mutex> g(g_streams_lock);
        st = (stream *)h;
        if (!g_streams.count(st))
            return ret(cudaErrorInvalidResourceHandle);
        g_streams.erase(st);
    }
    stop_stream(st);   /* runs what is queued, then ends the thread */
    return ret(cudaSuccess);
}

cudaError_t cudaStreamSynchronize(cudaStream_t h)
{
    stream *st = resolve(h);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    drain(st);
    return ret(cudaSuccess);
}

cudaError_t cudaStreamQuery(cudaStream_t h)
{
    stream *st = resolve(h);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> l(st->m);
    return st->done >= st->enq ? ret(cudaSuccess) : cudaErrorNotReady;
}

}   // extern "C"

/* ---- events ---- */

struct cudaemu_event {
    unsigned flags;
    std::mutex m;
    std::condition_variable cv;
    uint64_t recorded = 0, completed = 0;
    std::chrono::steady_clock::time_point when;
};

static std::mutex g_events_lock;
static std::set<cudaemu_event *> g_events;

static cudaemu_event *event_of(cudaEvent_t e)
{
    std::lock_guard<std::mutex> g(g_events_lock);
    return g_events.count(e) ? e : nullptr;
}

extern "C" {

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags)
{
    if (!e)
        return ret(cudaErrorInvalidValue);
    cudaemu_event *ev = new cudaemu_event;
    ev->flags = flags;
    std::lock_guard<std::mutex> g(g_events_lock);
    g_events.insert(ev);
    *e = ev;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    {
        std::lock_guard<std::mutex> g(g_events_lock);
        if (!g_events.erase(e))
            return ret(cudaErrorInvalidResourceHandle);
    }
    drain_all();   /* a pending record still refers to it; CUDA defers the release the same way */
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    cudaemu_event *ev = event_of(e);
    stream *st = resolve(s);
    if (!ev || !st)
        return ret(cudaErrorInvalidResourceHandle);
    uint64_t gen;
    {
        std::lock_guard<std::mutex> l(ev->m);
        gen = ++ev->recorded;
    }
    enqueue(st, [ev, gen] {
        {
            std::lock_guard<std::mutex> l(ev->m);
            if (gen > ev->completed) {
                ev->completed = gen;
                ev->when = std::chrono::steady_clock::now();
            }
        }
        ev->cv.notify_all();
    });
    return ret(cudaSuccess);
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    cudaemu_event *ev = event_of(e);
    if (!ev)
        return ret(cudaErrorInvalidResourceHandle);
    std::unique_lock<std::mutex> l(ev->m);
    uint64_t gen = ev->recorded;
    ev->cv.wait(l, [&] { return ev->completed >= gen; });
    return ret(cudaSuccess);
}

cudaError_t cudaEventQuery(cudaEvent_t e)
{
    cudaemu_event *ev = event_of(e);
    if (!ev)
        return ret(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> l(ev->m);
    return ev->completed >= ev->recorded ? ret(cudaSuccess) : cudaErrorNotReady;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags)
{
    (void)flags;
    cudaemu_event *ev = event_of(e);
    stream *st = resolve(s);
    if (!ev || !st)
        return ret(cudaErrorInvalidResourceHandle);
    uint64_t gen;
    {
        std::lock_guard<std::mutex> l(ev->m);
        gen = ev->recorded;   /* the record current now; a never-recorded event is complete */
    }
    enqueue(st, [ev, gen] {
        std::unique_lock<std::mutex> l(ev->m);
        ev->cv.wait(l, [&] { return ev->completed >= gen; });
    });
    return ret(cudaSuccess);
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    cudaemu_event *ea = event_of(a), *eb = event_of(b);
    if (!ms || !ea || !eb)
        return ret(cudaErrorInvalidValue);
    if ((ea->flags | eb->flags) & cudaEventDisableTiming)
        return ret(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> la(ea->m);
    std::unique_lock<std::mutex> lb(eb->m, std::defer_lock);
    if (ea != eb)
        lb.lock();
    if (!ea->recorded || !eb->recorded)
        return ret(cudaErrorInvalidResourceHandle);
    if (ea->completed < ea->recorded || eb->completed < eb->recorded)
        return cudaErrorNotReady;
    *ms = std::chrono::duration<float, std::milli>(eb->when - ea->when).count();
    return ret(cudaSuccess);
}

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value)
{
    if (!func)
        return ret(cudaErrorInvalidValue);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > OPTIN_SHARED)
            return ret(cudaErrorInvalidValue);
        std::lock_guard<std::mutex> g(g_func_lock);
        g_func_smem[func] = (size_t)value;
    }
    return ret(cudaSuccess);
}

}   // extern "C"
