// The torch-free CUDA kernels run on the host by emulate.h, exposed as C
// functions for scripts/emulate_cuda.py, which drives them the way the
// bindings (csrc/cuda/*_cuda.cu) do and compares the results with the CPU
// ops. Pointers are host memory; dtype codes: 0 float32, 1 float64,
// 2 float16, 3 bfloat16; reduction codes: 0 none, 1 mean, 2 sum.
#include "emulate.h"

#include <cstdlib>
#include <vector>

#include "../angle_kernel.cuh"
#include "../distance_kernel.cuh"
#include "../pairwise_kernel.cuh"

namespace {

using namespace rkd::gpu;

struct Scratch {
  std::vector<void*> held;
  void* bytes(size_t n) {
    if (n == 0) return nullptr;
    void* p = std::aligned_alloc(256, (n + 255) / 256 * 256);
    held.push_back(p);
    return p;
  }
  ~Scratch() {
    for (void* p : held) std::free(p);
  }
};

struct NoCheck {
  void operator()() const {}
};

const cudaStream_t stream = nullptr;

Reduce reduce_of(int code) { return code == 0 ? Reduce::None : (code == 1 ? Reduce::Mean : Reduce::Sum); }

// Calls f(T*) with p cast to the element type of `dtype`.
template <typename F>
void with_type(int dtype, void* p, const F& f) {
  switch (dtype) {
    case 0: f(static_cast<float*>(p)); break;
    case 1: f(static_cast<double*>(p)); break;
    case 2: f(static_cast<__half*>(p)); break;
    default: f(static_cast<__nv_bfloat16*>(p)); break;
  }
}

template <typename F>
void with_acc(int acc, const F& f) {
  if (acc == 1)
    f(double());
  else
    f(float());
}

}  // namespace

extern "C" {

void emu_pair_matrix(int dtype, void* x, int64_t N, int64_t D, int kind, double eps, double* out) {
  Scratch s;
  with_type(dtype, x, [&](auto* p) {
    pair_matrix(p, N, D, static_cast<PairKind>(kind), eps, out, s, stream, NoCheck{});
  });
}

void emu_grad_from_weights(int dtype, void* x, int64_t N, int64_t D, const double* W, const double* w, void* dx) {
  Scratch s;
  with_type(dtype, x, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    grad_from_weights(static_cast<const T*>(p), N, D, W, w, static_cast<T*>(dx), s, stream, NoCheck{});
  });
}

void emu_normalized_distance(int dtype, const double* d, int64_t N, void* psi) {
  Scratch s;
  with_type(dtype, psi, [&](auto* p) { normalized_distance(d, N, p, s, stream, NoCheck{}); });
}

void emu_pairwise_distance_weights(const double* g, const double* d, int64_t N, double eps, double* W, double* w) {
  pairwise_distance_weights(g, d, N, eps, W, w, stream, NoCheck{});
}

void emu_normalized_distance_weights(const double* g, const double* d, int64_t N, double eps, double* W, double* w) {
  Scratch s;
  normalized_distance_weights(g, d, N, eps, W, w, s, stream, NoCheck{});
}

void emu_distance_loss(int dtype, const double* a, const double* b, int64_t N, double beta, double mean_offset,
                       int red, void* out) {
  Scratch s;
  with_type(dtype, out, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value)
      distance_loss(a, b, N, beta, mean_offset, reduce_of(red), p, s, stream, NoCheck{});
  });
}

void emu_distance_loss_weights(const double* a, const double* b, const double* up, int64_t N, double beta, double eps,
                               int red, int squared, double mean_offset, double* W, double* w) {
  Scratch s;
  distance_loss_weights(a, b, up, N, beta, eps, reduce_of(red), squared != 0, mean_offset, W, w, s, stream,
                        NoCheck{});
}

void emu_angle_tensor(int acc, int dtype, const double* sq, int64_t N, double eps, int normalize, void* out) {
  Scratch s;
  with_acc(acc, [&](auto a) {
    using Acc = decltype(a);
    with_type(dtype, out, [&](auto* p) { angle_tensor<Acc>(sq, N, eps, normalize != 0, p, s, stream, NoCheck{}); });
  });
}

void emu_angle_loss(int acc, const double* sa, const double* sb, int64_t N, double beta, double eps, int normalize,
                    int red, void* out) {
  Scratch s;
  with_acc(acc, [&](auto a) {
    using Acc = decltype(a);
    const Edges<Acc> ea = make_edges<Acc>(sa, N, eps, normalize != 0, s, stream, NoCheck{});
    const Edges<Acc> eb = make_edges<Acc>(sb, N, eps, normalize != 0, s, stream, NoCheck{});
    angle_loss(ea, eb, N, beta, reduce_of(red), static_cast<Acc*>(out), s, stream, NoCheck{});
  });
}

// up: float64 scalar for 'mean'/'sum', (N, N, N) in the arithmetic type for 'none'.
void emu_angle_loss_weights(int acc, const double* sa, const double* sb, const void* up, int red, int64_t N,
                            double beta, double eps, int normalize, double* W, double* w) {
  Scratch s;
  with_acc(acc, [&](auto a) {
    using Acc = decltype(a);
    const Edges<Acc> ea = make_edges<Acc>(sa, N, eps, normalize != 0, s, stream, NoCheck{});
    const Edges<Acc> eb = make_edges<Acc>(sb, N, eps, normalize != 0, s, stream, NoCheck{});
    angle_loss_weights(ea, eb, up, reduce_of(red), N, beta, eps, normalize != 0, W, w, s, stream, NoCheck{});
  });
}

void emu_angle_tensor_weights(int acc, const double* sq, const void* up, int64_t N, double eps, int normalize,
                              double* W, double* w) {
  Scratch s;
  with_acc(acc, [&](auto a) {
    using Acc = decltype(a);
    const Edges<Acc> e = make_edges<Acc>(sq, N, eps, normalize != 0, s, stream, NoCheck{});
    angle_tensor_weights(e, static_cast<const Acc*>(up), N, eps, normalize != 0, W, w, s, stream, NoCheck{});
  });
}

}  // extern "C"
