// Fused AFF fusion tail for MXNet's external operator library interface (mx.library.load).
//
// gt_aff_fuse(x, y, l, g; scale) with x, y, l of one shape (N, C, H, W) -- or (N, C, H*W), any
// (N, C, ...) -- and g of shape (N, C, 1, 1) (any (N, C, 1, ..., 1)); the output has x's shape:
//
//     w   = sigmoid(l + g)            (g broadcast over H x W)
//     out = scale * (y + w * (x - y)) (= scale * (x * w + y * (1 - w)))
//
// AFF uses scale 2, iAFF scale 1 in both steps (gluon_transfer/nn/fusion.py). Backward, from
// dout: dx = scale*dout*w, dy = scale*dout*(1-w), dl = scale*dout*(x-y)*w*(1-w),
// dg[n, c] = sum over H x W of dl. Forward and backward are each one pass over the maps (w is
// recomputed in backward instead of stored), parallel over the N*C planes with OpenMP and
// vectorised (``omp simd``, see sigm). Built on first use by
// gluon_transfer/nn/fused.py; float32, CPU only.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include "mxnet/lib_api.h"

using namespace mxnet::ext;

static float get_scale(const std::unordered_map<std::string, std::string>& attrs) {
  auto it = attrs.find("scale");
  return it == attrs.end() ? 1.0f : static_cast<float>(std::atof(it->second.c_str()));
}

// exp(-a) as 2^t, t = -a*log2(e) clamped to [-126, 126]: 2^n, n = t rounded to the nearest
// integer, from the exponent bits, times a degree-7 Taylor polynomial of 2^f, f = t - n,
// |f| <= 1/2 (truncation error < 1e-8, below float rounding). Plain arithmetic, so the loops
// vectorise; libm's scalar expf call does not, and neither does std::floor (GCC keeps it a
// scalar call without -ffast-math: the loops ran 8x slower), so n is rounded by adding and
// subtracting 1.5 * 2^23 (exact round-to-nearest for |t| < 2^22; this file is never compiled
// with -ffast-math, which could fold the two away).
static inline float sigm(float a) {
  float t = -a * 1.4426950408889634f;
  t = t < -126.0f ? -126.0f : (t > 126.0f ? 126.0f : t);
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float f = t - n;
  float p = 1.5252733804059840e-05f;
  p = p * f + 1.5403530393381608e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return 1.0f / (1.0f + p * scale);
}

MXReturnValue fuse_forward(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                           const OpResource& res) {
  const float s = get_scale(attrs);
  const float* x = (*inputs)[0].data<float>();
  const float* y = (*inputs)[1].data<float>();
  const float* l = (*inputs)[2].data<float>();
  const float* g = (*inputs)[3].data<float>();
  float* out = (*outputs)[0].data<float>();
  const std::vector<int64_t>& sh = (*inputs)[0].shape;
  const int64_t planes = sh[0] * sh[1];
  const int64_t hw = (*inputs)[0].size() / planes;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float gp = g[p];
    const int64_t o = p * hw;
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) {
      const float w = sigm(l[o + i] + gp);
      out[o + i] = s * (y[o + i] + w * (x[o + i] - y[o + i]));
    }
  }
  return MX_SUCCESS;
}

// inputs: dout, x, y, l, g (output gradients, then the forward inputs); outputs: dx, dy, dl, dg
MXReturnValue fuse_backward(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                            const OpResource& res) {
  const float s = get_scale(attrs);
  const float* dout = (*inputs)[0].data<float>();
  const float* x = (*inputs)[1].data<float>();
  const float* y = (*inputs)[2].data<float>();
  const float* l = (*inputs)[3].data<float>();
  const float* g = (*inputs)[4].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dy = (*outputs)[1].data<float>();
  float* dl = (*outputs)[2].data<float>();
  float* dg = (*outputs)[3].data<float>();
  const std::vector<int64_t>& sh = (*inputs)[1].shape;
  const int64_t planes = sh[0] * sh[1];
  const int64_t hw = (*inputs)[1].size() / planes;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float gp = g[p];
    const int64_t o = p * hw;
    float acc = 0.0f;
#pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < hw; ++i) {
      const float w = sigm(l[o + i] + gp);
      const float gd = s * dout[o + i];
      const float a = gd * w;
      dx[o + i] = a;
      dy[o + i] = gd - a;
      const float v = a * (1.0f - w) * (x[o + i] - y[o + i]);
      dl[o + i] = v;
      acc += v;
    }
    dg[p] = acc;
  }
  return MX_SUCCESS;
}

MXReturnValue fuse_parse(const std::unordered_map<std::string, std::string>& attrs,
                         int* num_in, int* num_out) {
  *num_in = 4;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue fuse_type(const std::unordered_map<std::string, std::string>& attrs,
                        std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if ((*in_types)[i] != kFloat32) {
      MX_ERROR_MSG << "gluon_transfer AFF kernels support float32 only (input " << i << ")";
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue fuse_shape(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<std::vector<unsigned int> >* in_shapes,
                         std::vector<std::vector<unsigned int> >* out_shapes) {
  const std::vector<unsigned int>& a = (*in_shapes)[0];
  if (a.size() < 3 || (*in_shapes)[1] != a || (*in_shapes)[2] != a) {
    MX_ERROR_MSG << "gt_aff_fuse needs x, y, l of one (N, C, H, W) or (N, C, H*W) shape";
    return MX_FAIL;
  }
  const std::vector<unsigned int>& g = (*in_shapes)[3];
  bool g_ok = g.size() >= 2 && g[0] == a[0] && g[1] == a[1];
  for (size_t i = 2; g_ok && i < g.size(); ++i) g_ok = g[i] == 1;
  if (!g_ok) {
    MX_ERROR_MSG << "gt_aff_fuse needs g of shape (N, C, 1, 1)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = a;
  return MX_SUCCESS;
}

REGISTER_OP(gt_aff_fuse)
.setParseAttrs(fuse_parse)
.setInferType(fuse_type)
.setInferShape(fuse_shape)
.setForward(fuse_forward, "cpu")
.setBackward(fuse_backward, "cpu");

// gt_global_mean(z): (N, C, H, W) or (N, C, H*W) -> (N, C, 1, 1), the mean over H x W (the MS-CAM global
// branch's pooling). MXNet's Pooling backward on oneDNN-layout input and its generic ``mean``
// reduction are both slow on CPU (docs/benchmarks.md); this is one read pass forward and one write
// pass backward (dz = dm / (H*W) broadcast).
MXReturnValue mean_forward(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                           const OpResource& res) {
  const float* z = (*inputs)[0].data<float>();
  float* m = (*outputs)[0].data<float>();
  const std::vector<int64_t>& sh = (*inputs)[0].shape;
  const int64_t planes = sh[0] * sh[1];
  const int64_t hw = (*inputs)[0].size() / planes;
  const float inv = 1.0f / static_cast<float>(hw);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float* zp = z + p * hw;
    float acc = 0.0f;
#pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < hw; ++i) acc += zp[i];
    m[p] = acc * inv;
  }
  return MX_SUCCESS;
}

// inputs: dm, z; outputs: dz
MXReturnValue mean_backward(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                            const OpResource& res) {
  const float* dm = (*inputs)[0].data<float>();
  float* dz = (*outputs)[0].data<float>();
  const std::vector<int64_t>& sh = (*inputs)[1].shape;
  const int64_t planes = sh[0] * sh[1];
  const int64_t hw = (*inputs)[1].size() / planes;
  const float inv = 1.0f / static_cast<float>(hw);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float v = dm[p] * inv;
    float* dp = dz + p * hw;
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) dp[i] = v;
  }
  return MX_SUCCESS;
}

MXReturnValue mean_parse(const std::unordered_map<std::string, std::string>& attrs,
                         int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue mean_shape(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<std::vector<unsigned int> >* in_shapes,
                         std::vector<std::vector<unsigned int> >* out_shapes) {
  const std::vector<unsigned int>& a = (*in_shapes)[0];
  if (a.size() < 3) {
    MX_ERROR_MSG << "gt_global_mean needs an (N, C, H, W) or (N, C, H*W) input";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {a[0], a[1], 1, 1};
  return MX_SUCCESS;
}

REGISTER_OP(gt_global_mean)
.setParseAttrs(mean_parse)
.setInferType(fuse_type)
.setInferShape(mean_shape)
.setForward(mean_forward, "cpu")
.setBackward(mean_backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10900) return MX_SUCCESS;
  MX_ERROR_MSG << "gluon_transfer AFF kernel needs MXNet >= 1.9, got " << version;
  return MX_FAIL;
}
