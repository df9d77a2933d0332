"""Fast inference kernels, each beside a pure reference twin."""
