"""The step counts that choose a training step's kind and the importance sampler's: constants, no torch.

The rule is a function of the run alone, never of a measured time (so the same command takes the
same step on a busy machine and an idle one); the numbers behind each constant are in BENCHMARKS.md.
The command line's help quotes them, so they live where reading them imports nothing heavy.
"""

__all__ = ["REPLAY_STEPS", "COMPILE_STEPS", "SAMPLER_CHUNKS"]

# Recording a batch shape and checking it takes ~0.3 s (two shapes: ~0.6 s); the replayed step then
# saves ~0.9 ms of Pyro's per-step Python a step (digits: 2.75 → 1.83 ms, BENCHMARKS.md), which
# repays the recording twice over from ~1,300 steps. `make run` (1,200 steps) stays eager.
REPLAY_STEPS = 1_500
# Compiling two shapes takes ~20 s with an empty kernel cache; the compiled step saves ~0.7 ms a step
# more than the replayed one on digits (1.17 against 1.83 ms), ~1.6 ms on MNIST (784-400-50), which
# repays the compile twice over from ~55,000 steps on digits and ~28,000 on MNIST.
COMPILE_STEPS = 50_000
# A chunk of the importance sampler (ROWS_PER_CHUNK particle-rows) takes 64 ms eager and 30 ms
# compiled for MNIST's 784-400-50 network (BENCHMARKS.md); a cold compile of it ~15 s: 1,000
# chunks (MNIST's 10,000 test points at K = 1000: 1,221) repay it twice over.
SAMPLER_CHUNKS = 1_000
