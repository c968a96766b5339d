// The GPU backend of the op layer (csrc/core/*_op.h): the primitives every op
// is sequenced from, as launches of the torch-free kernels of
// pair_matrix_kernel.cuh, angle_kernel.cuh and common.cuh on one stream.
//
// Torch-free: the CUDA bindings (csrc/core/bind.h with cuda_context.h) run it
// with PyTorch's caching allocator and C10_CUDA_KERNEL_LAUNCH_CHECK, the host
// emulator (standalone/emulate.cpp) with host memory and fibers. Alloc has
// one method, `void* bytes(size_t)`, and must be stream-ordered (PyTorch's
// caching allocator is): scratch is released when the op returns, before its
// kernels have run. Check runs after every launch.
//
// The O(N^2 D) products are float64, except where the backend is made with
// float32_products (the process-wide ProductPrecision resolved for the device
// by the caller: csrc/core/product_precision.h) and the op layer asks for
// Precision::Fast on features that are not float64: then they run in float32
// (pair_matrix_kernel.cuh's float32 kernels), pair_rows included. The
// triplet arithmetic runs in the result's type (Triplet<T> = T).
#pragma once

#include <utility>

#include "../core/angle_op.h"
#include "angle_kernel.cuh"
#include "common.cuh"
#include "pair_matrix_kernel.cuh"

namespace rkd {
namespace gpu {

// Rows of the weight matrix, (rows.size(), N), and their sums; the column
// statistics of the features they multiply, written by the same launch.
struct GpuWeights {
  double* W;
  double* w;
  int64_t N;
  Rows rows;
  float* Wf;  // W in float32 for a float32 product (each row scaled by 2^-rexp), else null
  int* rexp;
  ColumnStats stats;
};

template <typename Alloc, typename Check>
class GpuBackend {
 public:
  template <typename T>
  using Triplet = T;
  using Weights = GpuWeights;
  // A loss's forward sums its mean terms with the loss, in the same launches,
  // so that its backward launches no reduction (distance_op.h's
  // forward_mean_terms).
  static constexpr bool kForwardMeanTerms = true;

  // slow_fp64: the device's float64 rate is at most 1/kSlowFp64Ratio of its
  // float32 rate (product_precision.h).
  GpuBackend(Alloc& alloc, cudaStream_t stream, Check check, bool float32_products = false, bool slow_fp64 = false)
      : alloc_(alloc), stream_(stream), check_(check), f32_(float32_products), slow_fp64_(slow_fp64) {}

  template <typename T>
  T* scratch(int64_t n) {
    return take<T>(alloc_, n);
  }

  template <typename Acc>
  const Acc* to(const Operand& op, int64_t n) {
    const Dtype want = sizeof(Acc) == 8 ? Dtype::Float64 : Dtype::Float32;
    if (op.dtype == want) return static_cast<const Acc*>(op.data);
    Acc* out = scratch<Acc>(n);
    visit(op.dtype, [&](auto t) {
      using T = decltype(t);
      gpu::convert(static_cast<const T*>(op.data), n, out, stream_, check_);
    });
    return out;
  }
  const double* to_f64(const Operand& op, int64_t n) { return to<double>(op, n); }

  void fill_zero(const Buffer& out, int64_t n) {
    visit(out.dtype, [&](auto t) {
      using T = decltype(t);
      gpu::zero(n, static_cast<T*>(out.data), stream_, check_);
    });
  }

  void convert(const double* v, int64_t n, const Buffer& out) {
    visit(out.dtype, [&](auto t) {
      using T = decltype(t);
      gpu::convert(v, n, static_cast<T*>(out.data), stream_, check_);
    });
  }

  void pair_matrix(const Features& x, PairKind kind, double eps, Precision p, double* out) {
    visit(x.dtype, [&](auto t) {
      using T = decltype(t);
      const T* xp = static_cast<const T*>(x.data);
      if (float32(p, x.dtype))
        gpu::pair_matrices32(&xp, &x.D, 1, x.N, kind, eps, &out, alloc_, stream_, check_);
      else
        gpu::pair_matrix(xp, x.N, x.D, kind, eps, out, alloc_, stream_, check_);
    });
  }

  // Both in the same three launches when the dtypes agree.
  void pair_matrices(const Features& s, const Features& t, PairKind kind, double eps, Precision p, double* out_s,
                     double* out_t) {
    if (s.dtype != t.dtype) {
      pair_matrix(s, kind, eps, p, out_s);
      return pair_matrix(t, kind, eps, p, out_t);
    }
    visit(s.dtype, [&](auto e) {
      using T = decltype(e);
      const T* x[2] = {static_cast<const T*>(s.data), static_cast<const T*>(t.data)};
      const int64_t D[2] = {s.D, t.D};
      double* out[2] = {out_s, out_t};
      if (float32(p, s.dtype))
        gpu::pair_matrices32(x, D, 2, s.N, kind, eps, out, alloc_, stream_, check_);
      else
        gpu::pair_matrices(x, D, 2, s.N, kind, eps, out, alloc_, stream_, check_);
    });
  }

  void pair_rows(const Features& x, Rows rows, PairKind kind, double eps, Precision p, double* out) {
    visit(x.dtype, [&](auto t) {
      using T = decltype(t);
      gpu::pair_rows(static_cast<const T*>(x.data), x.N, x.D, rows, kind, eps, float32(p, x.dtype), out, alloc_,
                     stream_, check_);
    });
  }

  // One launch up to kSeqMaxN (kSeqMaxNSlowFp64 on a GPU with slow float64);
  // beyond, a launch per group (its row sums,
  // after finishing the group before) and a finish: the same bits.
  template <typename... Items>
  void reduce_seq(int64_t N, const Items&... items) {
    if (N <= (slow_fp64_ ? kSeqMaxNSlowFp64 : kSeqMaxN))
      return gpu::reduce_seq_one_block(N, stream_, check_, as_group(items)...);
    chain(N, group(), static_cast<const double*>(nullptr), as_group(items)...);
  }

  template <typename F>
  void map(const F& f, int64_t N, const Buffer& out) {
    visit(out.dtype, [&](auto t) {
      using T = decltype(t);
      gpu::map<T>(f, N, static_cast<T*>(out.data), stream_, check_);
    });
  }

  Weights weights(const Features& x, Rows rows, Precision p) {
    const bool f32 = float32(p, x.dtype);
    const ColumnStats stats{x.data, x.dtype, x.N, x.D, scratch<double>(x.D), f32 ? scratch<int>(x.D) : nullptr};
    return {scratch<double>(rows.size() * x.N), scratch<double>(rows.size()), x.N, rows,
            f32 ? scratch<float>(rows.size() * x.N) : nullptr, f32 ? scratch<int>(rows.size()) : nullptr, stats};
  }

  template <typename F>
  void build_weights(const F& f, Weights& W) {
    gpu::build_weights(f, W.N, W.rows, W.W, W.w, W.Wf, W.rexp, W.stats, stream_, check_);
  }

  void grad_from_weights(const Features& x, const Weights& W, const Buffer& dx) {
    visit(x.dtype, [&](auto t) {
      using T = decltype(t);
      const T* xp = static_cast<const T*>(x.data);
      const double* w = W.w;
      if (W.Wf != nullptr)
        gpu::grad_from_weights32(xp, x.N, x.D, W.rows, static_cast<const float*>(W.Wf),
                                 static_cast<const int*>(W.rexp), w, W.stats.mean, W.stats.cexp,
                                 static_cast<T*>(dx.data), alloc_, stream_, check_);
      else
        gpu::grad_from_weights(xp, x.N, x.D, W.rows, static_cast<const double*>(W.W), w, W.stats.mean,
                               static_cast<T*>(dx.data), alloc_, stream_, check_);
    });
  }

  // ---- angle primitives ----

  template <typename Acc>
  Edges<Acc> edges(const double* s, int64_t N, const AngleArgs& a) {
    Acc* u = scratch<Acc>(N * N);
    gpu::map<Acc>(InvEdge{s, s, N, a.eps, a.normalize}, N, u, stream_, check_);
    return {s, u};
  }

  // s of both inputs and their u in the pair matrices' launches when the
  // dtypes agree.
  template <typename Acc>
  std::pair<Edges<Acc>, Edges<Acc>> pairs_and_edges(const Features& s, const Features& t, const AngleArgs& a,
                                                    double* sq_s, double* sq_t) {
    if (s.dtype != t.dtype) {
      pair_matrices(s, t, PairKind::Sq, 0.0, Precision::F64, sq_s, sq_t);
      return edge_pair<Acc>(sq_s, sq_t, s.N, a);
    }
    const int64_t N = s.N;
    Acc* u = scratch<Acc>(2 * N * N);
    visit(s.dtype, [&](auto e) {
      using T = decltype(e);
      const T* x[2] = {static_cast<const T*>(s.data), static_cast<const T*>(t.data)};
      const int64_t D[2] = {s.D, t.D};
      double* out[2] = {sq_s, sq_t};
      const gpu::EdgeOut edges{u, sizeof(Acc) == 8, a.eps, a.normalize};
      gpu::pair_matrices(x, D, 2, N, PairKind::Sq, 0.0, out, alloc_, stream_, check_, edges);
    });
    return {Edges<Acc>{sq_s, u}, Edges<Acc>{sq_t, u + N * N}};
  }

  // Both sides' u in one launch: rows N.. of the map are b's.
  template <typename Acc>
  std::pair<Edges<Acc>, Edges<Acc>> edge_pair(const double* s_a, const double* s_b, int64_t N, const AngleArgs& a) {
    Acc* u = scratch<Acc>(2 * N * N);
    gpu::map_rows<Acc>(InvEdge{s_a, s_b, N, a.eps, a.normalize}, 2 * N, N, u, stream_, check_);
    return {Edges<Acc>{s_a, u}, Edges<Acc>{s_b, u + N * N}};
  }

  // The (N, N, N) cosines of a (b null) or the elementwise loss, a block per row (i, j).
  template <typename Acc>
  void angle_values(const Edges<Acc>& a, const Edges<Acc>* b, int64_t N, double beta, const Buffer& out) {
    const Huber<Acc> huber(static_cast<Acc>(beta));
    const dim3 grid(grid_dim(N), grid_dim(N));
    const double n3 = static_cast<double>(N) * static_cast<double>(N) * static_cast<double>(N);
    visit(out.dtype, [&](auto t) {
      using T = decltype(t);
      T* o = static_cast<T*>(out.data);
      const double written = n3 * sizeof(T);
      if (b)
        launch(check_,
               triplet_cost<Acc>(n3, 2 * kCosine64, 2 * kCosineAcc + 4, edge_bytes<Acc>(N, 2) + written, 0),
               angle_values_kernel<Acc, T, true>, grid, dim3(kBlock), stream_, a, *b, N, huber, o);
      else
        launch(check_, triplet_cost<Acc>(n3, kCosine64, kCosineAcc, edge_bytes<Acc>(N, 1) + written, 0),
               angle_values_kernel<Acc, T, false>, grid, dim3(kBlock), stream_, a, a, N, huber, o);
    });
  }

  template <typename Acc, typename Fin>
  void angle_loss_sum(const Edges<Acc>& a, const Edges<Acc>& b, int64_t N, Rows vertices, double beta,
                      const Fin& fin) {
    const VertexSplit split = split_vertices(N, vertices);
    const int64_t na = ceil_div(N, kTA), nb = ceil_div(N, kTB);
    double* partial = scratch<double>(na * nb * split.splits);
    // The (j, k) tiles on or above the diagonal, each over the vertices.
    const double triplets = static_cast<double>(upper_tiles(N)) * kTA * kTB * static_cast<double>(vertices.size());
    const Cost cost = triplet_cost<Acc>(triplets, 2 * kCosine64, 2 * kCosineAcc + 6,
                                        edge_bytes<Acc>(N, 2) + 8.0 * na * nb * split.splits,
                                        static_cast<double>(upper_tiles(N) * split.splits));
    launch(check_, cost, angle_loss_sum_kernel<Acc>, dim3(grid_dim(nb), grid_dim(na), grid_dim(split.splits)),
           dim3(kTri, kTri), stream_, a, b, N, Huber<Acc>(static_cast<Acc>(beta)), split, partial);
    gpu::finish(static_cast<const double*>(partial), na * nb * split.splits, fin, stream_, check_);
  }

  // The vertex pass (V's rows for the vertices, in split_k's slices) and the
  // opposite pass (R, in split_vertices' slices), in one launch.
  template <typename Acc, typename Up>
  AngleGrad angle_passes(const Edges<Acc>& a, const Edges<Acc>& b, const Up& up, int64_t N, Rows vertices,
                         const AngleArgs& args) {
    const double eps2 = clamp_eps2(args);
    const Huber<Acc> huber(static_cast<Acc>(args.beta));
    const int64_t vertex_tiles = ceil_div(N, kTV) * ceil_div(vertices.size(), kTA);
    // The k loop's split, a function of the sizes alone, counts tiles of kTA x kTB as it did before the
    // vertex pass's tile narrowed to kTV: the same slices, the same bits.
    const VertexSplit ks = split_k(N, vertices, ceil_div(N, kTB) * ceil_div(vertices.size(), kTA));
    double* V = scratch<double>(ks.splits * vertices.size() * N);
    // Per triplet: A (and B, d for a loss), the upstream, two accumulations.
    const int sides = Up::kLoss ? 2 : 1;
    const double f64 = sides * kCosine64, acc = sides * kCosineAcc + (Up::kLoss ? 3 : 0) + 2 + 4;
    const double up_bytes = upstream_bytes(up, N), n = static_cast<double>(N);
    const VertexSplit split = split_vertices(N, vertices);
    double* R = scratch<double>(split.splits * N * N);
    // One launch: the vertex pass's blocks, then the opposite pass's.
    const dim3 vgrid(grid_dim(ceil_div(N, kTV)), grid_dim(ceil_div(vertices.size(), kTA)), grid_dim(ks.splits));
    const dim3 ogrid(grid_dim(ceil_div(N, kTO)), grid_dim(ceil_div(N, kTA)), grid_dim(split.splits));
    const int64_t nv = static_cast<int64_t>(vgrid.x) * vgrid.y * vgrid.z;
    const int64_t no = static_cast<int64_t>(ogrid.x) * ogrid.y * ogrid.z;
    const double vertex = static_cast<double>(vertex_tiles) * kTA * kTV * n;
    const double opposite = static_cast<double>(upper_tiles(N, kTO)) * kTA * kTO * static_cast<double>(vertices.size());
    const Cost cost = triplet_cost<Acc>(
        vertex + opposite, f64, acc,
        edge_bytes<Acc>(N, sides) + up_bytes + 8.0 * (ks.splits * vertices.size() * n + split.splits * n * n),
        static_cast<double>(nv + upper_tiles(N, kTO) * split.splits));
    launch(check_, cost, angle_passes_kernel<Acc, Up>, dim3(grid_dim(nv + no)), dim3(kTri, kTri), stream_, a, b, up,
           N, vertices, huber, eps2, kappa_of(args), ks, V, split, R, vgrid, ogrid);
    return {V, R, split.splits, ks.splits};
  }

 private:
  // The groups of reduce_seq after prev (its row sums at prev_rows).
  template <typename Prev>
  void chain(int64_t N, const Prev& prev, const double* prev_rows) {
    gpu::finish_group(prev, prev_rows, N, stream_, check_);
  }

  template <typename Prev, typename G, typename... Rest>
  void chain(int64_t N, const Prev& prev, const double* prev_rows, const G& g, const Rest&... rest) {
    double* rows = scratch<double>(N * G::kSize);
    gpu::group_row_sums(prev, prev_rows, g, N, rows, stream_, check_);
    chain(N, g, static_cast<const double*>(rows), rest...);
  }

  template <typename F>
  static void visit(Dtype dtype, const F& f) {
    visit_dtype<__half, __nv_bfloat16>(dtype, f);
  }

  // Whether a product of features of this dtype runs in float32.
  bool float32(Precision p, Dtype dtype) const { return f32_ && p == Precision::Fast && dtype != Dtype::Float64; }

  Alloc& alloc_;
  cudaStream_t stream_;
  Check check_;
  bool f32_;
  bool slow_fp64_;
};

}  // namespace gpu
}  // namespace rkd
