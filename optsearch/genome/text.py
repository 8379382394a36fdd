"""A genome as text: its update rule on one line, and with its hyperparameters on several."""

from __future__ import annotations

from typing import Any

from optsearch.genome.primitives import NONE, PRIMITIVES


def formula(g: Any) -> str:
    """The update rule as one readable line, duplicate terms merged (Σ α)."""
    merged = g.merged_terms()
    inner = " + ".join(
        PRIMITIVES[t].symbol if a == 1.0 else f"{_num(a)}·{PRIMITIVES[t].symbol}" for t, a in merged.items()
    )
    rule = f"Δθ = −η_t·({inner})" if merged else "Δθ = 0"
    if g.trust_ratio and merged:
        rule = rule.replace("Δθ = −η_t·(", "Δθ = −η_t·trust(", 1)
    if g.weight_decay:
        rule += " − η_t·λ·θ"
    notes = ["bias correction" if g.bias_correction else "no bias correction"]
    if g.clip == "value":
        notes.append(f"clip each |g_i|≤{_num(g.clip_threshold)} (element-wise)")
    elif g.clip == "norm":
        notes.append(f"clip ‖g‖₂≤{_num(g.clip_threshold)} (global norm)")
    sched = []
    if g.warmup:
        sched.append(f"warmup {g.warmup_frac:.0%}")
    if g.cosine_decay:
        sched.append("cosine")
    notes.append(", ".join(sched) if sched else "constant lr")
    return f"{rule}   [{'; '.join(notes)}]"

def describe(g: Any) -> str:
    """Formula plus hyperparameters, several lines (for ``genome show`` / ``study show``)."""
    lines = [
        formula(g),
        f"  η = 10^{g.lr_log10:.4g} = {g.lr:.3g}   β1 = {g.beta1:.4g}   β2 = {g.beta2:.4g}"
        f"   ε = 10^{g.eps_log10:.4g}" + (f"   β3 = {g.beta3:.6g}" if g.extra_term in ("ademamix", "adan_diff")
                                            else ""),
        f"  λ = {'10^%.4g = %.3g' % (g.wd_log10, g.wd) if g.weight_decay else 'off'}",
    ]
    pairs = list(zip(g.terms, g.alphas))
    if g.sign_term != NONE:
        pairs.append((g.sign_term, g.sign_alpha))
    if g.extra_term != NONE:
        pairs.append((g.extra_term, g.extra_alpha))
    slots = ", ".join(f"{t}×{a:.4g}" for t, a in pairs)
    lines.append(f"  slots: {slots}")
    return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:.3g}"
