"""One training step, as the loop runs it for every method.

``zero_grad`` -> ``method(inputs)`` -> ``method.training_loss`` -> finiteness check ->
backward -> ``method.after_backward()`` -> gradient clipping -> ``optimizer.step()``.
A method that builds its gradient from separate per-term gradients (``Method.combine_gradients``)
replaces the backward by :func:`combined_backward`.
The Lightning module (``training/module.py``) and the speed benchmark both call
:func:`train_step`; Lightning only passes its own ``backward`` (precision scaling, DDP)
and its optimizer wrapper.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import NonFiniteLossError
from ..types import Batch, LossTerms

#: prefix of the values ``Method.after_backward`` returned, in the step's ``LossTerms.logs``
BALANCE = "balance/"
#: prefix of :func:`term_grad_norms` in the logs: ``grad/<term>/<modality>``
GRAD = "grad/"
#: prefix of the shares :func:`term_grad_norms` adds: ``grad_share/<term>/<modality>``
GRAD_SHARE = "grad_share/"


def term_grad_norms(method, loss: LossTerms) -> Dict[str, float]:
    """``grad/<term>/<m>``: the L2 norm of the gradient that each loss term sends to each
    modality's encoder, through the method's own routing (MCR's game multipliers included).

    Answers "is the game doing anything?": the share of a term in an encoder's push is its
    norm over the sum of all terms' norms, added as ``grad_share/<term>/<m>`` (one
    encoder's shares sum to 1; ``mmbalance diagnose`` reports the ratio of epoch means).
    Costs one extra backward pass per term, so the loop calls it every
    ``log_every_n_steps`` steps.
    """
    model = method.model
    params = {m: [p for p in model.modality_parameters(m) if p.requires_grad] for m in model.modalities}
    flat = [p for ps in params.values() for p in ps]
    norms: Dict[str, Dict[str, float]] = {m: {} for m in params}  # modality -> term -> norm
    for name, term in loss.terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, flat, retain_graph=True, allow_unused=True)
        i = 0
        for m, ps in params.items():
            parts = [g.detach().float().pow(2).sum() for g in grads[i:i + len(ps)] if g is not None]
            norms[m][name] = float(torch.stack(parts).sum().sqrt()) if parts else 0.0
            i += len(ps)
    out = {f"{GRAD}{name}/{m}": v for m, terms in norms.items() for name, v in terms.items()}
    for m, terms in norms.items():
        total = sum(terms.values())
        out.update({f"{GRAD_SHARE}{name}/{m}": v / total if total > 0 else 0.0 for name, v in terms.items()})
    return out


def _mean_over_ranks(grads: List[Tensor]) -> List[Tensor]:
    """``grads`` averaged over the DDP ranks in one all-reduce (themselves when not distributed)."""
    dist = torch.distributed
    if not (grads and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return grads
    flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out, i = [], 0
    for g in grads:
        out.append(flat[i:i + g.numel()].view_as(g).to(g.dtype))
        i += g.numel()
    return out


def term_gradient(term: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    """``d term / d params`` (zeros where ``term`` does not reach a parameter), keeping the
    graph for further terms, averaged over DDP ranks: the ``gradient`` that
    ``Method.combine_gradients`` receives. ``torch.autograd.grad`` fills no ``.grad`` and fires
    no DDP reducer hook, so it can run any number of times before the one backward."""
    params = list(params)
    if not params:
        return []
    if not term.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return _mean_over_ranks([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])


def combined_backward(method, loss: LossTerms, grads: Mapping[nn.Parameter, Tensor],
                      backward: Callable[[Tensor], None]) -> None:
    """Writes the gradients a method combined (``grads``), and ``d loss.total / d p`` for every
    other trainable parameter that the total reaches, through ONE call of ``backward`` on
    the surrogate ``sum_p <p, g_p>`` (``g_p`` constant), whose gradient is exactly ``g_p``.

    Going through the loop's own backward keeps what it adds: a precision plugin's loss
    scaling (the scaled ``g_p`` are unscaled by the optimizer step like any gradient) and, under
    DDP, Lightning's ``prepare_for_backward`` and the reducer's all-reduce. The combined ``g_p``
    are already identical on every rank (built from rank-averaged term gradients), so the
    reducer's mean leaves them as they are; the other parameters' local gradients are averaged
    as in an ordinary step. A parameter the total does not reach keeps ``grad=None``.
    """
    mine = {id(p) for p in grads}
    rest = [p for p in method.parameters() if p.requires_grad and id(p) not in mine]
    pairs = list(grads.items())
    if rest and loss.total.requires_grad:
        rest_grads = torch.autograd.grad(loss.total, rest, allow_unused=True)
        pairs += [(p, g) for p, g in zip(rest, rest_grads) if g is not None]
    if not pairs:
        return
    surrogate = sum((p * g.detach().to(p.dtype)).sum() for p, g in pairs)
    backward(surrogate)


def raise_nonfinite(loss: LossTerms) -> None:
    """The default reaction to a non-finite loss: stop."""
    bad = [k for k, v in loss.terms.items() if not torch.isfinite(v)] or ["total"]
    raise NonFiniteLossError(f"non-finite loss: term {bad[0]!r} is {loss.terms.get(bad[0], loss.total).item()}")


def _sub_steps(method, batch: Batch, out, steps, optimizer, backward: Callable[..., None],
               clip: Optional[Callable[[], None]], on_nonfinite: Callable[[LossTerms], None],
               autocast_region: Callable[[], Any], inner_step: Callable[[], None], region) -> LossTerms:
    """The method's ``sub_steps`` on one forward output: each clears the gradients, takes its
    loss, backpropagates it (keeping the graph for the steps after it), lets the method edit
    the gradients, drops those of parameters outside the step, clips and steps (the last
    through ``optimizer.step``, the others through ``inner_step``). Returns the steps' terms
    as ``<step>/<term>`` (as they are for a single step) and the sum of their totals."""
    terms: Dict[str, Tensor] = {}
    logs: Dict[str, Any] = {}
    totals = []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if i:
            optimizer.zero_grad(set_to_none=True)
        with autocast_region():
            with region(f"step/{step.name}/loss"):
                loss: LossTerms = method.sub_step_loss(step, batch, out)
        if not torch.isfinite(loss.total):  # the batch's remaining steps are skipped too
            on_nonfinite(loss)
            return loss
        with region(f"step/{step.name}/backward"):
            backward(loss.total) if last else backward(loss.total, retain_graph=True)
        logs.update({BALANCE + k: float(v) for k, v in method.after_step_backward(step).items()})
        if step.params is not None:
            keep = {id(p) for p in step.params}
            for p in method.parameters():
                if id(p) not in keep:
                    p.grad = None
        if clip is not None:
            clip()
        with region(f"step/{step.name}/optimizer"):
            (optimizer.step if last else inner_step)()
        prefix = f"{step.name}/" if len(steps) > 1 else ""
        terms.update({prefix + k: v.detach() for k, v in loss.terms.items()})
        logs.update({prefix + k: v for k, v in loss.logs.items()})
        totals.append(loss.total.detach().float())
    return LossTerms(total=torch.stack(totals).sum(), terms=terms, logs=logs)


def train_step(method, batch: Batch, optimizer, *, backward: Optional[Callable[[Tensor], None]] = None,
               clip: Optional[Callable[[], None]] = None,
               on_nonfinite: Callable[[LossTerms], None] = raise_nonfinite,
               autocast: Optional[torch.dtype] = None, regions: bool = False,
               grad_norms: bool = False, inner_step: Optional[Callable[[], None]] = None) -> LossTerms:
    """Runs one optimization step of ``method`` on ``batch``.

    Args:
        method: a :class:`~mmbalance.methods.Method`.
        batch: inputs and (B,) labels, already on the method's device.
        optimizer: anything with ``zero_grad`` and ``step`` (a torch optimizer, or
            Lightning's wrapper of one).
        backward: how to backpropagate the total loss (default ``total.backward()``).
        clip: called after ``after_backward``, before the optimizer step (gradient clipping).
        on_nonfinite: called with a non-finite loss; if it returns, the step is skipped
            (no backward, no update). Default: :func:`raise_nonfinite`.
        autocast: dtype of an autocast region around forward and loss (None: none).
        regions: wrap each phase in a ``torch.profiler`` range named ``step/<phase>``.
        grad_norms: add :func:`term_grad_norms` to the logs (one extra backward per term;
            not for a method with ``sub_steps``).
        inner_step: the optimizer step of every sub-step but the batch's last
            (``Method.sub_steps``; default ``optimizer.step``): the loop passes one that
            Lightning does not count, so that a batch stays one global step.

    Returns:
        The batch's loss terms; the values ``after_backward`` returned are added to
        ``logs`` under ``balance/<name>``.
    """
    region = torch.profiler.record_function if regions else (lambda name: nullcontext())
    device = batch.labels.device.type
    optimizer.zero_grad(set_to_none=True)
    autocast_region = lambda: torch.autocast(device, dtype=autocast) if autocast is not None else nullcontext()  # noqa: E731
    steps = method.sub_steps()
    if steps is not None:
        with autocast_region(), region("step/forward"):
            out = method(batch.inputs)
        return _sub_steps(method, batch, out, steps, optimizer, backward or Tensor.backward, clip, on_nonfinite,
                          autocast_region, inner_step or optimizer.step, region)
    with autocast_region():
        with region("step/forward"):
            out = method(batch.inputs)
        with region("step/training_loss"):
            loss: LossTerms = method.training_loss(batch, out)
    if not torch.isfinite(loss.total):  # a device sync on GPU, as in every loop that checks
        on_nonfinite(loss)
        return loss
    if grad_norms:
        loss.logs.update(term_grad_norms(method, loss))
    with region("step/backward"):
        grads = method.combine_gradients(loss, term_gradient)
        if grads is None:
            (backward or Tensor.backward)(loss.total)
        else:
            combined_backward(method, loss, grads, backward or Tensor.backward)
    with region("step/after_backward"):
        loss.logs.update({BALANCE + k: float(v) for k, v in method.after_backward().items()})
    if clip is not None:
        clip()
    with region("step/optimizer"):
        optimizer.step()
    return loss
