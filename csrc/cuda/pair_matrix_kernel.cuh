// The O(N^2 D) CUDA kernels every RKD op is built from (torch-free), the
// counterparts of csrc/cpu/pair_matrix_cpu.cpp:
//
// pair_matrix: the N x N float64 matrix of squared distances s_ij (or of
//   max(s_ij, eps), or of sqrt(max(s_ij, eps))), diagonal exactly 0, exactly
//   symmetric. s is the Gram form n_i + n_j - 2 <xc_i, xc_j> on the
//   batch-centred features xc in float64 (relations are translation
//   invariant; centring removes the cancellation a common offset causes);
//   pairs too close for that form (rkd_math.h's gram_near) are recomputed
//   from direct differences, so near-duplicates are accurate and exact
//   duplicates give exactly 0.
// grad_from_weights: dL/dx_i = 2 (w_i xc_i - sum_j W_ij xc_j), with
//   W = dL/ds + (dL/ds)^T and w its row sums (common.cuh builds both), in
//   float64, returned in x's dtype.
// Both run in float64, or, where the backend chooses float32 products for
// Precision::Fast (gpu_backend.cuh), through the float32 kernels at the end
// of this file (same launches, same fixed orders).
//
// Both products run through one shared-memory tiled GEMM (gemm_tiles, in
// float64 or float32): each output element (of a product, or of one of its
// slices over the reduction index) is one thread's sum over k in a fixed
// order, and slices are summed in slice order: repeated calls are bitwise
// identical.
//
// The pair matrix of one or two inputs (pair_matrices: the student's and the
// teacher's in the same launches) is three launches whatever the shape:
//   centre_columns: xc = x - mean, a block per kCentreCols columns of each
//                   input (narrow, so that small D still gives many blocks);
//   gram_partial:   the Gram product split over K (split-K) so that even one
//                   64 x 64 output tile (N <= 64) gives the grid a few
//                   hundred blocks: split z of tile (a, b) sums k in its
//                   range and stores G's slice z;
//   gram_finish:    a block per row sums the slices in slice order (fixed:
//                   deterministic), takes the norms from G's diagonal, and
//                   recomputes the pairs too close for the Gram form from
//                   direct differences with the whole block over D.
// Rows of the pair matrix (pair_rows, for the sharded global batch) take the
// same three launches: every tile of the rows against all N columns, split
// over K in the same way, the norms of all N rows from the first row tile's
// blocks (GramPart). grad_from_weights centres on the column means that the
// weights launch computes (common.cuh's ColumnStats) and splits its sum over
// the samples when its output tiles are few (grad_split).
#pragma once

#include "common.cuh"

namespace rkd {
namespace gpu {

// GEMM tiling: a 16 x 16 thread block computes a kTile x kTile block of the
// output, kMicro x kMicro elements per thread, stepping through K by kTk
// (which rows and columns: micro_index).
constexpr int kTile = 64;
constexpr int kTk = 16;
constexpr int kMicro = 4;
constexpr int kGemmThreads = 256;

// A thread's micro-tile: kMR x kMC elements, so that a block's output tile is
// kRows x kCols. Square: the kTile x kTile tiles every product uses, its
// operands read from shared memory 16 bytes at a time (vec: 4 floats or 2
// doubles per load). Slim: the W x X product's tile when its square tiles
// are fewer than an H200's SMs (N = 128-256 with D = 512: 16-32 blocks),
// eight times as many blocks at the price of more shared loads per
// multiply-add (scalar). Each output element sums the same terms in the same
// order whatever the shape: the same bits.
template <int kMR_, int kMC_, bool kVector>
struct Micro {
  static constexpr int kMR = kMR_, kMC = kMC_, kRows = 16 * kMR, kCols = 16 * kMC;
  template <typename S>
  static constexpr int vec = kVector ? static_cast<int>(16 / sizeof(S)) : 1;
};
using Square = Micro<kMicro, kMicro, true>;
using Slim = Micro<2, 1, false>;

// The row (column) within its tile of element r (c) of the micro-tile of
// thread ty (tx): runs of kV consecutive rows, the 16 threads' runs side by
// side, then the next run 16 kV rows on. kV = 1: rows ty + 16 r.
template <int kV>
RKD_DEV int micro_index(int thread, int r) {
  return r / kV * 16 * kV + thread * kV + r % kV;
}

// kN elements of S that one shared load reads.
template <typename S, int kN>
struct alignas(kN * sizeof(S)) Vec {
  S v[kN];
};

// The blocks a product split over its reduction aims for (about two per SM
// of an H200): a constant, so that how a product is split, and with it its
// rounding, depends on the sizes alone, not on the device.
constexpr int64_t kSplitBlocks = 264;

// Features per float32 partial sum of a product: kFlushSteps steps of kTk.
// A thread's sum over a slice of K features carries a rounding error of
// about (kFlushSteps kTk + K / (kFlushSteps kTk)) float32 roundings at worst
// instead of K.
constexpr int kFlushSteps = 8;

// acc[r][c] += sum_k A(row0 + ty + 16 r, k) B(k, col0 + tx + 16 c) over k < K,
// in S (double, or float with float32 FMAs): A read as aload(row, k) for its
// M rows, B (Nc columns) as bload(k, n); kBT: B is the transpose of a
// row-major matrix (the Gram product, square tiles), so its k run along
// memory. Entries outside the matrices read as 0. In float, each thread's
// products go to partial sums of kFlushSteps steps, added to acc. Called by
// all threads of a (16, 16) block.
template <bool kBT, typename S, typename Shape = Square, typename ALoad, typename BLoad>
RKD_DEV void gemm_tiles(const ALoad& aload, int64_t M, const BLoad& bload, int64_t Nc, int64_t K, int64_t row0,
                        int64_t col0, S (&acc)[Shape::kMR][Shape::kMC]) {
  constexpr bool kF32 = sizeof(S) == sizeof(float);
  constexpr int kMR = Shape::kMR, kMC = Shape::kMC, kRows = Shape::kRows, kCols = Shape::kCols;
  constexpr int kV = Shape::template vec<S>;
  static_assert(!kBT || kRows == kCols, "the Gram product's tiles are square");
  static_assert(kMR % kV == 0 && kMC % kV == 0, "whole vectors per micro-tile");
  // Each row of the staged operands padded by one vector.
  __shared__ Vec<S, kV> As[kTk][kRows / kV + 1];
  __shared__ Vec<S, kV> Bs[kTk][kCols / kV + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
  S part[kMR][kMC] = {};
  int steps = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kTk) {
    // kRows (kCols) x kTk elements per operand, kRows * kTk / kGemmThreads
    // per thread; runs of 16 consecutive threads read 16 consecutive k of
    // one row (of A, and of B transposed).
    for (int l = 0; l < kRows * kTk / kGemmThreads; ++l) {
      const int e = t + l * kGemmThreads;
      const int m = e / kTk, kk = e % kTk;
      const int64_t k = k0 + kk;
      const int64_t row = row0 + m;
      As[kk][m / kV].v[m % kV] = (row < M && k < K) ? aload(row, k) : S(0);
      if (kBT) {
        const int64_t col = col0 + m;
        Bs[kk][m / kV].v[m % kV] = (col < Nc && k < K) ? bload(k, col) : S(0);
      }
    }
    if (!kBT) {
      for (int l = 0; l < kCols * kTk / kGemmThreads; ++l) {
        const int e = t + l * kGemmThreads;
        const int n = e % kCols, kb = e / kCols;
        const int64_t col = col0 + n, kr = k0 + kb;
        Bs[kb][n / kV].v[n % kV] = (col < Nc && kr < K) ? bload(kr, col) : S(0);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTk; ++kk) {
      S av[kMR], bv[kMC];
#pragma unroll
      for (int g = 0; g < kMR / kV; ++g) {
        const Vec<S, kV> a = As[kk][16 * g + ty];
#pragma unroll
        for (int v = 0; v < kV; ++v) av[g * kV + v] = a.v[v];
      }
#pragma unroll
      for (int g = 0; g < kMC / kV; ++g) {
        const Vec<S, kV> b = Bs[kk][16 * g + tx];
#pragma unroll
        for (int v = 0; v < kV; ++v) bv[g * kV + v] = b.v[v];
      }
#pragma unroll
      for (int r = 0; r < kMR; ++r)
#pragma unroll
        for (int c = 0; c < kMC; ++c) {
          if constexpr (kF32)
            part[r][c] = fmaf(av[r], bv[c], part[r][c]);
          else
            acc[r][c] += av[r] * bv[c];
        }
    }
    __syncthreads();
    if constexpr (kF32) {
      if (++steps == kFlushSteps || k0 + kTk >= K) {
        steps = 0;
#pragma unroll
        for (int r = 0; r < kMR; ++r)
#pragma unroll
          for (int c = 0; c < kMC; ++c) acc[r][c] += part[r][c], part[r][c] = 0.0f;
      }
    }
  }
}

// epi(i, j, r, c) for the output elements (i, j) of a thread's micro-tile of
// a gemm_tiles in S, (r, c) in the micro-tile.
template <typename Shape, typename S, typename Epi>
RKD_DEV void for_micro_tile(int64_t row0, int64_t col0, const Epi& epi) {
  constexpr int kV = Shape::template vec<S>;
#pragma unroll
  for (int r = 0; r < Shape::kMR; ++r)
#pragma unroll
    for (int c = 0; c < Shape::kMC; ++c)
      epi(row0 + micro_index<kV>(threadIdx.y, r), col0 + micro_index<kV>(threadIdx.x, c), r, c);
}

// The W x X product's reduction over the N samples, split when its output
// tiles fill at most half an H200 (kSplitBlocks / 4) and N is large (N = 512,
// D = 512: 64 tiles of 512 steps); with more tiles the partials' traffic and
// the finish launch cost more than the idle SMs.
struct GradSplit {
  int64_t splits, per_split;  // ranges of the samples j, per_split a multiple of kTk
  double* partial;            // (splits, n, D) partial products, when splits > 1
};

// At least kMinGradSplit samples per split; about kSplitBlocks blocks in all.
constexpr int64_t kMinGradSplit = 256;

// Slim tiles for an unsplit W x X product whose square tiles would fill at
// most half an H200 (a constant, as kSplitBlocks). With more, the square
// tiles' fewer shared loads per multiply-add outweigh the idle SMs (the
// launch plan's estimate at N = 1024, D = 512, 128 tiles: 68 us square, 98 us
// slim).
inline bool narrow_grad(int64_t tiles, const GradSplit& split) {
  return split.splits == 1 && tiles <= kSplitBlocks / 4;
}

inline GradSplit grad_split(int64_t tiles, int64_t N) {
  const int64_t want = tiles == 0 ? 1 : ceil_div(kSplitBlocks, tiles), most = N / kMinGradSplit;  // D = 0: none
  const int64_t splits = want < most ? want : most;
  if (splits <= 1 || tiles > kSplitBlocks / 4) return {1, ceil_div(N, kTk) * kTk, nullptr};
  const int64_t per_split = ceil_div(ceil_div(N, splits), kTk) * kTk;
  return {ceil_div(N, per_split), per_split, nullptr};
}

static_assert(kStatCols == kTile, "the weights launch's column statistics are per W x X tile");

// dx = 2 (w_i xc_i - (W xc)_i) in T for the rows [begin, begin + n) (W's
// rows, and dx's, at i - begin): one Shape::kRows (rows) x Shape::kCols
// (features) block, its features centred on the column means the weights
// launch computed (cmean, ColumnStats). Split (split z = blockIdx.z over the
// samples of its range): the block stores its partial product for
// grad_finish_kernel.
template <typename T, typename Shape>
__global__ void __launch_bounds__(kGemmThreads) grad_gemm_kernel(const double* __restrict__ W,
                                                                 const double* __restrict__ w,
                                                                 const double* __restrict__ cmean,
                                                                 const T* __restrict__ x, int64_t N, int64_t D,
                                                                 Rows rows, GradSplit split, T* __restrict__ dx) {
  __shared__ double mean[Shape::kCols];
  const int64_t n = rows.end - rows.begin;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * Shape::kRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * Shape::kCols;
  const int t = threadIdx.y * 16 + threadIdx.x;
  if (t < Shape::kCols) mean[t] = col0 + t < D ? cmean[col0 + t] : 0.0;
  __syncthreads();
  auto xc = [&](int64_t i, int64_t k) { return widen(x[i * D + k]) - mean[k - col0]; };
  double acc[Shape::kMR][Shape::kMC] = {};
  const int64_t j0 = static_cast<int64_t>(blockIdx.z) * split.per_split;
  const int64_t j1 = j0 + split.per_split < N ? j0 + split.per_split : N;
  auto xc_from = [&](int64_t j, int64_t k) { return xc(j0 + j, k); };
  auto w_at = [&](int64_t l, int64_t j) { return W[l * N + j0 + j]; };
  if (j1 > j0) gemm_tiles<false, double, Shape>(w_at, n, xc_from, D, j1 - j0, row0, col0, acc);
  if (split.splits > 1) {
    double* part_z = split.partial + static_cast<int64_t>(blockIdx.z) * n * D;
    for_micro_tile<Shape, double>(row0, col0, [&](int64_t l, int64_t k, int r, int c) {
      if (l < n && k < D) part_z[l * D + k] = acc[r][c];
    });
    return;
  }
  for_micro_tile<Shape, double>(row0, col0, [&](int64_t l, int64_t k, int r, int c) {
    if (l < n && k < D) dx[l * D + k] = narrow<T>(grad_epilogue(w[l], xc(rows.begin + l, k), acc[r][c]));
  });
}

// dx from the split products: each element sums its partials in split order.
template <typename T>
__global__ void __launch_bounds__(kBlock) grad_finish_kernel(const double* __restrict__ w,
                                                             const double* __restrict__ mean,
                                                             const T* __restrict__ x, int64_t D, Rows rows,
                                                             GradSplit split, T* __restrict__ dx) {
  const int64_t n = rows.end - rows.begin, e = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (e >= n * D) return;
  const int64_t l = e / D, k = e % D;
  double wx = 0.0;
  for (int64_t z = 0; z < split.splits; ++z) wx += split.partial[z * n * D + e];
  const double xc = widen(x[(rows.begin + l) * D + k]) - mean[k];
  dx[e] = narrow<T>(grad_epilogue(w[l], xc, wx));
}

// A float64 gemm_tiles over `tiles` output tiles of Shape and K steps (padding
// included: the threads compute it), plus `epilogue` float64 operations, and
// the distinct bytes the launch moves.
template <typename Shape = Square>
Cost gemm_cost(int64_t tiles, int64_t K, double epilogue, double bytes) {
  Cost c;
  c.bytes = bytes;
  c.units = static_cast<double>(Shape::kRows) * Shape::kCols * static_cast<double>(tiles) * static_cast<double>(K);
  c.flops64 = 2.0 * c.units + epilogue;
  c.blocks = static_cast<double>(tiles);
  return c;
}

// ---- the pair matrices of one or two inputs ----------------------------------------------

// The inputs of one launch: count (1 or 2) inputs of N rows; an input's
// blocks follow the previous input's.
template <typename S>
struct Sides {
  S side[2];
  int count;
  int64_t N;
  // The input of flat block b, the first input having `first` blocks; b
  // made relative to it.
  RKD_DEV const S& of(int64_t& b, int64_t first) const {
    if (count == 1 || b < first) return side[0];
    b -= first;
    return side[1];
  }
};

template <typename T>
struct CentreSide {
  const T* x;
  int64_t D;
  double* xc;
};

// centre_columns_kernel's block: kCentreCols columns by kCentreRows row slices.
constexpr int kCentreCols = 8, kCentreRows = 32;

// The mean of column k of x (N, D) in a (kCentreCols, kCentreRows) block,
// thread (tx, ty) summing rows ty, ty + kCentreRows, ... and the row slices
// added in order: the value on the threads with ty == 0 (part: the block's
// scratch).
template <typename T>
RKD_DEV double column_mean(const T* x, int64_t N, int64_t D, int64_t k, double (&part)[kCentreRows][kCentreCols + 1]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  double acc = 0.0;
  if (k < D)
    for (int64_t i = ty; i < N; i += kCentreRows) acc += widen(x[i * D + k]);
  part[ty][tx] = acc;
  __syncthreads();
  double total = 0.0;
  if (ty == 0)
    for (int r = 0; r < kCentreRows; ++r) total += part[r][tx];
  return total / static_cast<double>(N);
}

// A (kCentreCols, kCentreRows) block over kCentreCols columns of one input
// (blockIdx.x over the inputs' column blocks, one input after the other):
// the input, its column block b, the thread's column k and, on the threads
// with ty == 0, that column's mean.
template <typename S>
RKD_DEV const S& column_block(const Sides<S>& in, int64_t& b, int64_t& k, double& mu,
                              double (&part)[kCentreRows][kCentreCols + 1]) {
  b = blockIdx.x;
  const S& c = in.of(b, (in.side[0].D + kCentreCols - 1) / kCentreCols);
  k = b * kCentreCols + threadIdx.x;
  mu = column_mean(c.x, in.N, c.D, k, part);
  return c;
}

// xc = x - mean for kCentreCols columns of one input: the block computes
// their means, then writes them.
template <typename T>
__global__ void __launch_bounds__(kCentreCols * kCentreRows) centre_columns_kernel(Sides<CentreSide<T>> in) {
  __shared__ double part[kCentreRows][kCentreCols + 1];
  __shared__ double mean[kCentreCols];
  int64_t b, k;
  double mu;
  const CentreSide<T>& c = column_block(in, b, k, mu, part);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t N = in.N, D = c.D;
  if (ty == 0) mean[tx] = mu;
  __syncthreads();
  if (k < D)
    for (int64_t i = ty; i < N; i += kCentreRows) c.xc[i * D + k] = widen(c.x[i * D + k]) - mean[tx];
}

template <typename T, typename Check>
void centre_columns(const Sides<CentreSide<T>>& cs, cudaStream_t stream, const Check& check) {
  Cost cost;
  int64_t blocks = 0;
  for (int c = 0; c < cs.count; ++c) {
    const double nd = static_cast<double>(cs.N) * static_cast<double>(cs.side[c].D);
    cost.bytes += nd * (2.0 * sizeof(T) + 8.0);  // x read twice, xc written
    cost.flops64 += 2.0 * nd;
    blocks += ceil_div(cs.side[c].D, kCentreCols);
  }
  launch(check, cost, centre_columns_kernel<T>, dim3(grid_dim(blocks)), dim3(kCentreCols, kCentreRows), stream, cs);
}

// Tiles on or above the diagonal of an N x N matrix of kTile x kTile tiles.
RKD_HD int64_t upper_tile_count(int64_t N) {
  const int64_t nt = (N + kTile - 1) / kTile;
  return nt * (nt + 1) / 2;
}

// Which part of the Gram matrix G of N rows a launch computes: the whole of
// it (rows = all N; the upper tiles, each stored at (i, j) and (j, i), so
// each slice is exactly symmetric, the norms its diagonal), or the rows
// [rows.begin, rows.end) against all N columns (the sharded global batch:
// every tile of those rows; the norms of all N rows then go to norm_slices,
// (splits, N), from the blocks of the first row tile). A slice holds row i
// of G at (i - rows.begin) N.
struct GramPart {
  Rows rows;
  bool whole;
  double* norm_slices;
  RKD_HD int64_t n() const { return rows.end - rows.begin; }
  RKD_HD int64_t col_tiles(int64_t N) const { return (N + kTile - 1) / kTile; }
  RKD_HD int64_t tiles(int64_t N) const {
    return whole ? upper_tile_count(N) : (n() + kTile - 1) / kTile * col_tiles(N);
  }
  // Tile t's first row and column.
  RKD_HD void tile(int64_t N, int64_t t, int64_t& row0, int64_t& col0) const {
    if (!whole) {
      row0 = rows.begin + t / col_tiles(N) * kTile;
      col0 = t % col_tiles(N) * kTile;
      return;
    }
    int64_t ta = 0;
    for (const int64_t nt = col_tiles(N); t >= nt - ta; ++ta) t -= nt - ta;  // upper tile t's tile row
    row0 = ta * kTile;
    col0 = (ta + t) * kTile;
  }
  // Whether the tile at (row0, col0) writes the norms of the rows [col0,
  // col0 + kTile): the diagonal tiles of the whole matrix (where they are
  // G's diagonal), the first row tile of a row range.
  RKD_HD bool norm_tile(int64_t row0, int64_t col0) const { return whole ? row0 == col0 : row0 == rows.begin; }
};

// All N rows, whatever N (the default of the pair-matrix launches).
constexpr Rows kAllRows{0, -1};

inline GramPart gram_part(int64_t N, Rows rows) {
  if (rows.end < 0) rows = all_rows(N);
  return {rows, rows.begin == 0 && rows.end == N, nullptr};
}

// One input of the Gram product: xc (N, D), its K split into `splits`
// ranges of per_split (a multiple of kTk), the part computed, G's slices
// (splits, n, N) for its n rows, the pair values (n, N), and where not null
// the angle ops' u = inv_edge(value) (1 unnormalised) in float64 or float32,
// (n, N).
struct GramSide {
  const double* xc;
  int64_t D, splits, per_split;
  GramPart part;
  double* slices;
  double* out;
  void* u;
  bool u_f64, normalize;
  double u_eps;
  // x_ik - x_jk in float64, for the close pairs
  RKD_DEV double diff(int64_t i, int64_t j, int64_t k) const { return xc[i * D + k] - xc[j * D + k]; }
};

// Where pair_matrices also writes u (the angle ops' edges): the inputs' u
// one after the other, N x N each, in float64 (f64) or float32.
struct EdgeOut {
  void* u;
  bool f64;
  double eps;
  bool normalize;
};

// Splits of the Gram product's K so that the part's tiles times the splits
// give about kSplitBlocks blocks, each over at least kMinSplit features: a
// function of the sizes alone, so results do not depend on the device. 64,
// not 128: a tile at N <= 64 is mostly padding, and its 4 blocks of 128
// features at D = 512 took about 8 us (the launch plan, priced from the
// compiled loop); 32 would add more slices to write and sum than it saves at
// N = 256.
constexpr int64_t kMinSplit = 64;

struct KSplit {
  int64_t splits, per_split;
};

inline KSplit k_split(int64_t tiles, int64_t D) {
  const int64_t chunks = ceil_div(D, kMinSplit);
  const int64_t want = tiles == 0 ? 1 : ceil_div(kSplitBlocks, tiles);
  const int64_t splits = chunks < 1 ? 1 : (want < chunks ? want : chunks);
  const int64_t per_split = chunks < 1 ? kMinSplit : ceil_div(chunks, splits) * kMinSplit;
  return {chunks < 1 ? 1 : ceil_div(D, per_split), per_split};
}

// The input of a partial launch's block (blockIdx.x over the inputs' tiles
// times their splits, one input after the other), its split z and its tile
// (row0, col0).
template <typename S>
RKD_DEV const S& gram_block(const Sides<S>& in, int64_t& z, int64_t& row0, int64_t& col0) {
  int64_t b = blockIdx.x;
  const S& g = in.of(b, in.side[0].part.tiles(in.N) * in.side[0].splits);
  const int64_t tiles = g.part.tiles(in.N);
  z = b / tiles;
  g.part.tile(in.N, b % tiles, row0, col0);
  return g;
}

// Stores a tile's slice of G: for the whole matrix the upper part at (i, j)
// and (j, i) (the diagonal with `diagonal`), every element of the rows of a
// row range.
// Acc: the gemm_tiles' arithmetic type.
template <typename Acc, typename S, typename V>
RKD_DEV void store_gram_tile(const S& g, int64_t N, int64_t z, int64_t row0, int64_t col0, bool diagonal,
                             const V& value) {
  const int64_t n = g.part.n(), b = g.part.rows.begin;
  double* slice = g.slices + z * n * N;
  for_micro_tile<Square, Acc>(row0, col0, [&](int64_t i, int64_t j, int r, int c) {
    if (i >= g.part.rows.end || j >= N) return;
    if (!g.part.whole) {
      slice[(i - b) * N + j] = value(r, c);
    } else if (j > i || (diagonal && j == i)) {
      const double v = value(r, c);
      slice[i * N + j] = v;
      slice[j * N + i] = v;
    }
  });
}

// The squared norms of the kTile rows [r0, r0 + kTile) of an N-row operand
// over K features, load(i, k) widened to float64: kGemmThreads / kTile
// threads per row, their sums added in order; store(i, norm) once per row.
template <typename Load, typename Store>
RKD_DEV void tile_norms(const Load& load, int64_t r0, int64_t N, int64_t K, double* red, const Store& store) {
  constexpr int kPer = kGemmThreads / kTile;
  const int tid = threadIdx.y * 16 + threadIdx.x;
  const int64_t i = r0 + tid / kPer;
  double n = 0.0;
  if (i < N)
    for (int64_t k = tid % kPer; k < K; k += kPer) {
      const double v = load(i, k);
      n += v * v;
    }
  red[tid] = n;
  __syncthreads();
  if (tid % kPer == 0 && i < N) {
    double total = 0.0;
    for (int l = 0; l < kPer; ++l) total += red[tid + l];
    store(i, total);
  }
}

// Split z of one tile of G. (A template, S = GramSide, so that every
// translation unit may define it, like every kernel here.)
template <typename S>
__global__ void __launch_bounds__(kGemmThreads) gram_partial_kernel(Sides<S> in) {
  __shared__ double red[kGemmThreads];
  const int64_t N = in.N;
  int64_t z, row0, col0;
  const S& g = gram_block(in, z, row0, col0);
  const int64_t k0 = z * g.per_split, k1 = k0 + g.per_split < g.D ? k0 + g.per_split : g.D;
  double acc[kMicro][kMicro] = {};
  // The loaders hold copies (registers), not the side's fields in parameter
  // space, so that each staged row's address is formed once, not per step.
  const double* xk = g.xc + k0;
  const int64_t D = g.D;
  auto xk_at = [=](int64_t r, int64_t k) { return xk[r * D + k]; };
  auto xk_t = [=](int64_t k, int64_t c) { return xk[c * D + k]; };  // xc's transpose over the split
  if (k1 > k0) gemm_tiles<true>(xk_at, g.part.rows.end, xk_t, N, k1 - k0, row0, col0, acc);
  store_gram_tile<double>(g, N, z, row0, col0, true, [&](int r, int c) { return acc[r][c]; });
  // A row range's norms (the whole matrix has them on its diagonal).
  if (!g.part.whole && g.part.norm_tile(row0, col0))
    tile_norms(xk_at, col0, N, k1 - k0, red, [&](int64_t i, double v) { g.part.norm_slices[z * N + i] = v; });
}

// Row i of one input's part of the pair matrix from G's slices: a block per
// row, kBlock columns at a time; the close pairs of each kBlock columns are
// recomputed from direct differences: a few (up to kBlockNear) one after
// another by the whole block, more (a batch of duplicates or NaN) each by its
// own thread, so that no row costs more than D steps per kBlock columns
// rather than one block-wide sweep and reduction per pair. The two orders of
// summation round differently; duplicates give exactly 0 in both.
constexpr int kBlockNear = 16;

template <PairKind kWhat, typename S>
__global__ void __launch_bounds__(kBlock) gram_finish_kernel(Sides<S> in, double eps) {
  __shared__ double red[kBlock];
  __shared__ int near[kBlock];
  int64_t l = blockIdx.x;  // the row within the part
  const S& g = in.of(l, in.side[0].part.n());
  const int64_t N = in.N, nN = g.part.n() * N, i = g.part.rows.begin + l, t = threadIdx.x;
  auto G = [&](int64_t a, int64_t c) {  // a: the row within the part
    double v = 0.0;
    for (int64_t z = 0; z < g.splits; ++z) v += g.slices[z * nN + a * N + c];
    return v;
  };
  // The norms: G's diagonal for the whole matrix, else the norm slices.
  const double* nbase = g.part.whole ? g.slices : g.part.norm_slices;
  const int64_t nz = g.part.whole ? nN : N, nstep = g.part.whole ? N + 1 : 1;
  auto norm = [&](int64_t j) {
    double v = 0.0;
    for (int64_t z = 0; z < g.splits; ++z) v += nbase[z * nz + j * nstep];
    return v;
  };
  const double n_i = norm(i);
  for (int64_t j0 = 0; j0 < N; j0 += kBlock) {
    const int64_t j = j0 + t;
    double v = 0.0, n_j = 0.0, exact = 0.0;
    near[t] = 0;
    if (j < N && j != i) {
      n_j = norm(j);
      v = gram_sq(n_i, n_j, G(l, j));
      near[t] = gram_near(v, n_i, n_j);
    }
    __syncthreads();
    int count = 0;  // the same on every thread: the branch below is uniform over the block
    for (int q = 0; q < kBlock; ++q) count += near[q];
    if (count > kBlockNear) {
      if (near[t]) {  // thread t's own pair, four partial sums over k
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        int64_t k = 0;
        for (; k + 4 <= g.D; k += 4)
          for (int l = 0; l < 4; ++l) {
            const double d = g.diff(i, j0 + t, k + l);
            acc[l] += d * d;
          }
        for (; k < g.D; ++k) {
          const double d = g.diff(i, j0 + t, k);
          acc[k % 4] += d * d;
        }
        exact = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      }
    } else {
      for (int q = 0; q < kBlock; ++q) {
        if (!near[q]) continue;  // uniform over the block: every thread reads the same flag
        double acc = 0.0;
        for (int64_t k = t; k < g.D; k += kBlock) {
          const double d = g.diff(i, j0 + q, k);
          acc += d * d;
        }
        const double total = block_sum<kBlock>(acc, red, static_cast<int>(t));
        if (t == q) exact = total;  // only thread q needs its pair's value
      }
    }
    if (j < N) {
      const double value = j == i ? 0.0 : pair_value(kWhat, near[t] ? exact : v, eps);
      g.out[l * N + j] = value;
      if (g.u != nullptr) {  // as a map of angle_kernel.cuh's InvEdge over out would
        const double u = g.normalize ? inv_edge(value, g.u_eps) : 1.0;
        if (g.u_f64)
          static_cast<double*>(g.u)[l * N + j] = u;
        else
          static_cast<float*>(g.u)[l * N + j] = static_cast<float>(u);
      }
    }
    __syncthreads();  // every thread read all of near in the loop over q: rewritten for the next columns
  }
}

// The pair matrices of the `count` inputs x[c] (N, D[c]) into out[c], and
// their u where edges.u is not null: three launches for all of them. With
// `rows` not all N (one input; no u), only those rows, out (rows.size(), N).
template <typename T, typename Alloc, typename Check>
void pair_matrices(const T* const* x, const int64_t* D, int count, int64_t N, PairKind what, double eps,
                   double* const* out, Alloc& alloc, cudaStream_t stream, const Check& check,
                   const EdgeOut& edges = EdgeOut{nullptr, false, 0.0, false}, Rows rows = kAllRows) {
  const GramPart part = gram_part(N, rows);
  Sides<CentreSide<T>> cs{};
  Sides<GramSide> gs{};
  cs.count = gs.count = count;
  cs.N = gs.N = N;
  int64_t partial_grid = 0;
  Cost pc, fc;
  const double n2 = static_cast<double>(part.n()) * static_cast<double>(N);
  for (int c = 0; c < count; ++c) {
    double* xc = take<double>(alloc, N * D[c]);
    cs.side[c] = {x[c], D[c], xc};
    const int64_t tiles = part.tiles(N);
    const KSplit ks = k_split(tiles, D[c]);
    gs.side[c] = {xc, D[c], ks.splits, ks.per_split, part, take<double>(alloc, ks.splits * part.n() * N), out[c],
                  nullptr, false, false, 0.0};
    if (!part.whole) gs.side[c].part.norm_slices = take<double>(alloc, ks.splits * N);
    const double u_size = edges.f64 ? 8.0 : 4.0;
    if (edges.u != nullptr) {
      gs.side[c].u = static_cast<char*>(edges.u) + static_cast<int64_t>(u_size) * c * N * N;
      gs.side[c].u_f64 = edges.f64;
      gs.side[c].normalize = edges.normalize;
      gs.side[c].u_eps = edges.eps;
      fc.bytes += u_size * n2;
    }
    const double nd = static_cast<double>(N) * static_cast<double>(D[c]), splits = static_cast<double>(ks.splits);
    partial_grid += tiles * ks.splits;
    pc.bytes += 8.0 * (nd + splits * n2);
    pc.units += static_cast<double>(kTile) * kTile * static_cast<double>(tiles) * static_cast<double>(D[c]);
    pc.flops64 += 2.0 * kTile * kTile * static_cast<double>(tiles) * static_cast<double>(D[c]);
    if (!part.whole) {  // the norms, from the first row tile's blocks
      pc.bytes += 8.0 * splits * static_cast<double>(N);
      pc.flops64 += 2.0 * nd;
    }
    // The recomputed close pairs depend on the data and are not counted.
    fc.bytes += 8.0 * (splits * n2 + n2 + (part.whole ? 0.0 : splits * static_cast<double>(N)));
    fc.flops64 += n2 * (2.0 * splits + 6.0);
  }
  centre_columns(cs, stream, check);
  launch(check, pc, gram_partial_kernel<GramSide>, dim3(grid_dim(partial_grid)), dim3(16, 16), stream, gs);
  auto finish = what == PairKind::Dist        ? gram_finish_kernel<PairKind::Dist, GramSide>
                : what == PairKind::SqClamped ? gram_finish_kernel<PairKind::SqClamped, GramSide>
                                              : gram_finish_kernel<PairKind::Sq, GramSide>;
  launch(check, fc, finish, dim3(grid_dim(part.n() * count)), dim3(kBlock), stream, gs, eps);
}

// x: contiguous (N, D) on the device. out: (N, N) float64.
template <typename T, typename Alloc, typename Check>
void pair_matrix(const T* x, int64_t N, int64_t D, PairKind what, double eps, double* out, Alloc& alloc,
                 cudaStream_t stream, const Check& check) {
  pair_matrices(&x, &D, 1, N, what, eps, &out, alloc, stream, check);
}

// W, w: the rows of the weights and their sums (build_weights), (rows.size(), N)
// and (rows.size()); mean: x's column means (D) from the same launch
// (ColumnStats). dx: contiguous (rows.size(), D).
template <typename T, typename Alloc, typename Check>
void grad_from_weights(const T* x, int64_t N, int64_t D, Rows rows, const double* W, const double* w,
                       const double* mean, T* dx, Alloc& alloc, cudaStream_t stream, const Check& check) {
  const int64_t n = rows.size(), tiles = ceil_div(D, kTile) * ceil_div(n, kTile);
  const double nd = static_cast<double>(n) * static_cast<double>(D), xd = static_cast<double>(N) * D;
  GradSplit split = grad_split(tiles, N);
  if (split.splits > 1) split.partial = take<double>(alloc, split.splits * n * D);
  // W, w, the means and x read, dx written (or the partials); the centring on the fly.
  const double out = split.splits > 1 ? 8.0 * split.splits * nd : nd * sizeof(T);
  auto product = [&](auto shape) {
    using Shape = decltype(shape);
    const dim3 grid(grid_dim(ceil_div(D, Shape::kCols)), grid_dim(ceil_div(n, Shape::kRows)), grid_dim(split.splits));
    const double bytes = 8.0 * (static_cast<double>(n) * N + n + D) + xd * sizeof(T) + out;
    const Cost cost =
        gemm_cost<Shape>(static_cast<int64_t>(grid.x) * grid.y * grid.z, split.per_split, 3.0 * nd, bytes);
    launch(check, cost, grad_gemm_kernel<T, Shape>, grid, dim3(16, 16), stream, W, w, mean, x, N, D, rows, split,
           dx);
  };
  if (narrow_grad(tiles, split))
    product(Slim{});
  else
    product(Square{});
  if (split.splits == 1) return;
  Cost fin;
  fin.bytes = 8.0 * (split.splits * nd + static_cast<double>(D) + n) + 2.0 * nd * sizeof(T);
  fin.flops64 = nd * (static_cast<double>(split.splits) + 4.0);
  launch(check, fin, grad_finish_kernel<T>, dim3(grid_dim(ceil_div(n * D, kBlock))), dim3(kBlock), stream, w, mean, x,
         D, rows, split, dx);
}

// ---- float32 products ------------------------------------------------------------------
//
// Where the backend runs Precision::Fast's products in float32 (features not
// float64, on a GPU whose float64 rate is low; gpu_backend.cuh), the same
// launches with float32 operands and FMAs:
//   centre_stats:   the float64 column means (kept as float32 shifts) and the
//                   largest centred magnitude per kCentreCols columns;
//   gram_partial32: each split-K slice in float32 from x itself, centred as
//                   it is loaded ((float)x - (float)mean: a shift by any
//                   vector leaves every relation unchanged, and with the mean
//                   the offset cancels before any product), a thread's sum
//                   in float32 partials of kFlushSteps * kTk features added
//                   to a float32 total, the slice stored in float64; the
//                   norms (the diagonal) in float64 from the same operands;
//   gram_finish:    as in float64: slices summed in float64 in slice order,
//                   the close pairs recomputed from direct float64
//                   differences of x itself by the whole block (exactly 0
//                   for duplicates).
// W x X: build_weights also writes each row of W in float32; grad_gemm32 multiplies
// it by the block's features, centred on their float32 means, in float32.
// Every operand is scaled by a power of two first (scale_exponent), so
// float32 neither overflows nor underflows whatever the features' scale,
// and scaled back exactly in float64. TF32 does not arise: these are plain
// FMAs, not tensor-core (or cuBLAS) products.

template <typename T>
RKD_DEV float as_float(T v) {
  return static_cast<float>(widen(v));
}

// One input of the float32 Gram product: x (N, D) itself, its float32
// column means and the largest centred magnitude per kCentreCols columns
// (nb of them), as GramSide otherwise.
template <typename T>
struct GramSide32 {
  const T* x;
  int64_t D, splits, per_split;
  GramPart part;
  float* meanf;
  double* bmax;
  int64_t nb;
  double* slices;
  double* out;
  void* u;
  bool u_f64, normalize;
  double u_eps;
  RKD_DEV double diff(int64_t i, int64_t j, int64_t k) const { return widen(x[i * D + k]) - widen(x[j * D + k]); }
};

// The column means of kCentreCols columns of one input (row slices summed
// in a fixed order) as float32 shifts, and the largest |(float)x - shift|
// over them.
template <typename T>
__global__ void __launch_bounds__(kCentreCols * kCentreRows) centre_stats_kernel(Sides<GramSide32<T>> in) {
  __shared__ double part[kCentreRows][kCentreCols + 1];
  __shared__ float mean[kCentreCols];
  int64_t b, k;
  double mu;
  const GramSide32<T>& c = column_block(in, b, k, mu, part);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t N = in.N, D = c.D;
  if (ty == 0) {
    mean[tx] = static_cast<float>(mu);
    if (k < D) c.meanf[k] = mean[tx];
  }
  __syncthreads();
  double m = 0.0;
  if (k < D)
    for (int64_t i = ty; i < N; i += kCentreRows) m = nan_max(m, fabsf(as_float(c.x[i * D + k]) - mean[tx]));
  part[ty][tx] = m;
  __syncthreads();
  if (tx == 0 && ty == 0) {
    double all = 0.0;
    for (int r = 0; r < kCentreRows; ++r)
      for (int l = 0; l < kCentreCols; ++l) all = nan_max(all, part[r][l]);
    c.bmax[b] = all;
  }
}

// gram_partial_kernel in float32: split z of one tile.
template <typename T>
__global__ void __launch_bounds__(kGemmThreads) gram_partial32_kernel(Sides<GramSide32<T>> in) {
  __shared__ double red[kGemmThreads];
  const int64_t N = in.N;
  int64_t z, row0, col0;
  const GramSide32<T>& g = gram_block(in, z, row0, col0);
  const int64_t k0 = z * g.per_split, k1 = k0 + g.per_split < g.D ? k0 + g.per_split : g.D;
  const int tid = threadIdx.y * 16 + threadIdx.x;
  double m = 0.0;
  for (int64_t l = tid; l < g.nb; l += kGemmThreads) m = nan_max(m, g.bmax[l]);
  const int e = scale_exponent(block_max<kGemmThreads>(m, red, tid));
  const float scale = ldexpf(1.0f, -e);
  // Copies in registers, as gram_partial_kernel's.
  const T* xk = g.x + k0;
  const float* meank = g.meanf + k0;
  const int64_t D = g.D;
  auto load = [=](int64_t row, int64_t k) { return (as_float(xk[row * D + k]) - meank[k]) * scale; };
  auto load_t = [=](int64_t k, int64_t col) { return load(col, k); };
  float acc[kMicro][kMicro] = {};
  if (k1 > k0) gemm_tiles<true>(load, g.part.rows.end, load_t, N, k1 - k0, row0, col0, acc);
  // (The whole matrix's diagonal is the norms', below.)
  store_gram_tile<float>(g, N, z, row0, col0, false,
                         [&](int r, int c) { return ldexp(static_cast<double>(acc[r][c]), 2 * e); });
  if (!g.part.norm_tile(row0, col0)) return;
  // The norms of rows [col0, col0 + kTile) (G's diagonal for the whole
  // matrix): the float32 operands' squares summed in float64. A float32 sum
  // would give every pair of a row the same error; these cost N D float64
  // FMAs in all, 1 / N of the product. (red is free again: block_max ends
  // with a barrier.)
  double* slice = g.slices + z * g.part.n() * N;
  tile_norms(load, col0, N, k1 - k0, red, [&](int64_t i, double v) {
    if (g.part.whole)
      slice[i * N + i] = ldexp(v, 2 * e);
    else
      g.part.norm_slices[z * N + i] = ldexp(v, 2 * e);
  });
}

// pair_matrices with float32 products: three launches for all the inputs.
template <typename T, typename Alloc, typename Check>
void pair_matrices32(const T* const* x, const int64_t* D, int count, int64_t N, PairKind what, double eps,
                     double* const* out, Alloc& alloc, cudaStream_t stream, const Check& check, Rows rows = kAllRows) {
  const GramPart part = gram_part(N, rows);
  Sides<GramSide32<T>> gs{};
  gs.count = count;
  gs.N = N;
  int64_t stat_grid = 0, partial_grid = 0;
  Cost sc, pc, fc;
  const double n2 = static_cast<double>(part.n()) * static_cast<double>(N);
  for (int c = 0; c < count; ++c) {
    const int64_t tiles = part.tiles(N), nb = ceil_div(D[c], kCentreCols);
    const KSplit ks = k_split(tiles, D[c]);
    gs.side[c] = {x[c], D[c], ks.splits, ks.per_split, part, take<float>(alloc, D[c]), take<double>(alloc, nb), nb,
                  take<double>(alloc, ks.splits * part.n() * N), out[c], nullptr, false, false, 0.0};
    if (!part.whole) gs.side[c].part.norm_slices = take<double>(alloc, ks.splits * N);
    const double nd = static_cast<double>(N) * static_cast<double>(D[c]), splits = static_cast<double>(ks.splits);
    const int64_t blocks = tiles * ks.splits;
    stat_grid += nb;
    partial_grid += blocks;
    // x read twice; the means in float64, the magnitudes in float32.
    sc.bytes += 2.0 * nd * sizeof(T) + 4.0 * static_cast<double>(D[c]) + 8.0 * static_cast<double>(nb);
    sc.flops64 += nd;
    sc.flops32 += 2.0 * nd;
    // x read (it stays in L2 across the blocks), the slices (and a row
    // range's norms) written; the centring and scaling of each loaded
    // operand, the exact rescaling.
    pc.bytes += nd * sizeof(T) + 4.0 * static_cast<double>(D[c]) + 8.0 * splits * n2 +
                (part.whole ? 0.0 : 8.0 * splits * static_cast<double>(N));
    pc.units += static_cast<double>(kTile) * kTile * static_cast<double>(tiles) * static_cast<double>(D[c]);
    pc.flops32 += 2.0 * kTile * kTile * static_cast<double>(tiles) * static_cast<double>(D[c]) +
                  4.0 * kTile * static_cast<double>(tiles) * static_cast<double>(D[c]);
    // The rescaling, the scale's reduction, the norms.
    pc.flops64 += static_cast<double>(blocks) * (kTile * kTile + static_cast<double>(nb)) + 2.0 * nd;
    fc.bytes += 8.0 * (splits * n2 + n2 + (part.whole ? 0.0 : splits * static_cast<double>(N)));
    fc.flops64 += n2 * (2.0 * splits + 6.0);
  }
  launch(check, sc, centre_stats_kernel<T>, dim3(grid_dim(stat_grid)), dim3(kCentreCols, kCentreRows), stream, gs);
  launch(check, pc, gram_partial32_kernel<T>, dim3(grid_dim(partial_grid)), dim3(16, 16), stream, gs);
  auto finish = what == PairKind::Dist        ? gram_finish_kernel<PairKind::Dist, GramSide32<T>>
                : what == PairKind::SqClamped ? gram_finish_kernel<PairKind::SqClamped, GramSide32<T>>
                                              : gram_finish_kernel<PairKind::Sq, GramSide32<T>>;
  launch(check, fc, finish, dim3(grid_dim(part.n() * count)), dim3(kBlock), stream, gs, eps);
}

// grad_gemm_kernel in float32: W's rows in float32 from build_weights, the
// block's features centred on their float32 column means (any shift gives
// the same gradient, since w_i is W's row sum; the mean cancels the offset)
// and scaled by their own powers of two (cmean, cexps: ColumnStats).
template <typename T, typename Shape>
__global__ void __launch_bounds__(kGemmThreads) grad_gemm32_kernel(const float* __restrict__ Wf,
                                                                   const int* __restrict__ rexp,
                                                                   const double* __restrict__ w,
                                                                   const double* __restrict__ cmean,
                                                                   const int* __restrict__ cexps,
                                                                   const T* __restrict__ x, int64_t N, int64_t D,
                                                                   Rows rows, GradSplit split, T* __restrict__ dx) {
  __shared__ float shift[Shape::kCols];
  __shared__ float scale[Shape::kCols];
  __shared__ int cexp[Shape::kCols];
  const int64_t n = rows.end - rows.begin;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * Shape::kRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * Shape::kCols;
  const int t = threadIdx.y * 16 + threadIdx.x;
  if (t < Shape::kCols) {
    const bool in = col0 + t < D;
    shift[t] = in ? static_cast<float>(cmean[col0 + t]) : 0.0f;
    cexp[t] = in ? cexps[col0 + t] : scale_exponent(0.0);
    scale[t] = ldexpf(1.0f, -cexp[t]);
  }
  __syncthreads();
  const int64_t j0 = static_cast<int64_t>(blockIdx.z) * split.per_split;
  const int64_t j1 = j0 + split.per_split < N ? j0 + split.per_split : N;
  auto wload = [&](int64_t l, int64_t j) { return Wf[l * N + j0 + j]; };
  auto xload = [&](int64_t j, int64_t k) {
    return (as_float(x[(j0 + j) * D + k]) - shift[k - col0]) * scale[k - col0];
  };
  float acc[Shape::kMR][Shape::kMC] = {};
  if (j1 > j0) gemm_tiles<false, float, Shape>(wload, n, xload, D, j1 - j0, row0, col0, acc);
  double* part_z = split.partial + static_cast<int64_t>(blockIdx.z) * n * D;
  for_micro_tile<Shape, float>(row0, col0, [&](int64_t l, int64_t k, int rr, int cc) {
    if (l >= n || k >= D) return;
    const double wx = ldexp(static_cast<double>(acc[rr][cc]), rexp[l] + cexp[k - col0]);
    if (split.splits > 1)
      part_z[l * D + k] = wx;
    else
      dx[l * D + k] = narrow<T>(grad_epilogue(w[l], widen(x[(rows.begin + l) * D + k]) - shift[k - col0], wx));
  });
}

// grad_from_weights with float32 products: Wf (n, N) W's rows in float32,
// each scaled by 2^-rexp[l], and x's float32 column means (widened) and
// magnitude exponents (build_weights writes them all).
template <typename T, typename Alloc, typename Check>
void grad_from_weights32(const T* x, int64_t N, int64_t D, Rows rows, const float* Wf, const int* rexp,
                         const double* w, const double* mean, const int* cexp, T* dx, Alloc& alloc,
                         cudaStream_t stream, const Check& check) {
  const int64_t n = rows.size(), tiles = ceil_div(D, kTile) * ceil_div(n, kTile);
  const double nd = static_cast<double>(n) * static_cast<double>(D), xd = static_cast<double>(N) * D;
  const double nn = static_cast<double>(n) * static_cast<double>(N);
  GradSplit split = grad_split(tiles, N);
  if (split.splits > 1) split.partial = take<double>(alloc, split.splits * n * D);
  const double out = split.splits > 1 ? 8.0 * split.splits * nd : nd * sizeof(T);
  auto product = [&](auto shape) {
    using Shape = decltype(shape);
    const dim3 grid(grid_dim(ceil_div(D, Shape::kCols)), grid_dim(ceil_div(n, Shape::kRows)), grid_dim(split.splits));
    Cost cost;
    cost.bytes = 4.0 * nn + 8.0 * static_cast<double>(n) + 12.0 * static_cast<double>(D) + xd * sizeof(T) + out;
    // The product, the centring and scaling of each loaded operand.
    cost.units = static_cast<double>(Shape::kRows) * Shape::kCols * static_cast<double>(grid.x) * grid.y *
                 static_cast<double>(ceil_div(N, kTk) * kTk);
    cost.flops32 = 2.0 * cost.units + 2.0 * Shape::kCols * static_cast<double>(grid.x) * grid.y * static_cast<double>(N);
    cost.flops64 = (split.splits > 1 ? 1.0 : 5.0) * nd * static_cast<double>(split.splits);
    cost.blocks = static_cast<double>(grid.x) * grid.y * grid.z;
    launch(check, cost, grad_gemm32_kernel<T, Shape>, grid, dim3(16, 16), stream, Wf, rexp, w, mean, cexp, x, N, D,
           rows, split, dx);
  };
  if (narrow_grad(tiles, split))
    product(Slim{});
  else
    product(Square{});
  if (split.splits == 1) return;
  Cost fin;
  fin.bytes = 8.0 * (split.splits * nd + static_cast<double>(D) + n) + 2.0 * nd * sizeof(T);
  fin.flops64 = nd * (static_cast<double>(split.splits) + 4.0);
  launch(check, fin, grad_finish_kernel<T>, dim3(grid_dim(ceil_div(n * D, kBlock))), dim3(kBlock), stream, w, mean, x,
         D, rows, split, dx);
}

// Rows [rows.begin, rows.end) of the pair matrix (the sharded global batch):
// out (rows.size(), N) float64, in the three launches of pair_matrices (or
// pair_matrices32 with float32 products), the whole matrix when the rows are
// all of them.
template <typename T, typename Alloc, typename Check>
void pair_rows(const T* x, int64_t N, int64_t D, Rows rows, PairKind what, double eps, bool float32, double* out,
               Alloc& alloc, cudaStream_t stream, const Check& check) {
  if (float32)
    pair_matrices32(&x, &D, 1, N, what, eps, &out, alloc, stream, check, rows);
  else
    pair_matrices(&x, &D, 1, N, what, eps, &out, alloc, stream, check, EdgeOut{nullptr, false, 0.0, false}, rows);
}

}  // namespace gpu
}  // namespace rkd
