"""Training: the loop, DP-SGD with Opacus, augmentation, checkpoints and model cards."""
import warnings

# Opacus' PRV accountant bounds its domain with RDP, which warns about alpha ranges it then does not use;
# GradSampleModule's hooks warn when the input needs no gradient (always so for images).
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
