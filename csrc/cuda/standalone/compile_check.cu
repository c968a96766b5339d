// Instantiates every torch-free CUDA kernel and host entry point for every
// dtype it is used with, so that plain nvcc (scripts/check_cuda.sh) compiles
// all the device code the extension builds, without torch's headers. Never
// run: the bindings (csrc/cuda/*_cuda.cu) are what executes these.
#include <cstdio>
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
    void* p = nullptr;
    if (n != 0 && cudaMalloc(&p, n) == cudaSuccess) held.push_back(p);
    return p;
  }
  ~Scratch() {
    for (void* p : held) cudaFree(p);
  }
};

struct LaunchCheck {
  void operator()() const {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
      std::fprintf(stderr, "kernel launch failed: %s\n", cudaGetErrorString(e));
      std::abort();
    }
  }
};

// Everything that depends on the input dtype T.
template <typename T>
void per_input(const T* x, T* out, int64_t N, int64_t D, double* d, double* W, double* w, Scratch& scratch,
               cudaStream_t stream) {
  const LaunchCheck check;
  pair_matrix(x, N, D, PairKind::Dist, 1e-12, d, scratch, stream, check);
  grad_from_weights(x, N, D, W, w, out, scratch, stream, check);
  normalized_distance(d, N, out, scratch, stream, check);
}

// Everything that depends on the loss dtype Out (float or double), which is
// also the angle kernels' arithmetic type.
template <typename Out>
void per_loss(const double* a, const double* b, const double* g, const void* up, Out* out, int64_t N, double* W,
              double* w, Scratch& scratch, cudaStream_t stream) {
  const LaunchCheck check;
  distance_loss(a, b, N, 1.0, 0.0, Reduce::Mean, out, scratch, stream, check);
  distance_loss_weights(a, b, g, N, 1.0, 1e-12, Reduce::None, false, 0.0, W, w, scratch, stream, check);
  const Edges<Out> ea = make_edges<Out>(a, N, 1e-12, true, scratch, stream, check);
  const Edges<Out> eb = make_edges<Out>(b, N, 1e-12, true, scratch, stream, check);
  angle_loss(ea, eb, N, 1.0, Reduce::Mean, out, scratch, stream, check);
  angle_loss_weights(ea, eb, up, Reduce::Mean, N, 1.0, 1e-12, true, W, w, scratch, stream, check);
  angle_loss_weights(ea, eb, up, Reduce::None, N, 1.0, 1e-12, true, W, w, scratch, stream, check);
  angle_tensor_weights(ea, static_cast<const Out*>(up), N, 1e-12, false, W, w, scratch, stream, check);
}

}  // namespace

// The angle tensor's output type is the input's; its arithmetic is float64
// for float64 inputs and float32 otherwise.
void rkd_compile_check(const void* x, void* out, int64_t N, int64_t D, double* d, double* W, double* w,
                       cudaStream_t stream) {
  Scratch scratch;
  const LaunchCheck check;
  per_input(static_cast<const float*>(x), static_cast<float*>(out), N, D, d, W, w, scratch, stream);
  per_input(static_cast<const double*>(x), static_cast<double*>(out), N, D, d, W, w, scratch, stream);
  per_input(static_cast<const __half*>(x), static_cast<__half*>(out), N, D, d, W, w, scratch, stream);
  per_input(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(out), N, D, d, W, w, scratch, stream);
  per_loss(d, d, d, x, static_cast<float*>(out), N, W, w, scratch, stream);
  per_loss(d, d, d, x, static_cast<double*>(out), N, W, w, scratch, stream);
  pairwise_distance_weights(d, d, N, 1e-12, W, w, stream, check);
  normalized_distance_weights(d, d, N, 1e-12, W, w, scratch, stream, check);
  angle_tensor<double>(d, N, 1e-12, true, static_cast<double*>(out), scratch, stream, check);
  angle_tensor<float>(d, N, 1e-12, true, static_cast<float*>(out), scratch, stream, check);
  angle_tensor<float>(d, N, 1e-12, true, static_cast<__half*>(out), scratch, stream, check);
  angle_tensor<float>(d, N, 1e-12, true, static_cast<__nv_bfloat16*>(out), scratch, stream, check);
}
