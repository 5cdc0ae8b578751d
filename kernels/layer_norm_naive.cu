// layer_norm_naive.cu — LayerNorm over the last dim of a contiguous [rows, c] f32 tensor, forward and
// backward, written as plainly as a CUDA kernel can be: the stepping stone of docs/layer_norm.md, kept
// to be read and tested, not used by Tensor::layer_norm (that runs layer_norm.cu).
//   forward:  mean = sum(x) / c,  var = sum((x - mean)^2) / c,  rstd = 1 / sqrt(var + eps),
//             y = (x - mean) * rstd * w + b   (b optional: a null pointer);  mean and rstd saved per row;
//   backward: xhat = (x - mean) * rstd,  dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)),
//             dw = sum over rows of dy*xhat,  db = sum over rows of dy.
//
// Algorithm. layer_norm_naive_forward_f32 and layer_norm_naive_backward_dx_f32: one thread per row,
// which walks its row in plain loops (forward: three passes, mean, variance, write; dx: two, the two row
// means, then the write). layer_norm_naive_dparams_f32: one thread per column, which sums its column
// over every row in row order (deterministic, no atomics).
// Launch: 1-D, 128 threads per block; ceil(rows / 128) blocks for the row kernels, ceil(c / 128) for
// dparams (src/backend/cuda/layer_norm_naive.rs).
// Why it is slow: in the row kernels neighbouring threads of a warp read addresses c floats apart, so
// every load of a warp touches 32 different cache lines (dparams is the good case: a warp reads 32
// neighbouring columns of one row); a row is read from memory once per pass; and only `rows` threads
// exist, too few to fill a GPU for GPT-sized tensors (8192 rows is 64 blocks). layer_norm.cu fixes all
// three: a warp-to-block of threads per row, 16-byte loads, the row kept in registers between passes.
// Roofline, per element: forward ~8 FLOPs, 3 reads + 1 write of 4 bytes (mean, variance and write
// passes each read x); dx ~12 FLOPs, 4 reads + 1 write (x and dy in each of two passes); dparams
// ~5 FLOPs, 2 reads. All memory bound.
#include "common.cuh"

extern "C" __global__ void layer_norm_naive_forward_f32(const float *x, const float *w, const float *b, float *y,
                                                        float *mean, float *rstd, unsigned long long rows,
                                                        unsigned c, float eps) {
    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    const float *xr = x + row * c; // this thread's row: x[row, :]
    float *yr = y + row * c;

    float m = 0.0f;
    for (unsigned i = 0; i < c; ++i) m += xr[i];
    m /= (float)c;
    float v = 0.0f;
    for (unsigned i = 0; i < c; ++i) {
        const float d = xr[i] - m;
        v += d * d;
    }
    v /= (float)c;
    const float s = 1.0f / sqrtf(v + eps);
    for (unsigned i = 0; i < c; ++i) yr[i] = (xr[i] - m) * s * w[i] + (b ? b[i] : 0.0f);
    mean[row] = m;
    rstd[row] = s;
}

extern "C" __global__ void layer_norm_naive_backward_dx_f32(const float *x, const float *w, const float *dy,
                                                            const float *mean, const float *rstd, float *dx,
                                                            unsigned long long rows, unsigned c) {
    const unsigned long long row = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    const float *xr = x + row * c, *gr = dy + row * c;
    float *dr = dx + row * c;
    const float m = mean[row], s = rstd[row];

    float sum_dyw = 0.0f, sum_dyw_xhat = 0.0f;
    for (unsigned i = 0; i < c; ++i) {
        const float dyw = gr[i] * w[i];
        sum_dyw += dyw;
        sum_dyw_xhat += dyw * (xr[i] - m) * s;
    }
    const float mean_dyw = sum_dyw / (float)c, mean_dyw_xhat = sum_dyw_xhat / (float)c;
    for (unsigned i = 0; i < c; ++i) {
        const float xhat = (xr[i] - m) * s;
        dr[i] = s * (gr[i] * w[i] - mean_dyw - xhat * mean_dyw_xhat);
    }
}

extern "C" __global__ void layer_norm_naive_dparams_f32(const float *x, const float *dy, const float *mean,
                                                        const float *rstd, float *dw, float *db,
                                                        unsigned long long rows, unsigned c) {
    const unsigned col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float acc_w = 0.0f, acc_b = 0.0f;
    for (unsigned long long r = 0; r < rows; ++r) {
        const float g = dy[r * c + col];
        acc_w += g * (x[r * c + col] - mean[r]) * rstd[r];
        acc_b += g;
    }
    dw[col] = acc_w;
    db[col] = acc_b;
}
