// A kernel for test_kernel_resources.py: the same work with registers to
// spare (256 threads, up to 255 registers) and squeezed into 32 registers
// (1024 threads, two blocks per SM), where ptxas must spill.
template <int kThreads, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) squeezed(const float* x, float* y) {
  float v[40];
#pragma unroll
  for (int i = 0; i < 40; ++i) v[i] = x[threadIdx.x + i * 1024];
#pragma unroll
  for (int k = 0; k < 4; ++k)
#pragma unroll
    for (int i = 0; i < 40; ++i) v[i] = v[i] * v[(i + 1) % 40] + 1.0f;
#pragma unroll
  for (int i = 0; i < 40; ++i) y[threadIdx.x + i * 1024] = v[i];
}
template __global__ void squeezed<256, 1>(const float*, float*);
template __global__ void squeezed<1024, 2>(const float*, float*);
