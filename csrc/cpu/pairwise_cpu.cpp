#include "pairwise_cpu.h"

#include <ATen/Dispatch.h>
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
// float64 tiles accumulate in float64. float32 tiles (the backward of float32
// and half inputs) accumulate kFlush products in float32, then add them to a
// float64 total: half the cost of float64 arithmetic, and a rounding error
// several times below that of a plain float32 GEMM.
// 6 x 4 accumulators, 4 panel loads and a broadcast: 29 of AVX-512's 32 vector registers.
constexpr int64_t kRows = 6;
constexpr int64_t kVecs = 4;
constexpr int64_t kFlush = 128;
template <typename T>
constexpr int64_t cols() {
  return kVecs * Vec<T>::lanes;
}
// A pair whose Gram-form s is below near<T>() * (n_i + n_j) is recomputed
// from direct differences in float64. The float64 Gram form's error is about
// sqrt(D) * 1e-16 * (n_i + n_j), so every pair it keeps is accurate to ~1e-12
// relative; the float32 one (with float64 accumulation every kFlush terms)
// keeps pairs to ~1e-7 relative at worst and ~1e-9 typically, several times
// better than a float32 evaluation of the reference's expanded form.
template <typename T>
constexpr double near() {
  return std::is_same<T, double>::value ? 1e-3 : 1e-2;
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

// v[l] = s from the Gram entry: n_i + n_j - 2 g. Returns how many pairs are too
// close for that to be accurate (recomputed by the caller).
RKD_CPU_CLONES int64_t gram_to_sq(const double* g, double ni, const double* nj, int64_t n, double rel,
                                  double* v) {
  int64_t close = 0;
  for (int64_t l = 0; l < n; ++l) {
    const double norms = ni + nj[l];
    v[l] = norms - 2.0 * g[l];
    close += !(v[l] >= rel * norms);
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

// Features centred on the batch mean, in float64, with squared norms.
struct Centred {
  std::vector<double> x;  // N x D row-major
  std::vector<double> n;  // ||x_i - mean||^2
};

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
  at::parallel_for(0, N, grain_for(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double* row = c.x.data() + i * D;
      for (int64_t k = 0; k < D; ++k) row[k] = static_cast<double>(x[i * D + k]) - mean[k];
      c.n[i] = dot_lanes(row, row, D);
    }
  });
  return c;
}

Centred centre(const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  Centred c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rkd_centre", [&] {
    c = centre_impl<scalar_t>(x.const_data_ptr<scalar_t>(), N, D);
  });
  return c;
}

}  // namespace

namespace {

template <typename T>
void gram_pairs(const Centred& c, int64_t N, int64_t D, PairOut what, double eps, double* s) {
  constexpr int64_t kCols = cols<T>();
  constexpr double rel = near<T>();
  std::vector<T> xt;  // A-operand rows in T (float64 ones are c.x itself)
  const T* xa;
  if constexpr (std::is_same<T, double>::value) {
    xa = c.x.data();
  } else {
    xt.assign(c.x.begin(), c.x.end());
    xa = xt.data();
  }
  // Gram tiles (row block of kRows, panel of kCols columns) on or above the
  // diagonal, panel-major so a thread reuses one packed panel from cache.
  const std::vector<T> bp = pack_panels<T>(c.x.data(), D, N, 1, D);
  const int64_t nrb = (N + kRows - 1) / kRows, np = (N + kCols - 1) / kCols;
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t p = 0; p < np; ++p)
    for (int64_t rb = 0; rb < nrb && rb * kRows < (p + 1) * kCols; ++rb) tiles.emplace_back(p, rb);
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(D * kRows, 1));
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), grain, [&](int64_t b, int64_t e) {
    double g[kRows * kCols];
    double v[kCols];
    for (int64_t t = b; t < e; ++t) {
      const int64_t p = tiles[t].first, i0 = tiles[t].second * kRows, j0 = p * kCols;
      const int64_t nj = std::min(kCols, N - j0);
      const T* a[kRows];
      for (int64_t r = 0; r < kRows; ++r) a[r] = xa + std::min(i0 + r, N - 1) * D;
      gemm_tile_any(a, bp.data() + p * D * kCols, D, g);
      for (int64_t r = 0; r < kRows && i0 + r < N; ++r) {
        const int64_t i = i0 + r;
        if (gram_to_sq(g + r * kCols, c.n[i], c.n.data() + j0, nj, rel, v) != 0)
          for (int64_t l = 0; l < nj; ++l)
            if (!(v[l] >= rel * (c.n[i] + c.n[j0 + l])))
              v[l] = sqdist_lanes(c.x.data() + i * D, c.x.data() + (j0 + l) * D, D);
        if (what == PairOut::Dist) sq_to_dist(v, nj, eps);
        if (what == PairOut::SqClamped)
          for (int64_t l = 0; l < nj; ++l) v[l] = clamp_sq(v[l], eps);
        // Only j > i is stored here; the diagonal is exactly 0.
        for (int64_t l = std::max<int64_t>(0, i + 1 - j0); l < nj; ++l) s[i * N + j0 + l] = v[l];
        if (i >= j0 && i < j0 + nj) s[i * N + i] = 0.0;
      }
    }
  });
}

}  // namespace

at::Tensor pair_matrix_cpu(const at::Tensor& x, PairOut what, double eps, GramPrecision precision) {
  const int64_t N = x.size(0), D = x.size(1);
  const Centred c = centre(x);
  at::Tensor out = at::empty({N, N}, x.options().dtype(at::kDouble));
  double* s = out.mutable_data_ptr<double>();
  if (precision == GramPrecision::F64 || x.scalar_type() == at::kDouble)
    gram_pairs<double>(c, N, D, what, eps, s);
  else
    gram_pairs<float>(c, N, D, what, eps, s);
  // The lower triangle mirrors the upper one, copied in cache-sized blocks;
  // the block pairs are listed so that both threads get the same share.
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
  return out;
}

template <typename T>
at::Tensor grad_from_weights_cpu(const at::Tensor& x, const PairWeights<T>& pw) {
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (D == 0) return dx;
  constexpr int64_t kCols = cols<T>();
  // dx_i = 2 (w_i xc_i - sum_j W_ij xc_j) on the centred features xc: the
  // same value as with x (translation invariance) without the cancellation a
  // common offset causes.
  const Centred c = centre(x);
  const std::vector<T> xp = pack_panels<T>(c.x.data(), N, D, D, 1);
  const T* W = pw.W.data();
  const double* w = pw.w.data();
  const int64_t nrb = (N + kRows - 1) / kRows, np = (D + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(N * kRows, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx.scalar_type(), "rkd_grad_from_weights", [&] {
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, nrb * np, grain, [&](int64_t b, int64_t e) {
      double blk[kRows * kCols];
      for (int64_t t = b; t < e; ++t) {
        // Panel-major order: a thread sweeps the row blocks over one panel
        // while the panel stays in its cache.
        const int64_t p = t / nrb, i0 = (t % nrb) * kRows;
        const T* a[kRows];
        for (int64_t r = 0; r < kRows; ++r) a[r] = W + std::min(i0 + r, N - 1) * N;
        gemm_tile_any(a, xp.data() + p * N * kCols, N, blk);
        for (int64_t r = 0; r < kRows && i0 + r < N; ++r) {
          const int64_t i = i0 + r;
          for (int64_t l = 0; l < kCols && p * kCols + l < D; ++l) {
            const int64_t k = p * kCols + l;
            out[i * D + k] = static_cast<scalar_t>(2.0 * (w[i] * c.x[i * D + k] - blk[r * kCols + l]));
          }
        }
      }
    });
  });
  return dx;
}

template at::Tensor grad_from_weights_cpu<float>(const at::Tensor&, const PairWeights<float>&);
template at::Tensor grad_from_weights_cpu<double>(const at::Tensor&, const PairWeights<double>&);

}  // namespace rkd
