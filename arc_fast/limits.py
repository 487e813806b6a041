"""The limits a bad value is checked against, shared by ``Pipeline.__call__`` (``arc_fast.guards``) and the
CLI. No imports: the CLI reads them without loading torch.
"""

# Upper bounds of the arguments that set how much work a call does (``Pipeline.__call__`` and ``arc-fast
# generate``); a value past them is a typo or a misunderstanding, and refusing it at once beats hours of
# computation or an allocation failure.
# steps: a rectified-flow sampler's ODE is converged long before 1000 Euler steps (Stable Audio uses 100-250;
#   ARC's ping-pong 1-8), and 1000 steps is already ~10 s of DiT on an H100 for a 12 s clip and ~30 min on a
#   CPU core count like a laptop's.
MAX_STEPS = 1000
# batch_size: the decoder's largest activations are ~128 channels x every output sample, ~270 MB per 12 s
#   stereo clip in fp32, and several are alive at once: 64 clips need tens of GB (an H100 holds 80), and take
#   64x one clip's time. Larger batches: call again with other seeds.
MAX_BATCH = 64
# What torch.Generator.manual_seed accepts.
SEED_RANGE = (-2 ** 63, 2 ** 64)
# init audio is expected in [-1, 1]; float files may go a few dB over. 40 dB over full scale is no recording
# but a units error (integer PCM passed as floats peaks near 32768), which would overflow the encoder or the
# DiT and be reported as a weights problem.
MAX_INIT_PEAK = 100.0
