// The O(N^2 D) primitives of the CPU backend (cpu_backend.h): the pair
// matrix and the gradient from pair weights, one blocked GEMM, and the small
// conversions the op layer asks for.
#include "cpu_backend.h"


#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../rkd_math.h"
#include "cpu_util.h"

namespace rkd {
namespace {

// One GEMM micro-tile: kRows rows of A (each contiguous along K) times a packed
// panel of B (row k's cols<T> values at bp + k * cols<T>). The forward
// multiplies the centred features by their transpose (the Gram matrix), the
// backward multiplies W = dL/ds + (dL/ds)^T by the centred features.
//
// float64 tiles accumulate in float64. float32 tiles (Precision::Fast)
// accumulate kFlush products in float32, then add them to a float64 total:
// half the cost of float64 arithmetic, and a rounding error several times
// below that of a plain float32 GEMM.
// 6 x 4 accumulators, 4 panel loads and a broadcast: 29 of AVX-512's 32 vector registers.
constexpr int64_t kRows = 6;
constexpr int64_t kVecs = 4;
constexpr int64_t kFlush = 128;
template <typename T>
constexpr int64_t cols() {
  return kVecs * Vec<T>::lanes;
}
//
// Row r's k-th value is a[r][k * AS]: AS = 1 for rows stored contiguously,
// cols<T>() for rows read out of a packed panel (the Gram product's own
// operand, so that no row-major copy of the centred features is needed).
template <typename T, int64_t AS>
inline __attribute__((always_inline)) void gemm_tile_add(const T* const* a, const T* bp, int64_t K, double* out) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::lanes, C = cols<T>();
  constexpr int64_t step = std::is_same<T, double>::value ? INT64_MAX : kFlush;
  for (int64_t k0 = 0; k0 < K; k0 += std::min(step, K - k0)) {
    const int64_t k1 = k0 + std::min(step, K - k0);
    V acc[kRows][kVecs] = {};
    for (int64_t k = k0; k < k1; ++k) {
      V bv[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) bv[v] = Vec<T>::load(bp + k * C + v * L);
      for (int64_t r = 0; r < kRows; ++r) {
        const T ar = a[r][k * AS];  // vector * scalar broadcasts the scalar
        for (int64_t v = 0; v < kVecs; ++v) acc[r][v] += ar * bv[v];
      }
    }
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t v = 0; v < kVecs; ++v)
        for (int64_t l = 0; l < L; ++l) out[r * C + v * L + l] += static_cast<double>(acc[r][v][l]);
  }
}

// out = the tile's product over K: the float64 total starts at 0 and adds
// the float32 partial sums of kFlush products in k order. Summing [0, K) in
// slices that start at multiples of kFlush (gemm_tile_add on each, in order)
// gives the same bits.
template <typename T, int64_t AS>
inline __attribute__((always_inline)) void gemm_tile(const T* const* a, const T* bp, int64_t K, double* out) {
  for (int64_t i = 0; i < kRows * cols<T>(); ++i) out[i] = 0.0;
  gemm_tile_add<T, AS>(a, bp, K, out);
}

RKD_CPU_CLONES void gemm_tile_any(const double* const* a, const double* bp, int64_t K, double* out) {
  gemm_tile<double, 1>(a, bp, K, out);
}
RKD_CPU_CLONES void gemm_tile_any(const float* const* a, const float* bp, int64_t K, double* out) {
  gemm_tile<float, 1>(a, bp, K, out);
}
RKD_CPU_CLONES void gemm_tile_panel(const double* const* a, const double* bp, int64_t K, double* out) {
  gemm_tile<double, cols<double>()>(a, bp, K, out);
}
// out += the product over [k0, k0 + K) of rows read out of a packed panel.
RKD_CPU_CLONES void gemm_tile_panel_add(const float* const* a, const float* bp, int64_t k0, int64_t K, double* out) {
  constexpr int64_t C = cols<float>();
  const float* ak[kRows];
  for (int64_t r = 0; r < kRows; ++r) ak[r] = a[r] + k0 * C;
  gemm_tile_add<float, C>(ak, bp + k0 * C, K, out);
}

// v[l] = s from the Gram entry. Returns how many pairs are too close for that
// to be accurate (recomputed by the caller).
RKD_CPU_CLONES int64_t gram_to_sq(const double* g, double ni, const double* nj, int64_t n, double* v) {
  int64_t close = 0;
  for (int64_t l = 0; l < n; ++l) {
    v[l] = gram_sq(ni, nj[l], g[l]);
    close += gram_near(v[l], ni, nj[l]);
  }
  return close;
}

RKD_CPU_CLONES void sq_to_dist(double* v, int64_t n, double eps) {
  for (int64_t l = 0; l < n; ++l) v[l] = dist_from_sq(v[l], eps);
}

// Samples [j0, j0 + nc) of x - mean (the difference in float64 rounded to T)
// as one panel, feature-major: feature k's cols<T>() values at panel + k *
// cols<T>() (the caller zero pads). Strips of kStrip features: each sample's
// strip is one contiguous read, and the strip's rows of the panel (kStrip x
// cols<T>(), 4 KB in float32) stay in L1 while every sample writes its column.
template <typename T, typename S>
RKD_CPU_CLONES void pack_panel(const S* x, const double* mean, int64_t D, int64_t j0, int64_t nc, T* panel) {
  constexpr int64_t W = cols<T>(), kStrip = 16;
  for (int64_t k0 = 0; k0 < D; k0 += kStrip) {
    const int64_t nk = std::min(kStrip, D - k0);
    for (int64_t l = 0; l < nc; ++l) {
      const S* xr = x + (j0 + l) * D + k0;
      T* dst = panel + k0 * W + l;
      for (int64_t q = 0; q < nk; ++q) dst[q * W] = static_cast<T>(static_cast<double>(xr[q]) - mean[k0 + q]);
    }
  }
}

// The centred features of an N x D matrix x in panels of cols<T>() samples
// (pack_panel), zero padded.
template <typename T, typename S>
AlignedArray<T> pack_panels(const S* x, const double* mean, int64_t N, int64_t D) {
  constexpr int64_t W = cols<T>();
  const int64_t np = (N + W - 1) / W;
  AlignedArray<T> out = aligned_array<T>(np * D * W);
  parallel_for(0, np, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      T* panel = out.get() + p * D * W;
      const int64_t nc = std::min(W, N - p * W);
      if (nc < W) std::fill_n(panel, D * W, T(0));
      pack_panel(x, mean, D, p * W, nc, panel);
    }
  });
  return out;
}

// Eight values of T as float64 lanes.
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
template <typename T>
RKD_INLINE v8d load8_f64(const T* p) {
  if constexpr (std::is_same<T, double>::value) {
    return load8(p);
  } else if constexpr (std::is_same<T, float>::value) {
    return __builtin_convertvector(*reinterpret_cast<const v8f_u*>(p), v8d);
  } else {
    double t[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) t[l] = static_cast<double>(p[l]);
    return load8(t);
  }
}

// Column means in float64 (each column's sum in row order; a column is owned
// by one task: deterministic) and the largest |x_ik - mean_k|, from each
// column's extremes: NaN if any value is not finite (`fin` sums v - v, 0 for
// finite v). Strips of 32 columns keep every running value in registers.
template <typename T>
RKD_CPU_CLONES void column_stats(const T* x, int64_t N, int64_t D, int64_t b, int64_t e, double* mean,
                                 double* amax) {
  constexpr int64_t G = 4, W = G * kLanes;
  if (N == 0) {
    for (int64_t k = b; k < e; ++k) mean[k] = 0.0;
    *amax = 0.0;
    return;
  }
  const double count = static_cast<double>(N);
  v8d m = {}, f = {};
  int64_t k0 = b;
  for (; k0 + W <= e; k0 += W) {
    v8d sum[G] = {}, lo[G], hi[G], fin[G] = {};
    for (int64_t g = 0; g < G; ++g) lo[g] = hi[g] = load8_f64(x + k0 + g * kLanes);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t g = 0; g < G; ++g) {
        const v8d v = load8_f64(x + i * D + k0 + g * kLanes);
        sum[g] += v;
        lo[g] = v < lo[g] ? v : lo[g];
        hi[g] = v > hi[g] ? v : hi[g];
        fin[g] += v - v;
      }
    for (int64_t g = 0; g < G; ++g) {
      const v8d mu = sum[g] / count;
      for (int64_t l = 0; l < kLanes; ++l) mean[k0 + g * kLanes + l] = mu[l];
      const v8d up = hi[g] - mu, down = mu - lo[g];
      const v8d a = up > down ? up : down;
      m = a > m ? a : m;
      f += fin[g];
    }
  }
  double mx = 0.0, fs = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) mx = m[l] > mx ? m[l] : mx, fs += f[l];
  for (int64_t k = k0; k < e; ++k) {  // the last columns, one at a time
    double sum = 0.0, lo = static_cast<double>(x[k]), hi = lo;
    for (int64_t i = 0; i < N; ++i) {
      const double v = static_cast<double>(x[i * D + k]);
      sum += v;
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
      fs += v - v;
    }
    mean[k] = sum / count;
    mx = std::max(mx, std::max(hi - mean[k], mean[k] - lo));
  }
  *amax = fs == 0.0 ? mx : std::numeric_limits<double>::quiet_NaN();
}

// One row x_i - mean: its squared norm (in kLanes lanes, then lane_sum), the
// row itself stored in float64 with kStore.
template <typename T, bool kStore>
RKD_INLINE double centre_row_impl(const T* x, const double* mean, int64_t D, double* rd) {
  v8d acc = {};
  int64_t k = 0;
  for (; k + kLanes <= D; k += kLanes) {
    double in[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) in[l] = static_cast<double>(x[k + l]);
    const v8d t = load8(in) - load8(mean + k);
    if constexpr (kStore)
      for (int64_t l = 0; l < kLanes; ++l) rd[k + l] = t[l];
    acc += t * t;
  }
  if (k < D) {  // the tail in its lanes; the others add 0
    double in[kLanes] = {}, mu[kLanes] = {};
    for (int64_t l = 0; k + l < D; ++l) in[l] = static_cast<double>(x[k + l]), mu[l] = mean[k + l];
    const v8d t = load8(in) - load8(mu);
    if constexpr (kStore)
      for (int64_t l = 0; k + l < D; ++l) rd[k + l] = t[l];
    acc += t * t;
  }
  double n[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) n[l] = acc[l];
  return lane_sum(n);
}

template <typename T>
RKD_CPU_CLONES double centre_row(const T* x, const double* mean, int64_t D, double* rd) {
  return rd ? centre_row_impl<T, true>(x, mean, D, rd) : centre_row_impl<T, false>(x, mean, D, rd);
}

// The norms of the centred rows, and the rows themselves into xd where it is
// not null.
template <typename T>
void centre_rows(const T* x, int64_t N, int64_t D, Centred& c, double* xd) {
  parallel_for(0, N, grain_for(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) c.n[i] = centre_row(x + i * D, c.mean.data(), D, xd ? xd + i * D : nullptr);
  });
}

// ||x_i - x_j||^2 from direct differences in float64: the pairs too close for
// the Gram form.
template <typename T>
RKD_CPU_CLONES double direct_sq(const T* a, const T* b, int64_t D) {
  return reduce_lanes(D, [&](int64_t k) RKD_LAMBDA_INLINE {
    const double t = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    return t * t;
  });
}

double direct_sq(const Features& x, int64_t i, int64_t j) {
  double v = 0.0;
  visit_dtype<Half, BFloat16>(x.dtype, [&](auto t) {
    using T = decltype(t);
    const T* p = static_cast<const T*>(x.data);
    v = direct_sq(p + i * x.D, p + j * x.D, x.D);
  });
  return v;
}

// x in float32 (exact for float16 and bfloat16).
void convert_rows(const Features& x, float* out) {
  visit_dtype<Half, BFloat16>(x.dtype, [&](auto t) {
    using T = decltype(t);
    const T* p = static_cast<const T*>(x.data);
    parallel_for(0, x.N * x.D, 16384, [&](int64_t b, int64_t e) {
      for (int64_t l = b; l < e; ++l) out[l] = static_cast<float>(p[l]);
    });
  });
}

// ---- the small-batch Gram kernel ----------------------------------------------------
//
// G_ij = <xc_i, xc_j> with the vector lanes along the features: blocks of
// kDot x kDot rows, the features cut into chunks of kChunk (a work item is a
// block pair and a chunk, so a batch of 16 still fills every core), the
// chunks' partial sums added in chunk order. G_ij == G_ji bit for bit: the
// products commute and every pair sums in the same order.
//
// float64 (Precision::F64): xc are the rows centred in float64 (centre_rows)
// and the norms theirs. float32 (Precision::Fast): the kernel reads the
// float32 rows themselves and subtracts the mean rounded to float32 as it
// loads them, exactly as rounding x - mean_f32 computed in float64 would
// (a shift by any vector leaves the relations unchanged); a lane sums
// kChunk / 16 products before they are added in float64, and the norms of
// those rows are summed in float64.
constexpr int64_t kDot = 4;
constexpr int64_t kChunk = 2048;

// out[r * kDot + q] = sum over [0, len) of (a_r - shift)(b_q - shift) (no
// shift with kShift false).
template <typename T, bool kShift>
RKD_INLINE void dot_block(const T* const* a, const T* const* b, const T* shift, int64_t len, double* out) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::lanes;
  V acc[kDot][kDot] = {};
  auto step = [&](const T* const* pa, const T* const* pb, const T* ps, int64_t k) RKD_LAMBDA_INLINE {
    V av[kDot], bv[kDot];
    for (int64_t r = 0; r < kDot; ++r) av[r] = Vec<T>::load(pa[r] + k);
    for (int64_t q = 0; q < kDot; ++q) bv[q] = Vec<T>::load(pb[q] + k);
    if constexpr (kShift) {
      const V m = Vec<T>::load(ps + k);
      for (int64_t r = 0; r < kDot; ++r) av[r] -= m, bv[r] -= m;
    }
    for (int64_t r = 0; r < kDot; ++r)
      for (int64_t q = 0; q < kDot; ++q) acc[r][q] += av[r] * bv[q];
  };
  int64_t k = 0;
  for (; k + L <= len; k += L) step(a, b, shift, k);
  if (k < len) [[unlikely]] {  // the tail, zero padded
    alignas(64) T ta[kDot][L] = {}, tb[kDot][L] = {}, ts[L] = {};
    const T* pa[kDot];
    const T* pb[kDot];
    for (int64_t r = 0; r < kDot; ++r) {
      for (int64_t l = 0; k + l < len; ++l) ta[r][l] = a[r][k + l], tb[r][l] = b[r][k + l];
      pa[r] = ta[r];
      pb[r] = tb[r];
    }
    if constexpr (kShift)
      for (int64_t l = 0; k + l < len; ++l) ts[l] = shift[k + l];
    step(pa, pb, ts, 0);
  }
  for (int64_t r = 0; r < kDot; ++r)
    for (int64_t q = 0; q < kDot; ++q) {
      double v[L];
      for (int64_t l = 0; l < L; ++l) v[l] = static_cast<double>(acc[r][q][l]);
      out[r * kDot + q] = lane_tree<L>(v);
    }
}

// out[r] = sum over [0, len) of (a_r - shift)^2, the difference rounded to
// float32 as the products see it, its square exact in float64.
RKD_CPU_CLONES void norm_block(const float* const* a, const float* shift, int64_t len, double* out) {
  for (int64_t r = 0; r < kDot; ++r) {
    const float* ar = a[r];
    out[r] = reduce_lanes(len, [&](int64_t k) RKD_LAMBDA_INLINE {
      const double t = static_cast<double>(ar[k] - shift[k]);
      return t * t;
    });
  }
}

RKD_CPU_CLONES void dot_block_any(const float* const* a, const float* const* b, const float* shift, int64_t len,
                                  double* out) {
  dot_block<float, true>(a, b, shift, len, out);
}
RKD_CPU_CLONES void dot_block_any(const double* const* a, const double* const* b, const double*, int64_t len,
                                  double* out) {
  dot_block<double, false>(a, b, nullptr, len, out);
}

// The pair values of rows [rows.begin, rows.end) against all N columns (row
// i at s + (i - rows.begin) * N) from rows xr (centred by `shift` as they
// are read, when it is not null); with `upper` (the whole matrix) each block
// pair once, both triangles stored. Norms: `norms`, or, when it is null, the
// squared norms of the shifted rows, from the diagonal block pairs (one for
// every row block is then computed).
template <typename T>
void dot_pairs(const Features& x, const T* xr, const T* shift, const double* norms, Rows rows, bool upper,
               PairKind what, double eps, double* s) {
  const int64_t N = x.N, D = x.D;
  const int64_t rb0 = rows.begin / kDot, rb1 = (rows.end + kDot - 1) / kDot, nb = (N + kDot - 1) / kDot;
  std::vector<std::pair<int64_t, int64_t>> blocks;
  std::vector<int64_t> diag(static_cast<size_t>(nb), -1);  // the item of block pair (b, b)
  for (int64_t bi = rb0; bi < rb1; ++bi)
    for (int64_t bj = upper ? bi : 0; bj < nb; ++bj) blocks.emplace_back(bi, bj);
  const int64_t pairs = static_cast<int64_t>(blocks.size());
  if (!norms && !upper)  // the diagonal blocks of the columns outside the rows
    for (int64_t bj = 0; bj < nb; ++bj)
      if (bj < rb0 || bj >= rb1) blocks.emplace_back(bj, bj);
  const int64_t nblk = static_cast<int64_t>(blocks.size()), nch = std::max<int64_t>(1, (D + kChunk - 1) / kChunk);
  for (int64_t t = 0; t < nblk; ++t)
    if (blocks[t].first == blocks[t].second) diag[blocks[t].first] = t;
  std::unique_ptr<double[]> part(new double[static_cast<size_t>(nblk * nch * kDot * kDot)]);
  std::unique_ptr<double[]> npart(norms ? nullptr : new double[static_cast<size_t>(nblk * nch * kDot)]);
  auto rows_of = [&](int64_t b0, int64_t k0, const T** p) {
    for (int64_t r = 0; r < kDot; ++r) p[r] = xr + std::min(b0 * kDot + r, N - 1) * D + k0;
  };
  auto gram = [&](int64_t t, int64_t r, int64_t q) {
    double g = 0.0;
    for (int64_t ch = 0; ch < nch; ++ch) g += part[((ch * nblk) + t) * kDot * kDot + r * kDot + q];
    return g;
  };
  // Items chunk-major: a task sweeps the block pairs of one chunk while it is in cache.
  // Tasks of at least ~512K multiply-adds (tens of microseconds): waking a
  // thread for less costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, 524288 / (kDot * kDot * std::min(D, kChunk) + 1));
  parallel_for(0, nblk * nch, grain, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t ch = t / nblk, k0 = ch * kChunk, len = std::max<int64_t>(0, std::min(kChunk, D - k0));
      const T* pa[kDot];
      const T* pb[kDot];
      rows_of(blocks[t % nblk].first, k0, pa);
      rows_of(blocks[t % nblk].second, k0, pb);
      dot_block_any(pa, pb, shift ? shift + k0 : nullptr, len, part.get() + t * kDot * kDot);
      if constexpr (std::is_same<T, float>::value)
        if (!norms && blocks[t % nblk].first == blocks[t % nblk].second)
          norm_block(pa, shift + k0, len, npart.get() + t * kDot);
    }
  });
  std::vector<double> own;
  if (!norms) {
    own.resize(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      own[i] = 0.0;
      for (int64_t ch = 0; ch < nch; ++ch) own[i] += npart[(ch * nblk + diag[i / kDot]) * kDot + i % kDot];
    }
    norms = own.data();
  }
  parallel_for(0, pairs, 256, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const auto [bi, bj] = blocks[t];
      for (int64_t r = 0; r < kDot; ++r)
        for (int64_t q = 0; q < kDot; ++q) {
          const int64_t i = bi * kDot + r, j = bj * kDot + q;
          if (i < rows.begin || i >= rows.end || j >= N || (upper && j < i)) continue;
          double v = 0.0;  // the diagonal is exactly 0
          if (i != j) {
            v = gram_sq(norms[i], norms[j], gram(t, r, q));
            if (gram_near(v, norms[i], norms[j])) v = direct_sq(x, i, j);
            v = pair_value(what, v, eps);
          }
          s[(i - rows.begin) * N + j] = v;
          if (upper) s[j * N + i] = v;
        }
    }
  });
}

// The pair values of rows [rows.begin, rows.end) against all N columns, row i
// at s + (i - rows.begin) * N, from a panel GEMM of the centred features in
// T: x - mean packed once into panels of kCols rows (feature-major), which
// give both operands (a row of a tile reads its values out of its panel), so
// no row-major copy of the centred features is made. With `upper` (the whole
// matrix) only tiles on or above the diagonal are computed and only j > i is
// stored (mirror_lower fills the rest); otherwise every pair of the rows. A
// pair's value does not depend on which of the two ways it is computed: the
// GEMM sums each product in the same order, and products commute.
template <typename T>
void gram_pairs(const Features& x, const Centred& c, Rows rows, bool upper, PairKind what, double eps, double* s) {
  const int64_t N = x.N, D = x.D;
  constexpr int64_t kCols = cols<T>();
  AlignedArray<T> packed;
  visit_dtype<Half, BFloat16>(x.dtype, [&](auto t) {
    using S = decltype(t);
    packed = pack_panels<T>(static_cast<const S*>(x.data), c.mean.data(), N, D);
  });
  const T* bp = packed.get();
  // Gram tiles (row block of kRows, panel of kCols columns), panel-major so a
  // thread reuses one packed panel from cache.
  const int64_t nrb = (rows.size() + kRows - 1) / kRows, np = (N + kCols - 1) / kCols;
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t p = 0; p < np; ++p)
    for (int64_t rb = 0; rb < nrb && (!upper || rb * kRows < (p + 1) * kCols); ++rb) tiles.emplace_back(p, rb);
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(D * kRows, 1));
  auto operands = [&](int64_t t, const T** a) {
    const int64_t i0 = rows.begin + tiles[t].second * kRows;
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t i = std::min(i0 + r, rows.end - 1);
      a[r] = bp + (i / kCols) * D * kCols + i % kCols;
    }
    return bp + tiles[t].first * D * kCols;
  };
  auto store = [&](int64_t t, const double* g) {
    double v[kCols];
    const int64_t p = tiles[t].first, i0 = rows.begin + tiles[t].second * kRows, j0 = p * kCols;
    const int64_t nj = std::min(kCols, N - j0);
    for (int64_t r = 0; r < kRows && i0 + r < rows.end; ++r) {
      const int64_t i = i0 + r;
      if (gram_to_sq(g + r * kCols, c.n[i], c.n.data() + j0, nj, v) != 0)
        for (int64_t l = 0; l < nj; ++l)  // (the diagonal is 0 below)
          if (j0 + l != i && gram_near(v[l], c.n[i], c.n[j0 + l])) v[l] = direct_sq(x, i, j0 + l);
      if (what == PairKind::Dist) sq_to_dist(v, nj, eps);
      if (what == PairKind::SqClamped)
        for (int64_t l = 0; l < nj; ++l) v[l] = clamp_sq(v[l], eps);
      double* out = s + (i - rows.begin) * N;
      for (int64_t l = upper ? std::max<int64_t>(0, i + 1 - j0) : 0; l < nj; ++l) out[j0 + l] = v[l];
      if (i >= j0 && i < j0 + nj) out[i] = 0.0;  // the diagonal is exactly 0
    }
  };
  parallel_for(0, static_cast<int64_t>(tiles.size()), grain, [&](int64_t b, int64_t e) {
    const T* a[kRows];
    if constexpr (std::is_same<T, float>::value) {
      // A task's tiles in groups, each group's products summed over slices of
      // kSlice features: the slice of a panel (kSlice x kCols, 32 KB) stays in
      // L1 while the group's tiles sweep it, where a tile over all D features
      // would stream its panel from L2 for every tile. Slices start at
      // multiples of kFlush: the same partial sums, added in the same order,
      // as one pass over the features (gemm_tile).
      constexpr int64_t kGroup = 16, kSlice = 128;
      static_assert(kSlice % kFlush == 0, "a slice must hold whole flush chunks");
      std::unique_ptr<double[]> g(new double[static_cast<size_t>(kGroup * kRows * kCols)]);
      for (int64_t t0 = b; t0 < e; t0 += kGroup) {
        const int64_t t1 = std::min(e, t0 + kGroup);
        std::fill_n(g.get(), (t1 - t0) * kRows * kCols, 0.0);
        for (int64_t k0 = 0; k0 < D; k0 += kSlice)
          for (int64_t t = t0; t < t1; ++t) {
            const T* panel = operands(t, a);
            gemm_tile_panel_add(a, panel, k0, std::min(kSlice, D - k0), g.get() + (t - t0) * kRows * kCols);
          }
        for (int64_t t = t0; t < t1; ++t) store(t, g.get() + (t - t0) * kRows * kCols);
      }
    } else {
      double g[kRows * kCols];
      for (int64_t t = b; t < e; ++t) {
        const T* panel = operands(t, a);
        gemm_tile_panel(a, panel, D, g);
        store(t, g);
      }
    }
  });
}

// The lower triangle of s mirrors the upper one, copied in cache-sized
// blocks; the block pairs are listed so that both threads get the same share.
void mirror_lower(double* s, int64_t N) {
  constexpr int64_t B = 64;
  const int64_t nb = (N + B - 1) / B;
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t bj = 0; bj <= bi; ++bj) blocks.emplace_back(bi, bj);
  parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = b0; t < b1; ++t) {
      const auto [bi, bj] = blocks[t];
      for (int64_t i = bi * B; i < std::min(N, bi * B + B); ++i)
        for (int64_t j = bj * B; j < std::min(i, bj * B + B); ++j) s[i * N + j] = s[j * N + i];
    }
  });
}

// Columns [k0, k0 + nk) of x - mean, all N rows, as a panel of cols<T>()
// columns (zero padded).
template <typename T, typename In>
RKD_CPU_CLONES void pack_centred(const In* x, const double* mean, int64_t N, int64_t D, int64_t k0, int64_t nk,
                                 T* panel) {
  constexpr int64_t kCols = cols<T>();
  for (int64_t j = 0; j < N; ++j) {
    T* dst = panel + j * kCols;
    for (int64_t l = 0; l < nk; ++l) dst[l] = static_cast<T>(static_cast<double>(x[j * D + k0 + l]) - mean[k0 + l]);
    for (int64_t l = nk; l < kCols; ++l) dst[l] = T(0);
  }
}

// One row of dx from the product's row wx: 2 (w_i xc_ik - wx_ik).
template <typename In, typename Out>
RKD_CPU_CLONES void grad_row(const In* x, const double* mean, double w, const double* wx, int64_t nk, Out* out) {
  for (int64_t l = 0; l < nk; ++l)
    out[l] = static_cast<Out>(grad_epilogue(w, static_cast<double>(x[l]) - mean[l], wx[l]));
}

// dx_i = 2 (w_i xc_i - sum_j W_ij xc_j) on the centred features xc: the same
// value as with x (translation invariance) without the cancellation a common
// offset causes. A work item is a panel of kCols features and a group of row
// blocks; it packs its panel of xc (all N rows, centred on the fly from x and
// the mean) and sweeps the group's row blocks over it.
template <typename T, typename In, typename Out>
void grad_gemm(const In* x, const double* mean, int64_t N, int64_t D, Rows rows, const T* W, const double* w,
               Out* out) {
  constexpr int64_t kCols = cols<T>(), kGroup = 16;
  const int64_t n = rows.size(), nrb = (n + kRows - 1) / kRows, np = (D + kCols - 1) / kCols;
  const int64_t ng = (nrb + kGroup - 1) / kGroup;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(N * kRows * kGroup, 1));
  parallel_for(0, np * ng, grain, [&](int64_t b, int64_t e) {
    AlignedArray<T> panel = aligned_array<T>(N * kCols);
    double blk[kRows * kCols];
    int64_t packed = -1;
    for (int64_t t = b; t < e; ++t) {
      // Panel-major order: consecutive items share a panel.
      const int64_t p = t / ng, g = t % ng, k0 = p * kCols, nk = std::min(kCols, D - k0);
      if (p != packed) {
        pack_centred(x, mean, N, D, k0, nk, panel.get());
        packed = p;
      }
      for (int64_t rb = g * kGroup; rb < std::min(nrb, g * kGroup + kGroup); ++rb) {
        const int64_t i0 = rb * kRows;
        const T* a[kRows];
        for (int64_t r = 0; r < kRows; ++r) a[r] = W + std::min(i0 + r, n - 1) * N;
        gemm_tile_any(a, panel.get(), N, blk);
        for (int64_t r = 0; r < kRows && i0 + r < n; ++r) {
          const int64_t l0 = i0 + r, i = rows.begin + l0;  // W's row and x's row
          grad_row(x + i * D + k0, mean + k0, w[l0], blk + r * kCols, nk, out + l0 * D + k0);
        }
      }
    }
  });
}

}  // namespace

const Centred& CpuBackend::centred(const Features& x, Keep keep) {
  Centred* c = nullptr;
  for (const auto& [data, held] : centred_)
    if (data == x.data) c = held.get();
  if (c == nullptr) {
    centred_.emplace_back(x.data, std::make_unique<Centred>());
    c = centred_.back().second.get();
    c->mean.resize(static_cast<size_t>(x.D));
    // Column blocks, each owned by one task: a column's sum runs over the
    // rows in order whatever the blocking, so the width only sets how the
    // work splits (256 columns: even N = 128, D = 512 gets two tasks).
    constexpr int64_t kBlock = 256;
    const int64_t nblk = (x.D + kBlock - 1) / kBlock;
    std::vector<double> amax(static_cast<size_t>(nblk), 0.0);
    visit_dtype<Half, BFloat16>(x.dtype, [&](auto t) {
      using T = decltype(t);
      const T* p = static_cast<const T*>(x.data);
      parallel_for(0, nblk, grain_for(x.N * kBlock), [&](int64_t b, int64_t e) {
        for (int64_t blk = b; blk < e; ++blk)
          column_stats(p, x.N, x.D, blk * kBlock, std::min(x.D, blk * kBlock + kBlock), c->mean.data(),
                       &amax[blk]);
      });
    });
    for (double m : amax) c->amax = m > c->amax || m != m ? m : c->amax;
  }
  const bool want_d = keep == Keep::F64 && !c->xd, want_n = keep == Keep::Norms && !c->has_norms;
  if (!want_d && !want_n) return *c;
  if (want_d) c->xd = ScratchCache::take(static_cast<size_t>(x.N * x.D));
  c->n.resize(static_cast<size_t>(x.N));  // the same values whether or not the rows are kept
  visit_dtype<Half, BFloat16>(x.dtype, [&](auto t) {
    using T = decltype(t);
    centre_rows(static_cast<const T*>(x.data), x.N, x.D, *c, want_d ? c->xd.get() : nullptr);
  });
  c->has_norms = true;
  return *c;
}

bool CpuBackend::fast(const Features& x, Precision precision) {
  if (!allow_f32_ || precision == Precision::F64 || x.dtype == Dtype::Float64) return false;
  const double m = centred(x, Keep::None).amax;
  return m == 0.0 || (m >= kFastMin && m <= kFastMax);
}

void CpuBackend::pair_rows(const Features& x, Rows rows, PairKind kind, double eps, Precision precision,
                           double* out) {
  if (rows.size() == 0) return;
  const bool f32 = fast(x, precision), upper = rows.size() == x.N;
  const bool dot = small_batch(x.N, x.D);
  if (dot && f32) {
    // The float32 rows themselves, centred as the kernel reads them.
    Centred& c = const_cast<Centred&>(centred(x, Keep::None));
    if (c.meanf.empty()) c.meanf.assign(c.mean.begin(), c.mean.end());
    const float* xr = static_cast<const float*>(x.data);
    if (x.dtype != Dtype::Float32) {
      if (!c.xr) {
        c.xr = aligned_array<float>(x.N * x.D);
        convert_rows(x, c.xr.get());
      }
      xr = c.xr.get();
    }
    return dot_pairs<float>(x, xr, c.meanf.data(), nullptr, rows, upper, kind, eps, out);
  }
  if (dot) {
    const Centred& c = centred(x, Keep::F64);
    return dot_pairs<double>(x, c.xd.get(), nullptr, c.n.data(), rows, upper, kind, eps, out);
  }
  const Centred& c = centred(x, Keep::Norms);
  if (f32)
    gram_pairs<float>(x, c, rows, upper, kind, eps, out);
  else
    gram_pairs<double>(x, c, rows, upper, kind, eps, out);
  if (upper) mirror_lower(out, x.N);
}

void CpuBackend::pair_matrix(const Features& x, PairKind kind, double eps, Precision precision, double* out) {
  pair_rows(x, all_rows(x.N), kind, eps, precision, out);
}

CpuWeights CpuBackend::weights(const Features& x, Rows rows, Precision precision) {
  CpuWeights W;
  W.N = x.N;
  W.rows = rows;
  W.f64 = !fast(x, precision);
  const size_t nn = static_cast<size_t>(std::max<int64_t>(rows.size() * x.N, 1));
  if (W.f64)
    W.Wd.reset(new double[nn]);
  else
    W.Wf.reset(new float[nn]);
  W.w.reset(new double[static_cast<size_t>(std::max<int64_t>(rows.size(), 1))]);
  return W;
}

void CpuBackend::grad_from_weights(const Features& x, const CpuWeights& W, const Buffer& dx) {
  if (x.D == 0 || W.rows.size() == 0) return;
  const Centred& c = centred(x, Keep::None);
  // dx has x's dtype (the op layer allocates it so).
  visit_dtype<Half, BFloat16>(x.dtype, [&](auto t) {
    using T = decltype(t);
    const T* xp = static_cast<const T*>(x.data);
    T* out = static_cast<T*>(dx.data);
    if (W.f64)
      grad_gemm(xp, c.mean.data(), x.N, x.D, W.rows, W.Wd.get(), W.w.get(), out);
    else
      grad_gemm(xp, c.mean.data(), x.N, x.D, W.rows, W.Wf.get(), W.w.get(), out);
  });
}

template <typename Acc>
const Acc* CpuBackend::to(const Operand& op, int64_t n) {
  if (op.dtype == Dtype::Float64) return static_cast<const double*>(op.data);
  double* out = scratch<double>(n);
  visit_dtype<Half, BFloat16>(op.dtype, [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(op.data);
    parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t l = b; l < e; ++l) out[l] = static_cast<double>(in[l]);
    });
  });
  return out;
}
template const double* CpuBackend::to<double>(const Operand&, int64_t);

void CpuBackend::fill_zero(const Buffer& out, int64_t n) {
  visit_dtype<Half, BFloat16>(out.dtype, [&](auto t) {
    using T = decltype(t);
    std::fill_n(static_cast<T*>(out.data), n, T(0));
  });
}

void CpuBackend::convert(const double* v, int64_t n, const Buffer& out) {
  visit_dtype<Half, BFloat16>(out.dtype, [&](auto t) {
    using T = decltype(t);
    T* o = static_cast<T*>(out.data);
    parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t l = b; l < e; ++l) o[l] = static_cast<T>(v[l]);
    });
  });
}

}  // namespace rkd
