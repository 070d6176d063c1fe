"""Plotting functions: data in, ``Axes`` out, an optional ``ax=`` parameter, no hidden state."""

from .style import output_dir, save_figure, scale_label, title_with_scale, use_style

__all__ = ["output_dir", "save_figure", "scale_label", "title_with_scale", "use_style"]
