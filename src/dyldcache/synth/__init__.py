"""Split seg info for dylibs linked without it (ld64.lld, zig, ld64 outside the shared-region
paths): derived from their code and data, or refused with a reason naming the section and
offset. See docs/split-seg-synthesis.md for what is synthesized and why it is sound."""

from .synthesize import synthesize_split_seg, synthesized_split_seg_info

__all__ = ["synthesize_split_seg", "synthesized_split_seg_info"]
