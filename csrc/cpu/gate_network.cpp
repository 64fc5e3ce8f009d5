// The gate network, steps 2-6 of docs/spec.md (projection and normalisation,
// agreement with support/conflict/context, cues, the gate MLP, the gates with
// the pass-through of missing modalities), for all modalities at once, on the
// CPU: the ops mmcal::gates and mmcal::gates_backward (issue 12's contract).
// Oracle: reference.gates_with_intermediates; the backward reproduces the math
// of gates_backward.py.
//
// Why one op: in torch ops steps 2-6 and their backward are ~150 small ops,
// whose dispatch costs far more than their arithmetic on [B, D]-sized tensors.
// Here the large products (s W^T, q Wh^T, e Wd^T and their backward products)
// go to BLAS through at::mm_out into buffers allocated once; the erf and exp
// of GELU and the sigmoid go to ATen's vectorised kernels, one call each over
// all modalities where the shapes allow; everything between is a few
// hand-written loops over samples (at::parallel_for). At the real sizes the
// products are most of the time (benchmarks/gate_network_cpu.py measures
// them alone). Reductions over the batch (bias gradients) run in a fixed
// order per column, whatever the thread count, so two runs give the same bits.
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/erf.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/gate_args.h"
#include "parallel.h"

namespace mmcal {
namespace cpu {
namespace {

using at::Tensor;
using at::TensorList;
using namespace gate_args;

// Floating-point operations per parallel chunk: below it a loop stays on one
// thread, since waking the pool costs more than the arithmetic.
constexpr int64_t kChunkFlops = 1 << 14;

// Every parameter in ct, once. Weights go to BLAS as they are (any strides);
// the small vectors the loops read are made contiguous.
std::vector<Tensor> cast_params(TensorList params, at::ScalarType ct) {
  std::vector<Tensor> out;
  out.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t slot = static_cast<int64_t>(i) % kPerModality;
    const bool weight_for_blas = slot == kProjW || slot == kHidW || slot == kDimW;
    const Tensor& given = params[i];
    // Most calls: already ct and contiguous. Skip the dispatched no-op
    // .to(ct) (24 calls per op at M = 3).
    if (given.scalar_type() == ct && (weight_for_blas || given.is_contiguous())) {
      out.push_back(given);
      continue;
    }
    Tensor t = given.to(ct);
    out.push_back(weight_for_blas ? t : t.contiguous());
  }
  return out;
}

// present[b, n] read through its strides; none means all present.
struct Presence {
  const bool* p = nullptr;
  int64_t sB = 0, sM = 0;
  explicit Presence(const std::optional<Tensor>& t) {
    if (t.has_value()) p = t->const_data_ptr<bool>(), sB = t->stride(0), sM = t->stride(1);
  }
  // Read as a byte: any nonzero byte is True (see valid() in vec_block.h).
  bool operator()(int64_t b, int64_t n) const {
    return p == nullptr || reinterpret_cast<const unsigned char*>(p)[b * sB + n * sM] != 0;
  }
};

int64_t grain_for(int64_t flops_per_sample) { return std::max<int64_t>(1, kChunkFlops / std::max<int64_t>(1, flops_per_sample)); }

template <typename T>
T two_sigmoid(T x) {
  return T(2) / (T(1) + std::exp(-x));
}

// Sums of products accumulate in double for both compute dtypes: a float
// accumulator over D_m = 768 terms, or over the batch, loses digits that
// torch's own (multi-accumulator) reductions keep. The squared norm is the
// exception (below): it stays in ct, so that ||h|| overflows where the
// reference's does and u = 0 there.
//
// kLanes independent accumulators, combined in a fixed order (so the same
// bits on every run): one running sum is a chain of dependent adds, each
// waiting for the last (about 4 cycles), where eight chains overlap.
constexpr int64_t kLanes = 8;

template <typename Acc, typename F>
Acc lane_sum(int64_t n, F term) {
  Acc acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += term(j + k);
  for (int64_t k = 0; j < n; ++j, ++k) acc[k] += term(j);
  static_assert(kLanes == 8, "the combine below names eight lanes");
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  return static_cast<T>(lane_sum<double>(n, [&](int64_t j) { return static_cast<double>(a[j]) * static_cast<double>(b[j]); }));
}

// k_m = max(1, sum_{n != m} pi[b, n]) and the weights w[m, n] of one sample.
void other_weights(const Presence& pres, int64_t b, int64_t M, double* w, double* k) {
  for (int64_t m = 0; m < M; ++m) {
    double sum = 0;
    for (int64_t n = 0; n < M; ++n) {
      w[m * M + n] = (n != m && pres(b, n)) ? 1.0 : 0.0;
      sum += w[m * M + n];
    }
    k[m] = std::max(1.0, sum);
  }
}

// q_m = [u * c, u - c, S, C] of one sample and modality.
template <typename T>
void assemble_cue(const T* u, const T* c, T support, T conflict, int64_t d, T* q) {
  for (int64_t j = 0; j < d; ++j) {
    q[j] = u[j] * c[j];
    q[d + j] = u[j] - c[j];
  }
  q[2 * d] = support;
  q[2 * d + 1] = conflict;
}

// out[j] = sum_b scale[b] * x[b, j] (scale = 1 when null), b ascending: the
// same order, hence the same bits, whatever the threads.
template <typename T>
void column_sums(const T* x, int64_t rows, int64_t cols, int64_t ld, const T* scale, int64_t scale_stride, T* out) {
  std::vector<double> acc(cols, 0.0);
  for (int64_t b = 0; b < rows; ++b) {
    const double s = scale ? static_cast<double>(scale[b * scale_stride]) : 1.0;
    const T* row = x + b * ld;
    for (int64_t j = 0; j < cols; ++j) acc[j] += s * static_cast<double>(row[j]);
  }
  for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<T>(acc[j]);
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.data_ptr<T>();
}

// Where each modality's [B, r_m] block starts in a flat buffer of all of them.
std::vector<int64_t> hidden_offsets(const Sizes& z) {
  std::vector<int64_t> offset(z.M + 1, 0);
  for (int64_t m = 0; m < z.M; ++m) offset[m + 1] = offset[m] + z.B * z.r[m];
  return offset;
}

// flat[offset[m] + i] = f(pre_m[i]) for every modality (pre_m contiguous [B, r_m]).
template <typename T, typename F>
void for_each_hidden(const Sizes& z, const std::vector<Tensor>& pre, const Tensor& flat,
                     const std::vector<int64_t>& offset, F f) {
  T* out = ptr<T>(flat);
  for (int64_t m = 0; m < z.M; ++m) {
    const T* x = ptr<T>(pre[m]);
    for (int64_t i = 0; i < z.B * z.r[m]; ++i) f(x[i], out[offset[m] + i]);
  }
}

// BLAS into a buffer of the right shape (a slice of a larger one), no allocation.
void mm_into(Tensor out, const Tensor& a, const Tensor& b) { at::mm_out(out, a, b); }
void addmm_into(Tensor out, const Tensor& bias, const Tensor& a, const Tensor& b) { at::addmm_out(out, bias, a, b); }


using Lists = std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>;

// ---- forward -----------------------------------------------------------------

template <typename T>
Lists gates_impl(const Sizes& z, TensorList summaries, const std::vector<Tensor>& p, const Presence& pres) {
  const int64_t B = z.B, M = z.M, d = z.d, cue = 2 * z.d + 2;
  const auto opts = summaries[0].options().dtype(z.ct);
  const T eps = static_cast<T>(kNormEps);
  Tensor u = at::empty({B, M, d}, opts), norm = at::empty({B, M}, opts), context = at::empty({B, M, d}, opts);
  Tensor agreement = at::empty({B, M, M}, opts), support = at::empty({B, M}, opts), conflict = at::empty({B, M}, opts);
  Tensor instance = at::empty({B, M}, opts);
  Tensor h = at::empty({M, B, d}, opts), q = at::empty({M, B, cue}, opts);
  std::vector<Tensor> pre, hidden, dim_gate, gate;
  for (int64_t m = 0; m < M; ++m) {
    pre.push_back(at::empty({B, z.r[m]}, opts));
    hidden.push_back(at::empty({B, z.r[m]}, opts));
    dim_gate.push_back(at::empty({B, z.D[m]}, opts));
    gate.push_back(at::empty({B, z.D[m]}, opts));
  }
  const auto P = [&](int64_t m, int64_t slot) -> const Tensor& { return p[kPerModality * m + slot]; };

  // Step 2, the product: h_m (without bias) = s_m W_m^T.
  for (int64_t m = 0; m < M; ++m) mm_into(h[m], summaries[m], P(m, kProjW).t());

  // Steps 2-4 per sample: bias, norm, u; agreement, support, conflict,
  // context; the cues.
  {
    T* hp = ptr<T>(h);
    T *up = ptr<T>(u), *np = ptr<T>(norm), *cp = ptr<T>(context), *ap = ptr<T>(agreement);
    T *sp = ptr<T>(support), *fp = ptr<T>(conflict), *qp = ptr<T>(q);
    std::vector<const T*> bias(M);
    for (int64_t m = 0; m < M; ++m) bias[m] = ptr<T>(P(m, kProjB));
    at::parallel_for(0, B, grain_for(M * d * (M + 6)), [&](int64_t begin, int64_t end) {
      std::vector<double> w(M * M), k(M);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t m = 0; m < M; ++m) {
          const T* hm = hp + (m * B + b) * d;
          T* um = up + (b * M + m) * d;
          for (int64_t j = 0; j < d; ++j) um[j] = hm[j] + bias[m][j];
          const T squares = lane_sum<T>(d, [&](int64_t j) { return um[j] * um[j]; });
          const T n = std::sqrt(squares);
          const T clamped = std::max(n, eps);
          np[b * M + m] = n;
          for (int64_t j = 0; j < d; ++j) um[j] /= clamped;
        }
        const T* ub = up + b * M * d;
        T* ab = ap + b * M * M;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < M; ++n) ab[m * M + n] = n < m ? ab[n * M + m] : dot(ub + m * d, ub + n * d, d);
        other_weights(pres, b, M, w.data(), k.data());
        for (int64_t m = 0; m < M; ++m) {
          const T km = static_cast<T>(k[m]);
          T s = 0, c = 0;
          T* cm = cp + (b * M + m) * d;
          std::fill(cm, cm + d, T(0));
          for (int64_t n = 0; n < M; ++n) {
            if (w[m * M + n] == 0) continue;
            const T a = ab[m * M + n];
            s += std::max(a, T(0));
            c += std::max(-a, T(0));
            const T* un = ub + n * d;
            for (int64_t j = 0; j < d; ++j) cm[j] += un[j];
          }
          for (int64_t j = 0; j < d; ++j) cm[j] /= km;
          sp[b * M + m] = s / km;
          fp[b * M + m] = c / km;
          assemble_cue(ub + m * d, cm, s / km, c / km, d, qp + (m * B + b) * cue);
        }
      }
    });
  }

  // Step 5: pre_m = q_m Wh_m^T + bh_m, e_m = GELU(pre_m), z_m = e_m Wd_m^T + bd_m,
  // 2 sigmoid(z_m). erf and exp go to ATen's vectorised kernels (as scalar
  // libm calls they cost as much as the products), erf once for all
  // modalities, through one flat buffer: per call, at::gelu costs more in
  // overhead than in arithmetic at these sizes.
  for (int64_t m = 0; m < M; ++m) addmm_into(pre[m], P(m, kHidB), q[m], P(m, kHidW).t());
  const std::vector<int64_t> offset = hidden_offsets(z);
  Tensor erfs = at::empty({offset[M]}, opts);
  for_each_hidden<T>(z, pre, erfs, offset, [](T x, T& out) { out = x * T(M_SQRT1_2); });
  erfs.erf_();
  {
    const T* ep = ptr<T>(erfs);
    for (int64_t m = 0; m < M; ++m) {
      const T* x = ptr<T>(pre[m]);
      T* e = ptr<T>(hidden[m]);
      for (int64_t i = 0; i < B * z.r[m]; ++i) e[i] = T(0.5) * x[i] * (T(1) + ep[offset[m] + i]);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    addmm_into(dim_gate[m], P(m, kDimB), hidden[m], P(m, kDimW).t());
    dim_gate[m].sigmoid_();
  }

  // Steps 5-6 per sample: the instance logit (one column: a dot product, not
  // a BLAS call), the gates, the pass-through.
  {
    T* ip = ptr<T>(instance);
    const int64_t rsum = std::accumulate(z.r.begin(), z.r.end(), int64_t(0));
    const int64_t Dsum = std::accumulate(z.D.begin(), z.D.end(), int64_t(0));
    at::parallel_for(0, B, grain_for(2 * rsum + 3 * Dsum), [&](int64_t begin, int64_t end) {
      for (int64_t m = 0; m < M; ++m) {
        const int64_t D = z.D[m], r = z.r[m];
        const T *em = ptr<T>(hidden[m]), *wi = ptr<T>(P(m, kInstW));
        const T bi = *ptr<T>(P(m, kInstB));
        T* dm = ptr<T>(dim_gate[m]);
        T* gm = ptr<T>(gate[m]);
        for (int64_t b = begin; b < end; ++b) {
          const T ig = two_sigmoid(dot(em + b * r, wi, r) + bi);
          ip[b * M + m] = ig;
          const bool on = pres(b, m);
          for (int64_t j = 0; j < D; ++j) {
            const T dg = T(2) * dm[b * D + j];
            dm[b * D + j] = dg;
            gm[b * D + j] = on ? ig * dg : T(1);
          }
        }
      }
    });
  }

  std::vector<Tensor> diagnostics = {agreement, support, conflict, instance};
  diagnostics.insert(diagnostics.end(), dim_gate.begin(), dim_gate.end());
  std::vector<Tensor> saved = {u, norm, context};
  saved.insert(saved.end(), pre.begin(), pre.end());
  return {gate, diagnostics, saved};
}

// Steps 2-6 run in ct whatever autocast says (docs/spec.md, "Numerics"). The
// op has no autocast kernel of its own, so a call inside an autocast region (a
// raw call, or a backward run inside one) keeps autocast on below it, where
// at::mm would take its operands to bfloat16. Each op turns it off for itself.
using AutocastOff = c10::impl::ExcludeDispatchKeyGuard;

Lists gates(TensorList summaries, TensorList params, const std::optional<Tensor>& present) {
  const AutocastOff no_autocast(c10::autocast_dispatch_keyset);
  const Sizes z = check_gate_args(summaries, params, present, c10::DeviceType::CPU, "CPU", "mmcal::gates");
  const std::vector<Tensor> p = cast_params(params, z.ct);
  const Presence pres(present);
  return z.ct == at::kDouble ? gates_impl<double>(z, summaries, p, pres) : gates_impl<float>(z, summaries, p, pres);
}

// ---- backward ----------------------------------------------------------------

using Pair = std::tuple<std::vector<Tensor>, std::vector<Tensor>>;

template <typename T>
Pair gates_backward_impl(const Sizes& z, TensorList grad_gates, TensorList summaries, const std::vector<Tensor>& p,
                         TensorList params, const Presence& pres, const std::vector<Tensor>& diag,
                         const std::vector<Tensor>& saved) {
  const int64_t B = z.B, M = z.M, d = z.d, cue = 2 * z.d + 2;
  const auto opts = summaries[0].options().dtype(z.ct);
  const T eps = static_cast<T>(kNormEps);
  const auto P = [&](int64_t m, int64_t slot) -> const Tensor& { return p[kPerModality * m + slot]; };
  const T *A = ptr<T>(diag[0]), *S = ptr<T>(diag[1]), *C = ptr<T>(diag[2]), *IG = ptr<T>(diag[3]);
  const T *U = ptr<T>(saved[0]), *N = ptr<T>(saved[1]), *CTX = ptr<T>(saved[2]);

  Tensor da = at::empty({B, M}, opts), q = at::empty({M, B, cue}, opts), dcue = at::empty({M, B, cue}, opts);
  Tensor dh = at::empty({M, B, d}, opts);
  std::vector<Tensor> dz, de, dpre, hidden;
  for (int64_t m = 0; m < M; ++m) {
    dz.push_back(at::empty({B, z.D[m]}, opts));
    de.push_back(at::empty({B, z.r[m]}, opts));
    dpre.push_back(at::empty({B, z.r[m]}, opts));
    hidden.push_back(at::empty({B, z.r[m]}, opts));
  }

  // Step 6 back: the gates to the instance logit a and the dimension logits z.
  // A missing modality's gate is the constant 1: its dL/dg is selected away
  // (not multiplied by 0, so a non-finite one stays out).
  {
    T* dap = ptr<T>(da);
    const int64_t Dsum = std::accumulate(z.D.begin(), z.D.end(), int64_t(0));
    at::parallel_for(0, B, grain_for(8 * Dsum), [&](int64_t begin, int64_t end) {
      for (int64_t m = 0; m < M; ++m) {
        const int64_t D = z.D[m];
        const T *g = ptr<T>(grad_gates[m]), *dg = ptr<T>(diag[4 + m]);
        T* dzm = ptr<T>(dz[m]);
        for (int64_t b = begin; b < end; ++b) {
          const T ig = IG[b * M + m];
          if (!pres(b, m)) {
            std::fill(dzm + b * D, dzm + (b + 1) * D, T(0));
            dap[b * M + m] = 0;
            continue;
          }
          const T d_ig = dot(g + b * D, dg + b * D, D);
          for (int64_t j = 0; j < D; ++j) {
            const T gj = g[b * D + j], dgj = dg[b * D + j];
            dzm[b * D + j] = gj * ig * dgj * (T(1) - T(0.5) * dgj);  // d(2 sigmoid(z))/dz = dg (1 - dg / 2)
          }
          dap[b * M + m] = d_ig * ig * (T(1) - T(0.5) * ig);
        }
      }
    });
  }

  // Step 5 back, the product: de_m (without the instance term) = dz_m Wd_m.
  for (int64_t m = 0; m < M; ++m) mm_into(de[m], dz[m], P(m, kDimW));

  // Step 5 back per sample: the instance term of de; the cues rebuilt for
  // the hidden weight's gradient (cheaper than saving them).
  {
    const T* dap = ptr<T>(da);
    T* qp = ptr<T>(q);
    const int64_t rsum = std::accumulate(z.r.begin(), z.r.end(), int64_t(0));
    at::parallel_for(0, B, grain_for(2 * rsum + 3 * M * d), [&](int64_t begin, int64_t end) {
      for (int64_t m = 0; m < M; ++m) {
        const int64_t r = z.r[m];
        const T* wi = ptr<T>(P(m, kInstW));
        T* dem = ptr<T>(de[m]);
        for (int64_t b = begin; b < end; ++b) {
          const T a = dap[b * M + m];
          for (int64_t i = 0; i < r; ++i) dem[b * r + i] += a * wi[i];
          assemble_cue(U + (b * M + m) * d, CTX + (b * M + m) * d, S[b * M + m], C[b * M + m], d,
                       qp + (m * B + b) * cue);
        }
      }
    });
  }
  // GELU'(x) = Phi(x) + x phi(x), and GELU again (e, for the dim weight's
  // gradient): erf and exp each once for all modalities, vectorised by ATen.
  {
    const std::vector<int64_t> offset = hidden_offsets(z);
    Tensor erfs = at::empty({offset[M]}, opts), exps = at::empty({offset[M]}, opts);
    std::vector<Tensor> pre(saved.begin() + 3, saved.end());
    for_each_hidden<T>(z, pre, erfs, offset, [](T x, T& out) { out = x * T(M_SQRT1_2); });
    for_each_hidden<T>(z, pre, exps, offset, [](T x, T& out) { out = T(-0.5) * x * x; });
    erfs.erf_();
    exps.exp_();
    const T *ep = ptr<T>(erfs), *xp = ptr<T>(exps);
    for (int64_t m = 0; m < M; ++m) {
      const T* x = ptr<T>(pre[m]);
      const T* dem = ptr<T>(de[m]);
      T *e = ptr<T>(hidden[m]), *dp = ptr<T>(dpre[m]);
      for (int64_t i = 0; i < B * z.r[m]; ++i) {
        const T cdf = T(0.5) * (T(1) + ep[offset[m] + i]);
        const T pdf = xp[offset[m] + i] * T(0.3989422804014327);  // 1 / sqrt(2 pi)
        e[i] = x[i] * cdf;
        dp[i] = dem[i] * (cdf + x[i] * pdf);
      }
    }
  }

  // Step 5 back, the products: dq_m = dpre_m Wh_m, and two weight gradients.
  std::vector<Tensor> grads(kPerModality * M);
  for (int64_t m = 0; m < M; ++m) {
    mm_into(dcue[m], dpre[m], P(m, kHidW));
    grads[kPerModality * m + kHidW] = at::mm(dpre[m].t(), q[m]);
    grads[kPerModality * m + kDimW] = at::mm(dz[m].t(), hidden[m]);
  }

  // Steps 4, 3 and 2 back per sample: the cues to u and the context; support,
  // conflict and context to the agreement and u; the normalisation, written
  // as du's part orthogonal to u (gates_backward.py says why).
  {
    const T* dcp = ptr<T>(dcue);
    T* dhp = ptr<T>(dh);
    at::parallel_for(0, B, grain_for(M * d * (2 * M + 10)), [&](int64_t begin, int64_t end) {
      std::vector<double> w(M * M), k(M);
      std::vector<T> du(M * d), dctx(M * d), dS(M), dC(M), dA(M * M);
      for (int64_t b = begin; b < end; ++b) {
        const T* ub = U + b * M * d;
        const T* cb = CTX + b * M * d;
        const T* ab = A + b * M * M;
        other_weights(pres, b, M, w.data(), k.data());
        for (int64_t m = 0; m < M; ++m) {
          const T* dq = dcp + (m * B + b) * cue;
          const T *um = ub + m * d, *cm = cb + m * d;
          for (int64_t j = 0; j < d; ++j) {
            du[m * d + j] = dq[j] * cm[j] + dq[d + j];
            dctx[m * d + j] = dq[j] * um[j] - dq[d + j];
          }
          dS[m] = dq[2 * d] / static_cast<T>(k[m]);
          dC[m] = dq[2 * d + 1] / static_cast<T>(k[m]);
        }
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < M; ++n) {
            const T a = ab[m * M + n];
            const T v = (a > 0 ? dS[m] : T(0)) - (a < 0 ? dC[m] : T(0));
            dA[m * M + n] = w[m * M + n] != 0 ? v : T(0);
          }
        }
        // du_m += sum_n (dA[m,n] + dA[n,m]) u_n; du_n += sum_m w[m,n] dctx_m / k_m.
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < M; ++n) {
            const T coef = dA[m * M + n] + dA[n * M + m];
            if (coef == 0) continue;
            const T* un = ub + n * d;
            for (int64_t j = 0; j < d; ++j) du[m * d + j] += coef * un[j];
          }
        }
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < M; ++n) {
            if (w[m * M + n] == 0) continue;
            const T km = static_cast<T>(k[m]);
            for (int64_t j = 0; j < d; ++j) du[n * d + j] += dctx[m * d + j] / km;
          }
        }
        for (int64_t m = 0; m < M; ++m) {
          const T n = N[b * M + m];
          const T* um = ub + m * d;
          const T* dum = du.data() + m * d;
          const T radial = n >= eps ? dot(um, dum, d) : T(0);
          const T clamped = std::max(n, eps);
          T* dhm = dhp + (m * B + b) * d;
          for (int64_t j = 0; j < d; ++j) dhm[j] = (dum[j] - um[j] * radial) / clamped;
        }
      }
    });
  }

  // Step 2 back, the products: ds_m = dh_m W_m, dW_m = dh_m^T s_m.
  std::vector<Tensor> grad_summaries;
  for (int64_t m = 0; m < M; ++m) {
    grad_summaries.push_back(at::mm(dh[m], P(m, kProjW)));
    grads[kPerModality * m + kProjW] = at::mm(dh[m].t(), summaries[m]);
  }

  // Bias gradients and the instance weight's: sums over the batch, one task
  // per (modality, parameter), each in its fixed order.
  for (int64_t m = 0; m < M; ++m) {
    grads[kPerModality * m + kProjB] = at::empty({d}, opts);
    grads[kPerModality * m + kHidB] = at::empty({z.r[m]}, opts);
    grads[kPerModality * m + kInstW] = at::empty({1, z.r[m]}, opts);
    grads[kPerModality * m + kInstB] = at::empty({1}, opts);
    grads[kPerModality * m + kDimB] = at::empty({z.D[m]}, opts);
  }
  {
    const T* dap = ptr<T>(da);
    const T* dhp = ptr<T>(dh);
    const int64_t rsum = std::accumulate(z.r.begin(), z.r.end(), int64_t(0));
    const int64_t Dsum = std::accumulate(z.D.begin(), z.D.end(), int64_t(0));
    const int64_t flops = 2 * B * (M * d + 2 * rsum + Dsum + M);
    at::parallel_for(0, 5 * M, flops >= 2 * kChunkFlops ? 1 : 5 * M, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t m = task / 5;
        switch (task % 5) {
          case 0: column_sums<T>(dhp + m * B * d, B, d, d, nullptr, 0, ptr<T>(grads[kPerModality * m + kProjB])); break;
          case 1: column_sums<T>(ptr<T>(dpre[m]), B, z.r[m], z.r[m], nullptr, 0, ptr<T>(grads[kPerModality * m + kHidB])); break;
          case 2: column_sums<T>(ptr<T>(hidden[m]), B, z.r[m], z.r[m], dap + m, M, ptr<T>(grads[kPerModality * m + kInstW])); break;
          case 3: column_sums<T>(dap + m, B, 1, M, nullptr, 0, ptr<T>(grads[kPerModality * m + kInstB])); break;
          default: column_sums<T>(ptr<T>(dz[m]), B, z.D[m], z.D[m], nullptr, 0, ptr<T>(grads[kPerModality * m + kDimB])); break;
        }
      }
    });
  }

  // Each gradient in its parameter's dtype (a no-op where that is ct).
  // (Tested first: a no-op .to is still a dispatched call, 8 per modality.)
  for (size_t i = 0; i < grads.size(); ++i)
    if (grads[i].scalar_type() != params[i].scalar_type()) grads[i] = grads[i].to(params[i].scalar_type());
  return {grad_summaries, grads};
}

Pair gates_backward(TensorList grad_gates, TensorList summaries, TensorList params,
                    const std::optional<Tensor>& present, TensorList diagnostics, TensorList saved) {
  const AutocastOff no_autocast(c10::autocast_dispatch_keyset);
  const Sizes z = check_gate_args(summaries, params, present, c10::DeviceType::CPU, "CPU", "mmcal::gates_backward");
  const BackwardArgs a = check_backward_args(z, grad_gates, summaries, diagnostics, saved);
  const std::vector<Tensor>&g = a.grad_gates, &diag = a.diagnostics, &sv = a.saved;
  const std::vector<Tensor> p = cast_params(params, z.ct);
  const Presence pres(present);
  return z.ct == at::kDouble ? gates_backward_impl<double>(z, g, summaries, p, params, pres, diag, sv)
                             : gates_backward_impl<float>(z, g, summaries, p, params, pres, diag, sv);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmcal, CPU, m) {
  m.impl("gates", &gates);
  m.impl("gates_backward", &gates_backward);
}

}  // namespace cpu
}  // namespace mmcal
