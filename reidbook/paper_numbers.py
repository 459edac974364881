"""Numbers quoted from the papers, in percent, each with where it was read.

These are the *papers'* results on real datasets (ResNet-50 unless said, ImageNet weights, GPU). The book
shows them beside its own runs, always labelled as the papers' numbers; nothing here is produced by this
package. The paper texts are extractions (``shared/papers``): tables arrive with their cells out of order,
so each entry notes how it was read back.
"""

from __future__ import annotations

# IANet (Hou et al., CVPR 2019), Table 4a-c, row "base.": ResNet-50 trained with cross-entropy only
# (section 4.3). The row appears identically in all three sub-tables, which pins the cell order.
BASELINE_RESNET50: dict[str, dict[str, float]] = {
    "IANet paper, Table 4 'base.' (ResNet-50, CE): Market-1501": {"rank-1": 90.4, "mAP": 76.2},
    "IANet paper, Table 4 'base.' (ResNet-50, CE): DukeMTMC-reID": {"rank-1": 82.1, "mAP": 66.0},
}
