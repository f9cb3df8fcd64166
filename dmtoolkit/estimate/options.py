"""Estimator defaults the CLI shows and the library uses: plain constants, importable without numpy or torch."""

# Models per block: 4,096 rows keep the per-block passes (mask conversion, float64 accumulation) small
# against the product (means-only 1.42x a bare GEMM at m=4000, P=1000, T=2000, against 1.55x with 1,024
# rows) while a block of 4,096 x (P + 2T) float32 stays near 80 MB at that size.
BLOCK_ROWS = 4096
DATAMODELS_BLOCK_ROWS = 1024  # rows per pass of the lasso's sufficient statistics
TEST_FRACTION = 0.1  # completed models held out from every fit for `dmtoolkit evaluate`
VAL_FRACTION = 0.1  # of the fitting models, held out to choose datamodels' λ
N_LAMBDAS = 100
EPS = 1e-3
GRADIENT_MODELS = 4  # store rows the gradient estimator retrains
GRADIENT_PROJ_DIM = 512  # random projection dimension of its gradients
GRADIENT_LAMBDA = 0.1  # its kernel ridge, as a fraction of the kernel's mean eigenvalue
GRADIENT_PROJECTIONS = ("gaussian", "rademacher")  # entries of its random projection
GRADIENT_HEADS = ("fixed", "differentiated")  # transfer head held fixed, or differentiated (ridge heads)
GRADIENT_KERNELS = ("trak", "gauss-newton")  # unweighted gradient kernel, or weighted by q(1 - q)
GRADIENT_KERNEL_OVER = ("pool", "trained")  # its kernel spans every pool example, or each network's own
GRADIENT_Q = ("mean", "own")  # its scores weighted by q averaged over networks (TRAK's Q), or each network's own
REPLAY_POINTS = ("pool", "centre")  # linearisation points of the replay estimator (also "row:N")
REPLAY_TARGET_CHUNK = 16  # targets (reverse mode) or source examples (forward) sharing one sweep of the replay
REPLAY_MODES = ("auto", "reverse", "forward")  # auto: forward when source examples are fewer than targets
