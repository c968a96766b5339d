// The CPU backend's triplet primitives (cpu_backend.h) for the angle ops
// (csrc/core/angle_op.h: angle_tensor, rkd_angle_loss; and the vertex-range
// ops of shard_op.h): O(N^3) elementwise work over the float64 squared
// distances s and u = inv_edge(s), in float64.
//
// Backward: the vertex-edge terms V (p, q of rkd_math.h, summed over k for
// fixed (i, j)) and the opposite-edge sums Rm_jk = sum_i G_ijk w_ij w_ik
// (over the vertex i for fixed (j, k)) come from one pass where a task owns
// the point j: it writes column j of V and row j of Rm, so no two tasks write
// the same element and the summation order is fixed. R = Rm + Rm^T is what
// the op layer's AngleWeight takes.

#include <cmath>
#include <memory>
#include <vector>

#include "../rkd_math.h"
#include "cpu_backend.h"
#include "cpu_util.h"

namespace rkd {
namespace {

// Tasks of a triplet pass, each item a · b triplets: at least ~32K of them
// per task, so that a small batch does not pay for waking threads.
inline int64_t triplet_grain(int64_t a, int64_t b) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(a * b, 1)); }

// Rows of one triplet row (i, j, *) of one input.
struct Row {
  const double* s_i;
  const double* s_j;
  const double* u_i;
  double s_ij, u_ij;
};

RKD_INLINE Row row_of(const Edges<double>& e, int64_t N, int64_t i, int64_t j) {
  return {e.s + i * N, e.s + j * N, e.u + i * N, e.s[i * N + j], e.u[i * N + j]};
}

// sum over k in [k0, k1) of smooth_l1(A^a_ijk - A^b_ijk).
RKD_CPU_CLONES double loss_row(const Row& a, const Row& b, int64_t k0, int64_t k1, const Huber<double>& h) {
  const double* as_i = a.s_i;
  const double* as_j = a.s_j;
  const double* au_i = a.u_i;
  const double* bs_i = b.s_i;
  const double* bs_j = b.s_j;
  const double* bu_i = b.u_i;
  return reduce_lanes(k1 - k0, [&](int64_t t) RKD_LAMBDA_INLINE {
    const int64_t k = k0 + t;
    const double r = cosine<double>(a.s_ij, as_i[k], as_j[k], a.u_ij, au_i[k]) -
                     cosine<double>(b.s_ij, bs_i[k], bs_j[k], b.u_ij, bu_i[k]);
    return smooth_l1(r, h);
  });
}

// Elementwise loss (or cosines of a alone, when b is null) of a triplet row.
RKD_CPU_CLONES void values_row(const Row& a, const Row* b, int64_t N, const Huber<double>& h, double* out) {
  for (int64_t k = 0; k < N; ++k) out[k] = cosine<double>(a.s_ij, a.s_i[k], a.s_j[k], a.u_ij, a.u_i[k]);
  if (b)
    for (int64_t k = 0; k < N; ++k)
      out[k] = smooth_l1(out[k] - cosine<double>(b->s_ij, b->s_i[k], b->s_j[k], b->u_ij, b->u_i[k]), h);
}

// Where dL/dA comes from in a backward row: the smooth-L1 of a loss with a
// scalar upstream gradient, the same with an (N, N, N) upstream gradient
// ('none' reduction), or the upstream gradient itself (the angle tensor).
enum class Upstream { LossScalar, LossTensor, Raw };

struct GradIn {
  double scalar;        // LossScalar: upstream * scale
  const double* g;      // LossTensor / Raw: upstream[i][j][:]
  const double* gsym;   // LossTensor / Raw: upstream[i][j][:] + upstream[i][:][j]
  Huber<double> huber;
  double eps2;
};

// One backward row (i, j, *) for input a (b is the other side of the loss):
// returns p and q, and adds dL/dA_ijk w_ij w_ik to rm_j[k].
template <Upstream U>
RKD_INLINE void grad_row(const Row& a, const Row& b, const GradIn& in, int64_t N, double* __restrict rm_j,
                         double* pq) {
  // Local restrict copies: rm_j is written, and the compiler must know it
  // aliases none of the rows it reads to vectorise.
  const double* __restrict as_i = a.s_i;
  const double* __restrict as_j = a.s_j;
  const double* __restrict au_i = a.u_i;
  const double* __restrict bs_i = b.s_i;
  const double* __restrict bs_j = b.s_j;
  const double* __restrict bu_i = b.u_i;
  const double* __restrict g = in.g;
  const double* __restrict gsym = in.gsym;
  const double w_ij = active_inv_edge(a.s_ij, a.u_ij, in.eps2);
  double p[kLanes] = {}, q[kLanes] = {};
  auto body = [&](int64_t k, int64_t l) RKD_LAMBDA_INLINE {
    const double A = cosine<double>(a.s_ij, as_i[k], as_j[k], a.u_ij, au_i[k]);
    double G, Gs;
    if constexpr (U == Upstream::Raw) {
      G = g[k];
      Gs = gsym[k];
    } else {
      const double d = smooth_l1_grad(A - cosine<double>(b.s_ij, bs_i[k], bs_j[k], b.u_ij, bu_i[k]), in.huber);
      if constexpr (U == Upstream::LossScalar) {
        G = in.scalar * d;
        Gs = 2.0 * G;  // dL/dA is symmetric in (j, k) when the upstream gradient is a scalar
      } else {
        G = g[k] * d;
        Gs = gsym[k] * d;
      }
    }
    const double w_ik = active_inv_edge(as_i[k], au_i[k], in.eps2);
    p[l] += Gs * w_ik;
    q[l] += Gs * A;
    rm_j[k] += G * w_ik * w_ij;
  };
  int64_t k = 0;
  for (; k + kLanes <= N; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) body(k + l, l);
  for (; k < N; ++k) body(k, k % kLanes);
  pq[0] = lane_sum(p);
  pq[1] = lane_sum(q);
}

RKD_CPU_CLONES void grad_row_scalar(const Row& a, const Row& b, const GradIn& in, int64_t N, double* rm_j,
                                    double* pq) {
  grad_row<Upstream::LossScalar>(a, b, in, N, rm_j, pq);
}
RKD_CPU_CLONES void grad_row_tensor(const Row& a, const Row& b, const GradIn& in, int64_t N, double* rm_j,
                                    double* pq) {
  grad_row<Upstream::LossTensor>(a, b, in, N, rm_j, pq);
}
RKD_CPU_CLONES void grad_row_raw(const Row& a, const Row& b, const GradIn& in, int64_t N, double* rm_j,
                                 double* pq) {
  grad_row<Upstream::Raw>(a, b, in, N, rm_j, pq);
}

// V and R for side a, given dL/dA through `in` (b: the other side of a loss;
// ignored for Raw). up/upsym: (N, N, N) upstream tensors for LossTensor and
// Raw. V and R live in the backend's scratch.
AngleGrad vertex_and_opposite(CpuBackend& be, Upstream U, const Edges<double>& ea, const Edges<double>& eb,
                              int64_t N, Rows vertices, double scalar, const double* up, const double* upsym,
                              const AngleArgs& args) {
  const int64_t n = vertices.size();
  double* V = be.scratch<double>(n * N);   // vertex-edge terms, [i - vertices.begin][j]
  double* Rm = be.scratch<double>(N * N);  // opposite-edge sums over the vertices, [j][k]
  std::fill_n(V, n * N, 0.0);
  std::fill_n(Rm, N * N, 0.0);
  const double kappa = kappa_of(args), eps2 = clamp_eps2(args);
  // A point j is O(n N) work: small batches stay on one thread.
  parallel_for(0, N, triplet_grain(n, N), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double* rm_j = Rm + j * N;
      for (int64_t i = vertices.begin; i < vertices.end; ++i) {
        if (i == j) continue;
        const Row a = row_of(ea, N, i, j);
        const Row b = U == Upstream::Raw ? a : row_of(eb, N, i, j);
        const int64_t off = (i * N + j) * N;
        const GradIn in{scalar, up ? up + off : nullptr, upsym ? upsym + off : nullptr, Huber<double>(args.beta),
                        eps2};
        double pq[2];
        if (U == Upstream::LossScalar)
          grad_row_scalar(a, b, in, N, rm_j, pq);
        else if (U == Upstream::LossTensor)
          grad_row_tensor(a, b, in, N, rm_j, pq);
        else
          grad_row_raw(a, b, in, N, rm_j, pq);
        V[(i - vertices.begin) * N + j] =
            vertex_edge_grad(pq[0], pq[1], active_inv_edge(a.s_ij, a.u_ij, eps2), kappa);
      }
    }
  });
  // R = Rm + Rm^T: the opposite-edge sums over Gs_ijk = G_ijk + G_ikj.
  double* R = be.scratch<double>(N * N);
  parallel_for(0, N, grain_for(N), [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j)
      for (int64_t k = 0; k < N; ++k) R[j * N + k] = Rm[j * N + k] + Rm[k * N + j];
  });
  return {V, R, 1};
}

// (N, N, N) upstream gradient in float64, and its (j, k)-symmetrised sum.
// With `mask_degenerate`, the entries (i, i, k) and (i, j, i) are zeroed: the
// cosines there are the constant 0, so their gradient must not flow (the
// formulas of rkd_math.h only vanish there through l'(0) = 0 in a loss).
struct UpstreamPair {
  const double* g;                       // the operand itself, or its masked copy
  ScratchCache::Ptr masked, sym;          // sym[i][j][k] = g[i][j][k] + g[i][k][j]
};

UpstreamPair upstream_pair(const double* up, int64_t N, bool mask_degenerate) {
  // The operand is read in place (it may be the caller's tensor), copied only to be masked.
  const size_t n3 = static_cast<size_t>(N) * N * N;
  // Uninitialised: every element is written below.
  UpstreamPair p{up, mask_degenerate ? ScratchCache::take(n3) : ScratchCache::Ptr(), ScratchCache::take(n3)};
  if (mask_degenerate) p.g = p.masked.get();
  parallel_for(0, N, grain_for(N * N), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const double* src = up + i * N * N;
      double* g = const_cast<double*>(p.g) + i * N * N;
      if (mask_degenerate) {
        for (int64_t l = 0; l < N * N; ++l) g[l] = src[l];
        for (int64_t k = 0; k < N; ++k) g[i * N + k] = 0.0;  // (i, i, k)
        for (int64_t j = 0; j < N; ++j) g[j * N + i] = 0.0;  // (i, j, i)
      }
      double* sym = p.sym.get() + i * N * N;
      for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < N; ++k) sym[j * N + k] = g[j * N + k] + g[k * N + j];
    }
  });
  return p;
}

}  // namespace

template <>
Edges<double> CpuBackend::edges<double>(const double* s, int64_t N, const AngleArgs& a) {
  double* u = scratch<double>(N * N);
  parallel_for(0, N, grain_for(N), [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i)
      for (int64_t j = 0; j < N; ++j) u[i * N + j] = a.normalize ? inv_edge(s[i * N + j], a.eps) : 1.0;
  });
  return {s, u};
}

// The (N, N, N) cosines of a (b null), or the elementwise loss between a and
// b, written row by row straight into the output dtype.
void CpuBackend::angle_values(const Edges<double>& a, const Edges<double>* b, int64_t N, double beta,
                              const Buffer& out) {
  const Huber<double> h(beta);
  visit_dtype<Half, BFloat16>(out.dtype, [&](auto t) {
    using T = decltype(t);
    T* o = static_cast<T*>(out.data);
    parallel_for(0, N * N, std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)), [&](int64_t lo, int64_t hi) {
      std::vector<double> row(static_cast<size_t>(N));
      for (int64_t t = lo; t < hi; ++t) {
        const int64_t i = t / N, j = t % N;
        if (b) {
          const Row rb = row_of(*b, N, i, j);
          values_row(row_of(a, N, i, j), &rb, N, h, row.data());
        } else {
          values_row(row_of(a, N, i, j), nullptr, N, h, row.data());
        }
        for (int64_t k = 0; k < N; ++k) o[t * N + k] = static_cast<T>(row[k]);
      }
    });
  });
}

// A_ijk = A_ikj: each row (i, j) sums k > j twice plus k == j once. Rows
// j == i (and the k == i entries) are exactly 0 and contribute l(0) = 0.
double CpuBackend::angle_loss_total(const Edges<double>& a, const Edges<double>& b, int64_t N, Rows vertices,
                                    double beta) {
  const Huber<double> h(beta);
  std::vector<double> rows(static_cast<size_t>(N), 0.0);
  parallel_for(vertices.begin, vertices.end, triplet_grain(N, N), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      double acc = 0.0;
      for (int64_t j = 0; j < N; ++j) {
        if (j == i) continue;
        const Row ra = row_of(a, N, i, j), rb = row_of(b, N, i, j);
        acc += 2.0 * loss_row(ra, rb, j + 1, N, h) + loss_row(ra, rb, j, j + 1, h);
      }
      rows[i] = acc;
    }
  });
  double total = 0.0;
  for (double v : rows) total += v;
  return total;
}

AngleGrad CpuBackend::angle_passes(const Edges<double>& a, const Edges<double>& b, const ScalarUpstream<double>& up,
                                   int64_t N, Rows vertices, const AngleArgs& args) {
  return vertex_and_opposite(*this, Upstream::LossScalar, a, b, N, vertices, up.up[0] / up.div, nullptr, nullptr,
                             args);
}

AngleGrad CpuBackend::angle_passes(const Edges<double>& a, const Edges<double>& b, const TensorUpstream<double>& up,
                                   int64_t N, Rows vertices, const AngleArgs& args) {
  const UpstreamPair g = upstream_pair(up.up, N, false);
  return vertex_and_opposite(*this, Upstream::LossTensor, a, b, N, vertices, 0.0, g.g, g.sym.get(), args);
}

AngleGrad CpuBackend::angle_passes(const Edges<double>& a, const Edges<double>&, const RawUpstream<double>& up,
                                   int64_t N, Rows vertices, const AngleArgs& args) {
  const UpstreamPair g = upstream_pair(up.up, N, true);
  return vertex_and_opposite(*this, Upstream::Raw, a, a, N, vertices, 0.0, g.g, g.sym.get(), args);
}

}  // namespace rkd
