r"""One recording lifecycle: record a function's tensor operations, check them, replay or compile them, or fall back.

The training step and the importance sampler's chunk do the same tensor operations at every
call; only the data and the noise change. So each is recorded once per input shape with
:func:`torch.fx.experimental.proxy_tensor.make_fx` and later calls run the recording: what is
paid once instead of at every call is the Python of Pyro's messengers and traces (and, for the
step, autograd's graph building). Random draws stay random: they are operations in the graph,
left to the eager generator, so a recording draws exactly what the eager function would.

:class:`Recorder` owns the lifecycle of one function, for every shape it meets:

1. **record** ``fn`` on the first inputs of a shape (the RNG untouched);
2. **compile** it with TorchInductor (``torch.compile``, random draws from the eager generator)
   where the kind is ``compiled``, or keep the recording to **replay** (``replayed``);
3. **verify** it on those inputs: the recording and the eager ``reference`` on the same inputs
   and the same noise (:data:`AGREEMENT_SEED`) must agree;
4. **re-verify** on the next inputs of the shape: a value read back as a number (``.tolist()``,
   ``float(tensor)``) is a constant of the recording, which its own inputs cannot show;
5. **run** the recording from then on.

Where any of it fails — the function branches on a tensor value or reads it back, the
recording disagrees with the reference — a recorder the user forced raises
:class:`Unrecordable` (one line: why, and what to do instead); any other falls back to the
eager function for good and says so once. The kinds are the one vocabulary of
:mod:`ppl_vae.inference.steps`: eager, replayed, compiled.

The recorder runs with PyTorch's Python dispatcher, so operations that PyTorch implements by
reading their input back (``F.one_hot(y, num_classes)`` checks its range with ``.item()`` on
the CPU) are recorded from their tensor-only decompositions instead; ``F.one_hot(y)`` without
``num_classes`` reads its size off the values and stays refused.

Layer 1 — may import: torch, pyro, :mod:`ppl_vae.errors`, :mod:`ppl_vae.inference.importance`,
:mod:`ppl_vae.inference.steps`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Hashable

import pyro
import torch
from torch import nn
from torch._dispatch.python import enable_python_dispatcher
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from ..errors import UserError
from .importance import rng_untouched
from .steps import STEP_KINDS
from .trial import user_line

__all__ = [
    "Recorder",
    "Unrecordable",
    "record",
    "fuse_graph",
    "close",
    "disagreement",
    "kept_cache",
    "split_inputs",
    "joined_inputs",
    "AGREEMENT_SEED",
]

AGREEMENT_SEED = 20240601
"""The noise a recording and its eager reference are compared on (any fixed seed would do: both draw it)."""

READS_BACK = "(.tolist(), .numpy(), float(tensor))"


class Unrecordable(UserError):
    """A function the recorder cannot reproduce: ``reason`` says why, ``hint`` what to do instead."""


class Recorder:
    """``fn(static)(*args)``, recorded once per shape and replayed or compiled; ``None`` where it runs eagerly.

    Arguments:
        fn: ``static -> f``, the function to record for the static (non-tensor) part of a call.
        reference: ``static -> f``, the eager computation whose results ``fn``'s must equal (often ``fn`` itself).
        kind: ``eager`` (nothing is recorded), ``replayed`` or ``compiled``.
        forced: the user asked for this kind: a refusal is raised, never fallen back from.
        flag, hint, what: the option that asked for it (``--compile``), what to do without it
            (``train without --compile``) and what runs (``step``): the words of every message.
        prepare: ``prepare(static, *args)`` checks the function before its first recording for each
            static part (a labelled and an unlabelled batch meet different sites; raises :class:`Unrecordable`).
        shapes: how many shapes are recorded (``None``: all); the others run eagerly.
        replay_pays: whether replaying is worth it where compiling fails (else that is a refusal).
        say: told each line of a fallback or a compile failure.

    A call's shape is ``static`` with the shape, dtype and device of each tensor argument; a list
    argument is the function's state (its parameters), the same shapes at every call.
    """

    def __init__(
        self,
        fn: Callable[[Hashable], Callable],
        reference: Callable[[Hashable], Callable],
        kind: str,
        *,
        forced: bool,
        flag: str,
        hint: str,
        what: str,
        prepare: Callable[..., None] | None = None,
        shapes: int | None = None,
        replay_pays: bool = True,
        say: Callable[[str], None] | None = None,
    ):
        if kind not in STEP_KINDS:
            raise ValueError(f"a recorder's kind is one of {', '.join(STEP_KINDS)}, not {kind!r}")
        self.fn, self.reference, self.kind, self.forced = fn, reference, kind, forced
        self.flag, self.hint, self.what = flag, hint, what
        self.prepare, self.shapes, self.replay_pays, self.say = prepare, shapes, replay_pays, say
        self.reason = ""  # why it runs as it does, where that is not what was asked: a fallback, a compile failure
        self.graphs: dict[Hashable, nn.Module] = {}
        self._verified: set[Hashable] = set()  # shapes whose recording agreed on inputs it was not recorded on
        self._prepared: set[Hashable] = set()  # static parts whose function was checked

    def __call__(self, static: Hashable, *args, fuse: bool = True):
        """``fn(static)(*args)`` from its recording; ``None`` where the caller runs it eagerly.

        ``fuse=False``: a shape met for the first time is replayed even where the kind is ``compiled``
        (a shape met once an epoch does not repay a compilation of its own).
        """
        if self.kind == "eager":
            return None
        key = (static, *(_shape(a) for a in args))
        graph = self.graphs.get(key)
        try:
            if graph is None:
                if self.shapes is not None and len(self.graphs) >= self.shapes:
                    return None
                graph = self.graphs[key] = self._record(static, args, fuse and self.kind == "compiled")
            elif key not in self._verified:
                self._verified.add(key)
                self._verify(graph, static, args)
        except Unrecordable as err:
            if self.forced:
                raise Unrecordable(err.reason, err.hint or self.hint) from None
            self.kind, self.graphs, self.reason = "eager", {}, f"eager {self.what}: {err.reason} (fallback)"
            self._say(self.reason)
            return None
        return run(graph, args)

    def check(self, static: Hashable, *args) -> None:
        """Record (without compiling) and verify on ``args`` now, keeping nothing: raises :class:`Unrecordable`."""
        try:
            self._record(static, args, fuse=False)
        except Unrecordable as err:
            raise Unrecordable(err.reason, err.hint or self.hint) from None

    def _record(self, static: Hashable, args: tuple, fuse: bool) -> nn.Module:
        if self.prepare is not None and static not in self._prepared:
            self.prepare(static, *args)
            self._prepared.add(static)  # the function's own checks: once, whatever its shapes
        graph = record(self.fn(static), args, self.flag)
        if fuse:
            graph, problem = fuse_graph(graph, args)
            if problem is not None:
                if not (self.replay_pays or self.forced):
                    raise Unrecordable(f"{self.flag}: {problem}")
                self.kind, self.reason = "replayed", f"{self.flag}: {problem}; replaying the recording uncompiled"
                self._say(self.reason)
        self._verify(graph, static, args)
        return graph

    def _verify(self, graph: nn.Module, static: Hashable, args: tuple) -> None:
        """The recording and the reference on the same inputs and the same noise; :class:`Unrecordable` unless equal."""
        like = _first_tensor(args)
        with rng_untouched(like):  # the stream is left as it was: the call itself draws afterwards
            torch.manual_seed(AGREEMENT_SEED)
            want = self.reference(static)(*args)
            torch.manual_seed(AGREEMENT_SEED)
            got = run(graph, args)
        differs = disagreement(got, want)
        if differs:
            raise Unrecordable(
                f"{self.flag}: the recording gives {differs} on the same noise: does the program read tensor "
                f"values back as numbers {READS_BACK}?"
            )

    def _say(self, line: str) -> None:
        if self.say is not None:
            self.say(line)


def split_inputs(inputs: dict) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], list[torch.Tensor]]:
    """A program's ``inputs`` as a recording sees them: ``((names, absent), values)``.

    The tensors (labels ``y``) are inputs of the recording, in the order of ``names``, so a
    recording is not bound to one batch's values; the names given as ``None`` (``y=None``, an
    unlabelled batch) are part of the static key, so each kind of batch has its own recording.

    Example:
        >>> split_inputs({"y": torch.tensor([3]), "c": None})
        ((('y',), ('c',)), [tensor([3])])
    """
    names = tuple(k for k, v in inputs.items() if v is not None)
    absent = tuple(k for k, v in inputs.items() if v is None)
    return (names, absent), [inputs[k] for k in names]


def joined_inputs(key: tuple[tuple[str, ...], tuple[str, ...]], values) -> dict:
    """The inputs that :func:`split_inputs` split into ``key`` and ``values``, whole again."""
    names, absent = key
    return {**dict.fromkeys(absent), **dict(zip(names, values))}


def run(graph: nn.Module, args: tuple):
    """A recording's results on ``args``, in the grad mode it was compiled in (another would compile it again)."""
    with torch.inference_mode(False), torch.no_grad():
        return graph(*args)


def _shape(arg) -> Hashable:
    if isinstance(arg, torch.Tensor):
        return tuple(arg.shape), arg.dtype, arg.device
    return None if arg is None else type(arg).__name__


def _first_tensor(args) -> torch.Tensor:
    return next(t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor))


def record(fn: Callable, args: tuple, flag: str) -> nn.Module:
    """``fn(*args)``'s tensor operations as an FX graph (aliases and unused results dropped).

    Draws nothing from the RNG and checks nothing. A function that branches on tensor values or
    reads them back cannot be recorded: :class:`Unrecordable` saying so, with the line of the
    user's program that did it; so does a TorchInductor cache folder that cannot be made, which the
    recorder's imports need. ``flag`` is the option that asked for the recording.
    """
    with torch.inference_mode(False), rng_untouched(_first_tensor(args)), pyro.validation_enabled(False):
        try:
            # the Python dispatcher records an operation that reads its input back (F.one_hot's range
            # check) from its tensor-only decomposition
            with enable_python_dispatcher():
                graph = make_fx(fn)(*args)
        except OSError as err:  # torch._dynamo makes TorchInductor's cache folder when it is first imported
            folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "TorchInductor's default")
            raise Unrecordable(
                f"{flag} cannot record: TorchInductor's cache folder {folder} cannot be used "
                f"({err.strerror or type(err).__name__})",
                "set TORCHINDUCTOR_CACHE_DIR to a writable folder",
            ) from None
        except RuntimeError as err:
            if "tracing tensor" not in str(err) and "data-dependent" not in str(err):
                raise
            line = user_line(err)
            where = f"{os.path.basename(line[0])}:{line[1]}, in {line[2]}" if line else ""
            raise Unrecordable(
                f"{flag} cannot record this program: it branches on tensor values or reads them back "
                f"(if tensor:, .item(), F.one_hot without num_classes){f', at {where}' if where else ''}"
            ) from None
    return _without_dead_code(graph)


def _without_dead_code(graph: nn.Module) -> nn.Module:
    """Drop aliases and operations whose results nothing uses (random draws and asserts stay: they are impure)."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def fuse_graph(graph: nn.Module, args: tuple) -> tuple[nn.Module, str | None]:
    """``graph`` compiled by TorchInductor, random draws from the eager generator, and ``None``; or, where
    TorchInductor cannot compile it (no compiler, an unwritable cache folder), ``graph`` itself and why.

    Compiles now (on ``args``, RNG untouched), not inside the first call that uses it.
    """
    quiet = logging.getLogger("torch.utils.cpp_extension")  # it warns about CUDA_HOME on CPU-only machines
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        kept_cache()
        with torch.inference_mode(False), rng_untouched(_first_tensor(args)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the compiler's own deprecation notices are not the user's business
            compiled = torch.compile(graph, fullgraph=True, dynamic=False, options={"fallback_random": True})
            compiled(*args)
    except Exception as err:  # noqa: BLE001 - the plain replay still works
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return graph, f"TorchInductor could not compile the recording ({type(err).__name__}: {first})"
    finally:
        quiet.setLevel(level)
    return compiled, None


def kept_cache() -> str | None:
    """Point TorchInductor's on-disk cache at the user's cache folder, so a later run reuses its kernels.

    Its default lies in the system's temporary folder, which a reboot or a cleaner empties.
    ``$TORCHINDUCTOR_CACHE_DIR``, when set, is kept — and must be a folder that can be made: torch
    makes it when its compiler is first imported (by the optimizer, too), so one that cannot be
    is refused here in one line. The default is kept where the user's folder cannot be made.
    Returns the folder in use (``None``: TorchInductor's default).
    """
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given:
        try:
            os.makedirs(given, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"TORCHINDUCTOR_CACHE_DIR={given} cannot be made a folder ({err.strerror or type(err).__name__}); "
                "torch needs it: point it at a writable folder or unset it"
            ) from None
        return given
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "ppl_vae", "inductor")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return None
        if not os.access(folder, os.W_OK):
            return None
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether a recording's result ``a`` agrees with the eager ``b``, relative to ``b``'s largest magnitude."""
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)


def disagreement(got, want, rtol: float = 1e-3) -> str:
    """``""`` where the results ``got`` and ``want`` (tensors, ``None``s, in lists, tuples and dicts) agree
    (:func:`close`, in float64); else ``"X where the program gives Y"`` at their first difference.

    Example:
        >>> disagreement({"a": torch.ones(2), "b": None}, {"a": torch.ones(2), "b": None})
        ''
        >>> disagreement([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 3.0])])
        '2 where the program gives 3'
    """
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    if got_spec != want_spec:
        return f"results shaped {got_spec} where the program gives {want_spec}"
    for a, b in zip(got_leaves, want_leaves):
        if a is None and b is None:
            continue
        if a is None or b is None or a.shape != b.shape:
            return f"{_value(a)} where the program gives {_value(b)}"
        a, b = a.double(), b.double()
        if not close(a, b, rtol):
            at = (a - b).abs().nan_to_num(float("inf")).argmax()
            return f"{a.reshape(-1)[at].item():.6g} where the program gives {b.reshape(-1)[at].item():.6g}"
    return ""


def _value(t) -> str:
    return "nothing" if t is None else f"a tensor of shape {tuple(t.shape)}"
