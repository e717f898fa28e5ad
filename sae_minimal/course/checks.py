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
import numbers
import signal
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from ..lm.autointerp import balanced_accuracy
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


def _name_the_mistake(name: str, got: float, wrong: dict[str, float], hints: dict[str, str],
                      **tolerance) -> None:
    """Fail with the hint for the first known wrong answer that ``got`` equals
    (``math.isclose`` with ``tolerance``); return if it matches none."""
    for key, value in wrong.items():
        if math.isclose(got, value, **tolerance):
            _fail(name, hints[key])


def _call(name: str, fn: Callable, *args):
    """fn(*args) on private copies of the arguments, within CALL_TIMEOUT_S seconds. A function that
    changes an argument in place fails: the checker's reference is computed from the originals, so
    it cannot be fooled by it, and the learner's training code would be corrupted by it."""
    # Tensor.clone keeps the autograd link, so gradients still reach the originals
    copies = [arg.clone() if isinstance(arg, Tensor) else copy.deepcopy(arg) for arg in args]
    out = _run(name, fn, copies)
    for position, (arg, mine) in enumerate(zip(args, copies)):
        if not _same(arg, mine):
            _fail(name, f"your function changed its argument {_arg_name(fn, position)} in place "
                        f"{_IN_PLACE[Tensor if isinstance(arg, Tensor) else object]}")
    return out


def _run(name: str, fn: Callable, args: list):
    """fn(*args) as given (no copies: ``_call`` makes them), within CALL_TIMEOUT_S seconds, with
    the stub's NotImplementedError turned into a hint."""
    try:
        return _within_time_limit(name, fn, args)
    except NotImplementedError:
        raise CheckFailed(f"{name}: your function raised NotImplementedError -- replace the stub "
                          "`raise NotImplementedError()` with your solution.") from None


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
    if isinstance(a, torch.Generator):   # drawing from it is what it is for
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
    if value.dtype != like.dtype and value.is_floating_point() and like.is_floating_point():
        return value.to(like.dtype)   # e.g. float64 arithmetic: the values are what is checked
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
                        f"{out[small & (out < 0)][0]:.3f}): did you forget to clip at 0? "
                        "Shrinking |z| by λ overshoots past 0 there, so take max(|z| - λ, 0) "
                        "before putting the sign back: inside [-λ, λ] the answer is exactly 0.")
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


_NO_B_DEC = ("x_hat left out b_dec: x_hat = z @ W_dec + b_dec, so the residual x_hat - x in "
             "g_xhat = 2(x_hat - x)/B includes it.")
_NO_B_ENC = ("pre left out b_enc: pre = x @ W_enc + b_enc decides which k latents TopK selects "
             "and their values.")


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
        # a bias left out of the forward pass: the same chain rule on the wrong x_hat or pre
        wrong[_NO_B_DEC] = _topk_reference_grads(x, W_enc, b_enc, W_dec, torch.zeros_like(b_dec), k)
        wrong[_NO_B_ENC] = _topk_reference_grads(x, W_enc, torch.zeros_like(b_enc), W_dec, b_dec, k)
        for key in ("b_dec", "W_dec", "b_enc", "W_enc"):
            g, w = grads[key], want[key]
            if not isinstance(g, Tensor) or g.shape != w.shape:
                _fail(name, f"grad[{key!r}] must be a tensor of shape {tuple(w.shape)} "
                            f"(the shape of {key}), got "
                            f"{tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__}.")
            g = g.to(w.dtype)            # float64 arithmetic is fine: the values are checked
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
             (4096, 0.015625), (100, 0.005)]
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
        squared = ("the Welch bound uses ε² (it bounds squared inner products, through "
                   "‖G‖_F² >= (tr G)² / d), not ε")
        if got == math.inf:
            if d * eps >= 1:   # the vacuity test written with ε: d·ε >= 1 comes far sooner
                _fail(name, f"d={d}, eps={eps}: you returned inf, but d·ε² = {d * eps**2:.3g} < 1, "
                            f"so the bound is finite: N <= {want:.0f}. Did you test d·ε >= 1? "
                            f"{squared[0].upper()}{squared[1:]}.")
            _fail(name, f"d={d}, eps={eps}: d·ε² = {d * eps**2:.3g} < 1, so the bound is finite: "
                        f"N <= {want:.0f}.")
        if math.isclose(float(got), raw, rel_tol=1e-9):
            _fail(name, f"d={d}, eps={eps}: you returned {got:.4f}; N counts vectors, so round "
                        f"down to {want:.0f}.")
        with_eps = [d * (1 - eps) / (1 - d * eps)] if d * eps < 1 else []
        if any(math.isclose(float(got), w, rel_tol=1e-6) for w in with_eps + [math.floor(w) for w in with_eps]):
            _fail(name, f"d={d}, eps={eps}: you returned {got!r}, the bound with ε in place of ε²: "
                        f"{squared}; expected {want:.0f}.")
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
            kernel = (((z0 - t0) / eps).abs() < 0.5).float()
            if torch.allclose(theta.grad, (-(t0 / eps) * kernel).sum(0), atol=1e-4):
                _fail(name, "d/dθ ignores grad_output: the kernel term is right, but backward must "
                            "multiply it by grad_output (the chain rule) before summing over the "
                            "batch.")
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
        def loss_of(x_out: Tensor) -> Tensor:   # the loss for a given output x' (right or wrong)
            return ((x - x_out) ** 2 * imp).sum(-1).mean()
        x_hat = toy_forward(W[None], b[None], x[None])[0]  # one instance: W [1, m, n], x [1, B, n]
        if torch.isclose(got, loss_of(x_hat), rtol=1e-4):
            continue
        if torch.isclose(got, loss_of(x @ W.T @ W + b), rtol=1e-4):
            _fail(name, "you forgot the ReLU on the output: x' = ReLU(WᵀWx + b). The ReLU is what "
                        "lets the model filter out negative interference, and so what makes "
                        "superposition pay.")
        if torch.isclose(got, loss_of(torch.relu(x @ W.T @ W)), rtol=1e-4):
            _fail(name, "the bias b is missing: x' = ReLU(WᵀWx + b). The model learns b too; a "
                        "negative b is how it switches off small interference.")
        if torch.isclose(got, loss_of(torch.relu(x @ W.T @ W) + b), rtol=1e-4):
            _fail(name, "you added b after the ReLU: x' = ReLU(WᵀWx + b), with b inside. Outside, "
                        "it cannot filter interference, and the output can go negative.")
        if torch.isclose(got, ((x - x_hat) ** 2).sum(-1).mean(), rtol=1e-4):
            _fail(name, "the importance weights are missing: multiply each feature's squared error "
                        "by I_i.")
        if torch.isclose(got, ((x - x_hat) ** 2 * imp).sum(), rtol=1e-4):
            _fail(name, "you summed over the batch: average over inputs "
                        "(mean over the batch dimension).")
        if torch.isclose(got, ((x - x_hat) ** 2 * imp).mean(), rtol=1e-4):
            _fail(name, "you averaged over features too: sum over features (weighted by I_i), "
                        "mean over the batch.")
        _fail(name, f"loss {float(got):.5f} differs from the reference {float(loss_of(x_hat)):.5f} "
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
def _random_sae(d_in: int, d_sae: int, k: int, seed: int, *, unit_rows: bool = True):
    """A TopKSAE with untied encoder and decoder; ``unit_rows=False`` rescales W_dec's rows
    (``_off_unit_norms``), as in SAEs trained or loaded elsewhere (SAELens need not keep them
    at 1)."""
    from ..topk import TopKSAE

    sae = TopKSAE(d_in, d_sae, k=k, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # untie encoder and decoder, so W_enc[:, i] and W_dec[i] differ
        sae.W_enc.add_(0.5 * torch.randn(sae.W_enc.shape, generator=gen))
        sae.b_dec.copy_(torch.randn(d_in, generator=gen))
        if not unit_rows:   # encode does not read W_dec: the latents stay the same
            sae.W_dec.mul_(_off_unit_norms(d_sae, seed)[:, None])
    return sae.eval()


def _off_unit_norms(n: int, seed: int) -> Tensor:
    """[n] row norms in [1/3, 2/3] or [3/2, 3] (log-spaced, half each, shuffled): none near 1, so
    an answer that uses d_i / ||d_i|| instead of d_i fails on every row it is tried on."""
    gen = torch.Generator().manual_seed(seed + 2)
    size = torch.linspace(math.log(1.5), math.log(3.0), n)   # |ln ||d_i|||, at least ln 1.5
    sign = torch.arange(n).remainder(2) * 2 - 1               # half shrunk, half grown
    return (sign * size)[torch.randperm(n, generator=gen)].exp()


def check_ablate_latent(fn: Callable) -> None:
    """fn(x [B, d_in], sae, latent) -> [B, d_in]: x with latent ``latent``'s contribution
    f_i(x)·d_i removed, the SAE's error term kept."""
    name = "check_ablate_latent"
    gen = torch.Generator().manual_seed(0)
    sae = _random_sae(8, 32, 4, seed=0, unit_rows=False)   # unit rows hide d_i / ||d_i||
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
        d = sae.W_dec[latent].detach()
        if torch.allclose(out, x - f[:, latent, None] * d / d.norm(), atol=1e-4):
            _fail(name, f"you divided by the decoder row's norm (d_i / ||d_i||; here ||d_i|| = "
                        f"{float(d.norm()):.2f}): use W_dec[i] as it is. The SAE reconstructs "
                        "x̂ = f @ W_dec + b_dec with the rows unnormalised, and SAEs from elsewhere "
                        "(e.g. SAELens) need not have unit-norm rows, so x - f_i(x)·d_i is what "
                        "the latent contributes.")
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


def _check_loss_gradients(name: str, loss: Tensor, x: Tensor, trained: dict[str, Tensor],
                          sizes: list[int]) -> None:
    """Fail unless ``loss`` (scalar, of the right value) backpropagates to each of ``trained``
    (name -> leaf tensor with requires_grad) as the reference loss does: a value computed under
    torch.no_grad() or from .detach()-ed tensors is right and trains nothing."""
    advice = ("do not wrap the computation in torch.no_grad() or call .detach() / .item() / "
              ".numpy() on the way: the loss must backpropagate to W_dec, b_dec and the latents "
              "(and through them to the encoder), or training with it changes nothing.")
    if not loss.requires_grad:
        _fail(name, f"your loss has the right value but carries no gradient: {advice}")
    inputs = list(trained.values())
    try:
        grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    except RuntimeError as e:   # e.g. a tensor it saved for backward was changed in place later
        _fail(name, f"your loss has the right value but backpropagating through it fails ({e}). "
                    "Build new tensors instead of changing ones that are already in use.")
    want = torch.autograd.grad(_matryoshka_reference(x, trained["latents"], trained["W_dec"],
                                                     trained["b_dec"], sizes), inputs)
    for key, g, w in zip(trained, grads, want):
        if g is None or not torch.allclose(g, w, rtol=1e-4, atol=1e-5):
            how = "missing" if g is None else "wrong (the graph was cut on some path)"
            _fail(name, f"your loss has the right value but its gradient with respect to {key} is "
                        f"{how}: {advice}")


def check_matryoshka_loss(fn: Callable) -> None:
    """fn(x [B, d_in], latents [B, d_sae], W_dec [d_sae, d_in], b_dec [d_in], prefix_sizes) ->
    scalar: Σ_m  mean_b ||x_b - (latents[b, :m] @ W_dec[:m] + b_dec)||²  over the prefix sizes m
    (the last is d_sae), backpropagating to latents, W_dec and b_dec as that formula does."""
    name = "check_matryoshka_loss"
    gen = torch.Generator().manual_seed(0)
    B, d_in, d_sae = 16, 6, 24
    x = torch.randn(B, d_in, generator=gen)
    latents = torch.randn(B, d_sae, generator=gen).relu()
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=-1)
    b_dec = torch.randn(d_in, generator=gen)
    sizes = [3, 8, 24]
    # what training differentiates: the decoder, and the latents (through them, the encoder)
    # (leaf copies; the references below use the originals, which need no graph)
    trained = {key: t.clone().requires_grad_() for key, t in
               {"latents": latents, "W_dec": W_dec, "b_dec": b_dec}.items()}
    loss = _call(name, fn, x, *trained.values(), sizes)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        _fail(name, f"return a scalar tensor (one loss for the batch), got {loss!r}.")
    got = float(loss.detach())
    want = float(_matryoshka_reference(x, latents, W_dec, b_dec, sizes))
    if math.isclose(got, want, rel_tol=1e-4):
        _check_loss_gradients(name, loss, x, trained, sizes)
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
    _name_the_mistake(name, got, wrong, hints, rel_tol=1e-4)
    _fail(name, f"expected {want:.4f}, got {got:.4f}. Check each prefix term: mean over the "
                "batch of ||x - (latents[:, :m] @ W_dec[:m] + b_dec)||².")


# --- Notebook 04 part 2: keeping latents alive -----------------------------------------------------
def _auxk_reference(x: Tensor, x_hat: Tensor, pre: Tensor, dead: Tensor, W_dec: Tensor,
                    k_aux: int, *, relu: bool = True, only_dead: bool = True,
                    normalise: str = "e", scaled: bool = True, detach: bool = True,
                    target: str = "e", map_back: bool = True) -> Tensor:
    """The AuxK term without α (Gao et al. 2024, sec. 2.4); the keywords build the wrong answers
    the checker names. Equals ``topk.auxk_loss / (α · Var(x))`` (tests/test_checks_alive.py)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    e = (x - x_hat).detach() if detach else x - x_hat
    scores = pre.masked_fill(~dead, float("-inf")) if only_dead else pre
    if not map_back:                    # topk over pre[:, dead], its indices used on W_dec as is
        scores = pre[:, dead]
    values, indices = scores.topk(min(k_aux, n_dead) if only_dead else k_aux, dim=-1)
    values = values.relu() if relu else values
    e_hat = (values.unsqueeze(-1) * W_dec[indices]).sum(1)                  # [B, d_in]
    var = {"e": (e - e.mean(0)).pow(2).sum(-1).mean(),
           "x": (x - x.mean(0)).pow(2).sum(-1).mean(), "none": 1.0,
           "e uncentred": e.pow(2).sum(-1).mean(), "e elements": e.var(),
           "e unbiased": e.var(0).sum()}[normalise]
    scale = min(n_dead / k_aux, 1.0) if scaled else 1.0
    goal = e if target == "e" else x
    return scale * (goal - e_hat).pow(2).sum(-1).mean() / var


def _auxk_case(seed: int, n_dead: int, *, B: int = 48, d_in: int = 8, d_sae: int = 24):
    """x, x_hat [B, d_in] (x off-centre, x_hat shrunk), pre [B, d_sae] (the alive latents' larger,
    the dead ones' mostly negative, as dead latents' are), dead [d_sae], W_dec [d_sae, d_in]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d_in, generator=gen) + 3.0
    x_hat = 0.8 * x + 0.2 * torch.randn(B, d_in, generator=gen)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=gen)[:n_dead]] = True
    pre = torch.randn(B, d_sae, generator=gen) - 0.5 + 2.0 * (~dead).float()
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=-1)
    return x, x_hat, pre, dead, W_dec


def check_auxk_loss(fn: Callable) -> None:
    """fn(x [B, d_in], x_hat [B, d_in], pre [B, d_sae], dead [d_sae] bool, W_dec [d_sae, d_in],
    k_aux) -> 0-d tensor: min(n_dead/k_aux, 1) · mean_b ||e_b - ê_b||² / Var(e), where
    e = x - x̂ (detached), ê = the k_aux largest dead pre-activations (ReLU'd) decoded without
    b_dec, and Var(e) = mean_b ||e_b - ē||²."""
    name = "check_auxk_loss"
    k_aux = 4
    x, x_hat, pre, dead, W_dec = _auxk_case(0, n_dead=10)
    x_hat, pre, W_dec = (t.clone().requires_grad_(True) for t in (x_hat, pre, W_dec))
    got = _call(name, fn, x, x_hat, pre, dead, W_dec, k_aux)
    if not isinstance(got, Tensor) or got.numel() != 1:
        _fail(name, f"return the loss as a 0-d tensor (a number that can be backpropagated), got "
                    f"{type(got).__name__}{'' if not isinstance(got, Tensor) else ' of shape ' + str(tuple(got.shape))}.")
    if not got.requires_grad:
        _fail(name, "your loss carries no gradient: AuxK exists to train the dead latents, so ê "
                    "must stay connected to `pre` and `W_dec` (no .detach(), .item() or "
                    "torch.no_grad() on that path).")
    want = _auxk_reference(x, x_hat, pre, dead, W_dec, k_aux).detach()
    value = float(got.detach())
    if not math.isclose(value, float(want), rel_tol=1e-4):
        wrong = {k: float(_auxk_reference(x, x_hat, pre, dead, W_dec, k_aux, **kw).detach())
                 for k, kw in {"alive": dict(only_dead=False), "relu": dict(relu=False),
                               "none": dict(normalise="none"), "x": dict(normalise="x"),
                               "target x": dict(target="x"),
                               "compacted": dict(map_back=False),
                               "uncentred": dict(normalise="e uncentred"),
                               "elements": dict(normalise="e elements"),
                               "unbiased": dict(normalise="e unbiased")}.items()}
        wrong["sum"] = float(want) * len(x)
        wrong["unclamped"] = float(want) * int(dead.sum()) / k_aux
        hints = {
            "alive": "you took the k_aux largest pre-activations of *all* latents. AuxK uses only "
                     "the dead ones (set the others to -inf before topk, e.g. "
                     "`pre.masked_fill(~dead, float('-inf'))`): alive latents are trained by "
                     "the main loss already.",
            "relu": "the dead latents' values must be ReLU'd, as TopK's are: dead latents mostly "
                    "have negative pre-activations, and decoding those would subtract directions.",
            "none": "you returned ||e - ê||² without dividing by Var(e) = mean_b ||e_b - ē||². "
                    "Normalised, AuxK's pull does not fade as the reconstruction improves and e "
                    "shrinks, which is exactly when latents die.",
            "x": "you divided by the variance of x; AuxK's target is e = x - x̂, so divide by "
                 "Var(e) = mean_b ||e_b - ē||².",
            "sum": "you summed over the batch; average over it (sum over d_in, mean over rows).",
            "target x": "ê must reconstruct the residual e = x - x_hat (what the main model "
                        "misses), not x itself.",
            "uncentred": "your denominator is mean_b ||e_b||²; Var(e) subtracts the batch mean "
                         "first: mean_b ||e_b - ē||² with ē = e.mean(0).",
            "elements": "you divided by e.var(), the variance of all B·d_in numbers around one "
                        "scalar mean; Var(e) here is mean_b ||e_b - ē||² (summed over d_in, "
                        "ē = e.mean(0)), d_in times larger.",
            "unbiased": "you divided by e.var(0).sum(), which divides by B - 1; use the batch "
                        "mean, 1/B: (e - e.mean(0)).pow(2).sum(-1).mean() (or "
                        "e.var(0, unbiased=False).sum()).",
            "unclamped": f"you scaled by n_dead / k_aux = {int(dead.sum()) / k_aux:g}; cap it at "
                         "1: min(n_dead / k_aux, 1). More dead latents than k_aux should not make "
                         "the term stronger than the paper's.",
            "compacted": "your topk ran over pre[:, dead], so its indices count the dead latents "
                         "only (0 = the first dead latent), and W_dec[indices] fetched the wrong "
                         "rows. Map them back (dead.nonzero()[indices]) or keep all d_sae columns "
                         "and set the alive ones to -inf.",
        }
        _name_the_mistake(name, value, wrong, hints, rel_tol=1e-4)
        _fail(name, f"expected {float(want):.5f}, got {value:.5f} (10 of 24 latents dead, "
                    f"k_aux = {k_aux}). Check each step: e = x - x_hat; the k_aux largest "
                    "pre-activations among dead latents, ReLU'd; ê = their values times their "
                    "W_dec rows, summed (no b_dec); mean_b ||e_b - ê_b||² / Var(e).")
    got.backward()
    if x_hat.grad is not None and float(x_hat.grad.abs().max()) > 0:
        _fail(name, "gradient reaches x_hat: detach e = (x - x_hat).detach(). AuxK trains the "
                    "dead latents to explain what the main model misses; it must not pull the "
                    "main reconstruction towards them.")
    alive = ~dead
    if pre.grad is None or float(pre.grad[:, dead].abs().sum()) == 0:
        _fail(name, "no gradient reaches the dead latents' pre-activations: keep ê connected "
                    "to `pre` (use the values topk returns, not a detached copy).")
    if float(pre.grad[:, alive].abs().sum()) > 0 or float(W_dec.grad[alive].abs().sum()) > 0:
        _fail(name, "gradient reaches alive latents: only the dead ones may enter ê.")

    few = 2                                               # fewer dead latents than k_aux
    case = _auxk_case(1, n_dead=few)
    try:
        got = _call(name, fn, *case, k_aux)
    except (RuntimeError, IndexError) as e:
        _fail(name, f"with only {few} dead latents and k_aux = {k_aux}, your function raised "
                    f"{type(e).__name__}: {e}. Take min(k_aux, n_dead) of them.")
    want = _auxk_reference(*case, k_aux)
    value = float(torch.as_tensor(got).detach())
    if not math.isclose(value, float(want), rel_tol=1e-4):
        _name_the_mistake(name, value, {"unscaled": float(want) * k_aux / few}, {
            "unscaled": f"with {few} dead latents and k_aux = {k_aux}, scale the loss by "
                        f"min(n_dead / k_aux, 1) = {few / k_aux:g}: the term grows with the "
                        "number of dead latents instead of switching on at full strength for the "
                        "first one."}, rel_tol=1e-4)
        _fail(name, f"with {few} dead latents and k_aux = {k_aux}: expected {float(want):.5f}, "
                    f"got {value:.5f}.")
    case = _auxk_case(2, n_dead=0)
    value = float(torch.as_tensor(_call(name, fn, *case, k_aux)).detach())
    if value != 0.0:
        _fail(name, f"with no dead latent the term must be 0 (min(0 / k_aux, 1) = 0), got "
                    f"{value:.4g}.")
    _passed(name, "only dead latents, ReLU'd, decode the detached residual; normalised by "
                  "Var(e); scaled by min(n_dead/k_aux, 1); 0 with none dead")


def check_resample_dead(fn: Callable) -> None:
    """fn(W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], x [N, d_in],
    squared_error [N], dead [d_sae] bool, generator) -> (W_enc, W_dec, b_enc), new tensors: each
    dead latent i gets W_dec[i] = v = (x_n - b_dec)/||x_n - b_dec|| for an input n drawn with
    probability ∝ squared_error², W_enc[:, i] = 0.2 · (mean alive column norm of W_enc) · v and
    b_enc[i] = 0; alive latents unchanged (Bricken et al. 2023)."""
    name = "check_resample_dead"
    gen = torch.Generator().manual_seed(0)
    d_in, d_sae, N, n_dead, n_hard = 16, 64, 400, 32, 4
    W_enc = 0.5 * torch.randn(d_in, d_sae, generator=gen)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=-1)
    b_enc = torch.randn(d_sae, generator=gen)
    b_dec = 2.0 * torch.randn(d_in, generator=gen)       # far from 0: centring matters
    x = b_dec + torch.randn(N, d_in, generator=gen)
    squared_error = torch.ones(N)
    hard = torch.randperm(N, generator=gen)[:n_hard]
    squared_error[hard] = 100.0                          # 4 inputs the SAE misses badly
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=gen)[:n_dead]] = True
    alive = ~dead
    try:
        out = _call(name, fn, W_enc, W_dec, b_enc, b_dec, x, squared_error, dead,
                    torch.Generator().manual_seed(1))
    except RuntimeError as e:      # mostly a shape mismatch in the writes
        _fail(name, f"your function raised RuntimeError: {e}. Mind the shapes: the drawn "
                    f"directions v are [n_dead, d_in]; W_dec[dead] takes v, and W_enc "
                    f"[d_in, d_sae] takes them as columns, W_enc[:, dead] = scale * v.T.")
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        _fail(name, "return the three new tensors (W_enc, W_dec, b_enc) as a tuple.")
    new_enc, new_dec, new_b = (_as_tensor(name, t, like).detach()
                               for t, like in zip(out, (W_enc, W_dec, b_enc)))
    if not (torch.equal(new_dec[alive], W_dec[alive]) and torch.equal(new_enc[:, alive], W_enc[:, alive])
            and torch.equal(new_b[alive], b_enc[alive])):
        _fail(name, "alive latents changed: resample only where `dead` is True (W_dec's rows, "
                    "W_enc's columns and b_enc's entries of the dead latents).")
    if torch.equal(new_dec[dead], W_dec[dead]):
        _fail(name, "the dead latents' decoder rows did not change: set W_dec[dead] to the "
                    "drawn inputs' directions.")
    rows = new_dec[dead]
    if not torch.allclose(rows.norm(dim=-1), torch.ones(n_dead), atol=1e-4):
        _fail(name, "the new decoder rows are not unit length: v = (x_n - b_dec) / ||x_n - b_dec||.")
    centred = torch.nn.functional.normalize(x - b_dec, dim=-1)
    raw = torch.nn.functional.normalize(x, dim=-1)
    best, drawn = (rows @ centred.T).max(dim=-1)
    if float(best.min()) < 1 - 1e-4:
        if float((rows @ raw.T).max(dim=-1).values.min()) > 1 - 1e-4:
            _fail(name, "your new directions are the raw inputs x_n: subtract b_dec first. The "
                        "encoder computes (x - b_dec) @ W_enc + b_enc, so the direction it can "
                        "detect, and the decoder should add back, is x_n - b_dec.")
        _fail(name, "each dead latent's new decoder row must be one drawn input, centred and "
                    "normalised: (x_n - b_dec) / ||x_n - b_dec||.")
    hits, distinct = int(torch.isin(drawn, hard).sum()), len(set(drawn.tolist()))
    if distinct == n_dead and hits <= n_hard:
        _fail(name, f"all {n_dead} draws are different inputs, so at most {n_hard} of them can be "
                    f"the {n_hard} inputs with 100x the error: draw with replacement "
                    "(torch.multinomial(..., replacement=True)), so a badly reconstructed input "
                    "can revive several latents.")
    if distinct == 1:
        _fail(name, "every dead latent got the same input: draw at random with "
                    "torch.multinomial(weights, n_dead, replacement=True, generator=generator), "
                    "not the argmax, or all revived latents start as one direction.")
    if hits < 27:   # ∝ L²: ~31.7 of 32 draws hit the 4 hard inputs; ∝ L: ~16; uniform: ~0.3
        hint = ("you drew ∝ the squared error itself; Bricken et al. draw ∝ its *square*, which "
                "puts almost every draw on the inputs the SAE misses worst" if hits >= 6 else
                "you drew (nearly) uniformly: draw input n with probability ∝ squared_error[n]², "
                "so the revived latents point at what the SAE reconstructs worst")
        _fail(name, f"{hits} of {n_dead} draws hit the {n_hard} inputs with 100x the error "
                    f"(expected about 31): {hint}.")
    target = 0.2 * W_enc[:, alive].norm(dim=0).mean()
    cols = new_enc[:, dead].T                                              # [n_dead, d_in]
    norms = cols.norm(dim=-1)
    if float((torch.nn.functional.cosine_similarity(cols, rows, dim=-1) - 1).abs().max()) > 1e-4:
        _fail(name, "each new encoder column must point along its new decoder row v: "
                    "W_enc[:, i] = scale · v (mind the transpose: W_enc is [d_in, d_sae]).")
    if not torch.allclose(norms, target.expand(n_dead), rtol=1e-4):
        ratio = float(norms.mean() / (target / 0.2))
        hint = ("you used the alive columns' mean norm without the factor 0.2: the revived "
                "latent should start small beside the alive ones" if math.isclose(ratio, 1, rel_tol=1e-3)
                else f"the column norm is {float(norms.mean()):.4f}; it should be 0.2 x the mean "
                     f"norm of the *alive* columns of W_enc ({float(target):.4f})")
        _fail(name, hint + ".")
    if not torch.equal(new_b[dead], torch.zeros(n_dead)):
        _fail(name, "set b_enc of the resampled latents to 0: the old bias was part of what kept "
                    "the latent from firing.")
    _passed(name, f"only dead latents changed; {hits}/{n_dead} draws on the 4 worst inputs (∝ L²); "
                  "centred unit decoder rows; encoder columns at 0.2 x the alive norm; b_enc 0")


# --- Notebook 04 part 2: shrinkage on real activations ---------------------------------------------
def _bias_cases() -> list[tuple[str, Tensor, Tensor, Tensor]]:
    """check_reconstruction_bias's cases: (what, x [N, 16], x_hat [N, 16], center [16])."""
    gen = torch.Generator().manual_seed(0)
    center = 10.0 * torch.randn(16, generator=gen)          # a large shared offset, as in a
    signal = torch.randn(256, 16, generator=gen)             # residual stream
    uniform = (center + signal, center + 0.7 * signal + 0.05 * torch.randn(256, 16, generator=gen),
               center)
    # rows of very different lengths, the longest shrunk most (as an L1 penalty does to the
    # large activations it taxes most), and data whose own mean is not `center`: a mean of
    # per-row ratios, or centring on x's mean, now gives another number
    length = torch.linspace(0.1, 4.0, 256).unsqueeze(-1)
    signal = length * torch.randn(256, 16, generator=gen) + torch.randn(16, generator=gen)
    shrink = 1.0 - 0.15 * length
    varying = (center + signal, center + shrink * signal + 0.05 * torch.randn(256, 16, generator=gen),
               center)
    return [("a reconstruction shrunk to 0.7x around a large offset", *uniform),
            ("rows shrunk from 0.99x (short) to 0.4x (long), data mean off `center`", *varying)]


def check_reconstruction_bias(fn: Callable[[Tensor, Tensor, Tensor], float]) -> None:
    """fn(x [N, d], x_hat [N, d], center [d]) -> γ = E||x̂ - c||² / E[(x̂ - c)·(x - c)]
    (Rajamanoharan et al. 2024a, sec. 5.1), measured around ``center``. Two cases: one uniform
    shrinkage, and one that varies with the row's length around an offset the data's mean misses."""
    name = "check_reconstruction_bias"
    hints = {
        "uncentred": "you measured around 0, not around `center`: subtract center from x and "
                     "x_hat first. With a residual stream's large shared offset both vectors are "
                     "mostly that offset, so every SAE would look unbiased (γ ≈ 1).",
        "inverted": "you computed 1/γ: γ = E||x̂||² / E[x̂·x] is the scale to *divide* x̂ by "
                    "(argmin over γ' of E||x̂/γ' - x||²), so shrinkage gives γ < 1.",
        "norms": "you compared average lengths: γ is the least-squares scale, "
                 "E||x̂||² / E[x̂·x], which also counts how well x̂ points along x.",
        "x squared": "the numerator is E||x̂||² (the reconstruction), not E||x||².",
        "per row": "you averaged one ratio per row: γ is a ratio of sums over the batch, "
                   "Σ||x̂-c||² / Σ(x̂-c)·(x-c), so long rows weigh more, as they do in the loss. "
                   "A mean of per-row ratios weighs a short row as much as a long one.",
        "data mean": "you centred on the data's own mean (x.mean(0)), not on the `center` "
                     "argument: use the center you are given (the notebook passes the mean of the "
                     "held-out activations, so every SAE is measured around the same point).",
    }
    shown = None       # the first case's γ, centred and uncentred, for the PASSED line
    for what, x, x_hat, center in _bias_cases():
        xc, hc = x - center, x_hat - center
        want = float(hc.pow(2).sum() / (hc * xc).sum())
        got = _call(name, fn, x, x_hat, center)
        try:
            got = float(got)
        except (TypeError, ValueError):
            _fail(name, f"return γ as a float (e.g. `float(...)` of a 0-d tensor), got {got!r}.")
        mx, mh = x - x.mean(0), x_hat - x.mean(0)
        wrong = {
            "uncentred": float(x_hat.pow(2).sum() / (x_hat * x).sum()),
            "inverted": float((hc * xc).sum() / hc.pow(2).sum()),
            "norms": float(hc.norm(dim=-1).mean() / xc.norm(dim=-1).mean()),
            "x squared": float(xc.pow(2).sum() / (hc * xc).sum()),
            "per row": float((hc.pow(2).sum(-1) / (hc * xc).sum(-1)).mean()),
            "data mean": float(mh.pow(2).sum() / (mh * mx).sum()),
        }
        if not math.isclose(got, want, rel_tol=1e-3):
            _name_the_mistake(name, got, wrong, hints, rel_tol=1e-3)
            _fail(name, f"on {what}: expected γ = {want:.4f}, got {got:.4f}. Sum (or average) "
                        "over both the batch and d_in: (x̂-c)² over (x̂-c)·(x-c).")
        shown = shown or (want, wrong["uncentred"])
    _passed(name, "γ = {:.3f} for a reconstruction shrunk to 0.7x around a large offset (uncentred "
                  "it would read {:.3f}), and right where the shrinkage varies row by row".format(*shown))


# --- Notebook 04 part 2: CE loss recovered, by splicing -------------------------------------------
def _ce_with(model, hook_name: str, tokens: Tensor, new: Callable | None = None, *,
             first: int = 1, columns: slice = slice(1, None)) -> float:
    """Mean next-token CE (nats) of ``model`` on tokens [n, L], with the activation [n, L, d] at
    ``hook_name`` replaced by new(act) at positions ``first``: (None: the clean model), averaged
    over ``columns`` of the [n, L-1] losses: by default the predictions made at positions 1 .. L-2
    (the one made at BOS left out)."""
    def replace(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[:, first:] = new(act)[:, first:]
        return act

    hooks = [] if new is None else [(hook_name, replace)]
    loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True,
                                fwd_hooks=hooks)                      # [n, L-1]
    return float(loss[:, columns].mean())


def _n_hooks(model: torch.nn.Module) -> int:
    """Forward hooks attached to the model's modules (transformer-lens's among them)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


_CE_KEYS = ("clean", "spliced", "zero")


def check_ce_loss_recovered(fn: Callable, model, sae, hook_name: str, tokens: Tensor) -> None:
    """fn(model, sae, hook_name, tokens [n, L]) -> {"clean", "spliced", "zero", "recovered"}: the
    mean next-token CE (nats) of the clean model, with x̂ = sae(x).x_hat spliced in at
    ``hook_name``, and with x zeroed there (positions 1: only, BOS kept; the prediction made at
    BOS left out of the mean), and (zero - spliced) / (zero - clean). Runs on the caller's model:
    as ``sae_minimal.lm.evaluation.splice_eval`` does (tests/test_checks_splice.py)."""
    name = "check_ce_loss_recovered"
    splice = lambda act: sae(act).x_hat                                  # noqa: E731
    with torch.no_grad():
        want = {"clean": _ce_with(model, hook_name, tokens),
                "spliced": _ce_with(model, hook_name, tokens, splice),
                "zero": _ce_with(model, hook_name, tokens, torch.zeros_like)}
        hooks_before = _n_hooks(model)
        # the caller's model itself, not a copy: a hook left on it is a mistake to catch
        try:
            got = _run(name, fn, [model, sae, hook_name, tokens.clone()])
        except ZeroDivisionError:
            model.reset_hooks()
            _fail(name, "your function divided by zero: its zero-ablated CE equals its clean one, "
                        "so the zero-ablation changed nothing. Does your hook return the new "
                        "activation (fn(act, hook) -> act, built from act.clone())? A hook that "
                        "edits a copy and returns None leaves the model as it was.")
        if _n_hooks(model) > hooks_before:
            model.reset_hooks()
            _fail(name, "your function left a hook attached to the model, so every later cell "
                        "would run with your replacement still in place (the checker has now "
                        "removed it with model.reset_hooks()). Use model.run_with_hooks(..., "
                        "fwd_hooks=[(hook_name, fn)]), which removes its hooks when it returns.")
        if not math.isclose(_ce_with(model, hook_name, tokens), want["clean"], abs_tol=1e-5):
            _fail(name, "the model's clean loss differs after your function ran: it changed the "
                        "model's weights. Re-create the lab (restart the kernel) and leave the "
                        "model as it is: replace activations in a hook, never parameters.")
    if not isinstance(got, dict) or not set(_CE_KEYS + ("recovered",)) <= set(got):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        _fail(name, "return a dict with the keys 'clean', 'spliced', 'zero' (mean CE, nats) and "
                    f"'recovered', got {keys}.")
    got = {key: _as_float(f"{name} ({key!r})", got[key]) for key in _CE_KEYS + ("recovered",)}
    _check_splice_ces(name, got, want, model, sae, hook_name, tokens, splice)
    clean, spliced, zero = (want[key] for key in _CE_KEYS)
    recovered = _check_recovered(name, got["recovered"], clean, spliced, zero)
    _passed(name, f"on {len(tokens)} windows: clean {clean:.3f}, spliced {spliced:.3f}, "
                  f"zero-ablated {zero:.3f} nats; recovered "
                  + (f"{recovered:.3f}" if recovered is not None else "undefined (no gap)")
                  + " (splice_eval computes the same)")


def _check_splice_ces(name: str, got: dict, want: dict, model, sae, hook_name: str,
                      tokens: Tensor, splice: Callable) -> None:
    """Fail, naming the mistake, unless the three CEs in ``got`` equal ``want``."""
    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)

    wrong = [key for key in _CE_KEYS if not close(got[key], want[key])]
    if not wrong:
        return
    new = {"clean": None, "spliced": splice, "zero": torch.zeros_like}
    columns = {  # the [n, L-1] losses averaged over the wrong columns
        "averages the prediction made at BOS too": slice(None),
        "drops the last column of the losses, not the first ([:, :-1] instead of [:, 1:])":
            slice(None, -1)}
    with torch.no_grad():
        for mistake, cols in columns.items():
            if all(close(got[key], _ce_with(model, hook_name, tokens, new[key], columns=cols))
                   for key in wrong):
                _fail(name, f"your {', '.join(wrong)} CE {mistake}. loss_per_token=True gives "
                            "[n, L-1] losses, the t-th predicting token t+1; average [:, 1:]: "
                            "the prediction made at BOS reads no replaced activation, so it only "
                            "dilutes the difference.")
        if "clean" in wrong and any(
                close(got["clean"], _ce_with(model, hook_name, tokens[:, 1:], columns=cols))
                for cols in (slice(None), slice(1, None))):
            _fail(name, "your clean CE is the model's loss on the tokens without their BOS: "
                        "keep tokens as they are (BOS at position 0 sets the model up as it was "
                        "trained) and leave BOS's *activation* unreplaced instead.")
        if "clean" in wrong:
            _fail(name, f"your clean CE is {got['clean']:.4f} nats, expected {want['clean']:.4f}: "
                        "run the model with no hook, return_type='loss', loss_per_token=True, "
                        "and average [:, 1:].")
        for key in wrong:
            if close(got[key], want["clean"]):
                _fail(name, f"your {key} CE equals the clean one: your hook did not change the "
                            "activation. Return the new activation from the hook function "
                            "(fn(act, hook) -> act), built from a copy (act.clone()).")
            if close(got[key], _ce_with(model, hook_name, tokens, new[key], first=0)):
                _fail(name, f"your {key} run also replaced position 0, the BOS token. Its "
                            "residual stream is many times larger than the others' and no SAE "
                            "was trained on it (the activations were cached without it), so the "
                            "chapter's convention keeps it: replace act[:, 1:] only.")
        if "zero" in wrong:
            _, cache = model.run_with_cache(tokens, names_filter=hook_name)
            x = cache[hook_name][:, 1:]                                   # [n, L-1, d]
            mean = x.reshape(-1, x.shape[-1]).mean(0)
            if close(got["zero"], _ce_with(model, hook_name, tokens, lambda a: mean.expand_as(a))):
                _fail(name, "your 'zero' CE is the *mean*-ablated one: replace the activation by "
                            "zeros (torch.zeros_like). Mean-ablation is the other baseline, "
                            "printed after the exercise.")
        if "spliced" in wrong and close(got["spliced"], want["zero"]):
            _fail(name, "your spliced CE equals the zero-ablated one: splice x_hat = "
                        "sae(act).x_hat, the SAE's reconstruction, not its latents or zeros.")
    key = wrong[0]
    _fail(name, f"your {key} CE is {got[key]:.4f} nats, expected {want[key]:.4f}. Replace "
                "act[:, 1:] at hook_name (BOS kept) and average loss_per_token[:, 1:].")


def _check_recovered(name: str, got: float, clean: float, spliced: float,
                     zero: float) -> float | None:
    """(zero - spliced) / (zero - clean), after failing unless ``got`` equals it; None (and no
    check) where zero-ablation does not move the loss (a random model)."""
    gap = zero - clean
    if abs(gap) < 1e-4:
        return None
    want = (zero - spliced) / gap
    if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-4):
        return want
    wrong = {"inverted": (spliced - clean) / gap, "over zero": (zero - spliced) / zero,
             "ratio": clean / spliced, "delta": spliced - clean}
    hints = {
        "inverted": "you returned the share of the gap *lost*, (spliced - clean) / (zero - "
                    "clean) = 1 - recovered: recovered is (zero - spliced) / (zero - clean), "
                    "1 when splicing costs nothing, 0 when it is as bad as zeroing the layer.",
        "over zero": "divide by the gap zero - clean, not by zero: recovered is the share of "
                     "the loss that ablating the layer adds which the SAE wins back.",
        "ratio": "recovered is not clean / spliced: it compares the spliced loss with both "
                 "ends, (zero - spliced) / (zero - clean).",
        "delta": "that is ΔCE, spliced - clean (printed after the exercise); recovered is "
                 "(zero - spliced) / (zero - clean).",
    }
    _name_the_mistake(name, got, wrong, hints, rel_tol=1e-4, abs_tol=1e-4)
    _fail(name, f"with your CEs, recovered = (zero - spliced) / (zero - clean) = {want:.4f}, "
                f"but you returned {got:.4f}. Compute it once, from the three mean CEs you "
                "return (a ratio of means), not per window or per token and then averaged.")


# --- Notebook 05: the steering hook ----------------------------------------------------------------
def check_steering_hook(fn: Callable) -> None:
    """fn(act [n, pos, d], direction [d], alpha) -> [n, pos, d]: act + alpha·direction at every
    position except 0 (BOS), as given (not normalised), without changing act."""
    name = "check_steering_hook"
    gen = torch.Generator().manual_seed(0)
    act = torch.randn(3, 6, 8, generator=gen)
    direction = 2.5 * torch.randn(8, generator=gen)        # not unit norm on purpose
    for alpha in (1.5, -0.7):
        with torch.no_grad():
            out = _call(name, fn, act, direction, alpha)
        out = _as_tensor(name, out, act).detach()
        want = act.clone()
        want[:, 1:] += alpha * direction
        if torch.allclose(out, want, atol=1e-5):
            continue
        added = out - act
        if torch.allclose(added, torch.zeros_like(act), atol=1e-6):
            _fail(name, "your output equals the input: nothing was added. Return act with "
                        "alpha * direction added at positions 1, 2, ...")
        if torch.allclose(out, act + alpha * direction, atol=1e-5):
            _fail(name, "you also changed position 0, the BOS token. Its residual stream is many "
                        "times larger than the others and no SAE was trained on it; leave "
                        "act[:, 0] as it is and add alpha * direction to act[:, 1:] only.")
        if torch.allclose(out[:, 1:], act[:, 1:] - alpha * direction, atol=1e-5):
            _fail(name, "the sign is flipped: steering *adds* alpha * direction (alpha < 0 "
                        "steers away).")
        unit = direction / direction.norm()
        if torch.allclose(out[:, 1:], act[:, 1:] + alpha * unit, atol=1e-5):
            _fail(name, "you normalised the direction. Add it as given: the notebook's controls "
                        "are scaled on purpose (to a matched norm or a matched direct effect on "
                        "the logits), and normalising would undo that.")
        if torch.allclose(out[:, 1:], act[:, 1:] + direction, atol=1e-5):
            _fail(name, f"you added the direction without scaling it by alpha (= {alpha} here).")
        if torch.allclose(out[:, :-1], act[:, :-1], atol=1e-6):
            _fail(name, "only the last position changed. Steering adds the vector at *every* "
                        "position (except BOS): the model reads the concept from all of them, and "
                        "during generation each new token's position gets it too.")
        batch_sliced = act.clone()
        batch_sliced[1:] += alpha * direction
        if torch.allclose(out, batch_sliced, atol=1e-5):
            _fail(name, "you sliced the batch axis: act[1:] skips the first *sequence*, not the "
                        "first position. act is [n, pos, d], so positions are dim 1: "
                        "act[:, 1:].")
        if not torch.allclose(out[:, 0], act[:, 0], atol=1e-6):
            _fail(name, "position 0 (BOS) changed; it must stay as it is.")
        _fail(name, f"with alpha = {alpha}, expected act[:, 1:] + alpha * direction; the largest "
                    f"difference is {float((out - want).abs().max()):.3g}. Check which axis the "
                    "direction [d] is added along (the last one).")
    _passed(name, "alpha·direction added at every position but BOS, unnormalised, input untouched")


# --- Notebook 05: the mean-difference direction ----------------------------------------------------
def check_mean_difference(fn: Callable) -> None:
    """fn(x [N, d], holds [N] bool) -> [d]: mean of x where holds minus mean where not."""
    name = "check_mean_difference"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen) + torch.linspace(-2, 3, 6)
    holds = torch.rand(200, generator=gen) < 0.15            # rare, as concepts are
    x[holds] += torch.tensor([4.0, 0, 0, -2.0, 0, 1.0])
    with torch.no_grad():
        out = _call(name, fn, x, holds)
    out = _as_tensor(name, out, x[0]).detach()
    pos, neg = x[holds].mean(0), x[~holds].mean(0)
    want = pos - neg
    if torch.allclose(out, want, atol=1e-5):
        _passed(name, f"{int(holds.sum())} of {len(x)} rows hold the concept: "
                      "mean(x | holds) - mean(x | not holds)")
        return
    if torch.allclose(out, -want, atol=1e-5):
        _fail(name, "the sign is flipped: it is mean(x where the concept holds) minus mean(x "
                    "where it does not), so that adding it moves an activation *towards* the "
                    "concept.")
    if torch.allclose(out, pos - x.mean(0), atol=1e-5):
        _fail(name, "you subtracted the mean over *all* rows. Subtract the mean over the rows "
                    "where the concept does *not* hold (x[~holds]); with a rare concept the two "
                    "differ by a factor of about 1 - P(holds).")
    if torch.allclose(out, want / want.norm(), atol=1e-5):
        _fail(name, "you normalised the result: return the raw difference of means. Its length "
                    "is information (how far apart the two groups are), and the notebook "
                    "scales it itself.")
    if torch.allclose(out, x[holds].sum(0) - x[~holds].sum(0), atol=1e-3):
        _fail(name, "you took sums, not means: the larger group would dominate. Use .mean(0).")
    if torch.allclose(out, pos, atol=1e-5):
        _fail(name, "you returned only the mean where the concept holds; subtract the mean "
                    "where it does not.")
    _fail(name, "expected x[holds].mean(0) - x[~holds].mean(0) (a [d] vector); the largest "
                f"difference is {float((out - want).abs().max()):.3g}.")


# --- Notebook 07: fitting a power law with an irreducible term -------------------------------------
def _power_law_cases() -> list[tuple[Tensor, Tensor, float, str]]:
    """(N [n], L [n], L_inf, description): noisy power laws, noise multiplicative (as real losses
    scatter: by a few per cent of their size, not by a fixed amount)."""
    gen = torch.Generator().manual_seed(7)
    cases = []
    for c, alpha, L_inf, n, noise in ((3.0, 0.45, 0.05, 8, 0.08), (1.5, 0.25, 0.0, 6, 0.05),
                                      (40.0, 0.8, 0.12, 10, 0.10)):
        N = 2.0 ** torch.arange(6, 6 + n, dtype=torch.float64)
        reducible = c * N ** -alpha * torch.exp(noise * torch.randn(n, generator=gen,
                                                                    dtype=torch.float64))
        cases.append((N, reducible + L_inf, L_inf, f"c={c}, alpha={alpha}, L_inf={L_inf}"))
    return cases


def _line(x: Tensor, y: Tensor) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y ≈ slope·x + intercept."""
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return slope, float(y.mean()) - slope * float(x.mean())


def _linear_space_fit(N: Tensor, y: Tensor) -> tuple[float, float]:
    """(c, alpha) minimising Σ (y - c·N^-alpha)² in linear space (alpha on a fine grid; for each
    alpha the best c is closed-form)."""
    alphas = torch.linspace(0.0, 2.0, 20001, dtype=torch.float64)
    basis = N[None, :] ** -alphas[:, None]                           # [grid, n]
    c = (basis * y).sum(1) / (basis * basis).sum(1)
    err = (y - c[:, None] * basis).pow(2).sum(1)
    i = int(err.argmin())
    return float(c[i]), float(alphas[i])


def check_power_law_fit(fn: Callable) -> None:
    """fn(N [n], L [n], L_inf: float) -> (c, alpha) with L ≈ c·N^(-alpha) + L_inf: the
    least-squares line through (ln N, ln(L - L_inf))."""
    name = "check_power_law_fit"

    def close(got: tuple[float, float], want: tuple[float, float], rel: float = 1e-3) -> bool:
        return all(math.isclose(g, w, rel_tol=rel, abs_tol=1e-9) for g, w in zip(got, want))

    for N, L, L_inf, what in _power_law_cases():
        out = _call(name, fn, N, L, L_inf)
        if not (isinstance(out, tuple) and len(out) == 2):
            _fail(name, f"return a tuple (c, alpha), got {out!r}.")
        try:
            got = tuple(float(v) for v in out)
        except (TypeError, ValueError):
            _fail(name, f"return two numbers (c, alpha), got {out!r}.")
        slope, intercept = _line(N.log(), (L - L_inf).log())
        want = (math.exp(intercept), -slope)
        if close(got, want):
            continue
        where = f"on data made with {what}"
        if close(got, (math.exp(intercept), slope)):
            _fail(name, f"{where}: your alpha has the wrong sign. The law is c·N^(-alpha), so "
                        "alpha = -slope of the log-log line: a loss that falls with N has "
                        "alpha > 0.")
        if L_inf > 0:
            s0, i0 = _line(N.log(), L.log())
            if close(got, (math.exp(i0), -s0), rel=1e-2):
                _fail(name, f"{where}: you fitted ln L, not ln(L - L_inf): the irreducible "
                            f"term L_inf = {L_inf} was ignored. Only the reducible part "
                            "L - L_inf is a straight line in log-log space; fitting L itself "
                            f"bends the line and underestimates alpha ({-s0:.3f} instead of "
                            f"{want[1]:.3f} here).")
        s1, i1 = _line(N, (L - L_inf).log())
        if close(got, (math.exp(i1), -s1), rel=1e-2):
            _fail(name, f"{where}: you took the log of L - L_inf but not of N (a semi-log fit). "
                        "A power law is a straight line only when *both* axes are logs: use "
                        "ln N as x.")
        s2, i2 = _line(N.log(), L - L_inf)
        if close(got, (math.exp(i2), -s2), rel=1e-2) or close(got, (i2, -s2), rel=1e-2):
            _fail(name, f"{where}: you took the log of N but not of L - L_inf. A power law is a "
                        "straight line only when both axes are logs: use ln(L - L_inf) as y.")
        s3, i3 = _line((L - L_inf).log(), N.log())
        if abs(s3) > 1e-12 and math.isclose(got[1], -1 / s3, rel_tol=1e-2):
            _fail(name, f"{where}: you regressed ln N on ln(L - L_inf) (the axes swapped). Least "
                        "squares is not symmetric: x is what you set (the width N), y is what "
                        "you measured (the loss), and the noise is in y.")
        if close(got, (math.exp(intercept / math.log(10)), -slope), rel=1e-3):
            _fail(name, f"{where}: your alpha is right but c is not: you took log10 and then "
                        "exponentiated the intercept with e. Undo a log10 with 10**intercept "
                        "(or use natural logs throughout).")
        lin = _linear_space_fit(N, L - L_inf)
        if close(got, lin, rel=2e-3) or (math.isclose(got[1], lin[1], abs_tol=2e-4)
                                         and not math.isclose(got[1], want[1], rel_tol=1e-3)):
            _fail(name, f"{where}: you fitted c·N^(-alpha) in linear space (least squares on L "
                        f"- L_inf itself): alpha = {got[1]:.3f} instead of {want[1]:.3f}. In "
                        "linear space the few largest losses (smallest N) dominate the squared "
                        "error and the noise, which is relative, is weighted wrongly; fit the "
                        "straight line in log-log space.")
        _fail(name, f"{where}: expected (c, alpha) = ({want[0]:.4g}, {want[1]:.4f}), the "
                    f"least-squares line through (ln N, ln(L - L_inf)); got ({got[0]:.4g}, "
                    f"{got[1]:.4f}).")
    _passed(name, "3 noisy power laws (L_inf = 0.05, 0, 0.12): least-squares line in log-log "
                  "space through the reducible part L - L_inf")


# --- Notebook 06: matching latents across SAEs by decoder cosine ----------------------------------
def _nearest_reference(W_a: Tensor, W_b: Tensor) -> tuple[Tensor, Tensor]:
    a = torch.nn.functional.normalize(W_a, dim=-1)
    b = torch.nn.functional.normalize(W_b, dim=-1)
    return (a @ b.T).max(dim=1)


def check_match_latents(fn: Callable) -> None:
    """fn(W_a [n_a, d], W_b [n_b, d]) -> (cosines [n_a], indices [n_a]): for each decoder row of
    W_a, the cosine to its nearest row of W_b and that row's index."""
    name = "check_match_latents"
    gen = torch.Generator().manual_seed(0)
    d, n_a, n_b = 8, 12, 40
    W_b = torch.randn(n_b, d, generator=gen) * (0.2 + 3 * torch.rand(n_b, 1, generator=gen))
    # some of a's rows are scaled, negated or noisy copies of b's rows, so the answers are clear
    W_a = torch.randn(n_a, d, generator=gen)
    W_a[:6] = W_b[[3, 7, 7, 20, 31, 39]] * torch.tensor([[0.1], [5.0], [1.0], [2.0], [0.3], [1.0]])
    W_a[6] = -W_b[11] * 4.0           # antipodal to b's row 11: cosine -1, not a match
    W_a[7] = W_b[5] + 0.3 * torch.randn(d, generator=gen)
    out = _call(name, fn, W_a, W_b)
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail(name, f"return a tuple (cosines, indices), got {type(out).__name__}.")
    cos, idx = out
    want_cos, want_idx = _nearest_reference(W_a, W_b)
    if isinstance(cos, Tensor) and isinstance(idx, Tensor) and cos.dtype in (torch.long, torch.int) \
            and idx.is_floating_point():
        _fail(name, "you returned (indices, cosines): return (cosines, indices), in the order "
                    "torch.max(dim=...) and sae_minimal.metrics.nearest use.")
    if isinstance(cos, Tensor) and cos.shape == (n_b,):
        _fail(name, f"your cosines have shape ({n_b},) = one per row of W_b: take the max over "
                    "W_b's rows (dim=1 of the [n_a, n_b] cosine matrix), so that every latent of "
                    "W_a gets its best match.")
    cos = _as_tensor(name, cos, want_cos).detach()
    idx = _as_tensor(name, idx, want_idx)
    raw, raw_idx = (W_a @ W_b.T).max(dim=1)
    if torch.equal(idx.long(), raw_idx) and not torch.equal(raw_idx, want_idx):
        _fail(name, "you matched by the raw dot product W_a @ W_b.T: a long decoder row then wins "
                    "whatever its direction. Normalise both W_a and W_b to unit rows first "
                    "(torch.nn.functional.normalize(W, dim=-1)).")
    abs_val, _ = (torch.nn.functional.normalize(W_a, dim=-1)
                        @ torch.nn.functional.normalize(W_b, dim=-1).T).abs().max(dim=1)
    if torch.allclose(cos, abs_val, atol=1e-4) and not torch.allclose(cos, want_cos, atol=1e-4):
        _fail(name, f"row 6 of W_a points exactly opposite to row 11 of W_b and you scored it "
                    "1: you took |cos|. A latent's activation is never negative, so it only ever "
                    "writes +f·d_i; the opposite direction -d_i is a different latent, not a match. "
                    "Keep the sign.")
    only_b = (W_a @ torch.nn.functional.normalize(W_b, dim=-1).T).max(dim=1)
    only_a = (torch.nn.functional.normalize(W_a, dim=-1) @ W_b.T).max(dim=1)
    if torch.allclose(cos, only_b.values, atol=1e-4) or torch.allclose(cos, only_a.values, atol=1e-4):
        _fail(name, "only one of W_a, W_b was normalised: a cosine divides by both norms, so "
                    "normalise the rows of both matrices.")
    if not torch.allclose(cos, want_cos, atol=1e-4):
        worst = int((cos - want_cos).abs().argmax())
        _fail(name, f"row {worst} of W_a: expected cosine {float(want_cos[worst]):.4f}, got "
                    f"{float(cos[worst]):.4f}. The cosine of rows a and b is a·b / (|a| |b|).")
    if not torch.equal(idx.long(), want_idx):
        worst = int((idx.long() != want_idx).nonzero()[0])
        _fail(name, f"row {worst} of W_a: your cosine is right but the index {int(idx[worst])} is "
                    f"not the row of W_b it belongs to ({int(want_idx[worst])}); return the argmax "
                    "that goes with the max.")
    _passed(name, f"{n_a} latents matched into {n_b}: cosines and indices right, sign kept, "
                  "scale ignored")


# --- Notebook 06: firing precision and recall -----------------------------------------------------
def check_firing_precision_recall(fn: Callable) -> None:
    """fn(fires_p [N, n] bool, fires_q [N, n] bool) -> (precision [n], recall [n]): recall = of
    the tokens where p_j fires, the share where q_j fires; precision = of the tokens where q_j
    fires, the share where p_j fires; NaN where the denominator is 0."""
    name = "check_firing_precision_recall"
    gen = torch.Generator().manual_seed(0)
    N = 200
    p = torch.rand(N, 5, generator=gen) < torch.tensor([0.3, 0.3, 0.05, 0.5, 0.2])
    q = torch.rand(N, 5, generator=gen) < 0.2
    q[:, 0] = p[:, 0] & (torch.rand(N, generator=gen) < 0.4)   # a child: a subset of p's tokens
    q[:, 1] = True                                              # a dense latent: recall for free
    q[:, 4] = False                                             # never fires: precision undefined
    out = _call(name, fn, p, q)
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail(name, f"return a tuple (precision, recall), got {type(out).__name__}.")
    both, n_p, n_q = (p & q).sum(0).double(), p.sum(0).double(), q.sum(0).double()
    want_recall, want_precision = both / n_p, both / n_q           # q[:, 4]: 0/0 = NaN
    precision, recall = (_as_tensor(name, t, want_recall).detach().double() for t in out)

    def same(a: Tensor, b: Tensor) -> bool:
        return bool(torch.allclose(a, b, atol=1e-6, equal_nan=True))

    if same(precision, want_recall) and same(recall, want_precision):
        _fail(name, "you swapped precision and recall. Recall divides by the tokens where p (the "
                    "latent you start from) fires; precision divides by the tokens where q fires. "
                    "Column 0's q fires on a subset of p's tokens: its precision must be 1.")
    if same(recall, both / N) or same(precision, both / N):
        _fail(name, "you divided by the number of tokens N: that is how often both fire, not a "
                    "precision or recall. Divide by how often p fires (recall) or q fires "
                    "(precision).")
    union = (p | q).sum(0).double()
    if same(recall, both / union) or same(precision, both / union):
        _fail(name, "you divided by the tokens where either fires (the Jaccard index): divide by "
                    "where p fires (recall) or where q fires (precision).")
    if not torch.isnan(precision[4]):
        _fail(name, f"column 4's q never fires, so its precision is 0/0; you returned "
                    f"{float(precision[4]):.3g}. Return NaN there (torch.where(n_q > 0, ..., nan)): "
                    "a 0 would count a latent we know nothing about as a bad match, and averages "
                    "should skip it (nanmean).")
    # and the other 0/0: a p that never fires has no recall (a second, small call)
    p0, q0 = torch.zeros(4, 1, dtype=torch.bool), torch.tensor([[True], [False], [True], [False]])
    out0 = _call(name, fn, p0, q0)
    recall0 = _as_tensor(name, out0[1] if isinstance(out0, tuple) and len(out0) == 2 else out0,
                         torch.zeros(1, dtype=torch.double)).detach().double()
    if not torch.isnan(recall0[0]):
        _fail(name, f"when p never fires, its recall is 0/0; you returned {float(recall0[0]):.3g}. "
                    "Return NaN there too (torch.where(n_p > 0, ..., nan)).")
    if not same(recall, want_recall):
        worst = int((recall - want_recall).nan_to_num(0).abs().argmax())
        _fail(name, f"recall of column {worst}: expected {float(want_recall[worst]):.4f}, got "
                    f"{float(recall[worst]):.4f}. Recall = #(p and q) / #p, counted over the N "
                    "tokens (sum over dim 0).")
    if not same(precision, want_precision):
        worst = int((precision - want_precision).nan_to_num(0).abs().argmax())
        _fail(name, f"precision of column {worst}: expected {float(want_precision[worst]):.4f}, "
                    f"got {float(precision[worst]):.4f}. Precision = #(p and q) / #q.")
    _passed(name, f"{p.shape[1]} latent pairs on {N} tokens: a child (precision 1, recall "
                  f"{float(want_recall[0]):.2f}), an always-on latent (recall 1, precision "
                  f"{float(want_precision[1]):.2f}), NaN where q never fires")


# --- Notebook 08: evaluating SAEs beyond reconstruction ------------------------------------------
def _as_float(name: str, value) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            _fail(name, f"return one number (a float), got a tensor of shape {tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):   # numpy's scalars are Real
        kind = type(value)
        kind = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        _fail(name, f"return a float, got {kind}: use float(...).")
    return float(value)


def check_detection_score(fn: Callable[[Tensor, Tensor], float]) -> None:
    """fn(pred [n, L] bool, acts [n, L]) -> float: balanced accuracy over contexts, a context
    firing when any act > 0 and predicted when any pred is True."""
    name = "check_detection_score"
    # 4 firing and 8 silent contexts of 5 tokens; the simulator gets 3 of 4 and 5 of 8 right
    acts = torch.zeros(12, 5)
    acts[0, 1], acts[1, 3], acts[2, 0], acts[3, 4] = 2.0, 0.5, 1.0, 3.0
    acts[3, 2] = 1.5
    acts[5, 2] = -0.7   # a negative pre-activation-like value: not firing
    pred = torch.zeros(12, 5, dtype=torch.bool)
    pred[0, 1] = pred[1, 2] = pred[2, 0] = True        # context 1: right context, wrong token
    pred[4, 0] = pred[6, 3] = pred[7, 0] = True         # three false alarms
    want = balanced_accuracy(pred.any(1), (acts > 0).any(1))
    got = _as_float(name, _call(name, fn, pred, acts))
    if math.isclose(got, want, abs_tol=1e-6):
        trivial = _as_float(name, _call(name, fn, torch.ones(12, 5, dtype=torch.bool), acts))
        if not math.isclose(trivial, 0.5, abs_tol=1e-6):
            _fail(name, f"a simulator that says 'fires' for every context must score 0.5 "
                        f"(chance), you gave {trivial:.3f}.")
        _passed(name, f"12 contexts (4 firing): balanced accuracy {want:.4f}; predicting "
                      "'fires' everywhere scores 0.5")
        return
    ctx_pred, ctx_true = pred.any(1), (acts > 0).any(1)
    wrong = {
        "plain accuracy": float((ctx_pred == ctx_true).float().mean()),
        "token level": balanced_accuracy(pred.flatten(), (acts > 0).flatten()),
        "all tokens": balanced_accuracy(pred.all(1), (acts > 0).all(1)) if (acts > 0).all(1).any()
        else float("nan"),
        ">= 0": float((ctx_pred == (acts >= 0).any(1)).float().mean()),
        "recall only": float(ctx_pred[ctx_true].float().mean()),
        "abs": balanced_accuracy(ctx_pred, (acts != 0).any(1)),
    }
    hints = {
        "plain accuracy": "you computed plain accuracy. Firing contexts are the minority, so a "
                          "simulator that always says 'no' would look good: average the "
                          "true-positive rate (on firing contexts) and the true-negative rate (on "
                          "silent ones).",
        "token level": "you scored single tokens. Detection asks per *context* whether the latent "
                       "fires anywhere in it: reduce with .any(dim=1) first (the fuzzing score is "
                       "the token-level one).",
        "all tokens": "a context fires when *any* of its tokens has act > 0, not all of them.",
        ">= 0": "a latent fires where its activation is > 0; with >= 0 every context 'fires'.",
        "recall only": "you returned only the true-positive rate: a simulator that predicts "
                       "'fires' for everything would score 1.0. Average it with the "
                       "true-negative rate.",
        "abs": "a negative value is not firing: use acts > 0, not acts != 0.",
    }
    if math.isnan(got):     # balanced accuracy with an empty class: 0/0
        _fail(name, "you returned NaN: one of your two classes is empty, so its rate is 0/0. "
                    "With acts >= 0 every context 'fires' (its zeros count): a latent fires "
                    "where acts > 0, and 8 of these 12 contexts are silent.")
    _name_the_mistake(name, got, wrong, hints, abs_tol=1e-6)
    _fail(name, f"expected {want:.4f}, got {got:.4f}. Per context: fired = (acts > 0).any(1), "
                "predicted = pred.any(1); then (TPR + TNR) / 2.")


def check_top_k_features(fn: Callable[[Tensor, Tensor, int], Tensor]) -> None:
    """fn(X [n, d], y [n] bool, k) -> LongTensor [k]: the k columns with the largest
    |mean(X[y]) - mean(X[~y])| / (std(X) + 1e-6)."""
    name = "check_top_k_features"
    gen = torch.Generator().manual_seed(0)
    n, d = 400, 10
    y = torch.rand(n, generator=gen) < 0.3
    X = torch.randn(n, d, generator=gen)
    X[:, 2] += 1.5 * y            # higher where the property holds
    X[:, 5] -= 1.2 * y            # lower where it holds: separates as well
    X[:, 7] = 20 * X[:, 7] + 4.0 * y   # a large raw difference, small in units of its spread
    X[:, 8] += 0.8 * y
    score = (X[y].mean(0) - X[~y].mean(0)).abs() / (X.std(0) + 1e-6)
    for k in (1, 3):
        want = set(score.topk(k).indices.tolist())
        got = _call(name, fn, X, y, k)
        if not isinstance(got, Tensor):
            _fail(name, f"return a torch.Tensor of indices, got {type(got).__name__}.")
        if got.is_floating_point():
            _fail(name, "you returned floating-point values: return the *indices* of the "
                        "features (topk(...).indices), a LongTensor.")
        if got.numel() != k:
            _fail(name, f"for k={k} return {k} indices, got {got.numel()}.")
        got_set = set(got.flatten().tolist())
        if got_set == want:
            continue
        signed = set((X[y].mean(0) - X[~y].mean(0)).div(X.std(0) + 1e-6).topk(k).indices.tolist())
        raw = set((X[y].mean(0) - X[~y].mean(0)).abs().topk(k).indices.tolist())
        smallest = set(score.topk(k, largest=False).indices.tolist())
        if got_set == raw:
            _fail(name, "you ranked by the raw mean difference: a feature with a large scale "
                        "(column 7 here) wins without separating the classes. Divide by each "
                        "column's standard deviation.")
        if got_set == signed:
            _fail(name, "you kept the sign: a feature that is *lower* where the property holds "
                        "(column 5 here) separates the classes just as well. Rank by the "
                        "absolute difference.")
        if got_set == smallest:
            _fail(name, "you picked the k *smallest* differences: take the largest (topk).")
        _fail(name, f"for k={k} expected the columns {sorted(want)}, got {sorted(got_set)}. "
                    "Score each column by |mean(X[y]) - mean(X[~y])| / (X.std(0) + 1e-6).")
    _passed(name, "k = 1 and 3 on 10 features: the standardised, absolute mean difference picks "
                  "columns " + str(sorted(want)))


def check_absorption_rate(fn: Callable) -> None:
    """fn(codes [n, d_sae], positive [n] bool, main [m] long, cos_to_probe [d_sae], tau) -> float:
    the fraction of positive rows where no main latent fires and another firing latent has
    cos_to_probe >= tau."""
    name = "check_absorption_rate"
    d_sae = 6
    cos = torch.tensor([0.9, 0.5, 0.05, -0.6, 0.3, 0.0])
    main = torch.tensor([0])
    rows = [  # (latents firing, positive)
        ([0], True), ([0, 1], True), ([0, 4], True), ([1], True), ([4], True), ([3], True),
        ([2], True),
        ([], True), ([1, 2], True), ([1], False), ([0], False), ([3], False), ([], False),
    ]
    codes = torch.zeros(len(rows), d_sae)
    for r, (fire, _) in enumerate(rows):
        codes[r, fire] = 1.0 + r / 10
    positive = torch.tensor([p for _, p in rows])
    tau = 0.2
    fires = codes > 0
    silent = ~fires[:, main].any(1)
    aligned = cos >= tau
    absorbed = silent & (fires & aligned).any(1)
    want = float(absorbed[positive].float().mean())
    got = _as_float(name, _call(name, fn, codes, positive, main, cos, tau))
    if math.isclose(got, want, abs_tol=1e-6):
        # the boundary, in a second small call: a latent with cos_to_probe exactly tau counts
        edge = _as_float(name, _call(name, fn, torch.tensor([[0.0, 1.0]]), torch.tensor([True]),
                                     torch.tensor([0]), torch.tensor([0.9, 0.25]), 0.25))
        if not math.isclose(edge, 1.0, abs_tol=1e-6):
            _fail(name, f"a firing latent with cos_to_probe exactly tau (0.25) must count as "
                        f"aligned (cos >= tau, not >); you returned {edge:.4f} instead of 1.0.")
        # several main latents (the notebook's SAEs have up to 3): the parent is present when any
        # of them fires. Rows: main 1 fires, none fires, main 0 fires, none fires (and no aligned)
        two = _as_float(name, _call(name, fn, torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                                                            [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
                                    torch.ones(4, dtype=torch.bool), torch.tensor([0, 1]),
                                    torch.tensor([0.9, 0.8, 0.5, 0.0]), tau))
        if not math.isclose(two, 0.25, abs_tol=1e-6):
            hint = {0.75: "A row counts as a miss only when no main latent fires: you treated "
                          "'not every main latent fires' as a miss (use .any over the main "
                          "latents, then negate).",
                    0.5: "You looked at the first main latent only: with main = [0, 1] a row where "
                         "latent 1 fires is not a miss."}.get(round(two, 4), "")
            _fail(name, f"with two main latents (main = [0, 1]) and four positive rows, one "
                        f"absorbed, the rate is 0.2500; you returned {two:.4f}. {hint}".rstrip())
        _passed(name, f"{int(positive.sum())} positive rows: {int(absorbed[positive].sum())} "
                      f"absorbed, rate {want:.4f}")
        return
    wrong = {
        "all rows": float(absorbed.float().mean()),
        "over misses": float(absorbed[positive].sum() / (silent & positive).sum()),
        "main may fire": float((fires & aligned & ~torch.isin(torch.arange(d_sae), main))
                               .any(1)[positive].float().mean()),
        "abs cos": float((silent & (fires & (cos.abs() >= tau)).any(1))[positive].float().mean()),
        "miss rate": float(silent[positive].float().mean()),
    }
    hints = {
        "all rows": "you divided by all rows: the rate is over the rows *with the property* "
                    "(positive), since absorption means the parent latent missing where it "
                    "should fire.",
        "over misses": "you divided by the rows where the main latents are silent: the rate is a "
                       "fraction of all positive rows (miss rate x share of misses absorbed).",
        "main may fire": "you counted rows where a main latent fires: there the parent is not "
                         "missing, so nothing was absorbed.",
        "abs cos": "you used |cos|: a latent pointing *against* the probe direction (cos < 0) "
                   "does not carry the parent feature. Compare cos_to_probe >= tau.",
        "miss rate": "you returned the miss rate (main latents silent on positive rows). A miss "
                     "counts as absorption only when another firing latent is aligned with the "
                     "probe (cos >= tau); otherwise the SAE simply lost the feature there.",
    }
    _name_the_mistake(name, got, wrong, hints, abs_tol=1e-6)
    _fail(name, f"expected {want:.4f}, got {got:.4f}. Among positive rows: no main latent "
                "fires, and some firing latent j has cos_to_probe[j] >= tau.")
