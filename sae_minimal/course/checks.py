"""Checkers for the exercises: each runs your function on fixed and random cases, compares it with
the reference and with properties the answer must have, and on failure raises an AssertionError
that says *what* is wrong and hints *why*. On success it prints one line starting with "PASSED".

    from sae_minimal.course.checks import check_soft_threshold
    check_soft_threshold(my_soft_threshold)

Each call of your function gets private copies of its arguments and fails if it changes them in
place (the caller still needs them), and it fails after CALL_TIMEOUT_S seconds (an infinite loop).
A checker proves your function right on its cases, not in general.

One checker per exercise, in the order of the notebooks. (Longer than the package's ~250-line
guide on purpose: each checker is a self-contained ladder of diagnoses, and a teacher looking for
the one an exercise calls should find them all in one file.)
"""

from __future__ import annotations

import copy
import inspect
import math
import signal
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from ..theory.capacity import welch_bound
from ..topk import topk_relu
from ..theory.toy import toy_forward

PASS_MARK = "PASSED"


class CheckFailed(AssertionError):
    """Raised by a checker: the message explains what is wrong with the learner's function."""


def _passed(name: str, detail: str) -> None:
    print(f"{PASS_MARK} {name}: {detail}")


def _fail(name: str, message: str) -> None:
    raise CheckFailed(f"{name}: {message}")


def _call(name: str, fn: Callable, *args):
    """fn(*args) on private copies of the arguments, within CALL_TIMEOUT_S seconds. A function that
    changes an argument in place fails: the checker's reference is computed from the originals, so
    it cannot be fooled by it, and the learner's training code would be corrupted by it."""
    copies = [arg.clone() if isinstance(arg, Tensor) else copy.deepcopy(arg) for arg in args]
    try:   # Tensor.clone keeps the autograd link, so gradients still reach the originals
        out = _within_time_limit(name, fn, copies)
    except NotImplementedError:
        raise CheckFailed(f"{name}: your function raised NotImplementedError -- replace the stub "
                          "`raise NotImplementedError()` with your solution.") from None
    for position, (arg, mine) in enumerate(zip(args, copies)):
        if not _same(arg, mine):
            _fail(name, f"your function changed its argument {_arg_name(fn, position)} in place "
                        f"{_IN_PLACE[Tensor if isinstance(arg, Tensor) else object]}")
    return out


_IN_PLACE = {   # how an argument of each kind gets changed, and what to do instead
    Tensor: "(with `-=`, `x[...] = ...` or a method ending in `_` such as `relu_()`); the caller "
            "still needs the original values. Compute a new tensor instead (or work on a "
            "`.clone()`).",
    object: "(e.g. with `.append()`, `.sort()` or by assigning to an attribute or parameter); "
            "the caller still needs the original. Work on a copy (`list(...)`, "
            "`copy.deepcopy(...)`) or compute without changing it.",
}


def _same(a, b) -> bool:
    """Whether b still equals a (tensors exactly, NaNs included; modules by their state)."""
    if a is b:   # deepcopy returns immutable values (numbers, strings) themselves
        return True
    if isinstance(a, Tensor):
        if not (isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return False
        a, b = a.detach(), b.detach()
        return torch.equal(a, b) or (a.is_floating_point()
                                     and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(_same(sa[k], sb[k]) for k in sa)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- not comparable: nothing to verify
        return True


def _arg_name(fn: Callable, position: int) -> str:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    if position < len(params) and params[position].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return f"`{params[position].name}`"
    return f"number {position + 1}"


# A correct solution answers each case in well under a second; an infinite loop never does.
CALL_TIMEOUT_S = 30.0


class _TimedOut(BaseException):
    """Raised into the learner's function by the alarm: a BaseException, so that an
    ``except Exception:`` inside their loop cannot swallow it."""


def _within_time_limit(name: str, fn: Callable, args: list):
    """fn(*args), or a CheckFailed after CALL_TIMEOUT_S seconds. In the main thread on Unix an
    alarm interrupts the function; elsewhere it runs in a thread that is left behind."""
    seconds = CALL_TIMEOUT_S
    message = (f"{name}: your function did not return within {seconds:g} s: an infinite loop? "
               "Check that every loop ends (a while-loop whose condition never changes, a "
               "counter that is never advanced).")
    main = threading.current_thread() is threading.main_thread()
    if main and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
        running = [True]   # the alarm may only interrupt fn itself, not the code around it

        def on_alarm(signum, frame):
            if running[0]:
                raise _TimedOut

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            out = fn(*args)
            running[0] = False
            return out
        except _TimedOut:
            raise CheckFailed(message) from None
        finally:
            running[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: dict = {}
    grad_mode = torch.is_grad_enabled()   # thread-local: carry the caller's no_grad over

    def target() -> None:
        try:
            with torch.set_grad_enabled(grad_mode):
                box["out"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CheckFailed(message + " (It is still running in the background: restart the "
                                    "kernel to stop it.)")
    if "error" in box:
        raise box["error"]
    return box["out"]


def _as_tensor(name: str, value, like: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        _fail(name, f"expected a torch.Tensor, got {type(value).__name__}.")
    if value.shape != like.shape:
        _fail(name, f"expected shape {tuple(like.shape)}, got {tuple(value.shape)}.")
    return value


# --- Exercise 1 -----------------------------------------------------------------------------------
def check_overcomplete(fn: Callable[[int, int, int], tuple[float, float]]) -> None:
    """fn(d_sae, d_in, l0) -> (overcomplete_factor, fraction_active)."""
    name = "check_overcomplete"
    cases = [(16384, 768, 64), (24576, 768, 32), (4096, 512, 50), (65536, 4096, 100), (100, 10, 3)]
    for d_sae, d_in, l0 in cases:
        out = _call(name, fn, d_sae, d_in, l0)
        if not (isinstance(out, tuple) and len(out) == 2):
            _fail(name, f"return a tuple (overcomplete_factor, fraction_active), got {out!r}.")
        factor, frac = (float(v) for v in out)
        want_f, want_a = d_sae / d_in, l0 / d_sae
        if math.isclose(factor, d_in / d_sae, rel_tol=1e-6) and not math.isclose(factor, want_f):
            _fail(name, f"for d_sae={d_sae}, d_in={d_in} you returned factor {factor:.4g}: "
                        "you divided the wrong way. The overcomplete factor is d_sae / d_in "
                        "(latents per activation dimension).")
        if factor == d_sae // d_in and not math.isclose(factor, want_f):
            _fail(name, f"factor {factor} for d_sae={d_sae}, d_in={d_in}: integer division (//) "
                        f"dropped the fraction; the factor is {want_f:.4g}.")
        if not math.isclose(factor, want_f, rel_tol=1e-6):
            _fail(name, f"for d_sae={d_sae}, d_in={d_in} the overcomplete factor should be "
                        f"{want_f:.4g}, got {factor:.4g}.")
        if math.isclose(frac, l0 / d_in, rel_tol=1e-6) and not math.isclose(frac, want_a):
            _fail(name, f"fraction_active {frac:.4g} = L0 / d_in: the fraction of *latents* active "
                        "is L0 / d_sae.")
        if math.isclose(frac, 100 * want_a, rel_tol=1e-6):
            _fail(name, f"fraction_active {frac:.4g} looks like a percentage: "
                        "return a fraction in [0, 1].")
        if not math.isclose(frac, want_a, rel_tol=1e-6):
            _fail(name, f"for d_sae={d_sae}, l0={l0} the fraction of latents active should be "
                        f"{want_a:.4g}, got {frac:.4g}.")
    _passed(name, f"{len(cases)} cases, e.g. d_sae=16384, d_in=768, L0=64 -> factor "
                  f"{16384 / 768:.2f}, {64 / 16384:.3%} of latents active")


# --- Exercise 3 -----------------------------------------------------------------------------------
def soft_threshold(z: Tensor, lam: float) -> Tensor:
    """Reference: prox of λ||·||₁, sign(z)·max(|z| - λ, 0)."""
    return torch.sign(z) * torch.clamp(z.abs() - lam, min=0)


def check_soft_threshold(fn: Callable[[Tensor, float], Tensor]) -> None:
    """fn(z, lam) -> sign(z)·max(|z| - λ, 0), the proximal operator of λ||·||₁."""
    name = "check_soft_threshold"
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.2, 1.0, 3.0]), 0.5)]
    cases += [(4 * torch.randn(64, generator=gen), lam) for lam in (0.1, 1.0, 2.5)]
    for z, lam in cases:
        out = _as_tensor(name, _call(name, fn, z.clone(), lam), z)
        want = soft_threshold(z, lam)
        small, neg_big, pos_big = z.abs() < lam, z < -lam, z > lam
        if (out[small] < -1e-6).any():
            _fail(name, f"with λ={lam} your soft-threshold returns negative values for inputs "
                        f"with |z| < λ (e.g. z={z[small & (out < 0)][0]:.3f} -> "
                        f"{out[small & (out < 0)][0]:.3f}): did you forget the sign? "
                        "Inside [-λ, λ] the answer is exactly 0.")
        if (out[small].abs() > 1e-6).any():
            _fail(name, f"with λ={lam} inputs with |z| < λ must map to 0 "
                        "(that is where sparsity comes from); "
                        f"z={z[small][out[small].abs() > 1e-6][0]:.3f} gave a non-zero value.")
        if neg_big.any() and (out[neg_big].abs() < 1e-6).all():
            _fail(name, "negative inputs below -λ all map to 0: max(z - λ, 0) only handles "
                        "positive z. Apply the shrinkage to |z| and put the sign back: "
                        "sign(z)·max(|z| - λ, 0).")
        if pos_big.any() and torch.allclose(out[pos_big], z[pos_big]):
            _fail(name, "values above λ are returned unchanged: that is hard thresholding. "
                        "The L1 proximal operator also *shrinks* every surviving value by λ "
                        "towards zero.")
        if not torch.allclose(out, want, atol=1e-5):
            i = int((out - want).abs().argmax())
            _fail(name, f"with λ={lam}, z={z[i]:.4f} should give {want[i]:.4f}, got {out[i]:.4f}. "
                        "Surviving values move towards 0 by exactly λ.")
    _passed(name, f"{len(cases)} cases (values inside [-λ, λ] go to 0, the rest shrink by λ)")


# --- TopK activation ------------------------------------------------------------------------------
def check_topk_activation(fn: Callable[[Tensor, int], Tensor]) -> None:
    """fn(pre_acts [batch, d_sae], k) -> [batch, d_sae]:
    k largest per row, ReLU'd, rest zero."""
    name = "check_topk_activation"
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([[-3.0, -1.0, -2.0, 0.5], [4.0, -5.0, 1.0, 2.0]]), 2)]
    cases += [(torch.randn(8, 32, generator=gen), k) for k in (1, 4, 10)]
    cases += [(torch.randn(5, 16, generator=gen) - 1.5, 6)]
    for pre, k in cases:
        out = _call(name, fn, pre.clone(), k)
        if isinstance(out, Tensor) and out.shape == (pre.shape[0], k):
            _fail(name, f"you returned shape {tuple(out.shape)}, the top-k *values*. Scatter them "
                        f"back into a zero tensor of shape {tuple(pre.shape)} so latent i stays in "
                        "column i.")
        out = _as_tensor(name, out, pre)
        want = topk_relu(pre, k)
        if (out < 0).any():
            _fail(name, "your output has negative entries: apply ReLU to the selected values "
                        "(a latent's activation is never negative).")
        if ((out != 0).sum(-1) > k).any():
            _fail(name, f"some rows have more than k={k} non-zero latents: keep the k largest "
                        "*per row* (topk along dim=-1), not per column.")
        by_abs = torch.zeros_like(pre).scatter_(
            -1, pre.abs().topk(k, dim=-1).indices,
            pre.gather(-1, pre.abs().topk(k, dim=-1).indices)).relu()
        if torch.allclose(out, by_abs) and not torch.allclose(out, want):
            _fail(name, "you selected the k entries with the largest |value|: TopK selects the "
                        "k *largest* pre-activations (a large negative pre-activation means "
                        "'not present').")
        if not torch.allclose(out, want, atol=1e-6):
            row = int((out - want).abs().sum(-1).argmax())
            # a row's .nonzero() is [nnz, 1]; .flatten() gives [nnz], the columns that fired
            _fail(name, f"row {row} differs from the reference (k={k}): expected non-zeros at "
                        f"{want[row].nonzero().flatten().tolist()}, "
                        f"got {out[row].nonzero().flatten().tolist()}.")
    _passed(name, f"{len(cases)} cases (exactly the k largest per row survive, ReLU'd)")


# --- Exercise 4 -----------------------------------------------------------------------------------
def _topk_reference_grads(x, W_enc, b_enc, W_dec, b_dec, k):
    params = [t.detach().clone().requires_grad_() for t in (W_enc, b_enc, W_dec, b_dec)]
    We, be, Wd, bd = params
    z = topk_relu(x @ We + be, k)
    loss = ((z @ Wd + bd - x) ** 2).sum(-1).mean()
    loss.backward()
    return dict(zip(("W_enc", "b_enc", "W_dec", "b_dec"), (p.grad for p in params)))


def _hand_grads(x, W_enc, b_enc, W_dec, b_dec, k, *, relu: bool, mask: str) -> dict:
    """Wrong answers, by hand: z = TopK of pre (ReLU'd if ``relu``); gradient to pre through
    ``mask``: "none" (straight-through, every latent) or "selected" (the k chosen latents, even
    those whose pre-activation is negative)."""
    pre = x @ W_enc + b_enc
    values, indices = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values.relu() if relu else values)
    g_xhat = 2 * (z @ W_dec + b_dec - x) / x.shape[0]
    g_pre = g_xhat @ W_dec.T
    if mask == "selected":
        g_pre = g_pre * torch.zeros_like(pre).scatter(-1, indices, 1.0)
    return {"W_enc": x.T @ g_pre, "b_enc": g_pre.sum(0), "W_dec": z.T @ g_xhat,
            "b_dec": g_xhat.sum(0)}


_TOPK_WRONG = {   # (relu, mask) -> what the learner did
    (True, "none"): "gradient reached latents that were not selected by TopK: that is a "
                    "straight-through estimator, not the true gradient. Multiply by the TopK mask "
                    "(z > 0): unselected latents are constant 0 near this input, so "
                    "d loss / d pre = 0 there.",
    (False, "selected"): "a selected latent with a negative pre-activation kept its negative "
                         "value: TopK(ReLU) applies ReLU to the k selected values, so z is never "
                         "negative (z = 0 there, and no gradient flows through it).",
    (True, "selected"): "gradient flowed through selected latents whose pre-activation is "
                        "negative: ReLU made them 0 with slope 0, so mask by z > 0, not by the "
                        "TopK selection.",
}


def check_topk_backward(fn: Callable) -> None:
    """fn(x, W_enc, b_enc, W_dec, b_dec, k) -> {"W_enc", "b_enc", "W_dec", "b_dec"}: hand-written
    gradients of loss = ((x_hat - x)**2).sum(-1).mean() with
    x_hat = TopK(ReLU)(x @ W_enc + b_enc) @ W_dec + b_dec."""
    name = "check_topk_backward"
    gen = torch.Generator().manual_seed(0)
    # case 1 shifts b_enc down so that most rows have fewer than k positive pre-activations: TopK
    # then selects negative ones, which the ReLU must zero (and which must get no gradient)
    cases = [(6, 4, 10, 2, 0.0), (32, 8, 40, 5, -1.5), (1, 5, 12, 3, 0.0)]
    for trial, (B, d, n, k, shift) in enumerate(cases):
        x = torch.randn(B, d, generator=gen)
        W_enc, W_dec = (torch.randn(d, n, generator=gen) / d**0.5,
                        torch.randn(n, d, generator=gen) / n**0.5)
        b_enc, b_dec = 0.1 * torch.randn(n, generator=gen), 0.1 * torch.randn(d, generator=gen)
        b_enc = b_enc + shift
        grads = _call(name, fn, x, W_enc, b_enc, W_dec, b_dec, k)
        if not isinstance(grads, dict) or set(grads) != {"W_enc", "b_enc", "W_dec", "b_dec"}:
            _fail(name, f"return a dict with keys 'W_enc', 'b_enc', 'W_dec', 'b_dec'; got "
                        f"{sorted(grads) if isinstance(grads, dict) else type(grads).__name__}.")
        want = _topk_reference_grads(x, W_enc, b_enc, W_dec, b_dec, k)
        wrong = {hint: _hand_grads(x, W_enc, b_enc, W_dec, b_dec, k, relu=relu, mask=mask)
                 for (relu, mask), hint in _TOPK_WRONG.items()}
        for key in ("b_dec", "W_dec", "b_enc", "W_enc"):
            g, w = grads[key], want[key]
            if not isinstance(g, Tensor) or g.shape != w.shape:
                _fail(name, f"grad[{key!r}] must be a tensor of shape {tuple(w.shape)} "
                            f"(the shape of {key}), got "
                            f"{tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__}.")
            if torch.allclose(g, w, atol=1e-5, rtol=1e-4):
                continue
            for hint, grads_wrong in wrong.items():
                if torch.allclose(g, grads_wrong[key], atol=1e-5, rtol=1e-4):
                    _fail(name, f"grad[{key!r}]: {hint}")
            for factor, hint in ((2.0, "missing the factor 2 from the derivative of the square"),
                                 (0.5, "an extra factor 2"),
                                 (1.0 / B, f"missing the 1/B={1 / B:.3g} from .mean() over "
                                           "the batch"),
                                 (float(B), f"dividing by the batch size twice (off by B={B})")):
                if B > 1 or factor in (2.0, 0.5):
                    if torch.allclose(g * factor, w, atol=1e-5, rtol=1e-4):
                        _fail(name, f"grad[{key!r}] is off by a constant factor: {hint}.")
            if g.ndim == 2 and g.shape[0] == g.shape[1] and torch.allclose(g.T, w, atol=1e-5):
                _fail(name, f"grad[{key!r}] is transposed: it must have the layout of {key}.")
            err = float((g - w).abs().max())
            _fail(name, f"grad[{key!r}] differs from autograd by up to {err:.3g} "
                        f"(case {trial}: B={B}, d_in={d}, d_sae={n}, k={k}). "
                        "Chain rule: g_xhat = 2(x_hat - x)/B; grad W_dec = zᵀ g_xhat; "
                        "g_z = g_xhat W_decᵀ; g_pre = g_z ⊙ 1[z > 0]; grad W_enc = xᵀ g_pre.")
    _passed(name, "3 cases match autograd (gradient flows only through the k selected latents)")


# --- Exercise 5 -----------------------------------------------------------------------------------
def check_welch_bound(fn: Callable[[int, float], float]) -> None:
    """fn(d, eps) -> largest N allowed by the first Welch bound; math.inf when the bound is
    vacuous."""
    name = "check_welch_bound"
    cases = [(4096, 0.01), (4096, 0.1), (768, 0.02), (100, 0.05), (2, 0.5), (10, 0.0), (512, 0.03),
             (4096, 0.015625)]
    for d, eps in cases:
        got = _call(name, fn, d, eps)
        want = welch_bound(d, eps)
        if want == math.inf:
            if got != math.inf:
                _fail(name, f"d={d}, eps={eps}: d·ε² = {d * eps**2:.3g} >= 1, so 1 - dε² <= 0 and "
                            "the bound says nothing (it would be negative or infinite); "
                            f"return math.inf, not {got!r}.")
            continue
        raw = d * (1 - eps**2) / (1 - d * eps**2)
        if got == want:
            continue
        if got == math.inf:
            _fail(name, f"d={d}, eps={eps}: d·ε² = {d * eps**2:.3g} < 1, so the bound is finite: "
                        f"N <= {want:.0f}.")
        if math.isclose(float(got), raw, rel_tol=1e-9):
            _fail(name, f"d={d}, eps={eps}: you returned {got:.4f}; N counts vectors, so round "
                        f"down to {want:.0f}.")
        if d * eps < 1 and math.isclose(float(got), d * (1 - eps) / (1 - d * eps), rel_tol=1e-6):
            _fail(name, f"d={d}, eps={eps}: the Welch bound uses ε² (squared inner products), "
                        "not ε.")
        _fail(name, f"d={d}, eps={eps}: expected floor(d(1-ε²)/(1-dε²)) = {want:.0f}, got {got!r}.")
    _passed(name, f"{len(cases)} cases, e.g. d=4096: ε=0.01 -> N <= {welch_bound(4096, 0.01):.0f}, "
                  "ε=0.1 -> vacuous (inf)")


# --- JumpReLU forward + STE backward --------------------------------------------------------------
def _jumprelu_reference(z, theta, eps):
    from ..jumprelu import jumprelu
    return jumprelu(z, theta, eps)


def check_jumprelu(fn: Callable[[Tensor, Tensor, float], Tensor]) -> None:
    """fn(z [B, d_sae], threshold [d_sae], bandwidth) -> z·H(z - θ), differentiable:
    d/dz = H(z - θ), d/dθ = -(θ/ε)·K((z - θ)/ε) with the rectangle kernel K(u) = 1[|u| < 1/2]."""
    name = "check_jumprelu"
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([[0.5, 1.05, 1.2, 2.0], [0.96, 1.6, -1.0, 0.99]]),
              torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.2)]
    cases += [(torch.randn(16, 8, generator=gen), 0.2 + torch.rand(8, generator=gen), eps)
              for eps in (0.1, 0.5)]
    for z0, t0, eps in cases:
        z, theta = z0.clone().requires_grad_(), t0.clone().requires_grad_()
        out = _as_tensor(name, _call(name, fn, z, theta, eps), z0)
        zr, tr = z0.clone().requires_grad_(), t0.clone().requires_grad_()
        want = _jumprelu_reference(zr, tr, eps)
        if not torch.allclose(out.detach(), want.detach(), atol=1e-6):
            shrunk = torch.where(z0 > t0, z0 - t0, torch.zeros_like(z0))
            if torch.allclose(out.detach(), shrunk, atol=1e-6):
                _fail(name, "you returned z - θ above the threshold: JumpReLU passes z through "
                            "*unchanged* (no shrinkage); only values at or below θ become 0.")
            _fail(name, "forward values differ: JumpReLU_θ(z) = z where z > θ, else 0.")
        if not out.requires_grad:
            _fail(name, "the output does not require grad: use a torch.autograd.Function "
                        "(or the STE trick) so that backward reaches z and θ.")
        g = torch.randn(out.shape, generator=gen)
        (out * g).sum().backward()
        (want * g).sum().backward()
        if z.grad is None or theta.grad is None:
            _fail(name, "backward did not reach both z and threshold: return a gradient for each.")
        if not torch.allclose(z.grad, zr.grad, atol=1e-5):
            if torch.allclose(z.grad, g, atol=1e-5):
                _fail(name, "d/dz is 1 everywhere: the true gradient of z·H(z-θ) with respect to z "
                            "is H(z - θ), zero below the threshold.")
            _fail(name, "d/dz is wrong: it should be H(z - θ)·grad_output.")
        if not torch.allclose(theta.grad, tr.grad, atol=1e-4):
            if torch.allclose(theta.grad * t0, tr.grad, atol=1e-4):
                _fail(name, "d/dθ is missing the factor θ: for JumpReLU it is -(θ/ε)·K((z-θ)/ε); "
                            "-(1/ε)·K is the step function's pseudo-derivative "
                            "(used for the L0 penalty).")
            if torch.allclose(-theta.grad, tr.grad, atol=1e-4):
                _fail(name, "d/dθ has the wrong sign: raising θ can only switch units off, so it "
                            "lowers the output.")
            if theta.grad.abs().sum() == 0:
                _fail(name, "d/dθ is zero: the Heaviside step has zero derivative almost "
                            "everywhere, which is why the STE replaces it by a kernel: "
                            "-(θ/ε)·K((z-θ)/ε).")
            _fail(name, f"d/dθ is wrong (bandwidth ε={eps}): use the rectangle kernel "
                        "K(u) = 1[|u| < 1/2] at u = (z - θ)/ε, and sum over the batch.")
    _passed(name, f"{len(cases)} cases (forward, exact d/dz, STE d/dθ)")


# --- Toy model loss -------------------------------------------------------------------------------
def check_toy_model_loss(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """fn(W [m, n], b [n], x [B, n], importance [n]) -> scalar
    mean_x Σ_i I_i (x_i - ReLU(WᵀWx + b)_i)²."""
    name = "check_toy_model_loss"
    gen = torch.Generator().manual_seed(0)
    for m, n, B in ((2, 5, 64), (1, 2, 7), (3, 3, 10)):
        W, b = torch.randn(m, n, generator=gen), 0.3 * torch.randn(n, generator=gen)
        x = torch.rand(B, n, generator=gen) * (torch.rand(B, n, generator=gen) < 0.5)
        imp = 0.7 ** torch.arange(n, dtype=torch.float32)
        got = _call(name, fn, W, b, x, imp)
        if not isinstance(got, Tensor) or got.numel() != 1:
            _fail(name, f"return a scalar tensor, got {got!r}.")
        x_hat = toy_forward(W[None], b[None], x[None])[0]  # one instance: W [1, m, n], x [1, B, n]
        want = ((x - x_hat) ** 2 * imp).sum(-1).mean()
        if torch.isclose(got, want, rtol=1e-4):
            continue
        lin = x @ W.T @ W + b
        if torch.isclose(got, ((x - lin) ** 2 * imp).sum(-1).mean(), rtol=1e-4):
            _fail(name, "you forgot the ReLU on the output: x' = ReLU(WᵀWx + b). The ReLU is what "
                        "lets the model filter out negative interference, and so what makes "
                        "superposition pay.")
        if torch.isclose(got, ((x - x_hat) ** 2).sum(-1).mean(), rtol=1e-4):
            _fail(name, "the importance weights are missing: multiply each feature's squared error "
                        "by I_i.")
        if torch.isclose(got, ((x - x_hat) ** 2 * imp).sum(), rtol=1e-4):
            _fail(name, "you summed over the batch: average over inputs "
                        "(mean over the batch dimension).")
        if torch.isclose(got, ((x - x_hat) ** 2 * imp).mean(), rtol=1e-4):
            _fail(name, "you averaged over features too: sum over features (weighted by I_i), "
                        "mean over the batch.")
        _fail(name, f"loss {float(got):.5f} differs from the reference {float(want):.5f} "
                    f"(m={m}, n={n}).")
    _passed(name, "3 cases (importance-weighted, ReLU output, mean over the batch)")


# --- Recovery score -------------------------------------------------------------------------------
def check_recovery_score(fn: Callable[[Tensor, Tensor, float], tuple[float, float]]) -> None:
    """fn(true_dictionary [n, d], W_dec [d_sae, d], threshold) -> (mmcs, frac_recovered): for each
    *true* feature the best cosine to any decoder row; their mean, and the fraction above
    ``threshold``."""
    name = "check_recovery_score"
    gen = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(10, 6, generator=gen), dim=-1)
    noisy = D + 0.3 * torch.randn(10, 6, generator=gen)
    # unnormalised, some flipped
    W_dec = torch.cat([5.0 * noisy[:7], -D[7:], torch.randn(20, 6, generator=gen)])
    cos = torch.nn.functional.normalize(D, dim=-1) @ torch.nn.functional.normalize(W_dec, dim=-1).T
    best = cos.max(1).values
    want = (float(best.mean()), float((best > 0.9).float().mean()))
    got = _call(name, fn, D, W_dec, 0.9)
    if not (isinstance(got, tuple) and len(got) == 2):
        _fail(name, f"return a tuple (mmcs, frac_recovered), got {got!r}.")
    mm, fr = float(got[0]), float(got[1])
    if (math.isclose(mm, float(cos.abs().max(1).values.mean()), rel_tol=1e-4)
            and not math.isclose(mm, want[0], rel_tol=1e-4)):
        _fail(name, "you used |cos|: a decoder row pointing *against* a feature does not "
                    "recover it (latents are non-negative, so the SAE can only add the direction, "
                    "never subtract it).")
    if (math.isclose(mm, float(cos.max(0).values.mean()), rel_tol=1e-4)
            and not math.isclose(mm, want[0], rel_tol=1e-4)):
        _fail(name, "you averaged over the SAE's latents: MMCS to the truth asks, for each *true* "
                    "feature, how well its best latent matches (max over latents, mean over true "
                    "features).")
    raw = (D @ W_dec.T).max(1).values.mean()
    if math.isclose(mm, float(raw), rel_tol=1e-4):
        _fail(name, "you used dot products, not cosines: normalise the decoder rows "
                    "(they need not be unit norm).")
    if not math.isclose(mm, want[0], rel_tol=1e-4):
        _fail(name, f"mmcs should be {want[0]:.4f}, got {mm:.4f}.")
    if not math.isclose(fr, want[1], rel_tol=1e-6):
        _fail(name, f"frac_recovered should be {want[1]:.2f} (fraction of true features whose best "
                    f"cosine > 0.9), got {fr:.2f}.")
    _passed(name, f"mmcs {want[0]:.3f}, recovered {want[1]:.0%} on a case with unnormalised and "
                  "flipped decoder rows")


# --- Notebook 05: ablation through the SAE --------------------------------------------------------
def _random_sae(d_in: int, d_sae: int, k: int, seed: int):
    from ..topk import TopKSAE

    sae = TopKSAE(d_in, d_sae, k=k, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # untie encoder and decoder, so W_enc[:, i] and W_dec[i] differ
        sae.W_enc.add_(0.5 * torch.randn(sae.W_enc.shape, generator=gen))
        sae.b_dec.copy_(torch.randn(d_in, generator=gen))
    return sae.eval()


def check_ablate_latent(fn: Callable) -> None:
    """fn(x [B, d_in], sae, latent) -> [B, d_in]: x with latent ``latent``'s contribution
    f_i(x)·d_i removed, the SAE's error term kept."""
    name = "check_ablate_latent"
    gen = torch.Generator().manual_seed(0)
    sae = _random_sae(8, 32, 4, seed=0)
    x = torch.randn(64, 8, generator=gen) * 3
    with torch.no_grad():
        f = sae.encode(x)
    # a busy latent and a rare one
    latents = [int(f.gt(0).sum(0).argmax()), int(f.gt(0).sum(0).argmin())]
    for latent in latents:
        with torch.no_grad():   # _call fails a function that changes x (or the SAE) in place
            out = _call(name, fn, x, sae, latent)
        out = _as_tensor(name, out, x).detach()
        want = x - f[:, latent, None] * sae.W_dec[latent].detach()
        if torch.allclose(out, want, atol=1e-4):
            continue
        with torch.no_grad():
            f_zeroed = f.clone()
            f_zeroed[:, latent] = 0
            without_error = sae.decode(f_zeroed)
        if torch.allclose(out, without_error, atol=1e-4):
            _fail(name, "you returned the SAE's reconstruction with the latent zeroed, dropping "
                        "the error term x - x̂. Add it back: the experiment must change only what "
                        "the latent contributes.")
        if torch.allclose(out, x - sae.W_dec[latent].detach(), atol=1e-4):
            _fail(name, "you subtracted the decoder direction d_i itself: scale it by the latent's "
                        "activation f_i(x) (per row; rows where the latent does not fire must stay "
                        "unchanged).")
        if torch.allclose(out, x - f[:, latent, None] * sae.W_enc[:, latent].detach(), atol=1e-4):
            _fail(name, "you used the encoder column W_enc[:, i]: the latent writes into the "
                        "activation along its *decoder* direction W_dec[i].")
        unchanged = f[:, latent] == 0
        if not torch.allclose(out[unchanged], x[unchanged], atol=1e-4):
            _fail(name, "rows where the latent does not fire changed: there f_i(x) = 0, so "
                        "ablation is a no-op.")
        _fail(name, f"for latent {latent}, expected x - f_i(x)·W_dec[i]; the largest difference is "
                    f"{float((out - want).abs().max()):.3g}.")
    _passed(name, f"latents {latents}: only f_i(x)·d_i removed, error term kept, input untouched")


# --- Notebook 06: the Matryoshka loss -------------------------------------------------------------
def _matryoshka_reference(x, latents, W_dec, b_dec, prefix_sizes, *, from_end=False, reduce="sum",
                          per_elem=False):
    terms = []
    for m in prefix_sizes:
        sl = slice(latents.shape[1] - m, None) if from_end else slice(0, m)
        err = (latents[:, sl] @ W_dec[sl] + b_dec - x).pow(2)
        terms.append(err.mean() if per_elem else err.sum(-1).mean())
    terms = torch.stack(terms)
    return terms.sum() if reduce == "sum" else terms.mean()


def check_matryoshka_loss(fn: Callable) -> None:
    """fn(x [B, d_in], latents [B, d_sae], W_dec [d_sae, d_in], b_dec [d_in], prefix_sizes) ->
    scalar: Σ_m  mean_b ||x_b - (latents[b, :m] @ W_dec[:m] + b_dec)||²  over the prefix sizes m
    (the last is d_sae)."""
    name = "check_matryoshka_loss"
    gen = torch.Generator().manual_seed(0)
    B, d_in, d_sae = 16, 6, 24
    x = torch.randn(B, d_in, generator=gen)
    latents = torch.randn(B, d_sae, generator=gen).relu()
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=-1)
    b_dec = torch.randn(d_in, generator=gen)
    sizes = [3, 8, 24]
    got = _call(name, fn, x, latents, W_dec, b_dec, sizes)
    if not isinstance(got, Tensor) or got.numel() != 1:
        _fail(name, f"return a scalar tensor (one loss for the batch), got {got!r}.")
    got = float(got)
    want = float(_matryoshka_reference(x, latents, W_dec, b_dec, sizes))
    if math.isclose(got, want, rel_tol=1e-4):
        _passed(name, f"{len(sizes)} nested prefixes {sizes}: loss {want:.4f}")
        return
    wrong = {
        "only the full dictionary": float(_matryoshka_reference(x, latents, W_dec, b_dec,
                                                                sizes[-1:])),
        "averaged over prefixes": float(_matryoshka_reference(x, latents, W_dec, b_dec, sizes,
                                                              reduce="mean")),
        "last m latents": float(_matryoshka_reference(x, latents, W_dec, b_dec, sizes,
                                                      from_end=True)),
        "no b_dec": float(_matryoshka_reference(x, latents, W_dec, torch.zeros(d_in), sizes)),
        "per element": float(_matryoshka_reference(x, latents, W_dec, b_dec, sizes,
                                                   per_elem=True)),
    }
    hints = {
        "only the full dictionary": "you only counted the full reconstruction: add one term "
                                    "per prefix size m, each reconstructing x from the first m "
                                    "latents alone.",
        "averaged over prefixes": "you averaged the prefix losses: Bussmann et al. (2025) sum "
                                  "them (each prefix is trained as a full SAE).",
        "last m latents": "you used the *last* m latents: a Matryoshka prefix is the *first* m "
                          "latents (latents[:, :m] with W_dec[:m]).",
        "no b_dec": "every prefix reconstruction includes the decoder bias: "
                    "x̂_m = latents[:, :m] @ W_dec[:m] + b_dec.",
        "per element": "you averaged over d_in as well (F.mse_loss's default): sum the squared "
                       "error over d_in, average over the batch.",
    }
    for key, value in wrong.items():
        if math.isclose(got, value, rel_tol=1e-4):
            _fail(name, hints[key])
    _fail(name, f"expected {want:.4f}, got {got:.4f}. Check each prefix term: mean over the "
                "batch of ||x - (latents[:, :m] @ W_dec[:m] + b_dec)||².")
