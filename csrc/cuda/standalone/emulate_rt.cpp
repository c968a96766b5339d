// The runtime of the host emulator (emulate.h): the fiber scheduler that runs
// a launch's blocks and threads, and the detectors that stand in for
// compute-sanitizer. Compiled without instrumentation; the kernels'
// translation unit is compiled with -fsanitize=thread, so that each of its
// loads and stores calls one of the __tsan_* entry points below (no
// ThreadSanitizer runtime is linked: these definitions are the runtime).
//
// What is checked (each finding names the check, the kernel, the array and
// the threads; scripts/emulate_cuda.py fails on any):
//   racecheck   shared memory: a granule (2 bytes) written by one thread and
//               read or written by another of the block within one barrier
//               interval. Global memory: the same within a block, and between
//               blocks of one launch any granule that one block writes and
//               another reads or writes (blocks have no order). Replicated stores
//               (RKD_REPLICATED_STORES) may repeat another block's store if
//               the bits are equal and every block that reads them stored
//               them itself.
//   synccheck   threads of a block waiting at different __syncthreads()
//               call sites; threads returning while others wait.
//   initcheck   shared memory read before this block wrote it; scratch or
//               op outputs read before anything wrote them.
//   memcheck    accesses outside every allocation and every __shared__
//               array (or straddling an end); host code dereferencing
//               device memory.
//   launch      grid x above 2^31 - 1, y or z above 65,535, more than 1,024
//               threads (x, y above 1,024, z above 64), static shared memory
//               above the 48 KiB a launch may use without an opt-in.
// Kernels and their __shared__ arrays are found by their dynamic symbols
// (dladdr): kernels must be templates or inline functions in a named
// namespace, as every kernel of csrc/cuda is (the static locals of other
// functions have no dynamic symbol).
// Blocks run in grid order, reversed, or a seeded shuffle
// (rkd_emu_set_block_order); any one __syncthreads() call site can be made a
// no-op (rkd_emu_skip_barrier), which is how scripts/barrier_sweep.py shows
// that every barrier is needed.
#include "emulate.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace emu {
namespace {

// ---- fibers ------------------------------------------------------------------------------------

// On x86-64 a register swap without the signal-mask system call that
// swapcontext makes (a few nanoseconds instead of a few hundred: the
// emulated kernels switch millions of times); ucontext elsewhere.
#if defined(__x86_64__)
extern "C" void rkd_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .weak rkd_emu_switch
    .type rkd_emu_switch, @function
rkd_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rkd_emu_switch, .-rkd_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

void raw_switch(Context& from, Context& to) { rkd_emu_switch(&from.sp, to.sp); }

// A context that starts entry() on the stack [base, base + size); entry must
// never return.
void prepare(Context& c, char* base, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(base + size) & ~uintptr_t(15));
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  top[-1] = 0;                                  // entry's return address: none
  top[-2] = reinterpret_cast<uint64_t>(entry);  // where the first switch returns to
  for (int r = 3; r <= 8; ++r) top[-r] = 0;     // rbp rbx r12 r13 r14 r15
  top[-9] = mxcsr | (static_cast<uint64_t>(fpcw) << 32);
  c.sp = top - 9;
}
#else
#include <ucontext.h>
struct Context {
  ucontext_t ctx;
};

void raw_switch(Context& from, Context& to) { swapcontext(&from.ctx, &to.ctx); }

void prepare(Context& c, char* base, size_t size, void (*entry)()) {
  getcontext(&c.ctx);
  c.ctx.uc_stack.ss_sp = base;
  c.ctx.uc_stack.ss_size = size;
  c.ctx.uc_link = nullptr;
  makecontext(&c.ctx, entry, 0);
}
#endif

constexpr size_t kStack = 64 * 1024;

struct Fiber {
  Context ctx;
  char* stack = nullptr;
  enum State { Ready, AtBarrier, Done } state = Ready;
  const char* file = nullptr;  // the barrier it waits at
  int line = 0;
  int replicated = 0;  // depth of Replicated scopes
};

// Fiber stacks, kept across launches: allocating and faulting in fresh ones
// would cost more than the kernels.
char* stack(size_t t) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while (pool.size() <= t) pool.emplace_back(new char[kStack]);
  return pool[t].get();
}

// The scheduler's context, the running fiber (null on the host) and the
// fibers of the running block.
Context scheduler;
Fiber* running = nullptr;
std::vector<Fiber> fibers;
void (*body_fn)(void*) = nullptr;
void* body_arg = nullptr;

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer must be told about stack switches.
const void* host_stack_bottom = nullptr;
size_t host_stack_size = 0;

void to_fiber(Fiber& f) {
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
  raw_switch(scheduler, f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}

void to_scheduler(Fiber& f, bool done) {
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(done ? nullptr : &fake, host_stack_bottom, host_stack_size);
  raw_switch(f.ctx, scheduler);
  __sanitizer_finish_switch_fiber(fake, &host_stack_bottom, &host_stack_size);
}

void fiber_started() { __sanitizer_finish_switch_fiber(nullptr, &host_stack_bottom, &host_stack_size); }
#else
void to_fiber(Fiber& f) { raw_switch(scheduler, f.ctx); }
void to_scheduler(Fiber& f, bool) { raw_switch(f.ctx, scheduler); }
void fiber_started() {}
#endif

// ---- the detectors' state ------------------------------------------------------------------------

// Who touched a 2-byte granule last: a launch (0: never written; 1: written
// by the host before any launch), a block (its flat index), a barrier
// interval of that block, a thread (flat index), and flags.
struct Stamp {
  uint32_t launch = 0, block = 0, interval = 0;
  uint16_t thread = 0, flags = 0;
};
enum : uint16_t { kReplicated = 1, kMultiThread = 2, kMultiBlock = 4, kForeign = 8 };
constexpr uint32_t kHostWritten = 1;

struct Cell {
  Stamp w, r;  // the last write; the reads since
};
// Accesses are tracked in granules of the smallest element the kernels store
// (half, bfloat16): threads storing to the two bytes of one granule would be
// reported as racing.
constexpr size_t kGranule = 2;

enum class Kind { Shared, Global, Param, Builtin };

struct Region {
  uintptr_t lo = 0, hi = 0;
  Kind kind = Kind::Global;
  bool track_init = false;  // reads before any write are reported (scratch, outputs)
  int refs = 1;
  std::string name;             // Global, Param, Builtin
  const char* symbol = nullptr;  // Shared: the array's mangled name
  std::vector<Cell> shadow;     // one per granule, made on first use
  uint32_t counted_launch = 0;  // Shared: the launch whose static shared memory counts it
};

std::vector<std::unique_ptr<Region>> regions;  // sorted by lo, disjoint
Region* last_region = nullptr;
uintptr_t rw_lo = 0, rw_hi = 0;  // this library's writable segment: where the __shared__ arrays are
std::vector<std::pair<uintptr_t, uintptr_t>> ro_segments;  // its code and constants
bool detecting = false;          // whether any instrumented access has been seen

// The launch and the position of the running thread.
uint32_t launch_id = kHostWritten;
uint32_t block_flat = 0, interval = 0;
uint16_t thread_flat = 0;
const void* kernel = nullptr;
dim3 grid_dims, block_dims;
size_t launch_smem = 0;
const char* interval_file = nullptr;  // the barrier that opened the current interval
int interval_line = 0;

// Findings: the first of each kind, kernel and array in full; all counted.
std::vector<std::string> findings;
std::set<std::string> finding_keys;
int64_t finding_count = 0;
constexpr size_t kMaxFindings = 200;

struct Pending {  // a replicated store's predecessor: the bits it must equal
  Region* region;
  uintptr_t addr;
  size_t n;
  unsigned char bits[16];
};
std::vector<Pending> pending;

int block_order = 0;  // 0 grid order, 1 reversed, 2 shuffled
uint64_t order_seed = 0;

struct Site {
  std::string file;  // basename
  int line = 0;
  int64_t count = 0;
  bool skip = false;
};
std::map<std::pair<const char*, int>, Site> sites;
std::string skip_site;  // "file:line", or empty

struct Launched {
  dim3 block;
  int64_t count = 0;
};
std::map<const void*, Launched> launched;  // every kernel launched, by address

std::string demangle(const char* mangled) {
  if (mangled == nullptr) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  return s;
}

// A demangled name without its return type and parameter lists (those of
// lambdas among the template arguments too), template arguments below the
// first level elided:
// "rkd::gpu::group_row_sums_kernel<rkd::Group<...>, rkd::Group<...> >::red".
std::string short_name(std::string full) {
  if (full.rfind("void ", 0) == 0) full.erase(0, 5);
  std::string out;
  int angle = 0, paren = 0;
  for (const char ch : full) {
    if (angle <= 1 && (ch == '(' || (ch == ')' && paren > 0))) {
      paren += ch == '(' ? 1 : -1;
      continue;
    }
    if (paren > 0) continue;
    if (ch == '<') {
      if (angle == 1) out += "<...>";
      if (angle == 0) out += ch;
      ++angle;
    } else if (ch == '>') {
      if (--angle == 0) out += ch;
    } else if (angle <= 1) {
      out += ch;
    }
  }
  return out;
}

std::string kernel_name() {
  static std::unordered_map<const void*, std::string> cache;
  auto it = cache.find(kernel);
  if (it != cache.end()) return it->second;
  Dl_info info{};
  const char* sym = dladdr(kernel, &info) != 0 ? info.dli_sname : nullptr;
  return cache[kernel] = short_name(demangle(sym));
}

std::string coords(uint32_t flat, const dim3& d) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "(%u, %u, %u)", flat % d.x, flat / d.x % d.y, flat / (d.x * d.y));
  return buf;
}

std::string thread_of(const Stamp& s) {
  return "thread " + coords(s.thread, block_dims) + " of block " + coords(s.block, grid_dims);
}

Stamp now(uint16_t flags = 0) { return {launch_id, block_flat, interval, thread_flat, flags}; }

const std::string& region_name(Region& r) {
  if (r.kind == Kind::Shared && r.name.empty()) r.name = "__shared__ " + short_name(demangle(r.symbol));
  return r.name;
}

// Counts a finding; keeps text() for the first of its check, kernel and key.
template <typename Text>
void report(const char* check, const std::string& key, const Text& text) {
  ++finding_count;
  if (finding_keys.insert(std::string(check) + "|" + kernel_name() + "|" + key).second &&
      findings.size() < kMaxFindings)
    findings.push_back(std::string(check) + ": " + text());
}

std::string place(Region& r, uintptr_t addr, size_t n) {
  char buf[96];
  std::snprintf(buf, sizeof buf, " at byte %zu (element %zu of %zu-byte accesses)", static_cast<size_t>(addr - r.lo),
                static_cast<size_t>((addr - r.lo) / n), n);
  return region_name(r) + buf;
}

std::string interval_text() {
  if (interval_file == nullptr) return "before the kernel's first barrier";
  return "after the barrier at " + std::string(interval_file) + ":" + std::to_string(interval_line);
}

void hazard(const char* what, Region& r, uintptr_t addr, size_t n, const Stamp& other, const char* other_did,
            const char* this_did) {
  const bool same_block = other.block == block_flat;
  report(same_block ? "racecheck" : "racecheck (between blocks)", region_name(r), [&] {
    return std::string(what) + " in " + kernel_name() + ": " + place(r, addr, n) + ": " + other_did + " by " +
           thread_of(other) + ", " + this_did + " by " + thread_of(now()) +
           (same_block ? " in the same barrier interval (" + interval_text() + ")" : " of the same launch");
  });
}

// ---- regions ---------------------------------------------------------------------------------------

std::vector<std::unique_ptr<Region>>::iterator first_after(uintptr_t p) {
  return std::upper_bound(regions.begin(), regions.end(), p,
                          [](uintptr_t v, const std::unique_ptr<Region>& r) { return v < r->lo; });
}

Region* insert(std::unique_ptr<Region> r) {
  Region* raw = r.get();
  regions.insert(first_after(r->lo), std::move(r));
  return raw;
}

Region* add_region(uintptr_t lo, size_t n, Kind kind, std::string name, bool track_init) {
  auto r = std::make_unique<Region>();
  r->lo = lo;
  r->hi = lo + n;
  r->kind = kind;
  r->name = std::move(name);
  r->track_init = track_init;
  return insert(std::move(r));
}

void remove_region(Region* r) {
  if (last_region == r) last_region = nullptr;
  regions.erase(std::find_if(regions.begin(), regions.end(), [&](const auto& x) { return x.get() == r; }));
}

int find_rw_segment(dl_phdr_info* info, size_t, void* data) {
  const auto self = reinterpret_cast<uintptr_t>(data);
  bool mine = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && self >= lo && self < lo + ph.p_memsz) mine = true;
  }
  if (!mine) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_flags & PF_W) {
      rw_lo = lo;
      rw_hi = lo + ph.p_memsz;
    } else {
      ro_segments.emplace_back(lo, lo + ph.p_memsz);
    }
  }
  return 1;
}

void init_regions() {
  static bool done = false;
  if (done) return;
  done = true;
  dl_iterate_phdr(find_rw_segment, reinterpret_cast<void*>(&init_regions));
  add_region(reinterpret_cast<uintptr_t>(&threadIdx), sizeof threadIdx, Kind::Builtin, "threadIdx", false);
  add_region(reinterpret_cast<uintptr_t>(&blockIdx), sizeof blockIdx, Kind::Builtin, "blockIdx", false);
  add_region(reinterpret_cast<uintptr_t>(&blockDim), sizeof blockDim, Kind::Builtin, "blockDim", false);
  add_region(reinterpret_cast<uintptr_t>(&gridDim), sizeof gridDim, Kind::Builtin, "gridDim", false);
}

// The region holding p; a static of this library that a kernel touches for
// the first time becomes a Shared region (with `discover`).
Region* find(uintptr_t p, bool discover = true) {
  if (last_region != nullptr && p >= last_region->lo && p < last_region->hi) return last_region;
  auto it = first_after(p);
  if (it != regions.begin() && p < (*std::prev(it))->hi) return last_region = std::prev(it)->get();
  if (!discover || p < rw_lo || p >= rw_hi) return nullptr;
  // A static of this library touched by a kernel: a __shared__ array.
  Dl_info info{};
  void* entry = nullptr;
  if (dladdr1(reinterpret_cast<void*>(p), &info, &entry, RTLD_DL_SYMENT) == 0 ||
      entry == nullptr || info.dli_saddr == nullptr)
    return nullptr;
  const auto* sym = static_cast<const ElfW(Sym)*>(entry);
  const auto lo = reinterpret_cast<uintptr_t>(info.dli_saddr);
  if (p >= lo + sym->st_size) return nullptr;
  Region* r = add_region(lo, sym->st_size, Kind::Shared, "", false);
  r->symbol = info.dli_sname;
  return last_region = r;
}

Cell* shadow(Region& r) {
  if (r.shadow.empty()) {
    r.shadow.resize((r.hi - r.lo + kGranule - 1) / kGranule);
    if (r.kind == Kind::Global && !r.track_init)
      for (Cell& c : r.shadow) c.w.launch = kHostWritten;
  }
  return r.shadow.data();
}

std::string nearest(uintptr_t p) {
  auto it = first_after(p);
  std::string s;
  if (it != regions.begin()) {
    Region& r = **std::prev(it);
    s += std::to_string(p - r.hi) + " bytes past the end of " + region_name(r);
  }
  if (it != regions.end()) {
    if (!s.empty()) s += ", ";
    s += std::to_string((*it)->lo - p) + " bytes before " + region_name(**it);
  }
  return s.empty() ? "no allocation is live" : s;
}

// ---- the checks of one access --------------------------------------------------------------

void check_write(Region& r, Cell& c, uintptr_t addr, size_t n, bool replicated) {
  const bool global = r.kind == Kind::Global;
  if (c.w.launch == launch_id) {
    if (c.w.block == block_flat) {
      if (c.w.interval == interval && c.w.thread != thread_flat)
        hazard("write after write", r, addr, n, c.w, "written", "written");
    } else if (global) {
      if (!(replicated && (c.w.flags & kReplicated))) {
        hazard("write after write", r, addr, n, c.w, "written", "written");
      } else if (pending.empty() || pending.back().addr != addr) {
        Pending p{&r, addr, n, {}};
        std::memcpy(p.bits, reinterpret_cast<const void*>(addr), n);
        pending.push_back(p);
      }
    }
  }
  if (c.r.launch == launch_id) {
    if (c.r.block == block_flat && c.r.interval == interval &&
        (c.r.thread != thread_flat || (c.r.flags & kMultiThread)))
      hazard("write after read", r, addr, n, c.r, "read", "written");
    else if (global && (c.r.block != block_flat || (c.r.flags & kMultiBlock)) &&
             !(replicated && !(c.r.flags & kForeign)))
      hazard("write after read", r, addr, n, c.r, "read", "written");
  }
  c.w = now(replicated ? kReplicated : 0);
}

void check_read(Region& r, Cell& c, uintptr_t addr, size_t n) {
  const bool global = r.kind == Kind::Global;
  const bool own = c.w.launch == launch_id && c.w.block == block_flat;
  if (own) {
    if (c.w.interval == interval && c.w.thread != thread_flat)
      hazard("read after write", r, addr, n, c.w, "written", "read");
  } else if (global && c.w.launch == launch_id) {
    hazard("read after write", r, addr, n, c.w, "written", "read");
  }
  if (r.kind == Kind::Shared && !own)
    report("initcheck", region_name(r), [&] {
      return "uninitialised __shared__ read in " + kernel_name() + ": " + place(r, addr, n) + " read by " +
             thread_of(now()) + " before any thread of its block wrote it";
    });
  else if (global && c.w.launch == 0)
    report("initcheck", region_name(r), [&] {
      return "uninitialised global read in " + kernel_name() + ": " + place(r, addr, n) + " read by " +
             thread_of(now()) + " before anything wrote it";
    });
  const uint16_t foreign = own ? 0 : kForeign;
  if (c.r.launch != launch_id) {
    c.r = now(foreign);
    return;
  }
  uint16_t fl = c.r.flags | foreign;
  if (c.r.block != block_flat) {
    fl = static_cast<uint16_t>((fl | kMultiBlock) & ~kMultiThread);
    c.r.block = block_flat;
    c.r.interval = interval;
    c.r.thread = thread_flat;
  } else if (c.r.interval != interval) {
    fl = static_cast<uint16_t>(fl & ~kMultiThread);
    c.r.interval = interval;
    c.r.thread = thread_flat;
  } else if (c.r.thread != thread_flat) {
    fl |= kMultiThread;
  }
  c.r.flags = fl;
}

void host_access(uintptr_t p, size_t n) {
  if (regions.empty() || p < regions.front()->lo || p >= regions.back()->hi) return;
  Region* r = find(p, false);
  if (r == nullptr || r->kind != Kind::Global) return;
  report("memcheck", region_name(*r),
         [&] { return "host code dereferences device memory: " + place(*r, p, n) + " (outside any kernel launch)"; });
}

void access(void* a, size_t n, bool write) {
  detecting = true;
  const auto p = reinterpret_cast<uintptr_t>(a);
  Fiber* f = running;
  if (f == nullptr) return host_access(p, n);
  if (p - reinterpret_cast<uintptr_t>(f->stack) < kStack) return;  // the thread's own locals
  Region* r = find(p);
  if (r == nullptr) {
    for (const auto& [lo, hi] : ro_segments)
      if (p >= lo && p < hi && !write) return;  // a constant of the library
    report("memcheck", "outside", [&] {
      return std::string(write ? "write" : "read") + " of " + std::to_string(n) + " bytes in " + kernel_name() +
             " by " + thread_of(now()) + " outside every allocation and __shared__ array (" + nearest(p) + ")";
    });
    return;
  }
  if (p + n > r->hi) {
    report("memcheck", region_name(*r), [&] {
      return std::string(write ? "write" : "read") + " in " + kernel_name() + " by " + thread_of(now()) +
             " straddles the end of " + place(*r, p, n);
    });
    return;
  }
  // The launch's parameters and the built-in variables: read only (nvcc rejects stores to them).
  if (r->kind == Kind::Param || r->kind == Kind::Builtin) return;
  if (r->kind == Kind::Shared && r->counted_launch != launch_id) {
    r->counted_launch = launch_id;
    launch_smem += r->hi - r->lo;
  }
  Cell* cells = shadow(*r);
  const size_t g0 = (p - r->lo) / kGranule, g1 = (p + n - 1 - r->lo) / kGranule;
  const bool replicated = write && f->replicated > 0;
  for (size_t g = g0; g <= g1; ++g) {
    if (write)
      check_write(*r, cells[g], p, n, replicated);
    else
      check_read(*r, cells[g], p, n);
  }
}

// ---- the scheduler ---------------------------------------------------------------------------------

void fiber_main() {
  fiber_started();
  body_fn(body_arg);
  Fiber& f = *running;
  f.state = Fiber::Done;
  to_scheduler(f, true);  // never resumed
  std::abort();
}

void check_pending() {
  for (const Pending& p : pending)
    if (std::memcmp(p.bits, reinterpret_cast<const void*>(p.addr), p.n) != 0)
      report("racecheck (between blocks)", region_name(*p.region), [&] {
        return "replicated stores differ in " + kernel_name() + ": " + place(*p.region, p.addr, p.n) +
               ": two blocks stored different bits";
      });
  pending.clear();
}

std::string sites_of(const std::vector<size_t>& threads) {
  std::map<std::pair<const char*, int>, size_t> count;
  for (size_t t : threads) ++count[{fibers[t].file, fibers[t].line}];
  std::string s;
  for (const auto& [site, n] : count)
    s += (s.empty() ? "" : ", ") + std::to_string(n) + " at " + std::string(site.first) + ":" +
         std::to_string(site.second);
  return s;
}

// Runs one block to its end.
void run_block(size_t n) {
  interval = 0;
  interval_file = nullptr;
  for (size_t t = 0; t < n; ++t) {
    Fiber& f = fibers[t];
    f.stack = stack(t);
    f.state = Fiber::Ready;
    f.replicated = 0;
    prepare(f.ctx, f.stack, kStack, fiber_main);
  }
  for (bool reverse = false;; reverse = !reverse) {
    // Alternating the order between barriers varies the values that racy
    // code would read.
    for (size_t l = 0; l < n; ++l) {
      const size_t t = reverse ? n - 1 - l : l;
      Fiber& f = fibers[t];
      if (f.state != Fiber::Ready) continue;
      running = &f;
      thread_flat = static_cast<uint16_t>(t);
      threadIdx = make_uint3(static_cast<unsigned>(t % block_dims.x),
                             static_cast<unsigned>(t / block_dims.x % block_dims.y),
                             static_cast<unsigned>(t / (block_dims.x * block_dims.y)));
      to_fiber(f);
      running = nullptr;
    }
    std::vector<size_t> waiting;
    for (size_t t = 0; t < n; ++t)
      if (fibers[t].state == Fiber::AtBarrier) waiting.push_back(t);
    if (waiting.empty()) break;
    auto where = [] { return " in " + kernel_name() + ", block " + coords(block_flat, grid_dims) + ": "; };
    if (waiting.size() != n) {
      report("synccheck", "exit", [&] {
        return "barrier with exited threads" + where() + sites_of(waiting) + " while " +
               std::to_string(n - waiting.size()) + " threads have returned";
      });
    } else {
      const Fiber& first = fibers[waiting.front()];
      for (size_t t : waiting)
        if (fibers[t].file != first.file || fibers[t].line != first.line) {
          report("synccheck", "divergent", [&] {
            return "divergent barriers" + where() + "threads wait at different __syncthreads(): " + sites_of(waiting);
          });
          break;
        }
    }
    interval_file = fibers[waiting.front()].file;
    interval_line = fibers[waiting.front()].line;
    ++interval;
    for (size_t t : waiting) fibers[t].state = Fiber::Ready;
  }
  check_pending();
}

bool launch_ok(dim3 grid, dim3 block) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  std::string bad;
  if (grid.x > 0x7fffffffu) bad += " grid.x " + std::to_string(grid.x) + " > 2^31 - 1;";
  if (grid.y > 65535 || grid.z > 65535) bad += " grid.y or grid.z above 65,535;";
  if (block.x > 1024 || block.y > 1024 || block.z > 64) bad += " block dimension above (1024, 1024, 64);";
  if (threads > 1024 || threads == 0) bad += " " + std::to_string(threads) + " threads per block;";
  if (bad.empty()) return true;
  report("launch", "limits", [&] { return "invalid launch of " + kernel_name() + ":" + bad + " the launch would fail"; });
  return false;
}

// The order the blocks of a launch run in: grid order, reversed, shuffled.
std::vector<uint32_t> order(uint32_t blocks) {
  std::vector<uint32_t> o(blocks);
  for (uint32_t b = 0; b < blocks; ++b) o[b] = b;
  if (block_order == 1) std::reverse(o.begin(), o.end());
  if (block_order == 2) {
    std::mt19937_64 rng(order_seed * 0x9E3779B97F4A7C15ull + launch_id);
    std::shuffle(o.begin(), o.end(), rng);
  }
  return o;
}

}  // namespace

void run(dim3 grid, dim3 block, const void* kern, void (*body)(void*), void* arg, size_t arg_size) {
  init_regions();
  kernel = kern;
  if (!launch_ok(grid, block)) return;
  Launched& l = launched[kern];
  l.block = block;
  ++l.count;
  ++launch_id;
  grid_dims = grid;
  block_dims = block;
  gridDim = grid;
  blockDim = block;
  body_fn = body;
  body_arg = arg;
  launch_smem = 0;
  Region* params = add_region(reinterpret_cast<uintptr_t>(arg), arg_size, Kind::Param, "the kernel's parameters",
                              false);
  const size_t n = static_cast<size_t>(block.x) * block.y * block.z;
  fibers.assign(n, Fiber{});
  const uint64_t blocks64 = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  const auto blocks = static_cast<uint32_t>(blocks64);
  for (uint32_t b : order(blocks)) {
    block_flat = b;
    blockIdx = make_uint3(b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y));
    run_block(n);
  }
  remove_region(params);
  constexpr size_t kStaticSmemLimit = 48 * 1024;
  if (launch_smem > kStaticSmemLimit)
    report("launch", "smem", [&] {
      return kernel_name() + " uses " + std::to_string(launch_smem) +
             " bytes of __shared__ memory, above the 49,152 a launch may use without an opt-in";
    });
}

void barrier(const char* file, int line) {
  auto it = sites.find({file, line});
  if (it == sites.end()) {
    const char* base = std::strrchr(file, '/');
    Site s{base ? base + 1 : file, line, 0, false};
    s.skip = !skip_site.empty() && skip_site == s.file + ":" + std::to_string(line);
    it = sites.emplace(std::make_pair(file, line), s).first;
  }
  ++it->second.count;
  if (it->second.skip) return;  // a barrier removed on purpose (rkd_emu_skip_barrier)
  Fiber& f = *running;
  f.state = Fiber::AtBarrier;
  f.file = file;
  f.line = line;
  to_scheduler(f, false);
}

Replicated::Replicated() {
  if (running != nullptr) ++running->replicated;
}

Replicated::~Replicated() {
  if (running != nullptr) --running->replicated;
}

}  // namespace emu

// ---- the instrumentation's entry points (gcc -fsanitize=thread) ----------------------------------

extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
#define RKD_EMU_HOOKS(n)                                                                    \
  void __tsan_read##n(void* a) { emu::access(a, n, false); }                                \
  void __tsan_write##n(void* a) { emu::access(a, n, true); }                                \
  void __tsan_unaligned_read##n(void* a) { emu::access(a, n, false); }                      \
  void __tsan_unaligned_write##n(void* a) { emu::access(a, n, true); }
RKD_EMU_HOOKS(1)
RKD_EMU_HOOKS(2)
RKD_EMU_HOOKS(4)
RKD_EMU_HOOKS(8)
RKD_EMU_HOOKS(16)
#undef RKD_EMU_HOOKS
void __tsan_read_range(void* a, unsigned long n) { emu::access(a, n, false); }
void __tsan_write_range(void* a, unsigned long n) { emu::access(a, n, true); }
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
// Host code's atomics (the process-wide product precision); kernels have none.
#define RKD_EMU_ATOMICS(bits, type)                                                                   \
  type __tsan_atomic##bits##_load(const volatile type* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  void __tsan_atomic##bits##_store(volatile type* a, type v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
RKD_EMU_ATOMICS(8, char)
RKD_EMU_ATOMICS(16, short)
RKD_EMU_ATOMICS(32, int)
RKD_EMU_ATOMICS(64, long)
#undef RKD_EMU_ATOMICS

// ---- for scripts/emulate_cuda.py -------------------------------------------------------------------

namespace emu {
namespace {
// text into buf (at most cap - 1 characters and a NUL; cap 0: nothing); the length it needs.
int64_t copy_out(const std::string& text, char* buf, int64_t cap) {
  if (cap > 0) {
    const size_t m = std::min(text.size(), static_cast<size_t>(cap - 1));
    std::memcpy(buf, text.data(), m);
    buf[m] = '\0';
  }
  return static_cast<int64_t>(text.size());
}
}  // namespace
}  // namespace emu

// Device memory [p, p + n) named `name`: an op's argument, or scratch. With
// uninitialised, reads before any write are reported.
void rkd_emu_track(const void* p, int64_t n, const char* name, int uninitialised) {
  if (p == nullptr || n <= 0) return;
  emu::init_regions();
  const auto lo = reinterpret_cast<uintptr_t>(p);
  auto it = emu::first_after(lo);
  if (it != emu::regions.begin()) {
    emu::Region& r = **std::prev(it);
    if (lo < r.hi && r.kind == emu::Kind::Global && lo + static_cast<uintptr_t>(n) <= r.hi) {
      ++r.refs;  // the same memory passed twice
      return;
    }
  }
  emu::add_region(lo, static_cast<size_t>(n), emu::Kind::Global, name, uninitialised != 0);
}

void rkd_emu_untrack(const void* p) {
  if (p == nullptr) return;
  const auto lo = reinterpret_cast<uintptr_t>(p);
  auto it = emu::first_after(lo);
  if (it == emu::regions.begin()) return;
  emu::Region* r = std::prev(it)->get();
  if (r->kind != emu::Kind::Global || lo < r->lo || lo >= r->hi) return;
  if (--r->refs == 0) emu::remove_region(r);
}

// Whether the kernels were compiled with the detectors' instrumentation (known
// once any instrumented code has run).
int rkd_emu_detecting() { return emu::detecting ? 1 : 0; }

int64_t rkd_emu_finding_count() { return emu::finding_count; }

// The findings since they were last taken, one per line (the first of each
// check, kernel and array), into buf, and forgotten; the length they need
// (cap 0: only that, nothing taken).
int64_t rkd_emu_take_findings(char* buf, int64_t cap) {
  std::string all;
  for (const std::string& f : emu::findings) all += f + "\n";
  if (cap > 0) {
    emu::findings.clear();
    emu::finding_keys.clear();
    emu::finding_count = 0;
  }
  return emu::copy_out(all, buf, cap);
}

// 0: blocks in grid order, 1: reversed, 2: shuffled by seed.
void rkd_emu_set_block_order(int mode, uint64_t seed) {
  emu::block_order = mode;
  emu::order_seed = seed;
}

// The __syncthreads() at "file:line" (file's basename) becomes a no-op; ""
// restores every barrier.
void rkd_emu_skip_barrier(const char* site) {
  emu::skip_site = site;
  for (auto& [key, s] : emu::sites) s.skip = !emu::skip_site.empty() && emu::skip_site == s.file + ":" + std::to_string(s.line);
}

// "mangled-name block.x block.y block.z launches" for every kernel launched
// so far, one per line.
int64_t rkd_emu_launched(char* buf, int64_t cap) {
  std::string all;
  for (const auto& [kernel, l] : emu::launched) {
    Dl_info info{};
    const char* name = dladdr(kernel, &info) != 0 && info.dli_sname ? info.dli_sname : "?";
    all += std::string(name) + " " + std::to_string(l.block.x) + " " + std::to_string(l.block.y) + " " +
           std::to_string(l.block.z) + " " + std::to_string(l.count) + "\n";
  }
  return emu::copy_out(all, buf, cap);
}

// "file:line count" for every __syncthreads() call site executed so far, one per line.
int64_t rkd_emu_barrier_sites(char* buf, int64_t cap) {
  std::map<std::string, int64_t> by_site;
  for (const auto& [key, s] : emu::sites) by_site[s.file + ":" + std::to_string(s.line)] += s.count;
  std::string all;
  for (const auto& [site, count] : by_site) all += site + " " + std::to_string(count) + "\n";
  return emu::copy_out(all, buf, cap);
}

}  // extern "C"
