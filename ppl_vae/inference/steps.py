"""The kinds of training step and importance sampler, and the counts that choose one: constants, no torch.

A step (or a sampler's chunk) is ``eager`` (the program runs under Pyro's handlers at every call),
``replayed`` (its tensor operations recorded once and replayed) or ``compiled`` (the recording
compiled by TorchInductor): :data:`STEP_KINDS`, the one vocabulary of the code, the messages and the
files a run writes (:mod:`ppl_vae.inference.recording`).

The rule is a function of the run alone, never of a measured time (so the same command takes the
same step on a busy machine and an idle one); the numbers behind each constant are in BENCHMARKS.md.
The command line's help quotes them, so they live where reading them imports nothing heavy.
"""

__all__ = ["STEP_KINDS", "as_step_kind", "REPLAY_STEPS", "COMPILE_STEPS", "SAMPLER_CHUNKS"]

STEP_KINDS = ("eager", "replayed", "compiled")
# the names checkpoints stored before the kinds had one vocabulary; "on" and "off" are also what the
# --compile and --compile-sampler switches say for the compiled and the eager kind
_OLD_NAMES = {"off": "eager", "replay": "replayed", "on": "compiled"}


def as_step_kind(name: str) -> str:
    """``name`` in the one vocabulary of step kinds (:data:`STEP_KINDS`): ``eager``, ``replayed``, ``compiled``.

    Checkpoints written before stored ``off``, ``replay`` and ``on``, which are also the ``--compile``
    switch's words for the eager and the compiled step; they are mapped here, once.

    Example:
        >>> as_step_kind("replay"), as_step_kind("compiled")
        ('replayed', 'compiled')
    """
    kind = _OLD_NAMES.get(name, name)
    if kind not in STEP_KINDS:
        raise ValueError(f"a step kind is one of {', '.join(STEP_KINDS)}, not {name!r}")
    return kind


# Recording a batch shape and checking it takes ~0.3 s (two shapes: ~0.6 s); the replayed step then
# saves ~0.9 ms of Pyro's per-step Python a step (digits: 2.75 → 1.83 ms, BENCHMARKS.md), which
# repays the recording twice over from ~1,300 steps. `make run` (1,200 steps) stays eager.
REPLAY_STEPS = 1_500
# Compiling the one batch shape a run compiles takes ~12 s in a fresh process with an empty kernel
# cache (TorchInductor's own start-up, ~8 s, included); the compiled step then saves ~1.1 ms a step
# more than the replayed one on digits (12-step epochs: 18 against 31 ms), ~1.6 ms on MNIST
# (784-400-50), which repays the compile from ~11,000 steps on digits and ~8,000 on MNIST. Whole
# runs of 18,000 steps on digits, each in a fresh process: compiled 45 s and 47 s, replayed 50 s and
# 60 s (Normal, Bernoulli; BENCHMARKS.md).
COMPILE_STEPS = 15_000
# A chunk of the importance sampler (ROWS_PER_CHUNK particle-rows) takes 64 ms eager and 30 ms
# compiled for MNIST's 784-400-50 network (BENCHMARKS.md); a cold compile of it ~15 s: 1,000
# chunks (MNIST's 10,000 test points at K = 1000: 1,221) repay it twice over.
SAMPLER_CHUNKS = 1_000
