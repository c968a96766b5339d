// The O(N^2 D) primitives of the CPU backend (cpu_backend.h): the pair
// matrix and the gradient from pair weights, one blocked GEMM, and the small
// conversions the op layer asks for.
#include "cpu_backend.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdint>
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
template <typename T>
inline __attribute__((always_inline)) void gemm_tile(const T* const* a, const T* bp, int64_t K, double* out) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::lanes, C = cols<T>();
  constexpr int64_t step = std::is_same<T, double>::value ? INT64_MAX : kFlush;
  for (int64_t i = 0; i < kRows * C; ++i) out[i] = 0.0;
  for (int64_t k0 = 0; k0 < K; k0 += std::min(step, K - k0)) {
    const int64_t k1 = k0 + std::min(step, K - k0);
    V acc[kRows][kVecs] = {};
    for (int64_t k = k0; k < k1; ++k) {
      V bv[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) bv[v] = Vec<T>::load(bp + k * C + v * L);
      for (int64_t r = 0; r < kRows; ++r) {
        const T ar = a[r][k];  // vector * scalar broadcasts the scalar
        for (int64_t v = 0; v < kVecs; ++v) acc[r][v] += ar * bv[v];
      }
    }
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t v = 0; v < kVecs; ++v)
        for (int64_t l = 0; l < L; ++l) out[r * C + v * L + l] += static_cast<double>(acc[r][v][l]);
  }
}

RKD_CPU_CLONES void gemm_tile_any(const double* const* a, const double* bp, int64_t K, double* out) {
  gemm_tile<double>(a, bp, K, out);
}
RKD_CPU_CLONES void gemm_tile_any(const float* const* a, const float* bp, int64_t K, double* out) {
  gemm_tile<float>(a, bp, K, out);
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

// Packs the columns of an R x C matrix m (element (r, c) at m[r * rs + c * cs])
// into panels of cols<T>() columns, each R x cols<T>() row-major, zero padded.
// The loop runs along whichever of r and c is contiguous in m.
template <typename T>
std::vector<T> pack_panels(const double* m, int64_t R, int64_t C, int64_t rs, int64_t cs) {
  constexpr int64_t W = cols<T>();
  const int64_t np = (C + W - 1) / W;
  std::vector<T> out(static_cast<size_t>(np * R * W));
  at::parallel_for(0, np, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      T* panel = out.data() + p * R * W;
      const int64_t nc = std::min(W, C - p * W);
      if (nc < W)
        for (int64_t i = 0; i < R * W; ++i) panel[i] = T(0);
      if (cs < rs) {
        for (int64_t r = 0; r < R; ++r)
          for (int64_t l = 0; l < nc; ++l) panel[r * W + l] = static_cast<T>(m[r * rs + (p * W + l) * cs]);
      } else {
        for (int64_t l = 0; l < nc; ++l)
          for (int64_t r = 0; r < R; ++r) panel[r * W + l] = static_cast<T>(m[r * rs + (p * W + l) * cs]);
      }
    }
  });
  return out;
}

template <typename T>
Centred centre_impl(const T* x, int64_t N, int64_t D) {
  Centred c;
  c.x.resize(static_cast<size_t>(N * D));
  c.n.resize(static_cast<size_t>(N));
  std::vector<double> mean(static_cast<size_t>(D), 0.0);
  // Column sums in row order (each column owned by one task): deterministic.
  at::parallel_for(0, D, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = b; k < e; ++k) mean[k] += static_cast<double>(x[i * D + k]);
    for (int64_t k = b; k < e; ++k) mean[k] /= static_cast<double>(N);
  });
  std::vector<double> amax(static_cast<size_t>(N), 0.0);
  at::parallel_for(0, N, grain_for(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double* row = c.x.data() + i * D;
      double m = 0.0;
      for (int64_t k = 0; k < D; ++k) {
        row[k] = static_cast<double>(x[i * D + k]) - mean[k];
        const double a = std::fabs(row[k]);
        m = a > m || a != a ? a : m;  // NaN sticks
      }
      amax[i] = m;
      c.n[i] = dot_lanes(row, row, D);
    }
  });
  for (double m : amax) c.amax = m > c.amax || m != m ? m : c.amax;
  return c;
}

// The pair values of rows [rows.begin, rows.end) against all N columns, row i
// at s + (i - rows.begin) * N. With `upper` (the whole matrix) only tiles on
// or above the diagonal are computed and only j > i is stored (mirror_lower
// fills the rest); otherwise every pair of the rows. A pair's value does not
// depend on which of the two ways it is computed: the GEMM sums each
// product in the same order, and products commute.
template <typename T>
void gram_pairs(const Centred& c, int64_t N, int64_t D, Rows rows, bool upper, PairKind what, double eps,
                double* s) {
  constexpr int64_t kCols = cols<T>();
  std::vector<T> xt;  // A-operand rows in T (float64 ones are c.x itself)
  const T* xa;
  if constexpr (std::is_same<T, double>::value) {
    xa = c.x.data();
  } else {
    xt.assign(c.x.begin(), c.x.end());
    xa = xt.data();
  }
  // Gram tiles (row block of kRows, panel of kCols columns), panel-major so a
  // thread reuses one packed panel from cache.
  const std::vector<T> bp = pack_panels<T>(c.x.data(), D, N, 1, D);
  const int64_t nrb = (rows.size() + kRows - 1) / kRows, np = (N + kCols - 1) / kCols;
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t p = 0; p < np; ++p)
    for (int64_t rb = 0; rb < nrb && (!upper || rb * kRows < (p + 1) * kCols); ++rb) tiles.emplace_back(p, rb);
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(D * kRows, 1));
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), grain, [&](int64_t b, int64_t e) {
    double g[kRows * kCols];
    double v[kCols];
    for (int64_t t = b; t < e; ++t) {
      const int64_t p = tiles[t].first, i0 = rows.begin + tiles[t].second * kRows, j0 = p * kCols;
      const int64_t nj = std::min(kCols, N - j0);
      const T* a[kRows];
      for (int64_t r = 0; r < kRows; ++r) a[r] = xa + std::min(i0 + r, rows.end - 1) * D;
      gemm_tile_any(a, bp.data() + p * D * kCols, D, g);
      for (int64_t r = 0; r < kRows && i0 + r < rows.end; ++r) {
        const int64_t i = i0 + r;
        if (gram_to_sq(g + r * kCols, c.n[i], c.n.data() + j0, nj, v) != 0)
          for (int64_t l = 0; l < nj; ++l)
            if (gram_near(v[l], c.n[i], c.n[j0 + l]))
              v[l] = sqdist_lanes(c.x.data() + i * D, c.x.data() + (j0 + l) * D, D);
        if (what == PairKind::Dist) sq_to_dist(v, nj, eps);
        if (what == PairKind::SqClamped)
          for (int64_t l = 0; l < nj; ++l) v[l] = clamp_sq(v[l], eps);
        double* out = s + (i - rows.begin) * N;
        for (int64_t l = upper ? std::max<int64_t>(0, i + 1 - j0) : 0; l < nj; ++l) out[j0 + l] = v[l];
        if (i >= j0 && i < j0 + nj) out[i] = 0.0;  // the diagonal is exactly 0
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
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = b0; t < b1; ++t) {
      const auto [bi, bj] = blocks[t];
      for (int64_t i = bi * B; i < std::min(N, bi * B + B); ++i)
        for (int64_t j = bj * B; j < std::min(i, bj * B + B); ++j) s[i * N + j] = s[j * N + i];
    }
  });
}

// dx_i = 2 (w_i xc_i - sum_j W_ij xc_j) on the centred features xc: the same
// value as with x (translation invariance) without the cancellation a common
// offset causes.
template <typename T, typename Out>
void grad_gemm(const Centred& c, int64_t N, int64_t D, Rows rows, const T* W, const double* w, Out* out) {
  constexpr int64_t kCols = cols<T>();
  const std::vector<T> xp = pack_panels<T>(c.x.data(), N, D, D, 1);
  const int64_t n = rows.size(), nrb = (n + kRows - 1) / kRows, np = (D + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(N * kRows, 1));
  at::parallel_for(0, nrb * np, grain, [&](int64_t b, int64_t e) {
    double blk[kRows * kCols];
    for (int64_t t = b; t < e; ++t) {
      // Panel-major order: a thread sweeps the row blocks over one panel
      // while the panel stays in its cache.
      const int64_t p = t / nrb, i0 = (t % nrb) * kRows;
      const T* a[kRows];
      for (int64_t r = 0; r < kRows; ++r) a[r] = W + std::min(i0 + r, n - 1) * N;
      gemm_tile_any(a, xp.data() + p * N * kCols, N, blk);
      for (int64_t r = 0; r < kRows && i0 + r < n; ++r) {
        const int64_t l0 = i0 + r, i = rows.begin + l0;  // W's row and x's row
        for (int64_t l = 0; l < kCols && p * kCols + l < D; ++l) {
          const int64_t k = p * kCols + l;
          out[l0 * D + k] = static_cast<Out>(grad_epilogue(w[l0], c.x[i * D + k], blk[r * kCols + l]));
        }
      }
    }
  });
}

}  // namespace

const Centred& CpuBackend::centred(const Features& x) {
  for (const auto& [data, c] : centred_)
    if (data == x.data) return *c;
  auto c = std::make_unique<Centred>();
  visit_dtype<c10::Half, c10::BFloat16>(x.dtype, [&](auto t) {
    using T = decltype(t);
    *c = centre_impl<T>(static_cast<const T*>(x.data), x.N, x.D);
  });
  centred_.emplace_back(x.data, std::move(c));
  return *centred_.back().second;
}

bool CpuBackend::fast(const Features& x, Precision precision) {
  if (precision == Precision::F64 || x.dtype == Dtype::Float64) return false;
  const double m = centred(x).amax;
  return m == 0.0 || (m >= kFastMin && m <= kFastMax);
}

void CpuBackend::pair_matrix(const Features& x, PairKind kind, double eps, Precision precision, double* out) {
  const Centred& c = centred(x);
  if (fast(x, precision))
    gram_pairs<float>(c, x.N, x.D, all_rows(x.N), true, kind, eps, out);
  else
    gram_pairs<double>(c, x.N, x.D, all_rows(x.N), true, kind, eps, out);
  mirror_lower(out, x.N);
}

void CpuBackend::pair_rows(const Features& x, Rows rows, PairKind kind, double eps, Precision precision,
                           double* out) {
  if (rows.size() == 0) return;
  const Centred& c = centred(x);
  if (fast(x, precision))
    gram_pairs<float>(c, x.N, x.D, rows, false, kind, eps, out);
  else
    gram_pairs<double>(c, x.N, x.D, rows, false, kind, eps, out);
}

CpuWeights CpuBackend::weights(const Features& x, Rows rows, Precision precision) {
  CpuWeights W;
  W.N = x.N;
  W.rows = rows;
  W.f64 = !fast(x, precision);
  const size_t nn = static_cast<size_t>(rows.size() * x.N);
  if (W.f64)
    W.Wd.resize(nn);
  else
    W.Wf.resize(nn);
  W.w.resize(static_cast<size_t>(rows.size()));
  return W;
}

void CpuBackend::grad_from_weights(const Features& x, const CpuWeights& W, const Buffer& dx) {
  if (x.D == 0 || W.rows.size() == 0) return;
  const Centred& c = centred(x);
  visit_dtype<c10::Half, c10::BFloat16>(dx.dtype, [&](auto t) {
    using Out = decltype(t);
    Out* out = static_cast<Out*>(dx.data);
    if (W.f64)
      grad_gemm(c, x.N, x.D, W.rows, W.Wd.data(), W.w.data(), out);
    else
      grad_gemm(c, x.N, x.D, W.rows, W.Wf.data(), W.w.data(), out);
  });
}

template <typename Acc>
const Acc* CpuBackend::to(const Operand& op, int64_t n) {
  if (op.dtype == Dtype::Float64) return static_cast<const double*>(op.data);
  double* out = scratch<double>(n);
  visit_dtype<c10::Half, c10::BFloat16>(op.dtype, [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(op.data);
    at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t l = b; l < e; ++l) out[l] = static_cast<double>(in[l]);
    });
  });
  return out;
}
template const double* CpuBackend::to<double>(const Operand&, int64_t);

void CpuBackend::fill_zero(const Buffer& out, int64_t n) {
  visit_dtype<c10::Half, c10::BFloat16>(out.dtype, [&](auto t) {
    using T = decltype(t);
    std::fill_n(static_cast<T*>(out.data), n, T(0));
  });
}

void CpuBackend::convert(const double* v, int64_t n, const Buffer& out) {
  visit_dtype<c10::Half, c10::BFloat16>(out.dtype, [&](auto t) {
    using T = decltype(t);
    T* o = static_cast<T*>(out.data);
    at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t l = b; l < e; ++l) o[l] = static_cast<T>(v[l]);
    });
  });
}

}  // namespace rkd
