/* eval_metrics.c - fidelity metrics of a compressed cache against the full one: fp64 log-softmax,
 * KL(full || compressed), top-1 agreement and perplexity of the true tokens. */
#include <math.h>

#include "eval.h"

double sp_eval_log_softmax(const float *logits, int n, double *out)
{
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(logits[i]) && logits[i] > mx)
            mx = logits[i];
    if (mx == -INFINITY) {
        for (int i = 0; i < n; i++)
            out[i] = -INFINITY;
        return -INFINITY;
    }
    double s = 0.0;
    for (int i = 0; i < n; i++)
        if (isfinite(logits[i]))
            s += exp((double)logits[i] - mx);
    double lse = mx + log(s);
    for (int i = 0; i < n; i++)
        out[i] = isfinite(logits[i]) ? (double)logits[i] - lse : -INFINITY;
    return lse;
}

double sp_eval_kl(const double *logp, const double *logq, int n)
{
    double kl = 0.0;
    for (int i = 0; i < n; i++) {
        if (logp[i] == -INFINITY)
            continue;
        if (logq[i] == -INFINITY)
            return INFINITY;
        kl += exp(logp[i]) * (logp[i] - logq[i]);
    }
    return kl > 0.0 ? kl : 0.0;
}

int sp_eval_argmax_d(const double *x, int n)
{
    if (n <= 0)
        return -1;
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

void sp_eval_acc_add(sp_eval_acc *a, const double *logp_ref, const double *logp_test, int n_vocab,
                     int32_t true_tok)
{
    double kl = sp_eval_kl(logp_ref, logp_test, n_vocab);
    a->kl_sum += kl;
    if (kl > a->kl_max)
        a->kl_max = kl;
    if (true_tok >= 0 && true_tok < n_vocab)
        a->nll_sum += -logp_test[true_tok];
    if (sp_eval_argmax_d(logp_ref, n_vocab) == sp_eval_argmax_d(logp_test, n_vocab))
        a->top1_agree++;
    a->n++;
}

double sp_eval_acc_kl(const sp_eval_acc *a)
{
    return a->n ? a->kl_sum / (double)a->n : NAN;
}

double sp_eval_acc_top1(const sp_eval_acc *a)
{
    return a->n ? (double)a->top1_agree / (double)a->n : NAN;
}

double sp_eval_acc_ppl(const sp_eval_acc *a)
{
    return a->n ? exp(a->nll_sum / (double)a->n) : NAN;
}
