"""lenet: the LeNet chapter of Dive into Deep Learning as a fast, reproducible tool."""

__version__ = "0.1.0"
