// The CPU backend of the op layer (csrc/core/*_op.h): the primitives every
// op is sequenced from, on host memory, parallel over torch's intra-op thread
// pool (torch::stable::parallel_for, the stable ABI's at::parallel_for).
//
// pair_matrix: the N x N float64 matrix of s_ij = ||x_i - x_j||^2 (or of
//   max(s, eps), or sqrt(max(s, eps))), diagonal exactly 0, exactly
//   symmetric: the Gram form on the batch-centred features (relations are
//   translation invariant; centring removes the cancellation a common offset
//   causes), pairs too close for it (rkd_math.h's gram_near) recomputed from
//   direct differences of the features in float64.
// grad_from_weights: dL/dx_i = 2 (w_i xc_i - sum_j W_ij xc_j) on the centred
//   features, returned in x's dtype.
// Both products are blocked GEMMs (pair_matrix_cpu.cpp): for small batches
// (small_batch below) the Gram product is a split-K dot-product kernel over
// row blocks, otherwise a panel GEMM. With Precision::Fast, non-float64 features
// whose centred values lie within [kFastMin, kFastMax] use float32 products
// with float64 accumulation every few hundred terms; float64 otherwise
// (float32 products would overflow or underflow outside that range), and
// always when the process-wide product precision is Float64
// (csrc/core/product_precision.h; read when the backend is made).
//
// Every output element is computed by one thread in a fixed order, whatever
// the thread count: results are bitwise reproducible.
#pragma once


#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "../core/angle_op.h"
#include "../core/product_precision.h"
#include "../core/scratch_cache.h"
#include "../core/serial_work.h"
#include "../torch_stable.h"
#include "cpu_pool.h"
#include "cpu_util.h"

namespace rkd {

// ---- how much of a call runs in parallel ------------------------------------------------
//
// A call whose work is below serial_work_setting() (core/serial_work.h: its
// pair products N^2 (D_s + D_t), plus N^3 for the angle family) runs on the
// calling thread and opens no parallel region: in a training loop, with other
// work between calls, torch's worker threads have gone to sleep, and waking
// them costs more than such a call's whole work. Larger calls use
// parallel_for below as before. Results do not depend on it: every output
// element is computed by one thread in a fixed order whatever the thread
// count.
inline bool& serial_call() {
  static thread_local bool serial = false;
  return serial;
}

// Chunks [0, chunks) of a region on torch's pool, one task per thread (at
// most one per chunk), each taking chunks until none is left; false if the
// calling thread took no part (then the region is not priced).
template <typename R>
bool torch_region(int64_t threads, int64_t chunks, const R& range, CpuPool::Times& t) {
  const int64_t start = steady_ns();
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int64_t> next{0}, worker_cpu{0};
  int64_t caller_done = -1;
  torch::stable::parallel_for(0, std::min(threads, chunks), 1, [&](int64_t, int64_t) {
    const bool is_caller = std::this_thread::get_id() == caller;
    // A worker's share of the work: its CPU time (its wall time where the
    // CPU clock is unknown), which a preemption does not inflate.
    const int64_t t0 = is_caller ? 0 : steady_ns(), c0 = is_caller ? 0 : thread_cpu_ns();
    for (int64_t k = next.fetch_add(1, std::memory_order_relaxed); k < chunks;
         k = next.fetch_add(1, std::memory_order_relaxed))
      range(k);
    if (is_caller) {
      caller_done = steady_ns() - start;
      return;
    }
    const int64_t cpu = c0 < 0 ? steady_ns() - t0 : thread_cpu_ns() - c0;
    worker_cpu.fetch_add(cpu, std::memory_order_relaxed);
  });
  t = {caller_done, steady_ns() - start, worker_cpu.load(std::memory_order_relaxed)};
  return caller_done >= 0;
}

// The pool that runs a region: the CPU kernels' own (cpu_pool.h), or
// torch::stable::parallel_for where that is chosen (pool_setting), busy with
// another thread's region. A region nested in a region's chunk runs inline,
// as torch's pool runs one.
// A serial call, or a range of at most one grain, runs f(begin, end) on the
// calling thread (at::parallel_for's rule for the latter): only the others
// are counted as regions, the ones that can wake a pool.
//
// A region hands its range out in chunks (at least a grain, about
// region_chunks_setting() per thread, core/serial_work.h) that each thread
// takes as it becomes free, not in one equal share per thread: a thread that
// the scheduler preempts (a busy neighbour on its core) then delays the
// region by at most the chunk it holds, while the others take the rest. The
// same chunks' results either way: no output depends on the chunking.
//
// Each region's gain over the calling thread alone goes to the contention
// guard (core/serial_work.h); when the guard starts a hold, the rest of the
// call runs serial.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  if (serial_call() || end - begin <= grain || CpuPool::in_region()) {
    f(begin, end);
    return;
  }
  parallel_regions().fetch_add(1, std::memory_order_relaxed);
  const int64_t threads = std::max<int64_t>(1, torch::stable::get_num_threads());
  if (threads == 1) {
    f(begin, end);
    return;
  }
  const int64_t shares = threads * region_chunks_setting().load(std::memory_order_relaxed);
  const int64_t chunk = std::max({grain, (end - begin + shares - 1) / shares,
                                  (end - begin + CpuPool::kMaxChunks - 1) / CpuPool::kMaxChunks});
  const int64_t chunks = (end - begin + chunk - 1) / chunk;
  const auto range = [&](int64_t k) { f(begin + k * chunk, std::min(end, begin + (k + 1) * chunk)); };
  using Range = decltype(range);
  const bool guard = contention_hold_ns().load(std::memory_order_relaxed) != 0;
  CpuPool::Times t;
  const bool own = pool_setting().load(std::memory_order_relaxed) == static_cast<int>(PoolKind::Own) &&
                   CpuPool::get().run(
                       threads - 1, chunks, [](const void* r, int64_t k) { (*static_cast<const Range*>(r))(k); },
                       &range, guard, &t);
  if (!own && !torch_region(threads, chunks, range, t)) return;
  if (!guard) return;
  // What the region gained over running on the calling thread alone: the
  // work of all its threads, less the time it took.
  if (contention_ledger(t.caller_ns + t.worker_cpu_ns - t.wall_ns))
    serial_call() = true;  // the rest of this call (CpuCtx::run restores the flag)
}

// The features of one op call centred on their batch mean: the mean, the
// squared norms and largest magnitude of the centred values, and the centred
// rows themselves (N x D row-major, float64) once a product has asked for
// them (the small-batch float64 product; the panel GEMM packs its own).
struct Centred {
  std::vector<double> mean;  // D
  double amax = 0.0;         // max |x - mean|, NaN if any value is not finite
  std::vector<double> n;     // ||x_i - mean||^2, once has_norms
  bool has_norms = false;
  ScratchCache::Ptr xd;  // x - mean in float64, once kept
  // The small-batch float32 product's operands: the mean in float32, and x
  // in float32 where it is not float32 already.
  std::vector<float> meanf;
  AlignedArray<float> xr;
};

// What a product needs beyond the column statistics: nothing, the norms of
// the centred rows, or the norms and the centred rows in float64.
enum class Keep { None, Norms, F64 };

// Rows of W = dL/ds + (dL/ds)^T (zero diagonal) in the GEMM's element type
// (float32 for the fast product, float64 otherwise), and their sums in
// float64: rows.size() x N, row i of W at (i - rows.begin) * N.
struct CpuWeights {
  int64_t N = 0;
  Rows rows{0, 0};
  bool f64 = true;
  std::unique_ptr<double[]> Wd;  // uninitialised: build_weights writes every element
  std::unique_ptr<float[]> Wf;
  std::unique_ptr<double[]> w;
};

template <typename F>
RKD_CPU_CLONES void weights_row(const F& f, int64_t i, int64_t N, double* v) {
  for (int64_t j = 0; j < N; ++j) v[j] = f(i, j);
  if (i < N) v[i] = 0.0;
}

template <typename F>
RKD_CPU_CLONES double reduce_row(const F& f, int64_t i, int64_t N) {
  return reduce_lanes(N, [&](int64_t j) RKD_LAMBDA_INLINE { return f(i, j); });
}

class CpuBackend {
 public:
  // The triplet arithmetic runs in float64 for every result type.
  template <typename T>
  using Triplet = double;
  using Weights = CpuWeights;

  // A loss's backward sums its mean terms itself (distance_op.h's
  // forward_mean_terms): a forward without a backward does not pay for them.
  static constexpr bool kForwardMeanTerms = false;
  static constexpr double kFastMin = 1e-10, kFastMax = 1e10;
  // Which Gram kernel a batch of N features of size D takes: the split-K
  // dot-product kernel up to N = 64, and up to N = 256 for features of at
  // least 4 N values; the panel GEMM otherwise (measured: at N = 256, D = 128
  // the panel GEMM takes 0.6x the dot kernel's time, at D = 2048 2.3x).
  static constexpr int64_t kDotMaxN = 256;
  static bool small_batch(int64_t N, int64_t D) { return N <= 64 || (N <= kDotMaxN && D >= 4 * N); }

  template <typename T>
  T* scratch(int64_t n) {
    held_.push_back(ScratchCache::take_for<T>(static_cast<size_t>(std::max<int64_t>(n, 1))));
    return reinterpret_cast<T*>(held_.back().get());
  }

  // Operands in Acc (float64 here): the operand itself when it is one.
  template <typename Acc>
  const Acc* to(const Operand& op, int64_t n);
  const double* to_f64(const Operand& op, int64_t n) { return to<double>(op, n); }
  void fill_zero(const Buffer& out, int64_t n);
  void convert(const double* v, int64_t n, const Buffer& out);

  void pair_matrix(const Features& x, PairKind kind, double eps, Precision precision, double* out);
  void pair_matrices(const Features& s, const Features& t, PairKind kind, double eps, Precision precision,
                     double* out_s, double* out_t) {
    pair_matrix(s, kind, eps, precision, out_s);
    pair_matrix(t, kind, eps, precision, out_t);
  }
  // Rows [rows.begin, rows.end) of the pair matrix: rows.size() x N.
  void pair_rows(const Features& x, Rows rows, PairKind kind, double eps, Precision precision, double* out);

  // Each group in one parallel pass: rows in parallel, each member's row
  // sum in a fixed lane order; then each member's row sums added in row
  // order and its fin, in member order. The same bits as a pass per step.
  template <typename... Items>
  void reduce_seq(int64_t N, const Items&... items) {
    (reduce_group(as_group(items), N), ...);
  }

  template <typename G>
  void reduce_group(const G& g, int64_t N) {
    constexpr int k = G::kSize;
    std::vector<double> rows(static_cast<size_t>(k * N));
    parallel_for(0, N, grain_for(k * N), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        int m = 0;
        for_each(g, [&](const auto& st) { rows[m++ * N + i] = reduce_row(st.f, i, N); });
      }
    });
    int m = 0;
    for_each(g, [&](const auto& st) {
      double total = 0.0;
      for (int64_t i = 0; i < N; ++i) total += rows[m * N + i];
      st.fin(total);
      ++m;
    });
  }

  template <typename F>
  void map(const F& f, int64_t N, const Buffer& out) {
    visit_dtype<Half, BFloat16>(out.dtype, [&](auto t) {
      using T = decltype(t);
      T* o = static_cast<T*>(out.data);
      parallel_for(0, N, grain_for(N), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          for (int64_t j = 0; j < N; ++j) o[i * N + j] = static_cast<T>(f(i, j));
      });
    });
  }

  Weights weights(const Features& x, Rows rows, Precision precision);

  template <typename F>
  void build_weights(const F& f, Weights& W) {
    if (W.f64)
      fill_weights(f, W.N, W.rows, W.Wd.get(), W.w.get());
    else
      fill_weights(f, W.N, W.rows, W.Wf.get(), W.w.get());
  }

  void grad_from_weights(const Features& x, const Weights& W, const Buffer& dx);

  // ---- angle primitives (angle_cpu.cpp) ----
  template <typename Acc>
  Edges<Acc> edges(const double* s, int64_t N, const AngleArgs& a);
  template <typename Acc>
  std::pair<Edges<Acc>, Edges<Acc>> edge_pair(const double* s_a, const double* s_b, int64_t N, const AngleArgs& a) {
    return {edges<Acc>(s_a, N, a), edges<Acc>(s_b, N, a)};
  }
  template <typename Acc>
  std::pair<Edges<Acc>, Edges<Acc>> pairs_and_edges(const Features& s, const Features& t, const AngleArgs& a,
                                                    double* sq_s, double* sq_t) {
    pair_matrices(s, t, PairKind::Sq, 0.0, Precision::F64, sq_s, sq_t);
    return edge_pair<Acc>(sq_s, sq_t, s.N, a);
  }
  void angle_values(const Edges<double>& a, const Edges<double>* b, int64_t N, double beta, const Buffer& out);
  double angle_loss_total(const Edges<double>& a, const Edges<double>& b, int64_t N, Rows vertices, double beta);
  template <typename Fin>
  void angle_loss_sum(const Edges<double>& a, const Edges<double>& b, int64_t N, Rows vertices, double beta,
                      const Fin& fin) {
    fin(angle_loss_total(a, b, N, vertices, beta));
  }
  AngleGrad angle_passes(const Edges<double>& a, const Edges<double>& b, const ScalarUpstream<double>& up, int64_t N,
                         Rows vertices, const AngleArgs& args);
  AngleGrad angle_passes(const Edges<double>& a, const Edges<double>& b, const TensorUpstream<double>& up, int64_t N,
                         Rows vertices, const AngleArgs& args);
  AngleGrad angle_passes(const Edges<double>& a, const Edges<double>& b, const RawUpstream<double>& up, int64_t N,
                         Rows vertices, const AngleArgs& args);

 private:
  // The centred features of x, computed once per op call, with the rows
  // `keep` asks for.
  const Centred& centred(const Features& x, Keep keep);
  // Whether x's products run in float32 (Precision::Fast and in range).
  bool fast(const Features& x, Precision precision);

  // W in 64 x 64 tiles, so that the transposed reads stay in cache, or by
  // rows (always for a block of rows).
  template <typename T, typename F>
  void fill_weights(const F& f, int64_t N, Rows rows, T* W, double* w) {
    if (f.rowwise() || rows.size() != N) {
      parallel_for(0, rows.size(), grain_for(N), [&](int64_t b, int64_t e) {
        std::vector<double> v(static_cast<size_t>(N));
        for (int64_t l = b; l < e; ++l) {
          weights_row(f, rows.begin + l, N, v.data());
          for (int64_t j = 0; j < N; ++j) W[l * N + j] = static_cast<T>(v[j]);
          w[l] = sum_lanes(v.data(), N);
        }
      });
      return;
    }
    constexpr int64_t B = 64;
    const int64_t nb = (N + B - 1) / B;
    parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      double v[B];
      for (int64_t bi = b0; bi < b1; ++bi) {
        const int64_t i1 = std::min(N, bi * B + B);
        for (int64_t i = bi * B; i < i1; ++i) w[i] = 0.0;
        for (int64_t bj = 0; bj < nb; ++bj) {
          const int64_t j0 = bj * B, nj = std::min(N, j0 + B) - j0;
          for (int64_t i = bi * B; i < i1; ++i) {
            // f is evaluated on the diagonal too and overwritten: branch-free rows vectorise.
            for (int64_t l = 0; l < nj; ++l) v[l] = f(i, j0 + l);
            if (i >= j0 && i < j0 + nj) v[i - j0] = 0.0;
            T* row = W + i * N + j0;
            for (int64_t l = 0; l < nj; ++l) row[l] = static_cast<T>(v[l]);
            w[i] += sum_lanes(v, nj);  // tiles in column order: a fixed summation order
          }
        }
      }
    });
  }

  std::vector<ScratchCache::Ptr> held_;
  std::vector<std::pair<const void*, std::unique_ptr<Centred>>> centred_;
  const bool allow_f32_ = cpu_float32_products(product_precision());
};

template <>
Edges<double> CpuBackend::edges<double>(const double* s, int64_t N, const AngleArgs& a);
extern template const double* CpuBackend::to<double>(const Operand&, int64_t);

// The CPU side of the bindings (csrc/core/bind.h): no guard, a fresh backend per call.
struct CpuCtx {
  // work: the call's element operations (bind.h's pair_work, triplet_work), against serial_work_setting().
  template <typename F>
  static void run(const Tensor&, double work, const F& f) {
    struct Serial {
      bool before = serial_call();
      explicit Serial(bool on) { serial_call() = on; }
      ~Serial() { serial_call() = before; }
    } serial(work < serial_work_setting().load(std::memory_order_relaxed) || contended_now());
    CpuBackend be;
    f(be);
  }
};

}  // namespace rkd
