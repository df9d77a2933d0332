"""cnncompress: make convolutional networks small and fast, and prove it by measuring."""

__version__ = "0.1.0"
